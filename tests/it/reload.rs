//! Configuration reload (SIGHUP, or the file changing): rules, filters, `order_by`,
//! transforms, tables and `tls_senders` take effect from the next message; a file that does
//! not load, or that changes what needs a restart (settings, connectors, listeners), keeps the
//! running configuration; every reload is in the audit trail with the file's SHA-256.

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
    std::fs::write(
        app.config_file(),
        AFTER.replace("${DATA_DIR}/out", "${DATA_DIR}/elsewhere"),
    )
    .expect("write");
    let problems = app.reload_config().await.expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("connector out changed: that needs a restart")),
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
/// messages it passes, and no connection is dropped.
#[test]
fn sighup_reloads_under_load_without_a_dropped_connection() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("mfoundry.yaml"), BEFORE).expect("config");
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
    server.stop();
    assert!(
        acknowledged.len() > 50,
        "the load ran: {}",
        acknowledged.len()
    );
}
