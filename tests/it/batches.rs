//! Batches (FHS/BHS/BTS/FTS) over MLLP and HTTP, through the real binary: every message of a
//! batch is stored in one commit and routed on its own; `batch_ack: per_message` answers with
//! a batch of ACKs mirroring the input, `batch_ack: batch` with one ACK (one refused message
//! refuses the batch: AR, nothing queued); trailer counts that differ refuse the batch unless
//! `batch_count_mismatch: accept`.

use crate::common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use mfoundry::outbox::{Disposition, Outbox, OutboxOptions};

const CONFIG: &str = r#"
listeners:
  - name: per-message
    type: mllp
    listen_addr: "127.0.0.1:0"
  - name: one-ack
    type: mllp
    listen_addr: "127.0.0.1:0"
    batch_ack: batch
  - name: lenient
    type: mllp
    listen_addr: "127.0.0.1:0"
    batch_count_mismatch: accept
  - name: http
    type: http
    listen_addr: "127.0.0.1:0"
connectors:
  - name: out
    type: file
    directory: out
validation:
  rules:
    - name: require-patient-id
      expression: 'pid.id != ""'
      message: PID-3 must carry a patient identifier
"#;

/// A message with control id `control`; `patient` empty makes the rule refuse it.
pub fn message(control: &str, patient: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|NORTH|EHR|HUB|20261206083000||ORU^R01|{control}|P|2.5.1\rPID|1||{patient}^^^H^MR||DOE^JANE\rOBX|1|NM|GLU||5.4|mmol/L\r"
    )
}

/// A file with one batch of `messages`, its BTS-1 saying `declared`.
pub fn batch(batch_id: &str, messages: &[String], declared: usize) -> String {
    format!(
        "FHS|^~\\&|LAB|NORTH|EHR|HUB|20261206083000||||F-{batch_id}\rBHS|^~\\&|LAB|NORTH|EHR|HUB|20261206083000||||{batch_id}\r{}BTS|{declared}\rFTS|1\r",
        messages.concat()
    )
}

/// One MLLP frame out, one back (the batch's answer), on a connection of its own.
pub fn exchange(addr: &str, payload: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(&common::framed(payload)).expect("send");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    while !reply.ends_with(b"\x1c\r") {
        let read = stream.read(&mut chunk).expect("read the answer");
        assert!(read > 0, "closed before the answer: {reply:?}");
        reply.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&reply[1..reply.len() - 2]).into_owned()
}

/// The segments of an answer whose name is `name`, as text.
fn segments<'a>(answer: &'a str, name: &str) -> Vec<&'a str> {
    answer
        .split('\r')
        .filter(|segment| segment.starts_with(name))
        .collect()
}

/// `(control id, disposition, routes queued or delivered)` of every stored message, from the
/// stopped server's store.
pub fn stored(directory: &Path, connectors: &[&str]) -> Vec<(String, Disposition, usize)> {
    let mut options = OutboxOptions::new(directory.join("data").join("mfoundry.redb"));
    options.dedup_window = None;
    let names: Vec<String> = connectors.iter().map(|name| (*name).to_owned()).collect();
    let (outbox, writer) = Outbox::open(options, &names).expect("the store opens");
    let snapshot = outbox.snapshot().expect("snapshot");
    let stored = snapshot
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| {
            let queued = record
                .routes
                .iter()
                .filter(|route| route.status == mfoundry::outbox::RouteStatus::Queued)
                .count();
            (record.header.control_id, record.disposition, queued)
        })
        .collect();
    drop(snapshot);
    drop(outbox);
    writer.join();
    stored
}

