//! Helpers shared by the integration tests: start the app on 127.0.0.1:0, speak raw MLLP.

#![allow(dead_code)] // Each test crate uses a different subset of these helpers.

pub mod certs;
pub mod http;
pub mod otlp;
pub mod peer;

use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use mfoundry::app::{AppOptions, RunningApp};
use mfoundry::config::Config;
use mfoundry::hl7::{AckStamp, Charset, FixedStamper};
use mfoundry::ingest::Ingest;
use mfoundry::outbox::{Outbox, OutboxOptions};
use mfoundry::rules::RuleSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The stamp every test ACK carries, so ACK bytes can be compared exactly.
pub fn fixed_stamp() -> AckStamp {
    AckStamp {
        timestamp: "20261122083000+0000".to_owned(),
        control_id: "ACK00001".to_owned(),
    }
}

/// The environment of a test server: an ephemeral loopback port, its data in `data_dir`,
/// and `overrides`.
pub fn environment(data_dir: &Path, overrides: &[(&str, &str)]) -> mfoundry::app::Environment {
    let mut vars: Vec<(String, String)> = vec![
        ("LISTEN_ADDR".into(), "127.0.0.1:0".into()),
        ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("DATA_DIR".into(), data_dir.display().to_string()),
    ];
    vars.extend(
        overrides
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    Arc::new(move |name: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    })
}

/// A configuration for a test server on an ephemeral loopback port with its data in
/// `data_dir`, `yaml` as its file (if any) and `overrides` as environment.
pub fn config(data_dir: &Path, yaml: Option<&str>, overrides: &[(&str, &str)]) -> Config {
    let environment = environment(data_dir, overrides);
    let file = yaml.map(|text| {
        let path = data_dir.join("mfoundry.yaml");
        std::fs::create_dir_all(data_dir).expect("data dir");
        std::fs::write(&path, text).expect("write yaml");
        path
    });
    Config::load_with(file.as_deref(), &|name| environment(name))
        .unwrap_or_else(|errors| panic!("test configuration is valid: {errors}"))
}

/// A running app with its own data directory, removed when dropped.
#[derive(Debug)]
pub struct TestApp {
    app: RunningApp,
    /// The data directory (kept alive as long as the app).
    pub directory: tempfile::TempDir,
}

impl TestApp {
    /// The bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.app.local_addr()
    }
    /// Listener counters.
    pub fn stats(&self) -> mfoundry::mllp::StatsSnapshot {
        self.app.stats()
    }
    /// Reload the listener's TLS files now, as SIGHUP does.
    pub fn reload_tls(&self) -> Option<Result<(), String>> {
        self.app.reload_tls()
    }
    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.app.admin_addr().expect("admin API on"))
    }
    /// The outbox.
    pub fn outbox(&self) -> &mfoundry::outbox::Outbox {
        self.app.outbox()
    }
    /// A connector's worker.
    pub fn listener_addrs(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.app.listener_addrs()
    }

    pub fn worker(&self, connector: &str) -> mfoundry::delivery::WorkerControl {
        self.app.worker(connector).expect("connector has a worker")
    }
    /// Shut down; true when every connection finished in time.
    /// Load the configuration file again (as SIGHUP does).
    pub async fn reload_config(&self) -> Result<mfoundry::app::Reloaded, Vec<String>> {
        self.app.reload_config().await
    }

    /// The configuration file (written by [`start_with_yaml`]).
    pub fn config_file(&self) -> std::path::PathBuf {
        self.directory.path().join("mfoundry.yaml")
    }

    pub async fn shutdown(self, grace: Duration) -> bool {
        self.app.shutdown(grace).await
    }
}

/// Start the app with fixed ACK stamps, no YAML file and `overrides` as environment.
pub async fn start(overrides: &[(&str, &str)]) -> TestApp {
    start_with_yaml(None, overrides).await
}

/// Start the app with fixed ACK stamps, a YAML file and `overrides` as environment.
pub async fn start_with_yaml(yaml: Option<&str>, overrides: &[(&str, &str)]) -> TestApp {
    let directory = tempfile::tempdir().expect("tempdir");
    let config = config(directory.path(), yaml, overrides);
    let options = AppOptions {
        stamper: Some(Arc::new(FixedStamper(fixed_stamp()))),
        storage: None,
        environment: Some(environment(directory.path(), overrides)),
    };
    let app = RunningApp::start_with(config, options)
        .await
        .expect("app starts");
    TestApp { app, directory }
}

