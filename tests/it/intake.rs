//! Durable intake through the real listener: rules, routing, storage before the ACK, dedup.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{connect, expect_ack, field, framed, write};
use mfoundry::app::{AppOptions, RunningApp};
use mfoundry::hl7::{AckStamp, AckStamper};
use mfoundry::outbox::{Disposition, RouteStatus};

// Delivery is paused: these tests look at what intake queued.
const YAML: &str = r#"
connectors:
  - name: everything
    type: file
    directory: ./out
    paused: true
  - name: adt
    type: http
    url: http://127.0.0.1:9/
    filter: msh.msg_type == "ADT"
  - name: female
    type: postgres
    filter: pid.?sex.orValue("") == "F"
validation:
  rules:
    - name: require-patient-id
      expression: pid.id != ""
      message: PID-3 must carry a patient id
    - name: no-test-patients
      expression: '!pid.family.startsWith("ZZTEST")'
      message: test patients are not accepted here
"#;

fn message(control_id: &str, msg_type: &str, pid: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LAB|FAC|HUB|HFAC|20261122080000||{msg_type}^A01|{control_id}|P|2.5.1\r{pid}\r"
    )
    .into_bytes()
}

/// (connector name, status) of one stored message, by control id.
fn routes_of(
    app: &common::TestApp,
    control_id: &str,
) -> (
    Disposition,
    BTreeSet<(String, RouteStatus)>,
    mfoundry::outbox::MessageId,
) {
    let snapshot = app.outbox().snapshot().expect("snapshot");
    let names: Vec<(String, mfoundry::outbox::ConnectorId)> =
        snapshot.connectors().expect("connectors");
    let (id, record) = snapshot
        .messages()
        .expect("messages")
        .into_iter()
        .find(|(_, record)| record.header.control_id == control_id)
        .unwrap_or_else(|| panic!("{control_id} is stored"));
    let routes = record
        .routes
        .iter()
        .map(|route| {
            let name = names
                .iter()
                .find(|(_, connector)| *connector == route.connector)
                .map(|(name, _)| name.clone())
                .expect("known connector");
            (name, route.status)
        })
        .collect();
    (record.disposition, routes, id)
}

fn queued_ids(app: &common::TestApp, connector: &str) -> Vec<mfoundry::outbox::MessageId> {
    let snapshot = app.outbox().snapshot().expect("snapshot");
    let id = app.outbox().connector_id(connector).expect("connector");
    snapshot
        .queue(id)
        .expect("queue")
        .into_iter()
        .map(|(_, entry)| entry.message_id)
        .collect()
}

#[tokio::test]
async fn accepted_messages_are_stored_with_the_routes_their_filters_chose() {
    let app = common::start_with_yaml(Some(YAML), &[]).await;
    let mut stream = connect(&app).await;
    let sent = message("R1", "ADT", "PID|1||123^^^H^MR||DOE^JANE||19800101|F");
    write(&mut stream, &framed(&sent)).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
    let (disposition, routes, id) = routes_of(&app, "R1");
    assert_eq!(disposition, Disposition::Routed);
    let expected: BTreeSet<(String, RouteStatus)> = [
        ("everything", RouteStatus::Queued),
        ("adt", RouteStatus::Queued),
        ("female", RouteStatus::Queued),
    ]
    .into_iter()
    .map(|(name, status)| (name.to_owned(), status))
    .collect();
    assert_eq!(routes, expected);
    let snapshot = app.outbox().snapshot().expect("snapshot");
    assert_eq!(
        snapshot.body(id).expect("body").as_deref(),
        Some(sent.as_slice())
    );

    write(
        &mut stream,
        &framed(&message(
            "R2",
            "ORU",
            "PID|1||124^^^H^MR||DOE^JOHN||19800101|M",
        )),
    )
    .await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
    let (_, routes, second) = routes_of(&app, "R2");
    assert!(routes.contains(&("adt".to_owned(), RouteStatus::Filtered)));
    assert!(routes.contains(&("female".to_owned(), RouteStatus::Filtered)));
    assert_eq!(queued_ids(&app, "everything"), vec![id, second]);
    assert_eq!(queued_ids(&app, "adt"), vec![id]);
}

