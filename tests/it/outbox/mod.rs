//! The outbox on its own. This file holds what every part shares: options on an in-memory
//! disk, and a message queued for some connectors and filtered for others. The tests, by
//! subject:
//!
//! - [`appends`]: FIFO fan-out per connector, large bodies, dedup and its window;
//! - [`batches`]: batches in one commit, file marks and their retention;
//! - [`writer`]: failed commits, `stop`, a request failing alone in a group commit, delivery
//!   updates held right after intake;
//! - [`model`]: model tests against plain in-memory queue models;
//! - [`patients`]: the patient index, built from the bodies and emptied by retention;
//! - [`retention`]: retention, the audit chain and its pruning, damaged records.

mod appends;
mod batches;
mod model;
mod patients;
mod retention;
mod spool;
mod writer;

use crate::common;

use bytes::Bytes;
use common::MemoryDisk;
use mfoundry::outbox::{
    Appended, Disposition, HeaderFields, MessageId, MessageRecord, NewMessage, Outbox,
    OutboxOptions, Route, RouteStatus,
};

fn options_with(memory: &MemoryDisk) -> OutboxOptions {
    OutboxOptions::with_storage(memory.storage())
}

/// The id a stored message got.
fn stored(appended: Appended) -> MessageId {
    match appended {
        Appended::Stored { id } => id,
        other => panic!("expected a stored message, got {other:?}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn message(outbox: &Outbox, control_id: &str, queued: &[&str], filtered: &[&str]) -> NewMessage {
    let mut routes = Vec::new();
    for (names, status) in [
        (queued, RouteStatus::Queued),
        (filtered, RouteStatus::Filtered),
    ] {
        for name in names {
            routes.push(Route {
                connector: outbox.connector_id(name).expect("known connector"),
                status,
            });
        }
    }
    NewMessage {
        record: MessageRecord {
            received_at_micros: 1,
            peer: "127.0.0.1:1".to_owned(),
            listener: "mllp".to_owned(),
            header: HeaderFields {
                control_id: control_id.to_owned(),
                ..HeaderFields::default()
            },
            disposition: if queued.is_empty() {
                Disposition::Unrouted
            } else {
                Disposition::Routed
            },
            reason: None,
            ack_code: "AA".to_owned(),
            body_len: 3,
            routes,
            ack: None,
            dedup_key: None,
            body_inline: false,
            config: None,
        },
        body: Bytes::from(format!("MSH|{control_id}")),
        dedup_key: None,
        tls_identity: None,
        copies: Vec::new(),
        order_keys: Vec::new(),
        patient: Vec::new(),
        object: None,
        spool: None,
    }
}