#[test]
fn batches_are_stored_whole_and_answered_per_message_or_with_one_ack() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("mfoundry.yaml"), CONFIG).expect("config");
    let server = common::Server::start(dir, "mfoundry.yaml", "data", &[("LISTEN_ADDR", "")]);
    let per_message = server.listener_addr("per-message");
    let one_ack = server.listener_addr("one-ack");
    let lenient = server.listener_addr("lenient");

    // Per message: a batch of ACKs mirroring the input; the refused one is AR, the others
    // are stored and queued.
    let mixed = batch(
        "B1",
        &[
            message("B1-1", "P1"),
            message("B1-2", ""),
            message("B1-3", "P3"),
        ],
        3,
    );
    let answer = exchange(&per_message, mixed.as_bytes());
    let fhs = segments(&answer, "FHS|");
    assert_eq!(fhs.len(), 1, "{answer}");
    assert!(
        fhs[0].starts_with("FHS|^~\\&|EHR|HUB|LAB|NORTH|") && fhs[0].ends_with("|F-B1"),
        "apps swapped, FHS-12 the received FHS-11: {answer}"
    );
    assert!(segments(&answer, "BHS|")[0].ends_with("|B1"), "{answer}");
    let msa: Vec<&str> = segments(&answer, "MSA|");
    assert_eq!(msa.len(), 3, "{answer}");
    assert!(msa[0].starts_with("MSA|AA|B1-1"), "{answer}");
    assert!(msa[1].starts_with("MSA|AR|B1-2"), "{answer}");
    assert!(msa[2].starts_with("MSA|AA|B1-3"), "{answer}");
    assert_eq!(segments(&answer, "BTS|"), ["BTS|3"], "{answer}");
    assert_eq!(segments(&answer, "FTS|"), ["FTS|1"], "{answer}");

    // One ACK: a refused message refuses the batch (AR, MSA-2 the batch's control id).
    let refused = batch("B2", &[message("B2-1", "P1"), message("B2-2", "")], 2);
    let answer = exchange(&one_ack, refused.as_bytes());
    assert_eq!(segments(&answer, "MSH|").len(), 1, "one ACK: {answer}");
    assert!(
        segments(&answer, "MSA|")[0].starts_with("MSA|AR|B2|"),
        "{answer}"
    );
    assert!(
        answer.contains("message 2 of the batch was refused"),
        "names the message: {answer}"
    );
    let whole = batch("B3", &[message("B3-1", "P1"), message("B3-2", "P2")], 2);
    let answer = exchange(&one_ack, whole.as_bytes());
    assert_eq!(segments(&answer, "MSA|"), ["MSA|AA|B3"], "{answer}");

    // Counts: refused by default, accepted where the listener says so (with a warning).
    let miscounted = batch("B4", &[message("B4-1", "P1")], 2);
    let answer = exchange(&per_message, miscounted.as_bytes());
    let msa = segments(&answer, "MSA|");
    assert!(msa[0].starts_with("MSA|AR|B4-1"), "{answer}");
    assert!(answer.contains("BTS-1 of batch 1 says \"2\""), "{answer}");
    let miscounted = batch("B5", &[message("B5-1", "P1")], 2);
    let answer = exchange(&lenient, miscounted.as_bytes());
    assert!(
        segments(&answer, "MSA|")[0].starts_with("MSA|AA|B5-1"),
        "{answer}"
    );

    // A retransmitted batch is answered from the store, nothing stored twice.
    let again = exchange(&one_ack, whole.as_bytes());
    assert_eq!(segments(&again, "MSA|"), ["MSA|AA|B3"], "{again}");

    // HTTP: the same batch of ACKs; 422 when one is refused, 200 when all are taken.
    let http = server.listener_addr("http");
    let mixed = batch("H1", &[message("H1-1", "P1"), message("H1-2", "")], 2);
    let answer = common::http::request(
        &http,
        "POST",
        "/hl7",
        &[("Content-Type", "application/hl7-v2")],
        mixed.as_bytes(),
    );
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(segments(&answer.body, "MSA|").len(), 2, "{}", answer.body);
    let fine = batch("H2", &[message("H2-1", "P1"), message("H2-2", "P2")], 2);
    let answer = common::http::request(
        &http,
        "POST",
        "/hl7",
        &[("Content-Type", "application/hl7-v2")],
        fine.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(segments(&answer.body, "BTS|"), ["BTS|2"], "{}", answer.body);
    server.stop();

    let stored = stored(dir, &["out"]);
    let find = |control: &str| {
        let found: Vec<_> = stored
            .iter()
            .filter(|(id, ..)| id == control)
            .cloned()
            .collect();
        assert!(found.len() <= 1, "{control} stored twice: {stored:?}");
        found.into_iter().next()
    };
    for accepted in [
        "B1-1", "B1-3", "B3-1", "B3-2", "B5-1", "H1-1", "H2-1", "H2-2",
    ] {
        let (_, disposition, queued) = find(accepted).unwrap_or_else(|| panic!("{accepted}"));
        assert_eq!(
            (disposition, queued),
            (Disposition::Routed, 1),
            "{accepted}"
        );
    }
    // Refused ones are recorded, never queued: the refused one itself, the whole refused
    // batch, the miscounted one.
    for refused in ["B1-2", "B2-1", "B2-2", "B4-1", "H1-2"] {
        let (_, disposition, queued) = find(refused).unwrap_or_else(|| panic!("{refused}"));
        assert_eq!(
            (disposition, queued),
            (Disposition::Rejected, 0),
            "{refused}"
        );
    }
}

#[test]
fn a_batch_that_cannot_be_read_is_refused_and_nothing_is_stored() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("mfoundry.yaml"), CONFIG).expect("config");
    let server = common::Server::start(dir, "mfoundry.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("per-message");
    let answer = exchange(
        &addr,
        b"BHS|^~\\&|LAB|NORTH|EHR|HUB|||||X1\rPID|1||P1\rBTS|0\r",
    );
    assert!(
        segments(&answer, "MSA|")[0].starts_with("MSA|AR|X1"),
        "{answer}"
    );
    assert!(
        answer.contains("segment 2 (PID) appears before any MSH"),
        "{answer}"
    );
    server.stop();
    assert!(stored(dir, &["out"]).is_empty());
}