/// An ingest over an in-memory outbox with no rules and no connectors, for tests that look
/// at replies only. Returns the ingest and the runtime it must run on.
pub fn memory_ingest(default_charset: Charset) -> (tokio::runtime::Runtime, Ingest) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = OutboxOptions::with_storage(MemoryDisk::default().storage());
    let (outbox, _writer) = Outbox::open(options, &[]).expect("outbox opens");
    let rules = RuleSet::compile(&[], &[], Duration::from_secs(1)).expect("no rules compile");
    let ingest = Ingest::new(
        default_charset,
        Arc::new(FixedStamper(fixed_stamp())),
        Arc::new(rules),
        outbox,
        |_| None,
        "mllp",
    )
    .expect("no connectors to route to");
    (runtime, ingest)
}

/// The reply an in-memory ingest gives to one frame.
pub fn reply_to(frame: &[u8], default_charset: Charset) -> mfoundry::ingest::Reply {
    let (runtime, ingest) = memory_ingest(default_charset);
    let peer: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    runtime
        .block_on(ingest.handle(bytes::Bytes::copy_from_slice(frame), peer, None))
        .reply
}

/// Connect to the app.
pub async fn connect(app: &TestApp) -> TcpStream {
    let stream = TcpStream::connect(app.local_addr())
        .await
        .expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// MLLP-frame a message.
pub fn framed(message: &[u8]) -> Vec<u8> {
    mfoundry::mllp::frame(message)
}

/// Read one MLLP frame (without framing bytes), or `None` if the server closed the connection
/// or sent nothing within `timeout`. Reads byte by byte so a following frame stays unread.
pub async fn read_frame(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if received.ends_with(&[0x1C, 0x0D]) {
            assert_eq!(
                received.first(),
                Some(&0x0B),
                "a frame starts with a start block"
            );
            return Some(received[1..received.len() - 2].to_vec());
        }
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut byte)).await;
        match read {
            Ok(Ok(0)) | Err(_) => return None,
            Ok(Ok(_)) => received.push(byte[0]),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Ok(Err(error)) => panic!("read failed: {error}"),
        }
    }
}

/// Read one ACK frame, failing the test when none comes within five seconds.
pub async fn expect_ack(stream: &mut TcpStream) -> Vec<u8> {
    read_frame(stream, Duration::from_secs(5))
        .await
        .expect("an ACK frame")
}

/// Assert that the server closes the connection within `timeout` without sending anything.
pub async fn expect_closed_silently(stream: &mut TcpStream, timeout: Duration) {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
        Ok(Ok(0)) => {}
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Ok(count)) => panic!(
            "expected a silent close, got {count} bytes: {:?}",
            String::from_utf8_lossy(&chunk[..count])
        ),
        Ok(Err(error)) => panic!("read failed: {error}"),
        Err(_) => panic!("connection still open after {timeout:?}"),
    }
}

/// Write bytes and flush.
pub async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
}

/// A field of a segment of an ACK, e.g. `field(ack, "MSA", 1)`.
pub fn field(message: &[u8], segment: &str, number: usize) -> String {
    let text = String::from_utf8_lossy(message);
    let line = text
        .split('\r')
        .find(|line| line.starts_with(segment))
        .unwrap_or_else(|| panic!("no {segment} segment in {text:?}"));
    let fields: Vec<&str> = line.split('|').collect();
    let index = if segment == "MSH" { number - 1 } else { number };
    fields.get(index).copied().unwrap_or_default().to_owned()
}

/// An ADT^A01 message with the given control id, version and terminator.
pub fn adt(control_id: &str, version: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20261122080000||ADT^A01^ADT_A01|{control_id}|P|{version}\rEVN|A01|20261122080000\rPID|1||12345^^^HOSP^MR||DOE^JOHN||19700101|M\r"
    )
    .into_bytes()
}

/// The bytes of one in-memory file.
type SharedBytes = Arc<std::sync::RwLock<Vec<u8>>>;

