//! Delivery as users meet it: the real app with real outputs (an MLLP peer played by the
//! test, a directory), FIFO across retries, the dead-letter queue, resets on bad ACKs,
//! outages, pause, restarts; and the retry schedule under paused time.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::peer::{Answer, peer, peer_on};
use mfoundry::delivery::{
    Deliver, DeliveryError, Envelope, RetryPolicy, WorkerSettings, spawn_worker,
};
use tokio::net::TcpListener;

fn mllp_yaml(port: u16, extra: &str) -> String {
    format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: 127.0.0.1\n    port: {port}\n    retry:\n      initial_delay: 5ms\n      max_delay: 20ms\n{extra}"
    )
}

/// Send messages M1..Mn over one connection; each must get AA.
async fn send(app: &common::TestApp, ids: impl IntoIterator<Item = String>) {
    let mut stream = common::connect(app).await;
    for id in ids {
        common::write(&mut stream, &common::framed(&common::adt(&id, "2.5"))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{id}");
    }
}

fn ids(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("M{n}")).collect()
}

use common::{eventually, eventually_within};

fn delivered(app: &common::TestApp, connector: &str) -> u64 {
    app.worker(connector)
        .stats()
        .delivered
        .load(Ordering::SeqCst)
}

/// The id the store gave the message with this control id.
fn id_of(app: &common::TestApp, control_id: &str) -> mfoundry::outbox::MessageId {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .find(|(_, record)| record.header.control_id == control_id)
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("{control_id} is stored"))
}

