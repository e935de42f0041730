//! The binary as a user runs it: `mfoundry` (serve) and `mfoundry send`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mfoundry");

/// A running `mfoundry` server process, killed on drop.
struct Server {
    child: Child,
    addr: String,
    logs: mpsc::Receiver<String>,
    /// Working and data directory of the server.
    directory: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra_env: &[(&str, &str)]) -> Server {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .current_dir(directory.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("mfoundry starts");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    while addr.is_none() {
        let line = logs
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line before the listener is up");
        if line.contains("listening for MLLP") {
            let start = line.find("\"addr\":\"").expect("addr field") + 8;
            let end = start + line[start..].find('"').expect("end quote");
            addr = Some(line[start..end].to_owned());
        }
    }
    Server {
        child,
        addr: addr.expect("address"),
        logs,
        directory,
    }
}

fn examples() -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages");
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("examples/messages")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hl7"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn send_every_example_and_get_one_accept_per_message() {
    let server = serve(&[]);
    let output = Command::new(BINARY)
        .arg("send")
        .arg("--addr")
        .arg(&server.addr)
        .args(examples())
        .output()
        .expect("send runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let expected_messages: usize = examples()
        .iter()
        .map(|path| {
            mfoundry::hl7::split_messages(&std::fs::read(path).expect("read"))
                .expect("splits")
                .len()
        })
        .sum();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected_messages, "{stdout}");
    for line in &lines {
        let columns: Vec<&str> = line.split('\t').collect();
        assert_eq!(columns.len(), 3, "{line}");
        assert!(columns[1] == "AA" || columns[1] == "CA", "{line}");
    }
    assert!(lines.iter().any(|line| line.starts_with("MSG00001\tAA")));
    assert!(lines.iter().any(|line| line.starts_with("RAD-2\tCA")));
}

#[test]
fn send_reports_rejections_and_exits_one() {
    let server = serve(&[]);
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("bad.hl7");
    std::fs::write(
        &file,
        "MSH|^~\\&|A|B|C|D|20261122080000|||NOTYPE|P|2.5.1\nPID|1\nMSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|GOOD|P|2.5.1\n",
    )
    .expect("write");
    let output = Command::new(BINARY)
        .args(["send", "--addr", &server.addr])
        .arg(&file)
        .output()
        .expect("send runs");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("NOTYPE\tAR\tMSH-9 (message type) is empty; it is required"),
        "{stdout}"
    );
    assert!(stdout.contains("GOOD\tAA"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 2 messages were not accepted"));
}

#[test]
fn send_without_a_server_exits_two_with_a_reason() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let output = Command::new(BINARY)
        .args(["send", "--addr", &addr])
        .args(examples().iter().take(1))
        .output()
        .expect("send runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");

    let output = Command::new(BINARY)
        .args(["bench", "--no-probe", "-n", "10", "--addr", &addr])
        .output()
        .expect("bench runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {addr}")),
        "{stderr}"
    );
    // The cause once, not repeated by the error chain.
    assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
}

#[test]
fn invalid_settings_exit_64_naming_each_variable() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("LISTEN_ADDR", "2575")
        .env("IDLE_TIMEOUT", "30")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .env("MFOUNDRY_PORT", "tcp://10.0.0.1:2575")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LISTEN_ADDR=\"2575\""), "{stderr}");
    assert!(stderr.contains("IDLE_TIMEOUT=\"30\""), "{stderr}");
    assert!(
        !stderr.contains("PORT"),
        "foreign variables are ignored: {stderr}"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = serve(&[("KUBERNETES_SERVICE_PORT", "443")]);
    crate::common::signal(&server.child, rustix::process::Signal::TERM);
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = server.child.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = exited.expect("server exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        server.directory.path().join("data/mfoundry.redb").exists(),
        "the outbox lives in ./data by default"
    );
    let logs: Vec<String> = server.logs.try_iter().collect();
    assert!(
        logs.iter().any(|line| line.contains("shutdown requested")),
        "{logs:?}"
    );
}

/// Text logs to something that is not a terminal (a file, a collector) carry no colour
/// codes.
#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    use std::io::BufRead;
    let directory = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mfoundry"))
        .env_clear()
        .current_dir(directory.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "off")
        .env("DATA_DIR", directory.path().join("data"))
        .env("LOG_FORMAT", "text")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let listening = line.contains("listening");
        lines.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|line| line.contains("listening")),
        "{lines:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
    }
}

/// A second gateway on an address in use stops, naming the setting to change and what to.
#[test]
fn an_address_in_use_names_the_setting_to_change() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("gw.yaml"), "connectors: []\n").expect("config");
    let first = crate::common::Server::start(dir, "gw.yaml", "data-1", &[]);
    let admin = first.admin_addr.clone().expect("admin API");
    let data = dir.join("data-2").display().to_string();
    for (setting, value, listen) in [
        ("ADMIN_ADDR", admin.as_str(), "127.0.0.1:0"),
        ("LISTEN_ADDR", first.addr.as_str(), first.addr.as_str()),
    ] {
        let admin_addr = if setting == "ADMIN_ADDR" {
            value
        } else {
            "off"
        };
        let (code, stdout, stderr) = crate::common::run_binary(
            dir,
            &["serve", "--config", "gw.yaml"],
            &[
                ("LISTEN_ADDR", listen),
                ("ADMIN_ADDR", admin_addr),
                ("DATA_DIR", data.as_str()),
            ],
        );
        assert_ne!(code, 0, "{stdout}{stderr}");
        assert!(
            stderr.contains("the address is in use")
                && stderr.contains(&format!("set {setting} to")),
            "{stderr}"
        );
    }
    first.stop();
}