/// An in-memory store (data file, journal and the upgrade file) shared across reopens, for
/// `OutboxOptions::with_storage`; every fsync fails while `fail_sync` is set and panics while
/// `panic_sync` is set.
#[derive(Debug, Clone, Default)]
pub struct MemoryDisk {
    /// Each file's bytes, `None` while it does not exist (a rename moves the bytes; open
    /// handles keep the bytes they opened, as file descriptors keep an inode).
    files: Arc<std::sync::Mutex<[Option<SharedBytes>; 3]>>,
    /// While set, every fsync fails.
    pub fail_sync: Arc<std::sync::atomic::AtomicBool>,
    /// While set, every fsync panics (a bug in the store, as the writer thread sees it).
    pub panic_sync: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryDisk {
    /// The disk as outbox storage.
    pub fn storage(&self) -> Arc<dyn mfoundry::outbox::Storage> {
        Arc::new(self.clone())
    }

    fn index(file: mfoundry::outbox::StoreFile) -> usize {
        match file {
            mfoundry::outbox::StoreFile::Data => 0,
            mfoundry::outbox::StoreFile::Journal => 1,
            mfoundry::outbox::StoreFile::Upgrade => 2,
        }
    }
}

impl mfoundry::outbox::Storage for MemoryDisk {
    fn name(&self, file: mfoundry::outbox::StoreFile) -> String {
        format!("memory:{file:?}")
    }
    fn exists(&self, file: mfoundry::outbox::StoreFile) -> std::io::Result<bool> {
        Ok(self.files.lock().expect("lock")[Self::index(file)].is_some())
    }
    fn open(
        &self,
        file: mfoundry::outbox::StoreFile,
    ) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        let mut files = self.files.lock().expect("lock");
        let bytes = files[Self::index(file)].get_or_insert_with(Default::default);
        Ok(Box::new(MemoryFile {
            bytes: Arc::clone(bytes),
            disk: self.clone(),
        }))
    }
    fn remove(&self, file: mfoundry::outbox::StoreFile) -> std::io::Result<()> {
        self.files.lock().expect("lock")[Self::index(file)] = None;
        Ok(())
    }
    fn rename(
        &self,
        from: mfoundry::outbox::StoreFile,
        to: mfoundry::outbox::StoreFile,
    ) -> std::io::Result<()> {
        let mut files = self.files.lock().expect("lock");
        let moved = files[Self::index(from)].take();
        files[Self::index(to)] = moved;
        Ok(())
    }
    fn sync_directory(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self, file: mfoundry::outbox::StoreFile) -> std::io::Result<Option<u64>> {
        let files = self.files.lock().expect("lock");
        Ok(files[Self::index(file)]
            .as_ref()
            .map(|bytes| bytes.read().expect("lock").len() as u64))
    }
}

/// One file of a [`MemoryDisk`].
#[derive(Debug)]
struct MemoryFile {
    bytes: Arc<std::sync::RwLock<Vec<u8>>>,
    disk: MemoryDisk,
}

impl redb::StorageBackend for MemoryFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.bytes.read().expect("lock").len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let bytes = self.bytes.read().expect("lock");
        let start = usize::try_from(offset).expect("offset");
        let source = bytes
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::other("read past end"))?;
        out.copy_from_slice(source);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.bytes
            .write()
            .expect("lock")
            .resize(usize::try_from(len).expect("len"), 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        assert!(
            !self
                .disk
                .panic_sync
                .load(std::sync::atomic::Ordering::SeqCst),
            "injected panic in fsync"
        );
        if self
            .disk
            .fail_sync
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut bytes = self.bytes.write().expect("lock");
        let start = usize::try_from(offset).expect("offset");
        if bytes.len() < start + data.len() {
            bytes.resize(start + data.len(), 0);
        }
        bytes[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Control ids (MSH-10) of every stored message, in id order.
pub fn stored_control_ids(outbox: &mfoundry::outbox::Outbox) -> Vec<String> {
    outbox
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| record.header.control_id)
        .collect()
}

/// A real `mfoundry serve` process.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: std::process::Child,
    /// The address it listens on.
    pub addr: String,
    /// The admin API's address (None with ADMIN_ADDR=off).
    pub admin_addr: Option<String>,
    /// Its log lines (JSON), as they come.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// The lines it logged before it listened (read while waiting for its address).
    pub early: Vec<String>,
    /// How many of `early` [`Server::wait_for_log`] has looked at.
    early_seen: std::cell::Cell<usize>,
}

impl Server {
    /// The address the listener `name` logged (`listeners:` entries log one line each).
    pub fn listener_addr(&self, name: &str) -> String {
        let marker = format!("\"listener\":\"{name}\"");
        self.early
            .iter()
            .filter(|line| line.contains(&marker) && line.contains("\"addr\":\""))
            .find_map(|line| {
                let start = line.find("\"addr\":\"")? + 8;
                let end = start + line[start..].find('"')?;
                Some(line[start..end].to_owned())
            })
            .unwrap_or_else(|| panic!("listener {name} logged no address: {:#?}", self.early))
    }

