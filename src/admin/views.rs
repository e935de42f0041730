//! What the admin API shows of a stored message (no body): its summary and its state at each
//! connector. Shared by the message endpoints and the dead-letter service.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::outbox::{
    ConnectorId, MessageId, MessageRecord, RouteStatus, Seq, Snapshot, StoreError,
};
use crate::units::format_micros;

/// A message in a list: where it came from, what it is, what became of it. No body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageSummary {
    /// Message id.
    pub id: u64,
    /// Receive time, RFC 3339.
    pub received_at: String,
    /// Remote address.
    pub peer: String,
    /// Listener name.
    pub listener: String,
    /// MSH-9 as `type^trigger`.
    pub message_type: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-3.
    pub sending_app: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_app: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// ROUTED, UNROUTED, REJECTED or ERROR.
    pub disposition: String,
    /// The ACK code decided.
    pub ack_code: String,
    /// Why it was refused or failed (rule name and mfoundry's reason).
    pub reason: Option<String>,
    /// Body length, bytes.
    pub body_len: u64,
    /// The configuration it was decided with: the first 16 hex digits of the configuration
    /// file's SHA-256 (the audit trail's `config.reload` records have it whole); absent
    /// without a file, and for messages stored before store format 5.
    pub config: Option<String>,
    /// Its state at each connector.
    pub connectors: Vec<ConnectorState>,
}

/// A message's state at one connector.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectorState {
    /// Connector name.
    pub connector: String,
    /// QUEUED, FILTERED, DELIVERED, DEAD_LETTERED or PURGED.
    pub status: String,
    /// When it reached this state (absent for states set at intake).
    pub at: Option<String>,
    /// Delivery attempts.
    pub attempts: u32,
    /// The last delivery error (the output's words, never message content).
    pub last_error: Option<String>,
    /// While queued after failed attempts: when the next attempt is due, RFC 3339.
    pub next_attempt: Option<String>,
}

/// Each connector's state for a message: intake routes, then later delivery records.
pub(crate) fn connector_states(
    snapshot: &Snapshot,
    id: MessageId,
    record: &MessageRecord,
    names: &HashMap<ConnectorId, String>,
) -> Result<Vec<ConnectorState>, StoreError> {
    let name = |id: ConnectorId| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let mut states: BTreeMap<ConnectorId, ConnectorState> = BTreeMap::new();
    for route in &record.routes {
        // Still in its first queue entry: that entry has the attempts so far.
        let entry = match route.status {
            RouteStatus::Queued => snapshot.queue_entry(route.connector, Seq::from(id))?,
            RouteStatus::Filtered => None,
        };
        states.insert(
            route.connector,
            ConnectorState {
                connector: name(route.connector),
                status: match route.status {
                    RouteStatus::Queued => "QUEUED",
                    RouteStatus::Filtered => "FILTERED",
                }
                .to_owned(),
                at: None,
                attempts: entry.as_ref().map_or(0, |entry| entry.attempts),
                next_attempt: entry
                    .as_ref()
                    .filter(|entry| entry.attempts > 0)
                    .map(|entry| format_micros(entry.next_attempt_micros)),
                last_error: entry.and_then(|entry| entry.last_error),
            },
        );
    }
    for (connector, delivery) in snapshot.deliveries(id)? {
        states.insert(
            connector,
            ConnectorState {
                connector: name(connector),
                status: delivery.status.as_str().to_owned(),
                at: Some(format_micros(delivery.at_micros)),
                attempts: delivery.attempts,
                last_error: delivery.last_error,
                next_attempt: None,
            },
        );
    }
    Ok(states.into_values().collect())
}

/// A message's summary, with its connector states.
pub(crate) fn summary(
    id: MessageId,
    record: &MessageRecord,
    connectors: Vec<ConnectorState>,
) -> MessageSummary {
    let header = &record.header;
    MessageSummary {
        id: id.0,
        received_at: format_micros(record.received_at_micros),
        peer: record.peer.clone(),
        listener: record.listener.clone(),
        message_type: format!("{}^{}", header.msg_type, header.trigger),
        control_id: header.control_id.clone(),
        sending_app: header.sending_app.clone(),
        sending_facility: header.sending_fac.clone(),
        receiving_app: header.receiving_app.clone(),
        receiving_facility: header.receiving_fac.clone(),
        disposition: record.disposition.as_str().to_owned(),
        ack_code: record.ack_code.clone(),
        reason: record.reason.clone(),
        body_len: record.body_len,
        config: record.config.map(|prefix| crate::admin::auth::hex(&prefix)),
        connectors,
    }
}
