//! `type: dicom` listeners: C-ECHO, C-STORE routed by `dicom` filters and stored once,
//! callers refused by AE title and by mTLS, oversized objects refused without being held,
//! and Success only after the commit (SIGKILL loses nothing that got it).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{peers, storescu};
use crate::common;

fn config(extra_listener: &str) -> String {
    format!(
        r#"listeners:
  - name: modalities
    type: dicom
    listen_addr: "127.0.0.1:0"
    ae_title: MFOUNDRY
    allowed_callers: [CT1, PACS]
{extra_listener}
connectors:
  - name: ct-files
    type: file
    format: dicom
    directory: ./out/ct
    filter: dicom.modality == "CT" && inbound == "modalities"
  - name: sr-files
    type: file
    directory: ./out/sr
    filter: dicom.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
  - name: everything
    type: file
    format: dicom
    directory: ./out/all
  - name: ehr
    type: mllp
    host: 127.0.0.1
    port: 9
    filter: dicom.modality == "CT"
"#
    )
}

/// Control ids of the stored messages, through the CLI on the server's admin API.
pub(super) fn stored(server: &common::Server, directory: &Path) -> Vec<serde_json::Value> {
    let page = super::cli_json(server, directory, &["messages", "search"]);
    page.as_array().cloned().expect("a list of messages")
}

/// Wait until `folder` (and its day folders) holds `count` files.
pub(super) fn files_in(folder: &Path, count: usize) {
    common::wait_until(
        Duration::from_secs(30),
        || common::count_files(folder) == count,
        || {
            format!(
                "{} holds {} files, not {count}",
                folder.display(),
                common::count_files(folder)
            )
        },
    );
}

#[test]
fn objects_from_dcmtk_are_routed_by_dicom_filters_and_a_restore_is_stored_once() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("gateway.yaml"), config("")).expect("config");
    let (objects, files) = peers.object_files(&dir.join("objects"), 2, 4096);
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let (host, port) = addr.rsplit_once(':').expect("host:port");

    let echo = std::process::Command::new("echoscu")
        .args(["-aet", "CT1", "-aec", "MFOUNDRY", host, port])
        .output()
        .expect("echoscu runs");
    assert!(echo.status.success(), "C-ECHO answered");

    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], &files);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches("Received Store Response (Success)").count(),
        3,
        "{text}"
    );
    files_in(&dir.join("out/ct"), 2);
    files_in(&dir.join("out/sr"), 1);
    files_in(&dir.join("out/all"), 3);

    // The data set is delivered as it was received: the file's own, after mfoundry's meta.
    let original = std::fs::read(&files[0]).expect("object");
    let sent = mfoundry::dicom::object::read_part10(&original).expect("Part 10");
    let uid = &objects[0].1;
    let delivered = walk(&dir.join("out/ct"))
        .into_iter()
        .find(|path| path.to_string_lossy().contains(uid.as_str()))
        .expect("the first CT delivered");
    let delivered = std::fs::read(delivered).expect("read");
    let received = mfoundry::dicom::object::read_part10(&delivered).expect("Part 10 delivered");
    assert_eq!(received.data_set, sent.data_set);
    assert_eq!(received.sop_instance, *uid);

    // The listing shows each object by its identifiers.
    let messages = stored(&server, dir);
    assert_eq!(messages.len(), 3);
    let uids: HashSet<String> = messages
        .iter()
        .map(|message| {
            message["control_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let expected: HashSet<String> = objects.iter().map(|(_, uid)| uid.clone()).collect();
    assert_eq!(uids, expected);
    assert!(
        messages
            .iter()
            .any(|message| message["message_type"] == "DICOM^CT"),
        "{messages:?}"
    );

    // A file connector that writes HL7 got the report as an ORU^R01 (docs/formats.md).
    let oru = walk(&dir.join("out/sr"));
    assert_eq!(oru.len(), 1);
    let oru = std::fs::read(&oru[0]).expect("the ORU");
    let text = String::from_utf8(oru).expect("UTF-8, as the report's ISO_IR 192");
    let segments: Vec<&str> = text.split('\r').filter(|s| !s.is_empty()).collect();
    assert!(segments[0].contains("|ORU^R01^ORU_R01|"), "{text}");
    assert!(segments[0].ends_with("|UNICODE UTF-8"), "{text}");
    assert!(
        segments[1].starts_with("PID|1||PAT-SR-1^^^HOSP||Report^Rita"),
        "{text}"
    );
    assert!(
        segments[3].starts_with("OBR|1||ACC0001|18748-4^Diagnostic imaging report^LN|"),
        "{text}"
    );
    assert!(
        segments[3].ends_with("|F"),
        "COMPLETE and VERIFIED: final. {text}"
    );
    assert_eq!(
        segments[4],
        "OBX|1|NM|8867-4^Heart rate^LN|1|72|/min^per minute^UCUM|||||F"
    );
    assert_eq!(
        segments[5],
        "OBX|2|TX|121071^Finding^DCM|2|No acute findings. Ünïcode kept.||||||F"
    );
    assert_eq!(
        segments[6],
        "OBX|3|CE|121071^Finding^DCM|3|17621005^Normal^SCT||||||F"
    );

    // An HL7 output cannot send an image: the CTs are in its dead-letter queue, with why.
    let admin = server.admin_addr.clone().expect("admin API");
    let mut dead = serde_json::Value::Null;
    for _ in 0..200 {
        let (code, stdout, stderr) = common::run_binary(
            dir,
            &[
                "dlq",
                "list",
                "ehr",
                "--json",
                "--admin-addr",
                &admin,
                "--data-dir",
                "data",
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        dead = serde_json::from_str(&stdout).expect("JSON");
        if dead.as_array().is_some_and(|entries| !entries.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = dead.to_string();
    assert!(
        text.contains("the DICOM object is not a Structured Report"),
        "{text}"
    );

    // One object shown: its identifiers and its header view, not its bytes.
    let id = messages
        .iter()
        .find(|message| message["control_id"] == uid.as_str())
        .and_then(|message| message["id"].as_u64())
        .expect("the first CT's id");
    let shown = super::cli_json(&server, dir, &["messages", "show", &id.to_string()]);
    assert_eq!(shown["dicom"]["sop_instance_uid"], uid.as_str(), "{shown}");
    assert_eq!(shown["dicom"]["modality"], "CT");
    let body = shown["body"].as_str().unwrap_or_default();
    assert!(body.starts_with("MSH|^~\\&|CT1||MFOUNDRY||"), "{body}");
    assert!(body.contains("\rPID|||PAT0000^^^HOSP||"), "{body}");

    // The same object again, on another association: Success, nothing stored or routed.
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], &files[..1]);
    assert!(ok && text.contains("Success"), "{text}");
    assert_eq!(stored(&server, dir).len(), 3, "stored once");

    // The same UID with other bytes is stored and routed again.
    let changed = dir.join("changed.dcm");
    std::fs::copy(&files[0], &changed).expect("copy");
    let modify = std::process::Command::new("dcmodify")
        .args(["-nb", "-m", "(0008,0050)=ACC-CORRECTED"])
        .arg(&changed)
        .output()
        .expect("dcmodify runs");
    assert!(modify.status.success());
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], &[changed]);
    assert!(ok && text.contains("Success"), "{text}");
    assert_eq!(stored(&server, dir).len(), 4, "other bytes: stored again");
    files_in(&dir.join("out/ct"), 3);
    server.stop();
}

pub(super) fn walk(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if !path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            // Not the file output's temporary files.
            out.push(path);
        }
    }
    out
}