#[tokio::test]
async fn a_failing_rule_answers_ar_naming_the_rule_and_is_recorded() {
    let app = common::start_with_yaml(Some(YAML), &[]).await;
    let mut stream = connect(&app).await;
    write(
        &mut stream,
        &framed(&message("BAD1", "ADT", "PID|1||||ZZTEST^ONE")),
    )
    .await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "MSA", 2), "BAD1");
    // The first rule is false (PID-3 empty) and answers; the second is not reached.
    assert_eq!(field(&ack, "ERR", 5), "require-patient-id");
    assert_eq!(
        field(&ack, "ERR", 8),
        "PID-3 must carry a patient id (validation rule require-patient-id)"
    );
    let (disposition, routes, _) = routes_of(&app, "BAD1");
    assert_eq!(disposition, Disposition::Rejected);
    assert!(routes.is_empty(), "a rejected message is queued nowhere");
    assert!(queued_ids(&app, "everything").is_empty());
}

#[tokio::test]
async fn a_message_without_the_segment_a_rule_reads_is_judged_by_the_rule() {
    let app = common::start_with_yaml(Some(YAML), &[]).await;
    let mut stream = connect(&app).await;
    // No PID segment: `pid.id` is "" (not a missing key), so the rule is simply false.
    write(&mut stream, &framed(&message("NOPID", "ADT", "EVN|A01"))).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "ERR", 5), "require-patient-id");
    assert_eq!(
        field(&ack, "ERR", 8),
        "PID-3 must carry a patient id (validation rule require-patient-id)"
    );
    let (disposition, routes, _) = routes_of(&app, "NOPID");
    assert_eq!(disposition, Disposition::Rejected);
    assert!(routes.is_empty());
}