    /// `mfoundry stats --json` of this server (its admin API, its token from
    /// `directory/data`).
    pub fn stats_json(&self, directory: &Path) -> serde_json::Value {
        let admin = self.admin_addr.clone().expect("admin API on");
        let (code, stdout, stderr) = run_binary(
            directory,
            &[
                "stats",
                "--json",
                "--admin-addr",
                &admin,
                "--data-dir",
                "data",
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).expect("JSON")
    }

    /// The listener `name` of `mfoundry stats --json` (the server's admin API, its token
    /// from `directory/data`).
    pub fn listener_stats(&self, directory: &Path, name: &str) -> serde_json::Value {
        let stats = self.stats_json(directory);
        stats["listeners"]
            .as_array()
            .and_then(|listeners| listeners.iter().find(|listener| listener["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no listener {name} in {stats}"))
    }

    /// Start `mfoundry serve --config <config>` in `directory` (its working directory) with
    /// `LISTEN_ADDR=127.0.0.1:0`, `DATA_DIR=<directory>/<data>` and `envs`; waits until it
    /// logs its address.
    pub fn start(directory: &Path, config: &str, data: &str, envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mfoundry"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_clear()
            .current_dir(directory)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("DATA_DIR", directory.join(data))
            .env("LOG_FORMAT", "json")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mfoundry starts");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = sender.send(line);
            }
        });
        let admin_on = !envs
            .iter()
            .any(|(name, value)| *name == "ADMIN_ADDR" && value.eq_ignore_ascii_case("off"));
        let mut addr = None;
        let mut admin_addr = None;
        let mut early = Vec::new();
        // The MLLP listener logs first, then the admin API.
        while addr.is_none() || (admin_on && admin_addr.is_none()) {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not log that it listens");
            };
            let value = |key: &str| {
                let start = line.find(key)? + key.len();
                let rest = &line[start..];
                Some(rest[..rest.find('"')?].to_owned())
            };
            if let Some(found) = value("\"addr\":\"") {
                addr = Some(found);
            }
            if let Some(found) = value("\"admin_addr\":\"") {
                admin_addr = Some(found);
            }
            early.push(line);
        }
        Self {
            child,
            addr: addr.expect("address logged"),
            admin_addr,
            lines,
            early,
            early_seen: std::cell::Cell::new(0),
        }
    }

    /// Wait (at most 30 s) until `count` log lines containing `text` have appeared.
    /// Lines logged before the server listened count too (a worker may log before the
    /// admin API's line).
    pub fn wait_for_log(&self, text: &str, count: usize) {
        let mut seen = 0;
        while seen < count && self.early_seen.get() < self.early.len() {
            if self.early[self.early_seen.get()].contains(text) {
                seen += 1;
            }
            self.early_seen.set(self.early_seen.get() + 1);
        }
        // A server that keeps logging other lines must not keep the wait going forever.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while seen < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {text:?} within 60 s ({seen} of {count} seen)"
            );
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {text:?} ({seen} of {count} seen)"));
            if line.contains(text) {
                seen += 1;
            }
        }
    }

    /// SIGTERM, wait for a clean exit, and return every log line not read yet.
    pub fn stop_and_collect(mut self) -> Vec<String> {
        self.terminate();
        // The process is gone: its stderr ends, the reader thread ends, the channel closes.
        self.lines.iter().collect()
    }

    fn terminate(&mut self) {
        signal(&self.child, rustix::process::Signal::TERM);
        assert!(
            self.child.wait().expect("exits").success(),
            "exit 0 after SIGTERM"
        );
    }

    /// Every log line not read yet, once the process has exited (waited for elsewhere).
    pub fn into_lines(self) -> Vec<String> {
        self.lines.iter().collect()
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        self.terminate();
    }
}