#[test]
fn unknown_callers_and_called_titles_are_rejected_and_nothing_is_stored() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("gateway.yaml"), config("")).expect("config");
    let objects = peers.objects(&dir.join("objects"), 1, 1024);
    let file = dir.join("objects").join(&objects[0].0);
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let (ok, text) = storescu(
        &addr,
        "INTRUDER",
        "MFOUNDRY",
        &[],
        std::slice::from_ref(&file),
    );
    assert!(!ok, "{text}");
    assert!(text.contains("Calling AE Title Not Recognized"), "{text}");
    let (ok, text) = storescu(&addr, "CT1", "SOMEONE", &[], std::slice::from_ref(&file));
    assert!(!ok, "{text}");
    assert!(text.contains("Called AE Title Not Recognized"), "{text}");
    // A third-party SCU with a known caller still gets through.
    let (ok, lines, printed) =
        peers.pynetdicom_store(&addr, "PACS", "MFOUNDRY", &["--synthetic", "3"]);
    assert!(ok, "{printed}");
    assert!(
        lines.iter().all(|(status, _)| status == "0000"),
        "{lines:?}"
    );
    assert_eq!(stored(&server, dir).len(), 3);
    server.stop();
}

#[test]
fn mtls_refuses_a_caller_whose_certificate_the_ca_did_not_sign() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    common::certs::certificates(dir);
    common::certs::untrusted_client(dir, "stranger");
    let tls = "    tls: {cert_file: server.pem, key_file: server.key, client_ca: ca.pem}";
    std::fs::write(dir.join("gateway.yaml"), config(tls)).expect("config");
    let objects = peers.objects(&dir.join("objects"), 1, 1024);
    let file = dir.join("objects").join(&objects[0].0);
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let with = |key: &str, cert: &str| {
        let key = dir.join(key);
        let cert = dir.join(cert);
        let ca = dir.join("ca.pem");
        vec![
            "+tls".to_owned(),
            key.display().to_string(),
            cert.display().to_string(),
            "+cf".to_owned(),
            ca.display().to_string(),
        ]
    };
    let stranger = with("stranger.key", "stranger.pem");
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    let (ok, text) = storescu(
        &addr,
        "CT1",
        "MFOUNDRY",
        &stranger,
        std::slice::from_ref(&file),
    );
    assert!(!ok, "a certificate from another CA is refused: {text}");
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], std::slice::from_ref(&file));
    assert!(!ok, "clear text is refused: {text}");
    assert!(stored(&server, dir).is_empty());
    let known = with("client.key", "client.pem");
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let (ok, text) = storescu(
        &addr,
        "CT1",
        "MFOUNDRY",
        &known,
        std::slice::from_ref(&file),
    );
    assert!(
        ok && text.contains("Received Store Response (Success)"),
        "{text}"
    );
    assert_eq!(stored(&server, dir).len(), 1);
    server.stop();
}

