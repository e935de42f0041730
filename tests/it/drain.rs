//! Graceful drain as Kubernetes drives it: SIGTERM under load, `DRAIN_TIMEOUT`, and a second
//! signal, on the real binary.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use common::peer::{Answer, peer};
use mfoundry::outbox::{Outbox, OutboxOptions};

const SENDERS: usize = 4;

fn message(sender: usize, sequence: usize) -> (String, Vec<u8>) {
    let control_id = format!("D{sender}-{sequence}");
    let body = common::adt(&control_id, "2.5");
    (control_id, body)
}

fn terminate(server: &Server) {
    common::signal(&server.child, rustix::process::Signal::TERM);
}

/// Control ids stored in the data directory, and how many queue entries `connector` holds.
fn stored(data: &Path, connector: &str) -> (BTreeSet<String>, usize) {
    let mut options = OutboxOptions::new(data.join("mfoundry.redb"));
    options.dedup_window = None;
    let (outbox, writer) = Outbox::open_existing(options).expect("opens");
    let snapshot = outbox.snapshot().expect("snapshot");
    let ids = snapshot
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| record.header.control_id)
        .collect();
    let queued = snapshot
        .queue(outbox.connector_id(connector).expect("connector"))
        .expect("queue")
        .len();
    drop(snapshot);
    drop(outbox);
    writer.join();
    (ids, queued)
}

#[test]
fn sigterm_under_load_loses_no_acknowledged_message_and_exits_zero_in_time() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        directory.path().join("gw.yaml"),
        "connectors:\n  - name: archive\n    type: file\n    directory: ./out\n    paused: true\n",
    )
    .expect("yaml");
    let mut server = Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[("DRAIN_TIMEOUT", "5s")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|index| {
            let addr = server.addr.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || common::send_until_stopped(&addr, index, &stop, message))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let signalled = Instant::now();
    terminate(&server);
    let status = server.child.wait().expect("exits");
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let acknowledged: Vec<String> = senders
        .into_iter()
        .flat_map(|sender| sender.join().expect("sender"))
        .collect();
    assert!(status.success(), "exit 0 after a drain: {status:?}");
    assert!(took < Duration::from_secs(5 + 5), "the drain took {took:?}");
    assert!(
        acknowledged.len() > 20,
        "the load ran: {}",
        acknowledged.len()
    );
    let (ids, queued) = stored(&directory.path().join("data"), "archive");
    for id in &acknowledged {
        assert!(ids.contains(id), "{id} got AA but is not stored");
    }
    assert_eq!(queued, ids.len(), "every stored message is queued once");
}

#[test]
fn drain_timeout_cuts_a_hung_delivery_short_and_says_so_and_a_second_signal_exits_at_once() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let hung = runtime.block_on(peer(|_, _| Answer::Hang));
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    ack_timeout: 60s\n",
        hung.addr.port()
    );
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("gw.yaml"), &yaml).expect("yaml");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages/adt-a01.hl7");
    let example = example.display().to_string();

    // DRAIN_TIMEOUT ends the wait for a delivery that hangs; the message stays queued.
    let mut server = Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[("DRAIN_TIMEOUT", "1s")],
    );
    let (code, _, stderr) = common::run_binary(
        directory.path(),
        &["send", "--addr", &server.addr, &example],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while hung.received().is_empty() {
        assert!(Instant::now() < deadline, "the delivery never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    terminate(&server);
    let status = server.child.wait().expect("exits");
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(i32::from(mfoundry::app::EXIT_DRAIN_CUT_SHORT)),
        "a drain cut short by DRAIN_TIMEOUT has an exit code of its own: {status:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "DRAIN_TIMEOUT=1s, took {took:?}"
    );
    let logs = server.into_lines();
    assert!(
        logs.iter().any(
            |line| line.contains("DRAIN_TIMEOUT reached with deliveries in hand")
                && line.contains("\"connectors\":\"lab\"")
        ),
        "what was cut short is logged:\n{}",
        logs.join("\n")
    );
    let (_, queued) = stored(&directory.path().join("data"), "lab");
    assert_eq!(queued, 1, "the message cut short is still queued");

    // A second signal during a long drain exits at once.
    let mut server = Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[("DRAIN_TIMEOUT", "60s")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while hung.received().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the queued message was not tried again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&server);
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    terminate(&server);
    let status = server.child.wait().expect("exits");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the second signal was obeyed"
    );
    assert_eq!(status.code(), Some(130), "{status:?}");
    let (_, queued) = stored(&directory.path().join("data"), "lab");
    assert_eq!(queued, 1, "still queued after the hard exit");
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_keeps_its_figures_when_the_server_drains_under_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = mfoundry::app::RunningApp::start(common::config(data.path(), None, &[]))
        .await
        .expect("starts");
    let messages = 10_000_000;
    let args = common::bench_args(&app.local_addr().to_string(), 4, messages);
    // The bench on a thread and runtime of its own, as a separate process would be.
    let bench = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let mut out = Vec::new();
        let report = runtime.block_on(mfoundry::cli::run_bench(&args, &mut out));
        (report, String::from_utf8(out).expect("utf-8"))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.stats().frames_received < 200 {
        assert!(Instant::now() < deadline, "the bench is sending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(app.shutdown(Duration::from_secs(5)).await);
    let (report, printed) =
        tokio::task::spawn_blocking(move || bench.join().expect("bench thread"))
            .await
            .expect("join");
    let report = report.expect("a report, not an error");
    assert_eq!(report.not_aa, 0, "{printed}");
    assert_eq!(report.answered + report.failed, messages, "{printed}");
    assert!(report.answered >= 200, "{printed}");
    assert!(printed.contains("no answer"), "{printed}");
    // Every AA is stored.
    let stored = mfoundry::outbox::Outbox::open_existing(mfoundry::outbox::OutboxOptions::new(
        data.path().join("mfoundry.redb"),
    ))
    .map(|(outbox, writer)| {
        let count = common::stored_control_ids(&outbox).len();
        drop(outbox);
        writer.join();
        count
    })
    .expect("opens");
    // At most the frame in hand of each connection can be stored without its ACK arriving.
    assert!(
        (report.answered..=report.answered + 4).contains(&stored),
        "stored {stored}, answered {}",
        report.answered
    );
}
