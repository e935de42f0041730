//! Configuration reload (SIGHUP, or the file changing): rules, filters, `order_by`,
//! transforms, tables, `tls_senders` and connectors take effect from the next message; a
//! file that does not load, or that changes what needs a restart (settings, listeners),
//! keeps the running configuration; every reload is in the audit trail with the file's
//! SHA-256.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mfoundry::app::Reloaded;
use mfoundry::outbox::RouteStatus;
use mfoundry::outbox::audit::AuditEvent;

const BEFORE: &str = r#"
connectors:
  - name: out
    type: file
    directory: ${DATA_DIR}/out
    filter: msh.msg_type == "ADT"
"#;

const AFTER: &str = r#"
connectors:
  - name: out
    type: file
    directory: ${DATA_DIR}/out
    filter: msh.msg_type == "ADT" || msh.msg_type == "ORU"
validation:
  rules:
    - name: no-immunizations
      expression: msh.msg_type != "VXU"
      message: immunizations go to the registry interface
"#;

fn message(kind: &str, control: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|EHR|H|HUB|H|20261206083000||{kind}|{control}|P|2.5.1\rPID|1||123^^^H^MR||DOE^JO\r"
    )
    .into_bytes()
}

async fn answer(app: &common::TestApp, kind: &str, control: &str) -> String {
    let mut stream = common::connect(app).await;
    common::write(&mut stream, &common::framed(&message(kind, control))).await;
    let reply = common::expect_ack(&mut stream).await;
    common::field(&reply, "MSA", 1)
}