/// The peak resident memory of a process, in bytes (`VmHWM`).
pub(super) fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmHWM")
        * 1024
}

#[test]
fn an_object_larger_than_max_object_size_is_refused_without_being_held() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("gateway.yaml"),
        config("    max_object_size: 1MiB"),
    )
    .expect("config");
    let large = peers.objects(&dir.join("large"), 1, 64 << 20);
    let small = peers.objects(&dir.join("small"), 1, 1024);
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    // A first small object, so the baseline includes a store.
    let (ok, text) = storescu(
        &addr,
        "CT1",
        "MFOUNDRY",
        &[],
        &[dir.join("small").join(&small[0].0)],
    );
    assert!(ok && text.contains("Success"), "{text}");
    let before = peak_memory(server.child.id());
    let (_, text) = storescu(
        &addr,
        "CT1",
        "MFOUNDRY",
        &[],
        &[dir.join("large").join(&large[0].0)],
    );
    assert!(
        text.contains("Error: CannotUnderstand") || text.contains("0xc000"),
        "{text}"
    );
    let grown = peak_memory(server.child.id()).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "receiving a 64 MiB object over a 1 MiB limit grew the peak memory by {grown} bytes"
    );
    let uids: Vec<String> = stored(&server, dir)
        .iter()
        .map(|message| {
            message["control_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        uids,
        vec![small[0].1.clone()],
        "the large object is not stored"
    );
    server.stop();
}

#[test]
fn every_object_that_got_success_survives_sigkill() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("gateway.yaml"), config("")).expect("config");
    let mut succeeded: Vec<String> = Vec::new();
    for round in 0..2 {
        let mut server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
        let addr = server.listener_addr("modalities");
        let done = Arc::new(AtomicBool::new(false));
        let sender = {
            let python = peers.python.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let peers = super::Peers { python };
                let result = peers.pynetdicom_store(
                    &addr,
                    "CT1",
                    "MFOUNDRY",
                    // A killed receiver is noticed by the timeout: keep it short.
                    &["--synthetic", "100000", "--timeout", "5"],
                );
                done.store(true, Ordering::Relaxed);
                result.1
            })
        };
        std::thread::sleep(Duration::from_millis(common::pseudo_random_millis(
            800, 1600,
        )));
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        let lines = sender.join().expect("sender");
        let got: Vec<String> = lines
            .into_iter()
            .filter(|(status, _)| status == "0000")
            .map(|(_, uid)| uid)
            .collect();
        eprintln!(
            "round {round}: {} objects got Success before the kill",
            got.len()
        );
        succeeded.extend(got);
        assert!(done.load(Ordering::Relaxed));
    }
    assert!(succeeded.len() > 20, "the load ran: {}", succeeded.len());
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    server.stop();
    let mut options = mfoundry::outbox::OutboxOptions::new(dir.join("data").join("mfoundry.redb"));
    options.dedup_window = None;
    let names: Vec<String> = ["ct-files", "sr-files", "everything"]
        .map(str::to_owned)
        .to_vec();
    let (outbox, _writer) = mfoundry::outbox::Outbox::open(options, &names).expect("opens");
    let stored: HashSet<String> = common::stored_control_ids(&outbox).into_iter().collect();
    let lost: Vec<&String> = succeeded
        .iter()
        .filter(|uid| !stored.contains(*uid))
        .collect();
    assert!(
        lost.is_empty(),
        "{} objects got Success and were lost: {lost:?}",
        lost.len()
    );
}
