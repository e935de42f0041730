//! Directory intake through the real binary: files are read whole once they have settled,
//! every message of a file is committed (with the file's SHA-256) before the file moves to
//! `done`, a file read again is recognised and not stored twice, files that cannot be taken
//! go to `error` with a reason file, and a file still being written is never read.

use crate::batches::{batch, message, stored};
use crate::common;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use mfoundry::outbox::Disposition;

fn config(settle: &str) -> String {
    format!(
        r#"
listeners:
  - name: adt
    type: mllp
    listen_addr: "127.0.0.1:0"
  - name: lab-drop
    type: directory
    path: inbox
    pattern: "*.hl7"
    done: inbox/done
    settle_time: {settle}
    poll_interval: 50ms
connectors:
  - name: out
    type: file
    directory: out
    filter: inbound == "lab-drop"
validation:
  rules:
    - name: require-patient-id
      expression: 'pid.id != ""'
      message: PID-3 must carry a patient identifier
"#
    )
}

/// Wait (at most 60 s) until `ready` holds.
fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drop a file the way careful writers do: written under a partial name, then renamed.
fn drop_file(inbox: &Path, name: &str, contents: &str) {
    let partial = inbox.join(format!("{name}.part"));
    std::fs::write(&partial, contents.replace('\r', "\r\n")).expect("write");
    std::fs::rename(&partial, inbox.join(name)).expect("rename");
}

#[test]
fn files_are_stored_whole_moved_and_never_stored_twice() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    std::fs::write(dir.join("mfoundry.yaml"), config("200ms")).expect("config");
    let server = common::Server::start(dir, "mfoundry.yaml", "data", &[("LISTEN_ADDR", "")]);

    let good = batch("F1", &[message("F1-1", "P1"), message("F1-2", "P2")], 2);
    drop_file(&inbox, "good.hl7", &good);
    // Bare messages (no envelope), one refused by the rule: the other is stored, the refused
    // one goes to the error folder with its reason.
    drop_file(
        &inbox,
        "mixed.hl7",
        &[message("F2-1", "P1"), message("F2-2", "")].concat(),
    );
    drop_file(&inbox, "junk.hl7", "this is not HL7\n");
    drop_file(&inbox, "ignored.txt", &good);
    let done = inbox.join("done");
    let error = inbox.join("error");
    wait_until("three files taken", || {
        common::file_names(&done).len() == 2 && common::file_names(&error).len() >= 4
    });
    assert_eq!(common::file_names(&done), ["good.hl7", "mixed.hl7"]);
    assert_eq!(
        common::file_names(&error),
        [
            "junk.hl7",
            "junk.hl7.reason.txt",
            "mixed.hl7.refused.hl7",
            "mixed.hl7.refused.hl7.reason.txt"
        ]
    );
    let reason = std::fs::read_to_string(error.join("junk.hl7.reason.txt")).expect("reason file");
    assert!(reason.contains("file: junk.hl7"), "{reason}");
    assert!(
        reason.contains("reason: the batch cannot be read: segment 1 (not a segment name)"),
        "{reason}"
    );
    let refused =
        std::fs::read_to_string(error.join("mixed.hl7.refused.hl7.reason.txt")).expect("reason");
    assert!(
        refused.contains("message 2 (MSH-10 F2-2): PID-3 must carry a patient identifier"),
        "{refused}"
    );
    let refused_messages =
        std::fs::read_to_string(error.join("mixed.hl7.refused.hl7")).expect("refused messages");
    assert!(refused_messages.contains("|F2-2|"), "{refused_messages}");
    assert!(!refused_messages.contains("|F2-1|"), "{refused_messages}");
    assert!(
        inbox.join("ignored.txt").exists(),
        "other names are left alone"
    );

    // The same file again (as after a crash between the commit and the move): recognised by
    // its SHA-256, moved, nothing stored twice.
    drop_file(&inbox, "good-again.hl7", &good);
    wait_until("the file read again is moved", || {
        common::file_names(&done).contains(&"good-again.hl7".to_owned())
    });
    server.wait_for_log("nothing stored twice", 1);
    // Each file is a frame of the listener: two stored, one partly refused, one unreadable.
    let counters = server.listener_stats(dir, "lab-drop");
    assert_eq!(
        (
            &counters["received"],
            &counters["accepted"],
            &counters["rejected"],
            &counters["unreadable"]
        ),
        (&4.into(), &2.into(), &1.into(), &1.into()),
        "{counters}"
    );
    server.stop();

    let stored = stored(dir, &["out"]);
    let count = |control: &str| stored.iter().filter(|(id, ..)| id == control).count();
    for control in ["F1-1", "F1-2", "F2-1", "F2-2"] {
        assert_eq!(count(control), 1, "{control} stored once: {stored:?}");
    }
    let routed = stored
        .iter()
        .filter(|(_, disposition, _)| *disposition == Disposition::Routed)
        .count();
    assert_eq!(routed, 3, "{stored:?}");
}

#[test]
fn a_file_still_being_written_is_not_read_until_it_settles() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    std::fs::write(dir.join("mfoundry.yaml"), config("3s")).expect("config");
    let server = common::Server::start(dir, "mfoundry.yaml", "data", &[("LISTEN_ADDR", "")]);

    // Written in place, a message every 100 ms: never unchanged for the settle time while
    // the writer is at it.
    let path = inbox.join("slow.hl7");
    for index in 0..15 {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open for append");
        file.write_all(message(&format!("S-{index}"), "P").as_bytes())
            .expect("append");
        drop(file);
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = inbox.join("done");
    wait_until("the settled file is taken", || {
        !common::file_names(&done).is_empty()
    });
    assert_eq!(common::file_names(&done), ["slow.hl7"], "read once, whole");
    server.stop();
    let stored = stored(dir, &["out"]);
    assert_eq!(stored.len(), 15, "every message of the file: {stored:?}");
}

#[test]
fn a_file_that_cannot_be_moved_is_not_taken_again_at_every_poll() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    std::fs::write(dir.join("mfoundry.yaml"), config("0s")).expect("config");
    let server = common::Server::start(dir, "mfoundry.yaml", "data", &[("LISTEN_ADDR", "")]);
    // `done` is a file now, not a folder: nothing can be moved into it.
    let done = inbox.join("done");
    std::fs::remove_dir(&done).expect("the listener made the folder");
    std::fs::write(&done, "not a folder").expect("a file in its place");
    drop_file(
        &inbox,
        "stuck.hl7",
        &batch("K1", &[message("K1-1", "P1")], 1),
    );
    server.wait_for_log("could not be moved or deleted", 1);
    // Many polls later (50 ms each), still one attempt: stored once, logged once.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = server.stop_and_collect();
    let repeated = lines
        .iter()
        .filter(|line| {
            line.contains("could not be moved or deleted") || line.contains("file stored")
        })
        .count();
    assert_eq!(repeated, 0, "taken once: {lines:#?}");
    assert!(
        inbox.join("stuck.hl7").exists(),
        "the file stays where it was"
    );
    let stored = stored(dir, &["out"]);
    assert_eq!(stored.len(), 1, "{stored:?}");
}