/// Whether the stored message `control` was queued for `out` (else filtered).
fn queued(app: &common::TestApp, control: &str) -> bool {
    let messages = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages");
    let (_, record) = messages
        .into_iter()
        .find(|(_, record)| record.header.control_id == control)
        .unwrap_or_else(|| panic!("{control} stored"));
    record
        .routes
        .iter()
        .any(|route| route.status == RouteStatus::Queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_decides_the_next_message_and_a_bad_file_changes_nothing() {
    let app = common::start_with_yaml(Some(BEFORE), &[]).await;
    assert_eq!(answer(&app, "VXU^V04", "V1").await, "AA");
    assert_eq!(answer(&app, "ORU^R01", "O1").await, "AA");
    assert!(!queued(&app, "O1"), "the filter takes ADT only");

    std::fs::write(app.config_file(), AFTER).expect("write");
    assert_eq!(app.reload_config().await, Ok(Reloaded::Applied));
    assert_eq!(answer(&app, "VXU^V04", "V2").await, "AR", "the new rule");
    assert_eq!(answer(&app, "ORU^R01", "O2").await, "AA");
    assert!(queued(&app, "O2"), "the new filter");
    assert_eq!(
        app.reload_config().await,
        Ok(Reloaded::Applied),
        "the same file again answers the same (and is not audited twice, below)"
    );

    // A file that does not load: every problem, and the running configuration stays.
    std::fs::write(
        app.config_file(),
        AFTER.replace("msh.msg_type != \"VXU\"", "msh.msg_type != "),
    )
    .expect("write");
    let problems = app.reload_config().await.expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("no-immunizations")),
        "{problems:?}"
    );
    assert_eq!(answer(&app, "VXU^V04", "V3").await, "AR", "still the rule");

    // A change that needs a restart is refused whole, naming it.
    std::fs::write(app.config_file(), format!("dedup_window: 5m\n{AFTER}")).expect("write");
    let problems = app.reload_config().await.expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("the settings changed: that needs a restart")),
        "{problems:?}"
    );
    assert_eq!(answer(&app, "ORU^R01", "O3").await, "AA");
    assert!(queued(&app, "O3"), "still the reloaded filter");

    // Every reload that read a new file is in the audit trail, applied or not.
    let records = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .audit_records(None, 1000)
        .expect("audit");
    let reloads: Vec<String> = records
        .into_iter()
        .filter_map(|(_, record)| match record.event {
            AuditEvent::Admin {
                action, outcome, ..
            } if action == "config.reload" => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(reloads.len(), 3, "{reloads:?}");
    assert!(reloads[0].starts_with("applied; sha256 "), "{reloads:?}");
    assert!(reloads[1].starts_with("refused ("), "{reloads:?}");
    assert!(
        reloads[2].starts_with("refused (1 problems)"),
        "{reloads:?}"
    );
    assert!(app.shutdown(Duration::from_secs(10)).await);
}

/// SIGHUP under a steady load: the new rule takes effect, no answer is anything but AA for
/// messages it passes, and no connection is dropped; a connector the new file removes is
/// shown as orphaned with what it still holds.
#[test]
fn sighup_reloads_under_load_without_a_dropped_connection() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let held =
        "  - name: held\n    type: file\n    directory: ${DATA_DIR}/held\n    paused: true\n";
    std::fs::write(dir.join("mfoundry.yaml"), format!("{BEFORE}{held}")).expect("config");
    let server = common::Server::start(dir, "mfoundry.yaml", "data", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (addr, stop) = (server.addr.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            common::send_until_stopped(&addr, 0, &stop, |_, sequence| {
                let control = format!("L{sequence}");
                (control.clone(), message("ADT^A08", &control))
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("mfoundry.yaml"), AFTER).expect("config");
    common::signal(&server.child, rustix::process::Signal::HUP);
    server.wait_for_log("configuration reloaded", 1);
    std::thread::sleep(Duration::from_millis(300));
    // Still sending on its first connection: it was not dropped (the sender ends at the
    // first connection that breaks, and panics at any answer but AA).
    assert!(
        !sender.is_finished(),
        "the load's connection survived the reload"
    );
    stop.store(true, Ordering::Relaxed);
    let acknowledged = sender.join().expect("sender");
    let (code, stdout, _) = {
        let path = dir.join("vxu.hl7");
        std::fs::write(&path, message("VXU^V04", "V9")).expect("message");
        common::run_binary(dir, &["send", "--addr", &server.addr, "vxu.hl7"], &[])
    };
    assert_eq!(code, 1, "refused by the reloaded rule: {stdout}");
    assert!(stdout.contains("\tAR\t"), "{stdout}");
    // A broken file: refused, counted and shown by `stats`; the running configuration stays.
    std::fs::write(dir.join("mfoundry.yaml"), "connectors: [").expect("config");
    common::signal(&server.child, rustix::process::Signal::HUP);
    server.wait_for_log(
        "configuration reload refused; the running configuration stays",
        1,
    );
    let admin = server.admin_addr.clone().expect("admin API");
    let (code, stdout, stderr) = common::run_binary(
        dir,
        &["stats", "--admin-addr", &admin, "--data-dir", "data"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("configuration: 1 reloads, 1 refused (the last at "),
        "{stdout}"
    );
    let orphan = stdout
        .lines()
        .find(|line| line.starts_with("held "))
        .unwrap_or_else(|| panic!("the removed connector is listed: {stdout}"));
    assert!(orphan.contains("orphaned"), "{orphan}");
    let json = server.stats_json(dir);
    let orphaned = &json["orphaned_connectors"][0];
    assert_eq!(orphaned["name"], "held");
    assert!(
        orphaned["queue_depth"].as_u64().expect("depth") > 0,
        "every message before the reload is still queued for it: {orphaned}"
    );
    server.stop();
    assert!(
        acknowledged.len() > 50,
        "the load ran: {}",
        acknowledged.len()
    );
}

fn peer_connector(name: &str, peer: &common::peer::Peer) -> String {
    format!(
        "  - name: {name}\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    retry:\n      initial_delay: 5ms\n      max_delay: 20ms\n",
        peer.addr.port()
    )
}

/// The stored messages, in id order: control id, configuration hash, and the connectors
/// each was queued for.
fn decided(app: &common::TestApp) -> Vec<(String, Option<[u8; 8]>, Vec<u32>)> {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| {
            let queued = record
                .routes
                .iter()
                .filter(|route| route.status == RouteStatus::Queued)
                .map(|route| route.connector.0)
                .collect();
            (record.header.control_id, record.config, queued)
        })
        .collect()
}

/// Received by a peer, each once, in the order first received (a delivery whose ACK was
/// cut short may come again).
fn once_each(received: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    received
        .into_iter()
        .filter(|control| seen.insert(control.clone()))
        .collect()
}

/// Connectors added, changed and removed under a steady load: every answer AA on one
/// connection, the unchanged connector keeps its connection, the changed one continues in
/// order on its new output, the removed one keeps what it had not delivered (orphaned, then
/// delivered when it is added back), and each message carries the hash of the one
/// configuration that decided it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_change_under_load_without_a_refusal_or_a_dropped_connection() {
    use common::peer::{Answer, peer};
    let keep = peer(|_, _| Answer::Ack("AA")).await;
    let first = peer(|_, _| Answer::Ack("AA")).await;
    let second = peer(|_, _| Answer::Ack("AA")).await;
    // Slow, so a backlog is left behind when it is removed.
    let removed = peer(|_, _| Answer::AckAfter("AA", 20)).await;
    let added = peer(|_, _| Answer::Ack("AA")).await;
    let before = format!(
        "connectors:\n{}{}{}",
        peer_connector("keep", &keep),
        peer_connector("change", &first),
        peer_connector("remove", &removed)
    );
    let after = format!(
        "connectors:\n{}{}{}",
        peer_connector("keep", &keep),
        peer_connector("change", &second),
        peer_connector("add", &added)
    );
    let app = common::start_with_yaml(Some(&before), &[]).await;
    let id = |name: &str| {
        app.outbox()
            .connector_id(name)
            .map(|id| id.0)
            .expect("registered")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (addr, stop) = (app.local_addr().to_string(), Arc::clone(&stop));
        std::thread::spawn(move || {
            common::send_until_stopped(&addr, 0, &stop, |_, sequence| {
                let control = format!("L{sequence}");
                (control.clone(), message("ADT^A08", &control))
            })
        })
    };
    common::eventually("messages before the reload", || decided(&app).len() >= 50).await;
    std::fs::write(app.config_file(), &after).expect("write");
    assert_eq!(app.reload_config().await, Ok(Reloaded::Applied));
    let at_reload = decided(&app).len();
    common::eventually("messages after the reload", || {
        decided(&app).len() >= at_reload + 50
    })
    .await;
    assert!(!sender.is_finished(), "the load's connection survived");
    stop.store(true, Ordering::Relaxed);
    let acknowledged = sender.join().expect("every answer AA");
    let stored = decided(&app);
    assert_eq!(
        stored.iter().map(|m| m.0.clone()).collect::<Vec<_>>(),
        acknowledged,
        "every acknowledged message stored, in order"
    );

    // Two configurations, never a mix: each message's routes are the ones of the
    // configuration whose hash it carries, and the switch happens once.
    let (keep_id, change_id) = (id("keep"), id("change"));
    let (remove_id, add_id) = (id("remove"), id("add"));
    let hashes: Vec<[u8; 8]> = stored
        .iter()
        .map(|m| m.1.expect("a configuration hash"))
        .collect();
    let switch = hashes
        .iter()
        .position(|hash| *hash != hashes[0])
        .expect("messages decided by the new file");
    assert!(hashes[switch..].iter().all(|hash| *hash == hashes[switch]));
    let sha = |text: &str| -> [u8; 8] {
        use sha2::Digest as _;
        sha2::Sha256::digest(text.as_bytes())[..8]
            .try_into()
            .expect("8 bytes")
    };
    assert_eq!(hashes[0], sha(&before), "the file's own SHA-256");
    assert_eq!(hashes[switch], sha(&after));
    for (index, (control, _, queued)) in stored.iter().enumerate() {
        let wanted = if index < switch {
            vec![keep_id, change_id, remove_id]
        } else {
            vec![keep_id, change_id, add_id]
        };
        let mut queued = queued.clone();
        queued.sort_unstable();
        let mut wanted = wanted;
        wanted.sort_unstable();
        assert_eq!(queued, wanted, "{control} (index {index}, switch {switch})");
    }
    let controls: Vec<String> = stored.iter().map(|m| m.0.clone()).collect();

    // The unchanged connector: everything, in order, on its one connection.
    common::eventually("keep delivered", || keep.received().len() >= controls.len()).await;
    assert_eq!(once_each(keep.received()), controls);
    assert_eq!(
        keep.connections.load(Ordering::SeqCst),
        1,
        "its connection kept"
    );
    // The changed one: the old output, then the new one, in order.
    common::eventually("change delivered", || {
        once_each([first.received(), second.received()].concat()).len() >= controls.len()
    })
    .await;
    assert_eq!(
        once_each([first.received(), second.received()].concat()),
        controls
    );
    assert!(!second.received().is_empty(), "the new output took over");
    // The added one: what was decided after the reload.
    common::eventually("add delivered", || {
        added.received().len() >= controls.len() - switch
    })
    .await;
    assert_eq!(once_each(added.received()), controls[switch..].to_vec());
    // The removed one: what it did not deliver stays queued, orphaned.
    let delivered = once_each(removed.received());
    let left = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .queue(mfoundry::outbox::ConnectorId(remove_id))
        .expect("queue")
        .len();
    assert!(
        left > 0,
        "a backlog was left ({} delivered)",
        delivered.len()
    );
    assert_eq!(
        delivered.len() + left,
        switch,
        "nothing it was given is lost"
    );
    assert!(app.worker("add").stats().delivered.load(Ordering::Relaxed) > 0);

    // Added back: the backlog is delivered, in order, after what it had delivered.
    let again = format!("{after}{}", peer_connector("remove", &removed));
    std::fs::write(app.config_file(), &again).expect("write");
    assert_eq!(app.reload_config().await, Ok(Reloaded::Applied));
    common::eventually("the orphaned backlog delivered", || {
        once_each(removed.received()).len() >= switch
    })
    .await;
    assert_eq!(once_each(removed.received()), controls[..switch].to_vec());
    assert!(app.shutdown(Duration::from_secs(10)).await);
}

fn stored(app: &common::TestApp) -> usize {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .len()
}

fn mllp_listener(name: &str, extra: &str) -> String {
    format!("  - name: {name}\n    type: mllp\n    listen_addr: \"127.0.0.1:0\"\n{extra}")
}

/// A steady sender on `addr` (over one connection) until the returned flag is set.
fn load_on(
    addr: std::net::SocketAddr,
    prefix: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            common::send_until_stopped(&addr.to_string(), 0, &stop, |_, sequence| {
                let control = format!("{prefix}{sequence}");
                (control.clone(), message("ADT^A08", &control))
            })
        })
    };
    (stop, sender)
}