/// Run the `mfoundry` binary with `args` in `directory`; returns (exit code, stdout, stderr).
pub fn run_binary(directory: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mfoundry"))
        .args(args)
        .env_clear()
        .current_dir(directory)
        .envs(envs.iter().copied())
        .output()
        .expect("mfoundry runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `mfoundry send` one message (written to a file in `directory`) to the server at `addr`,
/// asserting every answer was AA or CA (exit 0).
pub fn send_text(directory: &Path, addr: &str, message: &str) {
    let file = directory.join("send-text.hl7");
    std::fs::write(&file, message).expect("message file");
    let (code, stdout, stderr) = run_binary(
        directory,
        &["send", "--addr", addr, &file.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    std::fs::remove_file(&file).expect("remove the message file");
}

/// Send `message(sender, sequence)` one after the other over one connection until `stop` or
/// until the connection breaks; return the control ids that got AA. Any other complete answer
/// panics; a connection that ends mid-answer ends the loop (that message was not
/// acknowledged).
pub fn send_until_stopped(
    addr: &str,
    sender: usize,
    stop: &std::sync::atomic::AtomicBool,
    message: impl Fn(usize, usize) -> (String, Vec<u8>),
) -> Vec<String> {
    use std::io::{Read, Write};
    let mut acknowledged = Vec::new();
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return acknowledged;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    for sequence in 0.. {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let (control_id, body) = message(sender, sequence);
        if stream.write_all(&framed(&body)).is_err() {
            break;
        }
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(&[0x1C, 0x0D]) {
            match stream.read(&mut byte) {
                Ok(1) => reply.push(byte[0]),
                _ => return acknowledged,
            }
        }
        let text = String::from_utf8_lossy(&reply);
        if text.contains(&format!("MSA|AA|{control_id}\r")) {
            acknowledged.push(control_id);
        } else {
            panic!("unexpected answer to {control_id}: {text:?}");
        }
    }
    acknowledged
}

/// `mfoundry bench` options for a test: `connections` sending `messages` in all to `addr`,
/// 5 s ACK timeout, no probe, no TLS.
pub fn bench_args(addr: &str, connections: usize, messages: usize) -> mfoundry::cli::BenchArgs {
    mfoundry::cli::BenchArgs {
        addr: addr.to_owned(),
        connections,
        messages,
        file: None,
        timeout: Duration::from_secs(5),
        probe_dir: ".".into(),
        no_probe: true,
        json: false,
        tls: mfoundry::cli::TlsArgs::default(),
        http: None,
        token: None,
        drain: Vec::new(),
        admin_addr: "127.0.0.1:8080".to_owned(),
        data_dir: "./data".into(),
        dicom: false,
        object_size: 512 << 10,
        called_ae: "MFOUNDRY".to_owned(),
        calling_ae: "BENCH".to_owned(),
    }
}

/// The `| `NAME` | `default` | ... |` rows (name → default) of one section of
/// docs/configuration.md, e.g. `"\n## Environment variables\n"`; the section runs to the
/// next `## ` heading.
pub fn configuration_table(heading: &str) -> std::collections::BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let document = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let section = document
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/configuration.md has no {heading:?} section"));
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(2)?.trim_matches('`');
            Some((name.to_owned(), default.to_owned()))
        })
        .collect()
}

/// Send `signal` (SIGTERM, SIGKILL …) to a child process, without the `kill` command.
pub fn signal(child: &std::process::Child, signal: rustix::process::Signal) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a process id");
    rustix::process::kill_process(pid, signal).expect("the signal is sent");
}

/// Files under `directory`, at any depth; a file being written (a dot-name until it is
/// complete) does not count.
pub fn count_files(directory: &Path) -> usize {
    std::fs::read_dir(directory).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| {
                if entry.path().is_dir() {
                    count_files(&entry.path())
                } else {
                    usize::from(!entry.file_name().to_string_lossy().starts_with('.'))
                }
            })
            .sum()
    })
}

/// The names of the files in `folder` (none when it does not exist), sorted.
pub fn file_names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A number of milliseconds in `low..high` taken from the clock (kill times in crash tests).
pub fn pseudo_random_millis(low: u64, high: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::from(elapsed.subsec_nanos()))
        .unwrap_or_default();
    low + nanos % (high - low)
}

/// Wait until `condition` holds (checked every 10 ms), at most `limit` (of paused time in
/// paused tests).
pub async fn eventually_within(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Block until `condition` holds (checked every 50 ms), at most `limit`; past it, fail
/// with what `describe` says (built only then: it may read a log).
pub fn wait_until(
    limit: Duration,
    mut condition: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{}", describe());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `condition` holds (checked every 10 ms), at most 30 s.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    eventually_within(Duration::from_secs(30), what, condition).await;
}
