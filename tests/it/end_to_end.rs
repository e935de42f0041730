//! The README's "Deliver messages", "Receive from several systems", "Change the
//! configuration while it runs" and "Find a patient's messages" walkthroughs, run as a user would (one at a time: they take
//! the same fixed ports). The "Deliver messages" test
//! reads the commands of that section of README.md and runs each with `sh`, in a scratch directory
//! holding `examples/`, the built binary in place of `cargo run --release`. The peers (a
//! second mfoundry as the EMR, `examples/http-receiver.py`) and the gateway run side by side
//! on the README's own addresses; the machine's PostgreSQL takes the results table. ADT must
//! reach the MLLP peer and the HTTP endpoint, ORU the files and the table; a message sent
//! while the receiver is down waits and arrives once it is back; the admin commands reach
//! the gateway (not the EMR).

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var("MFOUNDRY_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

/// The commands of each `sh` block of one README section, continuation lines joined.
fn section_commands(heading: &str) -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    let rest = &readme[start + 4..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| {
            block
                .split("```")
                .next()
                .unwrap_or_default()
                .replace("\\\n", " ")
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A README command with the built binary in place of `cargo run --release`.
fn with_binary(command: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_mfoundry");
    let replaced = command.replace("cargo run --release -- ", &format!("'{binary}' "));
    match replaced.strip_suffix("cargo run --release") {
        Some(head) => format!("{head}'{binary}'"),
        None => replaced,
    }
}

/// A README command that keeps running (a server) rather than finishing.
fn is_server(command: &str) -> bool {
    command.ends_with("cargo run --release")
        || command.contains("-- serve")
        || command.contains("http-receiver.py")
}

/// The TCP ports a server command listens on, as the README writes them.
fn ports_of(command: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for word in command.split_whitespace() {
        if let Some(address) = word.strip_prefix("LISTEN_ADDR=") {
            ports.extend(
                address
                    .rsplit(':')
                    .next()
                    .and_then(|port| port.parse::<u16>().ok()),
            );
        }
    }
    if let Some(rest) = command.split("http-receiver.py").nth(1) {
        ports.extend(
            rest.split_whitespace()
                .next()
                .and_then(|port| port.parse::<u16>().ok()),
        );
    }
    if command.contains("-- serve") && !command.contains("LISTEN_ADDR=") {
        // A configuration with `listeners:` gives the addresses; else the defaults: MLLP.
        let listeners = config_listen_ports(command);
        if listeners.is_empty() {
            ports.push(2575);
        }
        ports.extend(listeners);
        ports.push(8080); // the admin API
    }
    ports
}

/// The ports of the `listen_addr`s of the `--config` file a command names (from the
/// repository's copy), when it has `listeners:`.
fn config_listen_ports(command: &str) -> Vec<u16> {
    let Some(file) = command
        .split_whitespace()
        .skip_while(|word| *word != "--config")
        .nth(1)
    else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_default();
    if !text.contains("\nlisteners:") {
        return Vec::new();
    }
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("listen_addr:"))
        .filter_map(|address| {
            address
                .trim()
                .trim_matches('"')
                .rsplit(':')
                .next()
                .and_then(|port| port.parse::<u16>().ok())
        })
        .collect()
}

/// One command run by `sh` in `directory`, in a process group of its own.
fn spawn(directory: &Path, command: &str) -> Child {
    use std::os::unix::process::CommandExt as _;
    Command::new("sh")
        .arg("-c")
        .arg(with_binary(command))
        .current_dir(directory)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", directory)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("sh runs")
}

/// Run a command to its end: (exit code, stdout, stderr).
fn run(directory: &Path, command: &str) -> (i32, String, String) {
    let output = spawn(directory, command)
        .wait_with_output()
        .expect("sh ends");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A server started from the README, stopped (SIGTERM to its process group) when dropped.
struct Background {
    command: String,
    child: Child,
}

impl Background {
    fn start(directory: &Path, command: &str) -> Self {
        let child = spawn(directory, command);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut background = Self {
            command: command.to_owned(),
            child,
        };
        for port in ports_of(command) {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = background.child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = background.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    panic!("`{command}` exited ({status}) before listening on {port}:\n{stderr}");
                }
                assert!(
                    Instant::now() < deadline,
                    "`{command}` never listened on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        background
    }

    fn stop(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        let group = rustix::process::Pid::from_raw(pid);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "`{}` did not stop", self.command);
            std::thread::sleep(Duration::from_millis(50));
        }
        // `sh` may have forked the command rather than become it: wait until the whole group
        // is gone (a server that drains still holds its data file).
        while group.is_some_and(|group| rustix::process::test_kill_process_group(group).is_ok()) {
            assert!(Instant::now() < deadline, "`{}` did not stop", self.command);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_within(Duration::from_secs(30), what, done);
}

fn wait_until_within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The README's walkthroughs listen on the same fixed ports (2575, 8080): one at a time.
static README_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether every port is free; when not, fail under `MFOUNDRY_REQUIRE_SERVICES=1`, else
/// print why the test is skipped.
fn ports_free(ports: &[u16]) -> bool {
    let busy: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_err())
        .collect();
    if busy.is_empty() {
        return true;
    }
    assert!(
        !required(),
        "the README's ports {busy:?} are taken on this machine"
    );
    eprintln!("SKIPPED: the README's ports {busy:?} are taken on this machine");
    false
}

/// Files under `directory` (recursively), or 0 when it does not exist.
fn files_in(directory: &Path) -> usize {
    common::count_files(directory)
}

/// "Receive from several systems": four listeners (two MLLP, HTTP, a folder), a batch sent
/// whole, a file dropped; every message reaches its listener's connector and `stats` shows
/// the four listeners.
/// Copy `examples/` into `dir` and run a section's first block there: its commands, and
/// the gateway it starts in the background, once it listens on every one of `ports`.
fn start_section(dir: &Path, start: &[String], ports: &[u16]) -> Background {
    let copy = Command::new("cp")
        .arg("-r")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .arg(dir)
        .status()
        .expect("cp");
    assert!(copy.success());
    let mut server = None;
    for command in start {
        if is_server(command) {
            let background = Background::start(dir, command);
            for port in ports {
                wait_until(&format!("port {port}"), || {
                    std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok()
                });
            }
            server = Some(background);
        } else {
            let (code, _, stderr) = run(dir, command);
            assert_eq!(code, 0, "`{command}`: {stderr}");
        }
    }
    server.expect("the section starts the gateway")
}

#[test]
fn the_readme_several_systems_walkthrough_runs_as_written() {
    let _ports = README_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let blocks = section_commands("Receive from several systems");
    assert_eq!(blocks.len(), 2, "the section's sh blocks: {blocks:#?}");
    let (start, commands) = (&blocks[0], &blocks[1]);
    if !ports_free(&[2575, 2576, 8443, 8080]) {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            !required(),
            "curl is required for the README's HTTP example"
        );
        eprintln!("SKIPPED: curl is needed for the README's HTTP example");
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let mut server = start_section(dir, start, &[2575, 2576, 8443]);
    let mut printed = String::new();
    for command in commands {
        let (code, stdout, stderr) = run(dir, command);
        assert_eq!(code, 0, "`{command}`: {stdout}{stderr}");
        printed.push_str(&stdout);
    }
    assert!(
        printed.contains("batch of 2 ACKs: 2 AA"),
        "send --batch prints the batch: {printed}"
    );
    assert!(
        printed.contains("MSA|AA|"),
        "curl prints the ACK: {printed}"
    );
    for name in ["adt-epic", "lab-results", "hl7-http", "file-drop"] {
        assert!(printed.contains(name), "stats shows {name}: {printed}");
    }
    let received = dir.join("received");
    wait_until("every message delivered", || {
        files_in(&received.join("adt")) == 3
            && files_in(&received.join("lab")) == 1
            && files_in(&received.join("http")) == 1
            && files_in(&received.join("files")) == 1
    });
    wait_until("the dropped file moved to done", || {
        files_in(&dir.join("inbox/done")) == 1
    });
    server.stop();
}

#[test]
fn the_readme_reload_walkthrough_runs_as_written() {
    let _ports = README_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let blocks = section_commands("Change the configuration while it runs");
    assert_eq!(blocks.len(), 2, "the section's sh blocks: {blocks:#?}");
    let (start, commands) = (&blocks[0], &blocks[1]);
    if !ports_free(&[2575, 8080]) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let mut server = start_section(dir, start, &[2575]);
    let mut printed = String::new();
    for command in commands {
        let (code, stdout, stderr) = run(dir, command);
        assert_eq!(code, 0, "`{command}`: {stdout}{stderr}");
        printed.push_str(&stdout);
    }
    let received = dir.join("received");
    wait_until("the ADT filed, the lab result archived", || {
        files_in(&received.join("adt")) == 1 && files_in(&received.join("archive")) == 1
    });
    assert!(
        printed.lines().any(|line| line.starts_with("archive ")),
        "stats lists the added connector: {printed}"
    );
    server.stop();
}

#[test]
fn the_readme_deliver_messages_walkthrough_runs_as_written() {
    let _ports = README_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let blocks = section_commands("Deliver messages");
    assert_eq!(blocks.len(), 4, "the section's sh blocks: {blocks:#?}");
    let (peers, send, resend, admin) = (&blocks[0], &blocks[1], &blocks[2], &blocks[3]);
    assert!(peers.iter().all(|command| is_server(command)), "{peers:?}");

    // Its own addresses must be free (it takes the defaults, 2575 and 8080).
    let ports: Vec<u16> = peers.iter().flat_map(|command| ports_of(command)).collect();
    assert!(ports.contains(&2575) && ports.contains(&8080), "{ports:?}");
    if !ports_free(&ports) {
        return;
    }
    let dsn = "host=127.0.0.1 user=postgres dbname=postgres";
    assert!(
        peers.iter().any(|command| command.contains(dsn)),
        "the README's DSN changed: update this test's PostgreSQL check"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = match runtime.block_on(tokio_postgres::connect(dsn, tokio_postgres::NoTls)) {
        Ok((client, connection)) => {
            runtime.spawn(connection);
            client
        }
        Err(error) => {
            assert!(
                !required(),
                "PostgreSQL is required but {dsn:?} failed: {error}"
            );
            eprintln!("SKIPPED: PostgreSQL not reachable at {dsn:?} ({error})");
            return;
        }
    };
    if Command::new("python3").arg("--version").output().is_err() {
        assert!(
            !required(),
            "python3 is required for the example HTTP receiver"
        );
        eprintln!("SKIPPED: python3 is needed for the example HTTP receiver");
        return;
    }

    // A user's clone: examples/ beside where the commands run.
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::os::unix::fs::symlink(manifest.join("examples"), dir.join("examples")).expect("symlink");

    let mut servers: Vec<Background> = peers
        .iter()
        .map(|command| Background::start(dir, command))
        .collect();

    // Every example message, all accepted.
    assert_eq!(send.len(), 1, "{send:?}");
    let (code, stdout, stderr) = run(dir, &send[0]);
    assert_eq!(code, 0, "`{}`:\n{stdout}{stderr}", send[0]);
    assert!(stdout.lines().count() >= 5, "{stdout}");

    // 4 ADT (adt-a01, two in the batch file, the Latin-1 A08) to HTTP and MLLP, 1 ORU to
    // the files and the table.
    wait_until("4 ADT in ./http-in", || {
        common::count_files(&dir.join("http-in")) == 4
    });
    wait_until("1 ORU in ./results", || {
        common::count_files(&dir.join("results")) == 1
    });
    let first_http = std::fs::read(dir.join("http-in/1.hl7")).expect("first request body");
    let first_message =
        std::fs::read(manifest.join("examples/messages/adt-a01.hl7")).expect("example");
    assert_eq!(
        common::field(&first_http, "MSH", 10),
        common::field(&first_message, "MSH", 10)
    );

    // The receiver stops; a new message is accepted, waits, and arrives once it is back.
    let receiver = peers
        .iter()
        .position(|command| command.contains("http-receiver.py"))
        .expect("the receiver");
    servers[receiver].stop();
    assert_eq!(resend.len(), 2, "{resend:?}");
    let (code, stdout, stderr) = run(dir, &resend[0]);
    assert_eq!(code, 0, "`{}`: {stderr}", resend[0]);
    let (code, stdout_2, stderr) = run(dir, &resend[1]);
    assert_eq!(code, 0, "`{}`:\n{stdout}{stdout_2}{stderr}", resend[1]);
    assert!(stdout_2.contains("MSG00002\tAA"), "{stdout_2}");
    std::thread::sleep(Duration::from_secs(2));
    servers[receiver] = Background::start(dir, &peers[receiver]);
    // The restarted receiver numbers its files from 1 again. The default backoff (full
    // jitter, doubling from 1 s) can put the next attempt over 30 s away after a few quick
    // failures while the receiver was down; it comes within the 5-minute ceiling.
    wait_until_within(Duration::from_secs(120), "MSG00002 at the receiver", || {
        // The receiver writes the file in place: it may be read while still empty.
        std::fs::read(dir.join("http-in/1.hl7")).is_ok_and(|body| {
            body.starts_with(b"MSH") && common::field(&body, "MSH", 10) == "MSG00002"
        })
    });

    // The admin commands reach the gateway, with its token from ./data/admin.token.
    for command in admin {
        let (code, stdout, stderr) = run(dir, command);
        assert_eq!(code, 0, "`{command}`:\n{stdout}{stderr}");
        if command.ends_with(" stats") {
            for connector in ["emr-mllp", "emr-http", "results-files", "results-db"] {
                assert!(
                    stdout.contains(connector),
                    "`{command}` shows no {connector}:\n{stdout}"
                );
            }
        }
    }

    for server in servers.iter_mut().rev() {
        server.stop();
    }

    // The EMR stored the four ADT messages, then MSG00002.
    let open = |data: &str| {
        let mut options =
            mfoundry::outbox::OutboxOptions::new(dir.join(data).join("mfoundry.redb"));
        options.dedup_window = None;
        mfoundry::outbox::Outbox::open_existing(options).expect("opens")
    };
    let (emr_outbox, writer) = open("emr-data");
    let types: Vec<String> = emr_outbox
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| format!("{}^{}", record.header.msg_type, record.header.trigger))
        .collect();
    assert_eq!(
        types,
        vec!["ADT^A01", "ADT^A04", "ADT^A04", "ADT^A08", "ADT^A01"]
    );
    drop(emr_outbox);
    writer.join();

    // The table holds the ORU, keyed by this gateway's data file.
    let (gateway_outbox, writer) = open("data");
    let source = format!("{:016x}", gateway_outbox.instance_id());
    drop(gateway_outbox);
    writer.join();
    let rows = runtime
        .block_on(client.query(
            "SELECT msg_type, control_id FROM hl7_results WHERE source = $1",
            &[&source],
        ))
        .expect("select");
    let found: Vec<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(found, vec![("ORU".to_owned(), "LAB00042".to_owned())]);
    runtime
        .block_on(client.execute("DELETE FROM hl7_results WHERE source = $1", &[&source]))
        .expect("clean up");
}

/// "Find a patient's messages, and the console": the examples sent to a gateway with the
/// defaults, one patient found by identifier, another (sent in ISO 8859-1) by family name,
/// and the admin token printed for the console.
#[test]
fn the_readme_patient_search_walkthrough_runs_as_written() {
    let _ports = README_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let blocks = section_commands("Find a patient's messages, and the console");
    assert_eq!(blocks.len(), 2, "the section's sh blocks: {blocks:#?}");
    let (start, commands) = (&blocks[0], &blocks[1]);
    assert_eq!(commands.len(), 4, "{commands:#?}");
    if !ports_free(&[2575, 8080]) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let mut server = start_section(dir, start, &[2575, 8080]);
    let printed: Vec<String> = commands
        .iter()
        .map(|command| {
            let (code, stdout, stderr) = run(dir, command);
            assert_eq!(code, 0, "`{command}`: {stdout}{stderr}");
            stdout
        })
        .collect();
    assert!(
        printed[1].contains("MSG00001") && !printed[1].contains("MSG-LATIN1"),
        "the search by identifier: {}",
        printed[1]
    );
    assert!(
        printed[2].contains("MSG-LATIN1") && !printed[2].contains("MSG00001"),
        "the search by family name: {}",
        printed[2]
    );
    let token = std::fs::read_to_string(dir.join("data/admin.token")).expect("the token");
    assert_eq!(printed[3].trim(), token.trim());
    server.stop();
}

#[test]
fn the_readme_dicom_walkthrough_runs_as_written() {
    let _ports = README_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let blocks = section_commands("Receive and route DICOM");
    assert_eq!(blocks.len(), 2, "the section's sh blocks: {blocks:#?}");
    let (start, commands) = (&blocks[0], &blocks[1]);
    assert_eq!(commands.len(), 6, "{commands:#?}");
    let dcmtk = ["dump2dcm", "echoscu", "storescu"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if !dcmtk {
        let reason = "DCMTK (dump2dcm, echoscu, storescu) is not installed";
        assert!(!required(), "{reason}");
        eprintln!("SKIPPED: {reason}");
        return;
    }
    if !ports_free(&[11112, 8080]) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let mut server = start_section(dir, start, &[11112, 8080]);
    let printed: Vec<String> = commands
        .iter()
        .map(|command| {
            let (code, stdout, stderr) = run(dir, command);
            assert_eq!(code, 0, "`{command}`: {stdout}{stderr}");
            stdout
        })
        .collect();
    assert!(
        printed[4].contains("DICOM^CT") && printed[4].contains("DICOM^SR"),
        "both objects listed by patient: {}",
        printed[4]
    );
    let oru = &printed[5];
    assert!(oru.starts_with("MSH|^~\\&|CT1|"), "{oru}");
    assert!(oru.contains("|ORU^R01^ORU_R01|"), "{oru}");
    assert!(
        oru.contains("OBX|1|NM|8867-4^Heart rate^LN|1|72|/min^per minute^UCUM|||||F"),
        "{oru}"
    );
    assert_eq!(common::count_files(&dir.join("dicom-out/archive")), 2);
    // The same objects again: nothing new is stored.
    let (code, _, stderr) = run(dir, &commands[3]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(common::count_files(&dir.join("dicom-out/archive")), 2);
    server.stop();
}