#[tokio::test]
async fn fifo_holds_while_one_message_is_retried() {
    // The peer answers AE to M3 five times.
    let peer = peer(|id, count| {
        if id == "M3" && count <= 5 {
            Answer::Ack("AE")
        } else {
            Answer::Ack("AA")
        }
    })
    .await;
    let app = common::start_with_yaml(Some(&mllp_yaml(peer.addr.port(), "")), &[]).await;
    send(&app, ids(1..=10)).await;
    eventually("10 delivered", || delivered(&app, "downstream") == 10).await;
    let mut expected = ids(1..=2);
    expected.extend(std::iter::repeat_n("M3".to_owned(), 6));
    expected.extend(ids(4..=10));
    assert_eq!(peer.received(), expected);
    assert_eq!(
        app.worker("downstream")
            .stats()
            .retries
            .load(Ordering::SeqCst),
        5
    );
    let snapshot = app.outbox().snapshot().expect("snapshot");
    let connector = app.outbox().connector_id("downstream").expect("id");
    assert!(snapshot.queue(connector).expect("queue").is_empty());
    let history = snapshot.deliveries(id_of(&app, "M3")).expect("history");
    assert_eq!(history[0].1.attempts, 6);
    assert!(
        history[0]
            .1
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("AE"),
        "{history:?}"
    );
    drop(snapshot);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn ar_goes_to_the_dead_letter_queue_after_one_attempt_and_the_queue_moves_on() {
    let peer = peer(|id, _| {
        if id == "M2" {
            Answer::Ack("AR")
        } else {
            Answer::Ack("AA")
        }
    })
    .await;
    let app = common::start_with_yaml(Some(&mllp_yaml(peer.addr.port(), "")), &[]).await;
    send(&app, ids(1..=3)).await;
    eventually("2 delivered", || delivered(&app, "downstream") == 2).await;
    eventually("1 dead-lettered", || {
        app.worker("downstream")
            .stats()
            .dead_lettered
            .load(Ordering::SeqCst)
            == 1
    })
    .await;
    assert_eq!(peer.received(), ids(1..=3));
    let connector = app.outbox().connector_id("downstream").expect("id");
    let dead = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .dead_letters(connector)
        .expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.message_id, id_of(&app, "M2"));
    assert_eq!(dead[0].1.attempts, 1);
    assert!(dead[0].1.reason.contains("AR"), "{:?}", dead[0].1.reason);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_wrong_msa_garbage_a_hang_or_a_close_never_counts_as_delivered() {
    let peer = peer(|id, count| match (id, count) {
        ("M1", 1) => Answer::WrongMsa,
        ("M1", 2) => Answer::Garbage,
        ("M1", 3) => Answer::Hang,
        ("M1", 4) => Answer::Close,
        _ => Answer::Ack("AA"),
    })
    .await;
    let yaml = mllp_yaml(peer.addr.port(), "    ack_timeout: 300ms\n");
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, ids(1..=2)).await;
    eventually("2 delivered", || delivered(&app, "downstream") == 2).await;
    let mut expected = vec!["M1".to_owned(); 5];
    expected.push("M2".to_owned());
    assert_eq!(
        peer.received(),
        expected,
        "M2 waits until M1 is really delivered"
    );
    assert_eq!(
        peer.connections.load(Ordering::SeqCst),
        5,
        "each bad answer closed the connection; the good ones reused the last"
    );
    let history = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .deliveries(id_of(&app, "M1"))
        .expect("history");
    assert_eq!(history[0].1.attempts, 5);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_downstream_that_comes_back_gets_the_backlog_in_order() {
    // Reserve a port with nothing listening on it.
    let reserved = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    drop(reserved);
    let app = common::start_with_yaml(Some(&mllp_yaml(port, "")), &[]).await;
    send(&app, ids(1..=5)).await;
    eventually("two failed attempts", || {
        app.worker("downstream")
            .stats()
            .retries
            .load(Ordering::SeqCst)
            >= 2
    })
    .await;
    assert_eq!(delivered(&app, "downstream"), 0);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind the port");
    let peer = peer_on(listener, Arc::new(|_: &str, _| Answer::Ack("AA"))).await;
    eventually("5 delivered", || delivered(&app, "downstream") == 5).await;
    assert_eq!(peer.received(), ids(1..=5));
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_peer_that_closes_idle_connections_costs_no_failed_attempt() {
    let downstream = peer(|_, _| Answer::AckThenClose("AA")).await;
    let app = common::start_with_yaml(Some(&mllp_yaml(downstream.addr.port(), "")), &[]).await;
    for (index, id) in ids(1..=3).into_iter().enumerate() {
        send(&app, [id]).await;
        eventually("delivered", || {
            delivered(&app, "downstream") == index as u64 + 1
        })
        .await;
        // Idle long enough for the peer's close to arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(downstream.received(), ids(1..=3), "each sent once");
    let retries = app
        .worker("downstream")
        .stats()
        .retries
        .load(Ordering::SeqCst);
    assert_eq!(
        retries, 0,
        "a closed idle connection is replaced, not failed on"
    );
    assert_eq!(downstream.connections.load(Ordering::SeqCst), 3);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_hung_connector_does_not_hold_up_the_others() {
    let stuck = peer(|_, _| Answer::Hang).await;
    let out = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "connectors:\n  - name: stuck\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    ack_timeout: 30s\n  - name: files\n    type: file\n    directory: {}\n    filename: \"{{id}}-{{control_id}}.hl7\"\n",
        stuck.addr.port(),
        out.path().display()
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, ids(1..=20)).await;
    eventually("20 files", || delivered(&app, "files") == 20).await;
    assert_eq!(delivered(&app, "stuck"), 0);
    assert_eq!(
        stuck.received(),
        vec!["M1".to_owned()],
        "the stuck peer holds M1"
    );
    for id in 1..=20 {
        let name = format!("{}-M{id}.hl7", id_of(&app, &format!("M{id}")));
        let body = std::fs::read(out.path().join(name)).expect("file written");
        assert_eq!(
            body,
            common::adt(&format!("M{id}"), "2.5"),
            "the bytes as received"
        );
    }
    // Shutdown waits for the delivery in hand only up to the grace period.
    assert!(!app.shutdown(Duration::from_millis(300)).await);
}

/// Marks of quick deliveries may wait for the next ones (fewer commits), but never for a
/// send that hangs: with the 20th message unanswered, the 19 before it leave the queue
/// within a second, not after the ACK timeout.
#[tokio::test]
async fn delivered_marks_reach_the_store_while_the_next_send_hangs() {
    let downstream = peer(|control, _| {
        if control == "M20" {
            Answer::Hang
        } else {
            Answer::Ack("AA")
        }
    })
    .await;
    let yaml = mllp_yaml(
        downstream.addr.port(),
        "    ack_timeout: 60s
    paused: true
",
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, ids(1..=20)).await;
    app.worker("downstream").resume();
    eventually("nineteen delivered", || delivered(&app, "downstream") == 19).await;
    let connector = app.outbox().connector_id("downstream").expect("connector");
    eventually_within(
        Duration::from_secs(1),
        "nineteen marked in the store",
        || {
            app.outbox()
                .snapshot()
                .expect("snapshot")
                .queue(connector)
                .expect("queue")
                .len()
                == 1
        },
    )
    .await;
    assert_eq!(
        downstream.received().last().map(String::as_str),
        Some("M20")
    );
    // The hung send ends with its ACK timeout; no need to wait for it.
    drop(app);
}

#[tokio::test]
async fn pause_holds_delivery_and_resume_releases_it_in_order() {
    let out = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "connectors:\n  - name: files\n    type: file\n    paused: true\n    directory: {}\n    filename: \"{{id}}-{{control_id}}.hl7\"\n",
        out.path().display()
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    // More than one batch of files (64) waits.
    send(&app, ids(1..=100)).await;
    // An hour passes on the runtime's clock (every retry or interval timer would fire) and
    // the worker gets turns to run: a paused worker makes no attempt at all.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3600)).await;
    tokio::time::resume();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let worker = app.worker("files");
    let stats = worker.stats();
    assert_eq!(
        (
            stats.delivered.load(Ordering::SeqCst),
            stats.retries.load(Ordering::SeqCst),
            stats.dead_lettered.load(Ordering::SeqCst),
            stats.delivering.load(Ordering::SeqCst)
        ),
        (0, 0, 0, false),
        "no attempt while paused"
    );
    assert_eq!(std::fs::read_dir(out.path()).expect("dir").count(), 0);
    assert!(app.worker("files").is_paused());
    app.worker("files").resume();
    eventually("100 files", || delivered(&app, "files") == 100).await;
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .expect("dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = (1..=100)
        .map(|n| format!("{}-M{n}.hl7", id_of(&app, &format!("M{n}"))))
        .collect();
    expected.sort();
    assert_eq!(names, expected, "named by id, no temporary file left");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_restart_resumes_the_backlog_in_order() {
    let directory = tempfile::tempdir().expect("tempdir");
    let peer = peer(|_, _| Answer::Ack("AA")).await;
    let paused = mllp_yaml(peer.addr.port(), "    paused: true\n");
    let running = mllp_yaml(peer.addr.port(), "");
    let start = |yaml: String| {
        let config = common::config(directory.path(), Some(&yaml), &[]);
        async move {
            mfoundry::app::RunningApp::start(config)
                .await
                .expect("starts")
        }
    };
    let app = start(paused).await;
    let mut stream = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connect");
    for id in ids(1..=200) {
        common::write(&mut stream, &common::framed(&common::adt(&id, "2.5"))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA");
    }
    drop(stream);
    assert!(app.shutdown(Duration::from_secs(5)).await);
    assert!(peer.received().is_empty());

    let app = start(running).await;
    let worker = app.worker("downstream").expect("worker");
    eventually("200 delivered", || {
        worker.stats().delivered.load(Ordering::SeqCst) == 200
    })
    .await;
    assert_eq!(peer.received(), ids(1..=200));
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// An output that fails transiently a fixed number of times, recording when it was called.
struct Scripted {
    failures: u32,
    calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    /// Told of every call, so a paused-time test can wait without timers of its own (a
    /// pending timer would let paused time run on while the worker waits for a commit).
    called: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Deliver for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn deliver(&mut self, _envelope: &Envelope) -> Result<(), DeliveryError> {
        let mut calls = self.calls.lock().expect("lock");
        calls.push(tokio::time::Instant::now());
        let _ = self.called.send(());
        if calls.len() as u32 <= self.failures {
            Err(DeliveryError::transient("busy"))
        } else {
            Ok(())
        }
    }
}

/// Start one worker over an in-memory outbox holding one message for connector "c".
async fn scripted_worker(
    failures: u32,
    retry: RetryPolicy,
) -> (
    mfoundry::delivery::WorkerControl,
    Arc<Mutex<Vec<tokio::time::Instant>>>,
    mfoundry::outbox::Outbox,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    scripted_worker_with(failures, retry, 1, None).await
}

/// Like [`scripted_worker`], with `messages` queued and an optional `min_interval`.
async fn scripted_worker_with(
    failures: u32,
    retry: RetryPolicy,
    messages: usize,
    min_interval: Option<Duration>,
) -> (
    mfoundry::delivery::WorkerControl,
    Arc<Mutex<Vec<tokio::time::Instant>>>,
    mfoundry::outbox::Outbox,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let options =
        mfoundry::outbox::OutboxOptions::with_storage(common::MemoryDisk::default().storage());
    let (outbox, _writer) =
        mfoundry::outbox::Outbox::open(options, &["c".to_owned()]).expect("opens");
    let connector = outbox.connector_id("c").expect("id");
    let record = mfoundry::outbox::MessageRecord {
        received_at_micros: 1,
        peer: "127.0.0.1:1".to_owned(),
        listener: "mllp".to_owned(),
        header: Default::default(),
        disposition: mfoundry::outbox::Disposition::Routed,
        reason: None,
        routes: vec![mfoundry::outbox::Route {
            connector,
            status: mfoundry::outbox::RouteStatus::Queued,
        }],
        ack_code: "AA".to_owned(),
        body_len: 3,
        ack: None,
        dedup_key: None,
        body_inline: false,
        config: None,
    };
    for _ in 0..messages {
        outbox
            .append(mfoundry::outbox::NewMessage {
                record: record.clone(),
                body: bytes::Bytes::from_static(b"MSH"),
                dedup_key: None,
                tls_identity: None,
                copies: Vec::new(),
                order_keys: Vec::new(),
                patient: Vec::new(),
                object: None,
                spool: None,
            })
            .await
            .expect("append");
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (called, called_rx) = tokio::sync::mpsc::unbounded_channel();
    let tracker = tokio_util::task::TaskTracker::new();
    let control = spawn_worker(
        WorkerSettings {
            name: Arc::from("c"),
            connector,
            retry,
            min_interval,
            paused: false,
            default_charset: mfoundry::hl7::Charset::UTF_8,
            continues: None,
        },
        Scripted {
            failures,
            calls: Arc::clone(&calls),
            called,
        },
        outbox.clone(),
        tokio_util::sync::CancellationToken::new(),
        &tracker,
    );
    (control, calls, outbox, called_rx)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_follow_the_configured_backoff() {
    let policy = RetryPolicy {
        initial_delay: Duration::from_secs(10),
        multiplier: 2.0,
        max_delay: Duration::from_secs(40),
        max_attempts: 0,
        jitter: false,
    };
    let (_control, calls, _outbox, mut called) = scripted_worker(4, policy).await;
    for _ in 0..5 {
        called.recv().await.expect("worker calls the output");
    }
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 5);
    let gaps: Vec<f64> = calls
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_secs_f64())
        .collect();
    // The wait is computed from the stored next-attempt time (wall clock), so the real time
    // a commit takes comes off it: allow a second less, never more.
    for (gap, expected) in gaps.iter().zip([10.0, 20.0, 40.0, 40.0]) {
        assert!(
            (expected - 1.0..=expected + 0.01).contains(gap),
            "gaps {gaps:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn pause_and_resume_signals_do_not_cut_a_backoff_short() {
    let policy = RetryPolicy {
        initial_delay: Duration::from_secs(10),
        multiplier: 1.0,
        max_delay: Duration::from_secs(10),
        max_attempts: 0,
        jitter: false,
    };
    let (control, calls, _outbox, mut called) = scripted_worker(1, policy).await;
    called.recv().await.expect("first attempt");
    let first = calls.lock().expect("lock")[0];
    // A resume of a running worker, then a pause and a resume, while it waits to retry.
    tokio::time::sleep(Duration::from_secs(1)).await;
    control.resume();
    tokio::time::sleep(Duration::from_secs(1)).await;
    control.pause();
    control.resume();
    called.recv().await.expect("second attempt");
    let second = calls.lock().expect("lock")[1];
    let gap = (second - first).as_secs_f64();
    assert!(
        (9.0..=10.01).contains(&gap),
        "retried after {gap}s, not 10s"
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_go_to_the_dead_letter_queue_with_the_last_error() {
    let policy = RetryPolicy {
        initial_delay: Duration::from_secs(1),
        multiplier: 2.0,
        max_delay: Duration::from_secs(60),
        max_attempts: 3,
        jitter: true,
    };
    let (control, calls, outbox, _called) = scripted_worker(u32::MAX, policy).await;
    eventually_within(Duration::from_secs(600), "dead-lettered", || {
        control.stats().dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(calls.lock().expect("lock").len(), 3);
    let connector = outbox.connector_id("c").expect("id");
    let dead = outbox
        .snapshot()
        .expect("snapshot")
        .dead_letters(connector)
        .expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.attempts, 3);
    assert_eq!(
        dead[0].1.reason,
        "gave up after 3 attempts; last error: busy"
    );
    assert!(
        outbox
            .snapshot()
            .expect("snapshot")
            .queue(connector)
            .expect("queue")
            .is_empty()
    );
}

#[tokio::test]
async fn retention_removes_delivered_messages_and_keeps_dead_letters() {
    let out = tempfile::tempdir().expect("tempdir");
    let refusing = peer(|id, _| {
        if id == "M2" {
            Answer::Ack("AR")
        } else {
            Answer::Ack("AA")
        }
    })
    .await;
    let yaml = format!(
        "connectors:\n  - name: files\n    type: file\n    directory: {}\n    filename: \"{{id}}.hl7\"\n  - name: downstream\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n",
        out.path().display(),
        refusing.addr.port()
    );
    let app = common::start_with_yaml(Some(&yaml), &[("RETENTION", "1s")]).await;
    send(&app, ids(1..=3)).await;
    eventually("retention removed the delivered messages", || {
        let snapshot = app.outbox().snapshot().expect("snapshot");
        snapshot.message_count().expect("count") == 1
    })
    .await;
    let snapshot = app.outbox().snapshot().expect("snapshot");
    let left: Vec<String> = snapshot
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| record.header.control_id)
        .collect();
    assert_eq!(
        left,
        vec!["M2"],
        "the dead-lettered message stays for replay"
    );
    assert!(snapshot.body(id_of(&app, "M2")).expect("body").is_some());
    drop(snapshot);
    assert_eq!(
        std::fs::read_dir(out.path()).expect("dir").count(),
        3,
        "files stay: they are the destination's"
    );
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(start_paused = true)]
async fn min_interval_spaces_the_sends() {
    let (_control, calls, _outbox, mut called) =
        scripted_worker_with(0, RetryPolicy::default(), 4, Some(Duration::from_secs(3))).await;
    for _ in 0..4 {
        called.recv().await.expect("worker calls the output");
    }
    let calls = calls.lock().expect("lock").clone();
    let gaps: Vec<f64> = calls
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_secs_f64())
        .collect();
    assert!(
        gaps.iter().all(|gap| (3.0..3.5).contains(gap)),
        "each send waits min_interval after the previous one: {gaps:?}"
    );
}

/// A connector that recovers after failures says so once, at info, with how long it failed
/// and the backlog it now drains (counts only).
#[test]
fn a_recovery_is_logged_once_with_how_long_it_failed() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The first three attempts find the connection closed; then AA.
    let peer = runtime.block_on(peer(|_, seen| {
        if seen <= 3 {
            Answer::Close
        } else {
            Answer::Ack("AA")
        }
    }));
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "connectors:\n  - name: ehr\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    retry:\n      initial_delay: 20ms\n      max_delay: 50ms\n      max_attempts: 10\n",
            peer.addr.port()
        ),
    )
    .expect("config");
    let server = common::Server::start(dir, "gw.yaml", "data", &[]);
    common::send_text(
        dir,
        &server.addr,
        "MSH|^~\\&|A|B|C|D|20261206||ADT^A08|REC1|P|2.5.1\rPID|1||7\r",
    );
    server.wait_for_log("connector recovered", 1);
    let lines = server.stop_and_collect();
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("connector recovered")),
        "logged once"
    );
    assert_eq!(peer.received().iter().filter(|id| *id == "REC1").count(), 4);
}
