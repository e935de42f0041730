//! Objects larger than a listener's `inline_object_size` are spooled to files while they
//! arrive (ADR 0020): stored without being held in memory, delivered whole, their files
//! removed with their messages, and a file a crash left behind removed at the next start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::intake::{files_in, peak_memory, stored, walk};
use super::{peers, storescu};
use crate::common;

fn config(connector_filter: &str) -> String {
    format!(
        r#"listeners:
  - name: modalities
    type: dicom
    listen_addr: "127.0.0.1:0"
    ae_title: MFOUNDRY
    inline_object_size: 64KiB
    max_frame_memory: 4MiB
connectors:
  - name: archive
    type: file
    format: dicom
    directory: ./out
    filter: {connector_filter}
"#
    )
}

/// The files of the store's spool directory.
fn spooled_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join("data").join("mfoundry.redb-spool")) {
        Ok(entries) => entries.map(|entry| entry.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_large_object_is_spooled_without_being_held_and_a_crash_leaves_no_stray_file() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    // Nothing is delivered: the memory measured is the intake's.
    std::fs::write(
        dir.join("gateway.yaml"),
        config(r#"dicom.modality == "XX""#),
    )
    .expect("config");
    let large = peers.objects(&dir.join("large"), 2, 48 << 20);
    let small = peers.objects(&dir.join("small"), 1, 1024);
    // Spooled files are sealed like every stored value (ADR 0011).
    std::fs::write(dir.join("store.key"), [9u8; 32]).expect("key");
    let envs = [("LISTEN_ADDR", ""), ("ENCRYPTION_KEY_FILE", "store.key")];
    let mut server = common::Server::start(dir, "gateway.yaml", "data", &envs);
    let addr = server.listener_addr("modalities");
    let (ok, text) = storescu(
        &addr,
        "CT1",
        "MFOUNDRY",
        &[],
        &[dir.join("small").join(&small[0].0)],
    );
    assert!(ok && text.contains("Success"), "{text}");
    assert!(
        spooled_files(dir).is_empty(),
        "a small object is not spooled"
    );
    let before = peak_memory(server.child.id());
    let first = dir.join("large").join(&large[0].0);
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], std::slice::from_ref(&first));
    assert!(
        ok && text.contains("Received Store Response (Success)"),
        "{text}"
    );
    let grown = peak_memory(server.child.id()).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "a 48 MiB object over a 4 MiB max_frame_memory grew the peak memory by {grown} bytes"
    );
    let files = spooled_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let size = std::fs::metadata(&files[0]).expect("spooled file").len();
    let sent = std::fs::metadata(&first).expect("object").len();
    assert!(
        size > sent,
        "the whole object ({sent} bytes) is in the file: {size} bytes"
    );
    let raw = std::fs::read(&files[0]).expect("spooled file");
    for text in [&b"PAT0000"[..], b"HOSP", b"ACC0001"] {
        assert!(
            !raw.windows(text.len()).any(|window| window == text),
            "the spooled file holds patient text in the clear"
        );
    }
    let messages = stored(&server, dir);
    let id = messages
        .iter()
        .find(|message| message["control_id"] == large[0].1.as_str())
        .and_then(|message| message["id"].as_u64())
        .expect("the large object is listed");
    let shown = super::cli_json(&server, dir, &["messages", "show", &id.to_string()]);
    assert_eq!(
        shown["dicom"]["sop_instance_uid"],
        large[0].1.as_str(),
        "{shown}"
    );
    let body = shown["body"].as_str().unwrap_or_default();
    assert!(body.contains("\rPID|||PAT0000^^^HOSP||"), "{body}");
    // The same object again: recognised by its digest, nothing stored, no second file.
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], std::slice::from_ref(&first));
    assert!(ok && text.contains("Success"), "{text}");
    assert_eq!(spooled_files(dir).len(), 1);
    assert_eq!(stored(&server, dir).len(), 2);

    // Killed while the second large object is being spooled: its file is not named by any
    // stored message, and the next start removes it.
    let second = dir.join("large").join(&large[1].0);
    let sender = {
        let addr = addr.clone();
        std::thread::spawn(move || storescu(&addr, "CT1", "MFOUNDRY", &[], &[second]))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while spooled_files(dir).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    let (_, text) = sender.join().expect("sender");
    let answered = text.contains("Received Store Response (Success)");
    eprintln!("killed while spooling: {}", !answered);
    let server = common::Server::start(dir, "gateway.yaml", "data", &envs);
    let stored_now = stored(&server, dir);
    // Every large object stored has its file, and no other file is left.
    assert_eq!(
        spooled_files(dir).len(),
        stored_now.len() - 1,
        "{stored_now:?}"
    );
    if answered {
        assert_eq!(stored_now.len(), 3, "an object that got Success is stored");
    }
    server.stop();
}

#[test]
fn spooled_objects_are_delivered_whole_and_their_files_go_with_their_messages() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("gateway.yaml"), config("true")).expect("config");
    let (objects, files) = peers.object_files(&dir.join("objects"), 2, 3 << 20);
    let server = common::Server::start(
        dir,
        "gateway.yaml",
        "data",
        &[("LISTEN_ADDR", ""), ("RETENTION", "1s")],
    );
    let addr = server.listener_addr("modalities");
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], &files);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches("Received Store Response (Success)").count(),
        3,
        "{text}"
    );
    files_in(&dir.join("out"), 3);
    for ((_, uid), file) in objects.iter().zip(&files) {
        let original = std::fs::read(file).expect("object");
        let sent = mfoundry::dicom::object::read_part10(&original).expect("Part 10");
        let delivered = walk(&dir.join("out"))
            .into_iter()
            .find(|path| path.to_string_lossy().contains(uid.as_str()))
            .expect("delivered");
        let delivered = std::fs::read(delivered).expect("read");
        let received = mfoundry::dicom::object::read_part10(&delivered).expect("Part 10");
        assert!(received.data_set == sent.data_set, "{uid} delivered whole");
    }
    // Delivered, then removed by retention: their spooled files go too.
    common::wait_until(
        Duration::from_secs(60),
        || spooled_files(dir).is_empty() && stored(&server, dir).is_empty(),
        || "retention removes the spooled files".to_owned(),
    );
    server.stop();
}