/// Listeners added, changed and removed under a steady load: the unchanged and the changed
/// listener's connections stay open and get AA for everything; the changed one keeps its
/// port (its socket is taken over) and takes the new settings for new connections; the
/// added one listens; the removed one's port closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_change_under_load_without_a_dropped_connection() {
    let connectors = "connectors:\n  - name: out\n    type: file\n    directory: ${DATA_DIR}/out\n";
    let before = format!(
        "listeners:\n{}{}{}{connectors}",
        mllp_listener("ehr", ""),
        mllp_listener("lab", "    max_connections: 2\n"),
        mllp_listener("old", "")
    );
    let after = format!(
        "listeners:\n{}{}{}{connectors}",
        mllp_listener("ehr", ""),
        mllp_listener("lab", "    max_connections: 1\n"),
        mllp_listener("new", "")
    );
    let app = common::start_with_yaml(Some(&before), &[("LISTEN_ADDR", "")]).await;
    let addr = |name: &str| {
        app.listener_addrs()
            .into_iter()
            .find(|(listener, _)| listener == name)
            .map(|(_, addr)| addr)
    };
    let (ehr, lab, old) = (
        addr("ehr").expect("ehr"),
        addr("lab").expect("lab"),
        addr("old").expect("old"),
    );
    let (stop_ehr, ehr_load) = load_on(ehr, "E");
    let (stop_lab, lab_load) = load_on(lab, "B");
    // A connection to lab kept open over two reloads: the change keeps it, the removal
    // closes it.
    let mut kept = tokio::net::TcpStream::connect(lab).await.expect("connect");
    common::write(&mut kept, &common::framed(&message("ADT^A08", "K1"))).await;
    assert_eq!(
        common::field(&common::expect_ack(&mut kept).await, "MSA", 1),
        "AA"
    );
    common::eventually("both loads running", || stored(&app) >= 40).await;
    std::fs::write(app.config_file(), &after).expect("write");
    assert_eq!(app.reload_config().await, Ok(Reloaded::Applied));
    assert_eq!(addr("lab"), Some(lab), "the changed listener kept its port");
    assert_eq!(addr("ehr"), Some(ehr));
    assert_eq!(addr("old"), None);
    let new = addr("new").expect("the added listener");
    let at_reload = stored(&app);
    common::eventually("both loads go on after the reload", || {
        stored(&app) >= at_reload + 40
    })
    .await;
    // The removed listener's port is closed.
    common::eventually("the removed listener's port closed", || {
        std::net::TcpStream::connect(old).is_err()
    })
    .await;
    // The added one answers; the changed one takes new connections with its new settings
    // (max_connections is now 1; connections it kept from before are not counted).
    assert_eq!(answer_at(new, "N1").await, "AA");
    let mut first = tokio::net::TcpStream::connect(lab).await.expect("connect");
    common::write(&mut first, &common::framed(&message("ADT^A08", "N2"))).await;
    assert_eq!(
        common::field(&common::expect_ack(&mut first).await, "MSA", 1),
        "AA"
    );
    {
        use tokio::io::AsyncWriteExt as _;
        let mut refused = tokio::net::TcpStream::connect(lab).await.expect("connect");
        // The gateway may close it before the write.
        let _ = refused
            .write_all(&common::framed(&message("ADT^A08", "X1")))
            .await;
        assert!(
            common::read_frame(&mut refused, Duration::from_secs(5))
                .await
                .is_none(),
            "over the new max_connections: closed without an answer"
        );
    }
    assert!(
        !ehr_load.is_finished() && !lab_load.is_finished(),
        "connections kept"
    );
    drop(first);
    stop_ehr.store(true, Ordering::Relaxed);
    stop_lab.store(true, Ordering::Relaxed);
    let (ehr_acked, lab_acked) = (
        ehr_load.join().expect("every answer AA"),
        lab_load.join().expect("every answer AA"),
    );
    let stored = common::stored_control_ids(app.outbox());
    for control in ehr_acked.iter().chain(&lab_acked) {
        assert!(stored.contains(control), "{control} stored");
    }
    // A listener that cannot bind (the port is taken) refuses the whole file.
    let clash = after.replace(
        connectors,
        &format!("  - name: clash\n    type: mllp\n    listen_addr: \"{ehr}\"\n{connectors}"),
    );
    std::fs::write(app.config_file(), clash).expect("write");
    let problems = app.reload_config().await.expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("listener clash") && p.contains("in use")),
        "{problems:?}"
    );
    assert_eq!(addr("clash"), None);
    assert_eq!(
        answer_at(new, "N3").await,
        "AA",
        "the running listeners stay"
    );
    // The connection the change kept decides with the running configuration.
    common::write(&mut kept, &common::framed(&message("ADT^A08", "K2"))).await;
    assert_eq!(
        common::field(&common::expect_ack(&mut kept).await, "MSA", 1),
        "AA"
    );
    // lab removed, and `new` changed from MLLP to HTTP on its port: the connection lab kept
    // from before its change closes, and `new` answers HTTP only.
    let removed = format!(
        "listeners:\n{}  - name: new\n    type: http\n    listen_addr: \"{new}\"\n{connectors}",
        mllp_listener("ehr", "")
    );
    std::fs::write(app.config_file(), removed).expect("write");
    assert_eq!(app.reload_config().await, Ok(Reloaded::Applied));
    assert!(
        common::read_frame(&mut kept, Duration::from_secs(5))
            .await
            .is_none(),
        "closed with the listener that was removed"
    );
    assert_eq!(addr("new"), Some(new), "the same port");
    let posted = tokio::task::spawn_blocking(move || {
        common::http::request(
            &new.to_string(),
            "POST",
            "/hl7",
            &[("Content-Type", "application/hl7-v2")],
            &message("ADT^A08", "H1"),
        )
    })
    .await
    .expect("request");
    assert_eq!(posted.status, 200, "{posted:?}");
    assert!(app.shutdown(Duration::from_secs(10)).await);
}

