//! Batches under SIGKILL: three network listeners (MLLP plain, MLLP with mTLS, HTTP) and a
//! directory, each fed batches of five messages at once, the process killed at an arbitrary
//! moment and restarted. A batch is never stored in part, every batch that was answered AA
//! is stored whole, and every file dropped is stored exactly once (a file committed but not
//! yet moved when the process died is recognised by its SHA-256 after the restart).

use crate::batches::{batch, message, stored};
use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PER_BATCH: usize = 5;

const CONFIG: &str = r#"
listeners:
  - name: plain
    type: mllp
    listen_addr: "127.0.0.1:0"
  - name: secure
    type: mllp
    listen_addr: "127.0.0.1:0"
    tls: {cert_file: server.pem, key_file: server.key, client_ca: ca.pem}
  - name: http
    type: http
    listen_addr: "127.0.0.1:0"
  - name: drop
    type: directory
    path: inbox
    done: done
    settle_time: 0s
    poll_interval: 20ms
connectors:
  - name: out
    type: file
    directory: out
"#;

/// The batch `id`: five messages `id-0` … `id-4`, counts right.
fn five(id: &str) -> String {
    let messages: Vec<String> = (0..PER_BATCH)
        .map(|index| message(&format!("{id}-{index}"), "P1"))
        .collect();
    batch(id, &messages, PER_BATCH)
}

/// Whether a batch answer accepts all five.
fn all_accepted(answer: &str) -> bool {
    answer.matches("\rMSA|AA|").count() == PER_BATCH
}

/// Send batches over MLLP (TLS when `tls`) until stopped or the server is gone; the ids of
/// the batches answered AA.
fn mllp_sender(
    addr: String,
    tls: Option<mfoundry::tls::TlsClient>,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut accepted = Vec::new();
        let Ok(mut client) = mfoundry::mllp::MllpClient::connect_with(
            &addr,
            tls.as_ref(),
            Duration::from_secs(10),
            1 << 20,
        )
        .await
        else {
            return accepted;
        };
        let mut sequence = 0;
        while !stop.load(Ordering::Relaxed) {
            let id = format!("{prefix}{sequence}");
            sequence += 1;
            let Ok(answer) = client
                .request(five(&id).as_bytes(), Duration::from_secs(30))
                .await
            else {
                break;
            };
            let answer = String::from_utf8_lossy(&answer).into_owned();
            assert!(all_accepted(&answer), "batch {id}: {answer}");
            accepted.push(id);
        }
        accepted
    })
}

/// `POST /hl7` a batch; the answer's body when the status is 200.
fn post(addr: &str, body: &[u8]) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!(
        "POST /hl7 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/hl7-v2\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

fn http_sender(addr: String, prefix: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{prefix}{sequence}");
        sequence += 1;
        let Some(answer) = post(&addr, five(&id).as_bytes()) else {
            break;
        };
        assert!(all_accepted(&answer), "batch {id}: {answer}");
        accepted.push(id);
    }
    accepted
}

/// Drop batch files (written under a partial name, then renamed) until stopped; their ids.
fn file_dropper(inbox: &Path, prefix: &str, stop: &AtomicBool) -> Vec<String> {
    let mut dropped = Vec::new();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{prefix}{sequence}");
        sequence += 1;
        let partial = inbox.join(format!("{id}.hl7.part"));
        std::fs::write(&partial, five(&id)).expect("write a file");
        std::fs::rename(&partial, inbox.join(format!("{id}.hl7"))).expect("rename");
        dropped.push(id);
        std::thread::sleep(Duration::from_millis(15));
    }
    dropped
}

fn start(dir: &Path) -> common::Server {
    common::Server::start(dir, "mfoundry.yaml", "data", &[("LISTEN_ADDR", "")])
}

#[test]
fn no_batch_is_ever_stored_in_part_across_sigkill() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    common::certs::certificates(dir);
    std::fs::create_dir_all(dir.join("inbox")).expect("inbox");
    std::fs::write(dir.join("mfoundry.yaml"), CONFIG).expect("config");
    let tls = mfoundry::cli::TlsArgs {
        tls: true,
        tls_ca: Some(dir.join("ca.pem")),
        tls_cert: Some(dir.join("client.pem")),
        tls_key: Some(dir.join("client.key")),
        tls_server_name: None,
    };
    let mut answered: Vec<String> = Vec::new();
    let mut files: Vec<String> = Vec::new();
    for round in 0..2 {
        let mut server = start(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let plain = {
            let (addr, stop) = (server.listener_addr("plain"), Arc::clone(&stop));
            std::thread::spawn(move || mllp_sender(addr, None, format!("P{round}x"), stop))
        };
        let secure = {
            let addr = server.listener_addr("secure");
            let client = tls.client(&addr).expect("TLS client");
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || mllp_sender(addr, client, format!("S{round}x"), stop))
        };
        let http = {
            let (addr, stop) = (server.listener_addr("http"), Arc::clone(&stop));
            std::thread::spawn(move || http_sender(addr, format!("H{round}x"), stop))
        };
        let dropper = {
            let (inbox, stop) = (dir.join("inbox"), Arc::clone(&stop));
            std::thread::spawn(move || file_dropper(&inbox, &format!("D{round}x"), &stop))
        };
        let kill_after = common::pseudo_random_millis(400, 1200);
        std::thread::sleep(Duration::from_millis(kill_after));
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        stop.store(true, Ordering::Relaxed);
        for sender in [plain, secure, http] {
            answered.extend(sender.join().expect("sender"));
        }
        files.extend(dropper.join().expect("dropper"));
        eprintln!(
            "round {round}: killed after {kill_after} ms; {} batches answered, {} files dropped so far",
            answered.len(),
            files.len()
        );
    }
    assert!(answered.len() >= 4, "the load ran: {answered:?}");

    // Restart: the files left in the folder are taken (those already stored are recognised).
    let server = start(dir);
    let deadline = Instant::now() + Duration::from_secs(120);
    let waiting = || {
        std::fs::read_dir(dir.join("inbox"))
            .expect("inbox")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".hl7"))
            .count()
    };
    while waiting() > 0 {
        assert!(Instant::now() < deadline, "every file taken within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();

    let mut batches: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (control, ..) in stored(dir, &["out"]) {
        let (id, _) = control.rsplit_once('-').expect("batch-index");
        batches.entry(id.to_owned()).or_default().push(control);
    }
    for (id, controls) in &batches {
        let distinct: BTreeSet<&String> = controls.iter().collect();
        assert_eq!(
            (controls.len(), distinct.len()),
            (PER_BATCH, PER_BATCH),
            "batch {id} is stored whole and once: {controls:?}"
        );
    }
    for id in answered.iter().chain(&files) {
        assert!(
            batches.contains_key(id),
            "batch {id} was answered AA (or dropped as a file) but is not stored"
        );
    }
    eprintln!(
        "{} batches stored whole, {} answered AA, {} files",
        batches.len(),
        answered.len(),
        files.len()
    );
}