#[tokio::test]
async fn an_expression_that_cannot_be_evaluated_answers_ar_with_207_and_keeps_the_message() {
    let yaml = r#"
connectors:
  - name: everything
    type: file
    directory: ./out
    paused: true
validation:
  rules:
    - name: born-after-1900
      expression: int(pid.dob) > 19000101
"#;
    let app = common::start_with_yaml(Some(yaml), &[]).await;
    let mut stream = connect(&app).await;
    // No PID segment: PID-7 is "", which int() cannot convert.
    write(&mut stream, &framed(&message("NODOB", "ADT", "EVN|A01"))).await;
    let ack = expect_ack(&mut stream).await;
    // AR, never AE: the same message gets the same answer on every retry (ADR 0010).
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert!(
        field(&ack, "ERR", 3).starts_with("207"),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    assert!(
        field(&ack, "ERR", 8).contains("born-after-1900"),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    assert!(field(&ack, "ERR", 7).starts_with("the expression failed at run time"));
    let (disposition, routes, _) = routes_of(&app, "NODOB");
    assert_eq!(disposition, Disposition::Error);
    assert!(routes.is_empty());
}

#[tokio::test]
async fn a_message_no_connector_takes_is_stored_as_unrouted() {
    let yaml = r#"
connectors:
  - name: adt
    type: http
    url: http://127.0.0.1:9/
    filter: msh.msg_type == "ADT"
"#;
    let app = common::start_with_yaml(Some(yaml), &[]).await;
    let mut stream = connect(&app).await;
    write(&mut stream, &framed(&message("U1", "ORU", "PID|1||1"))).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
    let (disposition, routes, _) = routes_of(&app, "U1");
    assert_eq!(disposition, Disposition::Unrouted);
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        vec![("adt".to_owned(), RouteStatus::Filtered)]
    );
}

/// Stamps that differ every time, to tell a replayed ACK from a new one.
#[derive(Debug, Default)]
struct CountingStamper(AtomicU64);

impl AckStamper for CountingStamper {
    fn stamp(&self) -> AckStamp {
        let count = self.0.fetch_add(1, Ordering::SeqCst);
        AckStamp {
            timestamp: "20261122083000+0000".to_owned(),
            control_id: format!("ACK{count:05}"),
        }
    }
}

/// Start on `directory` with ACK stamps that differ every time, and connect to it.
async fn start_counting(directory: &std::path::Path) -> (RunningApp, tokio::net::TcpStream) {
    let config = common::config(directory, Some(YAML), &[]);
    let options = AppOptions {
        stamper: Some(Arc::new(CountingStamper::default())),
        storage: None,
        environment: None,
    };
    let app = RunningApp::start_with(config, options)
        .await
        .expect("starts");
    let stream = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connects");
    (app, stream)
}

#[tokio::test]
async fn a_resent_identical_frame_gets_the_original_ack_and_one_queue_entry() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (app, mut stream) = start_counting(directory.path()).await;
    let frame = framed(&message("DUP1", "ADT", "PID|1||5^^^H^MR||DOE^J||1|F"));
    write(&mut stream, &frame).await;
    let first = expect_ack(&mut stream).await;
    write(&mut stream, &frame).await;
    let second = expect_ack(&mut stream).await;
    assert_eq!(first, second, "the original ACK (same MSH-10) is replayed");
    let changed = framed(&message("DUP1", "ADT", "PID|1||5^^^H^MR||DOE^J||1|M"));
    write(&mut stream, &changed).await;
    let third = expect_ack(&mut stream).await;
    assert_ne!(
        field(&third, "MSH", 10),
        field(&first, "MSH", 10),
        "a different frame is new"
    );
    let snapshot = app.outbox().snapshot().expect("snapshot");
    let everything = app.outbox().connector_id("everything").expect("id");
    assert_eq!(snapshot.queue(everything).expect("queue").len(), 2);
    assert_eq!(snapshot.message_count().expect("count"), 2);
    drop(snapshot);
    assert!(app.shutdown(Duration::from_secs(5)).await);

    // After a restart the original ACK is still replayed.
    let (app, mut stream) = start_counting(directory.path()).await;
    write(&mut stream, &frame).await;
    assert_eq!(expect_ack(&mut stream).await, first);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// The app with `YAML`, counting ACK stamps, on an in-memory store whose faults the test sets.
async fn start_on(disk: &common::MemoryDisk) -> (RunningApp, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("tempdir");
    let config = common::config(directory.path(), Some(YAML), &[]);
    let options = AppOptions {
        stamper: Some(Arc::new(CountingStamper::default())),
        storage: Some(disk.storage()),
        environment: None,
    };
    let app = RunningApp::start_with(config, options)
        .await
        .expect("starts");
    (app, directory)
}

/// `start_on`, then one connection on which message `OK1` got `AA` (the store works).
async fn start_on_with_one_accepted(
    disk: &common::MemoryDisk,
) -> (RunningApp, tempfile::TempDir, tokio::net::TcpStream) {
    let (app, directory) = start_on(disk).await;
    let mut stream = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connects");
    write(
        &mut stream,
        &framed(&message("OK1", "ADT", "PID|1||1^^^H^MR||A^B||1|F")),
    )
    .await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
    (app, directory, stream)
}

#[tokio::test]
async fn no_aa_is_sent_when_the_commit_fails() {
    let disk = common::MemoryDisk::default();
    let (app, _directory, mut stream) = start_on_with_one_accepted(&disk).await;

    disk.fail_sync.store(true, Ordering::SeqCst);
    for index in 0..5 {
        let control_id = format!("FAIL{index}");
        write(
            &mut stream,
            &framed(&message(&control_id, "ADT", "PID|1||1^^^H^MR||A^B||1|F")),
        )
        .await;
        let ack = expect_ack(&mut stream).await;
        assert_eq!(field(&ack, "MSA", 1), "AE", "no AA while commits fail");
        assert_eq!(field(&ack, "MSA", 2), control_id);
        assert_eq!(
            field(&ack, "ERR", 3),
            "207^Application internal error^HL70357"
        );
        assert!(field(&ack, "ERR", 8).contains("could not be stored"));
    }

    // A sender that asked for no ACK at all (MSH-15/16 NE) is not left believing the message
    // was taken: its connection is closed.
    let mut quiet = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connects");
    let silent = b"MSH|^~\\&|LAB|FAC|HUB|HFAC|20261122080000||ADT^A01|QUIET|P|2.5.1|||NE|NE\rPID|1||1^^^H^MR||A^B||1|F\r";
    write(&mut quiet, &framed(silent)).await;
    common::expect_closed_silently(&mut quiet, Duration::from_secs(5)).await;

    disk.fail_sync.store(false, Ordering::SeqCst);
    let mut accepted = false;
    for attempt in 0..20 {
        let control_id = format!("AFTER{attempt}");
        write(
            &mut stream,
            &framed(&message(&control_id, "ADT", "PID|1||1^^^H^MR||A^B||1|F")),
        )
        .await;
        if field(&expect_ack(&mut stream).await, "MSA", 1) == "AA" {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "intake recovers once the disk does");
    let stored = common::stored_control_ids(app.outbox());
    // Every AA'd message is stored. A message that got AE may still be on disk (its pages were
    // written before the fsync failed); that is a possible duplicate, never a loss, and the
    // retransmit index rebuilt at the reopen answers an identical resend with its AA.
    assert!(stored.contains(&"OK1".to_owned()));
    assert!(
        stored.iter().any(|id| id.starts_with("AFTER")),
        "{stored:?}"
    );
}

/// A running gateway, a probe directory, and `bench` options for one connection sending
/// `messages` to it with the probe on.
async fn bench_with_probe(
    messages: usize,
) -> (common::TestApp, tempfile::TempDir, mfoundry::cli::BenchArgs) {
    let app = common::start(&[]).await;
    let probe_dir = tempfile::tempdir().expect("tempdir");
    let mut args = common::bench_args(&app.local_addr().to_string(), 1, messages);
    args.no_probe = false;
    args.probe_dir = probe_dir.path().to_path_buf();
    (app, probe_dir, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_one_connection_compares_each_round_with_a_floor_taken_just_before() {
    let (app, probe_dir, mut args) = bench_with_probe(25).await;
    let mut out = Vec::new();
    let report = mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        (report.answered, report.not_aa, report.failed),
        (25, 0, 0),
        "{out}"
    );
    let ratio = report.floor_ratio().expect("a ratio for one connection");
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio}\n{out}");
    assert!(
        out.contains("ACK p50 ÷ floor, per round (10 rounds, each after 30 bare commits)"),
        "{out}"
    );
    // Every message was sent, once, with its own control id.
    assert_eq!(app.outbox().stats().records.load(Ordering::Relaxed), 25);
    // The probe cleans up after itself.
    assert_eq!(std::fs::read_dir(probe_dir.path()).expect("dir").count(), 0);

    // More connections: the probe runs once, before the load; no per-round ratio.
    args.connections = 3;
    args.messages = 9;
    let mut out = Vec::new();
    let report = mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    assert_eq!((report.answered, report.floor_ratio()), (9, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_json_prints_one_object_with_the_figures_of_the_text() {
    let (_app, _probe_dir, mut args) = bench_with_probe(20).await;
    args.json = true;
    let mut out = Vec::new();
    let report = mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    let text = String::from_utf8(out.clone()).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    let json: serde_json::Value = serde_json::from_slice(&out).expect("only one JSON object");
    assert_eq!(json["connections"], 1, "{text}");
    assert_eq!(json["answered"], 20, "{text}");
    assert_eq!(json["not_aa"], 0, "{text}");
    assert_eq!(json["no_answer"], 0, "{text}");
    assert_eq!(json["message_bytes"], 1550, "{text}");
    let number = |value: &serde_json::Value| value.as_f64().expect("a number");
    // serde_json's default float parsing may be off by one unit in the last place.
    let same = |json: &serde_json::Value, value: f64| {
        (number(json) - value).abs() <= 1e-9 * value.abs().max(1.0)
    };
    assert!(
        same(&json["ack_latency_us"]["p50"], report.latency.p50),
        "{text}"
    );
    assert!(
        number(&json["ack_latency_us"]["p50"]) <= number(&json["ack_latency_us"]["p999"]),
        "{text}"
    );
    assert!(
        same(&json["throughput_per_sec"], report.throughput()),
        "{text}"
    );
    let probe = report.probe.expect("a probe");
    assert!(
        same(&json["probe"]["redb_commit_p50_us"], probe.redb_commit),
        "{text}"
    );
    assert!(number(&json["probe"]["floor_us"]) > 0.0, "{text}");
    let ratios = &json["ack_p50_over_floor"];
    assert_eq!(ratios["rounds"], 10, "{text}");
    assert!(
        same(&ratios["median"], report.floor_ratio().expect("ratio")),
        "{text}"
    );
    assert!(number(&ratios["min"]) <= number(&ratios["max"]), "{text}");

    // Without the probe, and with several connections: those parts are null.
    args.no_probe = true;
    args.connections = 2;
    let mut out = Vec::new();
    mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    let json: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    assert!(json["probe"].is_null() && json["ack_p50_over_floor"].is_null());
    assert_eq!(json["answered"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_answers_ae_and_tells_the_app_to_exit() {
    let disk = common::MemoryDisk::default();
    let (app, _directory, mut stream) = start_on_with_one_accepted(&disk).await;
    let patient = "PID|1||1^^^H^MR||A^B||1|F";

    disk.panic_sync.store(true, Ordering::SeqCst);
    for control_id in ["PANIC1", "PANIC2"] {
        write(&mut stream, &framed(&message(control_id, "ADT", patient))).await;
        let ack = expect_ack(&mut stream).await;
        assert_eq!(field(&ack, "MSA", 1), "AE", "no AA from a failed writer");
        assert_eq!(field(&ack, "MSA", 2), control_id);
    }
    // What `mfoundry serve` waits on next to the signals: it drains and exits non-zero.
    tokio::time::timeout(Duration::from_secs(10), app.outbox().writer_failed())
        .await
        .expect("the failure is reported");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// `bench --drain`: waits until each named connector delivered what the load queued for it,
/// and reports its rate next to the intake rate and its delivery latency; a connector that
/// cannot deliver (paused) is reported as not drained after the patience; an unknown name is
/// refused naming the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drain_reports_delivery_next_to_intake() {
    let yaml = "connectors:\n  - name: files\n    type: file\n    directory: ${DATA_DIR}/out\n  - name: held\n    type: file\n    directory: ${DATA_DIR}/held\n    paused: true\n  - name: adt-only\n    type: file\n    directory: ${DATA_DIR}/adt\n    filter: msh.msg_type == \"ADT\"\n";
    let app = common::start_with_yaml(Some(yaml), &[]).await;
    let mut args = common::bench_args(&app.local_addr().to_string(), 2, 60);
    args.admin_addr = app.admin_url();
    args.data_dir = app.directory.path().to_path_buf();
    args.drain = vec!["files".to_owned(), "adt-only".to_owned()];
    args.json = true;
    let mut out = Vec::new();
    let report = mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    let files = &report.drain[0];
    assert_eq!(
        (files.queued, files.delivered, files.drained),
        (60, 60, true)
    );
    assert!(files.per_second > 0.0 && files.ratio_to_intake > 0.0);
    assert!(files.latency_ms.p50 <= files.latency_ms.p99);
    assert!(files.latency_ms.p99 <= files.latency_ms.max);
    assert_eq!(
        common::count_files(&app.directory.path().join("out")),
        60,
        "every message delivered when the bench says so"
    );
    let filtered = &report.drain[1];
    assert_eq!(
        (filtered.queued, filtered.delivered),
        (0, 0),
        "the ORU load is not for it"
    );
    let json: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    assert_eq!(json["drain"][0]["connector"], "files");
    assert_eq!(json["drain"][0]["delivered"], 60);

    args.drain = vec!["held".to_owned()];
    args.timeout = Duration::from_millis(200);
    args.json = false;
    let mut out = Vec::new();
    let report = mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    assert!(!report.drain[0].drained);
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.contains("drain held: 0 of 60 delivered"), "{text}");
    assert!(text.contains("NOT drained"), "{text}");

    args.drain = vec!["nowhere".to_owned()];
    let error = mfoundry::cli::run_bench(&args, &mut Vec::new())
        .await
        .expect_err("unknown connector");
    let error = format!("{error:#}");
    assert!(
        error.contains("--drain nowhere") && error.contains("files, held, adt-only"),
        "{error}"
    );
    assert!(app.shutdown(Duration::from_secs(10)).await);
}