async fn answer_at(addr: std::net::SocketAddr, control: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    common::write(&mut stream, &common::framed(&message("ADT^A08", control))).await;
    let reply = common::expect_ack(&mut stream).await;
    common::field(&reply, "MSA", 1)
}

/// Whether a reload restarts a connector's worker is decided on its entry as written: the
/// same entry loaded twice (TLS clients hold a clock, PostgreSQL hides its DSN) or moved in
/// the file, or with another filter, keeps its worker; another DSN or `order_by` added
/// does not.
#[test]
fn a_connector_is_changed_when_its_delivery_as_written_changes() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let load = |text: &str| {
        let path = dir.join("mfoundry.yaml");
        std::fs::write(&path, text).expect("write");
        mfoundry::config::Config::load_with(Some(&path), &|_| None)
            .unwrap_or_else(|errors| panic!("{errors}"))
    };
    let tls = "  - name: emr\n    type: mllp\n    host: 127.0.0.1\n    port: 6661\n    tls: true\n";
    let db = |dsn: &str, filter: &str| {
        format!("  - name: db\n    type: postgres\n    dsn: \"{dsn}\"\n    table: hl7\n{filter}")
    };
    let delivery = |config: &mfoundry::config::Config, name: &str| {
        config
            .connectors
            .iter()
            .find(|connector| connector.name == name)
            .map(|connector| connector.delivery.clone())
            .expect("connector")
    };
    let first = load(&format!("connectors:\n{tls}{}", db("host=a", "")));
    let again = load(&format!(
        "connectors:\n{}{tls}",
        db("host=a", "    filter: msh.msg_type == \"ORU\"\n")
    ));
    assert_eq!(delivery(&first, "emr"), delivery(&again, "emr"));
    assert_eq!(delivery(&first, "db"), delivery(&again, "db"));
    let other = load(&format!("connectors:\n{tls}{}", db("host=b", "")));
    assert_ne!(delivery(&first, "db"), delivery(&other, "db"));
    let keyed = load(&format!(
        "connectors:\n{tls}    order_by: pid.id\n{}",
        db("host=a", "")
    ));
    assert_ne!(delivery(&first, "emr"), delivery(&keyed, "emr"));
}
