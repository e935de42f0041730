//! `listeners:`: several MLLP listeners in one gateway, each with its own address, TLS,
//! rules and `tls_senders`; `inbound` names the listener a message came through, so
//! connectors route by source; `stats` shows the listeners side by side. A setting that
//! belongs to one listener, set beside `listeners:`, stops the load naming both.

use crate::common;

use std::path::Path;
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_mfoundry");

/// `mfoundry send` of one message file: the ACK code it printed.
fn send(directory: &Path, addr: &str, tls: bool, message: &str, file: &str) -> String {
    let path = directory.join(file);
    std::fs::write(&path, message.replace('\n', "\r")).expect("write message");
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .current_dir(directory)
        .args(["send", "--addr", addr]);
    if tls {
        command.args([
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "client.pem",
            "--tls-key",
            "client.key",
        ]);
    }
    let output = command.arg(&path).output().expect("send runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    stdout
        .lines()
        .next()
        .and_then(|line| line.split('\t').nth(1))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "no ACK for {file}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

const CONFIG: &str = r#"
listeners:
  - name: adt-epic
    type: mllp
    listen_addr: "127.0.0.1:0"
    rules: [require-patient-id]
  - name: lab-results
    type: mllp
    listen_addr: "127.0.0.1:0"
    max_connections: 4
    tls: {cert_file: server.pem, key_file: server.key, client_ca: ca.pem}
    tls_senders:
      - identity: mfoundry
        sending_applications: [LAB]
        sending_facilities: ["*"]
connectors:
  - name: from-adt
    type: file
    directory: out-adt
    filter: inbound == "adt-epic"
  - name: from-lab
    type: file
    directory: out-lab
    filter: inbound == "lab-results"
validation:
  rules:
    - name: require-patient-id
      expression: 'pid.?id.orValue("") != ""'
      message: PID-3 must carry a patient identifier
    - name: no-immunizations
      expression: msh.msg_type != "VXU"
      message: immunizations go to the registry interface
"#;

fn message(sender: &str, kind: &str, control: &str, patient: &str) -> String {
    format!(
        "MSH|^~\\&|{sender}|NORTH|MFOUNDRY|HUB|20261206083000||{kind}|{control}|P|2.5.1\nPID|1||{patient}^^^H^MR||DOE^JANE\n"
    )
}

#[test]
fn several_listeners_route_by_inbound_with_their_own_tls_rules_and_senders() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    common::certs::certificates(dir);
    std::fs::write(dir.join("gateway.yaml"), CONFIG).expect("config");
    // No LISTEN_ADDR: the entries give the addresses.
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let adt = server.listener_addr("adt-epic");
    let lab = server.listener_addr("lab-results");
    assert_ne!(adt, lab);

    // adt-epic: plain, only require-patient-id.
    assert_eq!(
        send(
            dir,
            &adt,
            false,
            &message("ADT1", "ADT^A01", "A1", "123"),
            "a1.hl7"
        ),
        "AA"
    );
    assert_eq!(
        send(
            dir,
            &adt,
            false,
            &message("ADT1", "VXU^V04", "A2", "123"),
            "a2.hl7"
        ),
        "AA"
    );
    assert_eq!(
        send(
            dir,
            &adt,
            false,
            &message("ADT1", "ADT^A01", "A3", ""),
            "a3.hl7"
        ),
        "AR"
    );
    // lab-results: mTLS, every rule, and its certificate may send as LAB only.
    assert_eq!(
        send(
            dir,
            &lab,
            true,
            &message("LAB", "ORU^R01", "L1", "123"),
            "l1.hl7"
        ),
        "AA"
    );
    assert_eq!(
        send(
            dir,
            &lab,
            true,
            &message("LAB", "VXU^V04", "L2", "123"),
            "l2.hl7"
        ),
        "AR"
    );
    assert_eq!(
        send(
            dir,
            &lab,
            true,
            &message("ADT1", "ORU^R01", "L3", "123"),
            "l3.hl7"
        ),
        "AR"
    );
    // Without a client certificate the lab port takes nothing.
    let plain = Command::new(BINARY)
        .env_clear()
        .current_dir(dir)
        .args(["send", "--addr", &lab, "--tls-ca", "ca.pem", "a1.hl7"])
        .output()
        .expect("send runs");
    assert!(!plain.status.success());

    // Each connector got what came through its listener.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::count_files(&dir.join("out-adt")) + common::count_files(&dir.join("out-lab")) < 3
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(common::count_files(&dir.join("out-adt")), 2, "A1 and A2");
    assert_eq!(common::count_files(&dir.join("out-lab")), 1, "L1");

    // The listeners side by side.
    let listener = |name: &str| server.listener_stats(dir, name);
    let epic = listener("adt-epic");
    assert_eq!(
        (epic["received"].as_u64(), epic["accepted"].as_u64()),
        (Some(3), Some(2))
    );
    let lab_stats = listener("lab-results");
    assert_eq!(
        (
            lab_stats["accepted"].as_u64(),
            lab_stats["rejected"].as_u64()
        ),
        (Some(1), Some(2))
    );
    server.stop();
}

/// `mfoundry check` of `config` with `envs`: (exit code, what it printed).
fn check(directory: &Path, config: &str, envs: &[(&str, &str)]) -> (i32, String) {
    std::fs::write(directory.join("check.yaml"), config).expect("config");
    let output = Command::new(BINARY)
        .env_clear()
        .current_dir(directory)
        .env("DATA_DIR", directory.join("data"))
        .envs(envs.iter().copied())
        .args(["check", "--config", "check.yaml"])
        .output()
        .expect("check runs");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn settings_of_one_listener_beside_listeners_are_refused_naming_both() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let two = "listeners:\n  - {name: a, type: mllp, listen_addr: \"127.0.0.1:2601\"}\n  - {name: b, type: mllp, listen_addr: \"127.0.0.1:2602\"}\n";
    let (code, printed) = check(dir, two, &[]);
    assert_eq!(code, 0, "{printed}");

    // LISTEN_ADDR in the environment, TLS files in the file's settings.
    let (code, printed) = check(dir, two, &[("LISTEN_ADDR", ":2575")]);
    assert_eq!(code, 64, "{printed}");
    assert!(
        printed.contains("LISTEN_ADDR (set in the environment)") && printed.contains("listeners:"),
        "{printed}"
    );
    let (code, printed) = check(
        dir,
        &format!("tls_cert_file: server.pem\ntls_key_file: server.key\n{two}"),
        &[],
    );
    assert_eq!(code, 64, "{printed}");
    assert!(
        printed.contains("TLS_CERT_FILE") && printed.contains("tls.cert_file"),
        "{printed}"
    );

    // Everything else wrong with the entries, in one run, each named.
    let broken = r#"
tls_senders:
  - {identity: x, sending_applications: [A], sending_facilities: [B]}
listeners:
  - {name: a, type: mllp, listen_addr: "127.0.0.1:2601", rules: [no-such-rule]}
  - {name: a, type: mllp, listen_addr: "127.0.0.1:2601"}
  - {name: c, type: smtp, listen_addr: ":25"}
  - {name: d, type: mllp}
  - {name: e, type: mllp, listen_addr: ":2603", max_connections: lots, colour: blue}
validation:
  rules:
    - {name: require-control-id, expression: 'msh.control_id != ""'}
"#;
    let (code, printed) = check(dir, broken, &[]);
    assert_eq!(code, 64, "{printed}");
    for expected in [
        "tls_senders belongs to the listener",
        "no-such-rule",
        "another listener has this name",
        "takes the port of listener \"a\"",
        "use one of mllp",
        "needs `listen_addr`",
        "max_connections=\"lots\"",
        "colour",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
}

#[test]
fn interface_tests_run_as_one_listener_receives_them() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    common::certs::certificates(dir);
    std::fs::write(dir.join("gateway.yaml"), CONFIG).expect("config");
    let case = dir.join("cases/vxu");
    std::fs::create_dir_all(&case).expect("case directory");
    std::fs::write(
        case.join("message.hl7"),
        message("LAB", "VXU^V04", "C1", "123").replace('\n', "\r"),
    )
    .expect("message");
    // `--update` writes what the gateway does; run as each listener.
    let expected = |listener: &str| {
        let output = Command::new(BINARY)
            .env_clear()
            .current_dir(dir)
            .args([
                "test",
                "--config",
                "gateway.yaml",
                "--listener",
                listener,
                "--update",
                "cases",
            ])
            .output()
            .expect("test runs");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(case.join("expect.yaml")).expect("expect.yaml")
    };
    // adt-epic applies only require-patient-id and routes to from-adt ...
    let adt = expected("adt-epic");
    assert!(adt.contains("ack: AA") && adt.contains("from-adt"), "{adt}");
    // ... lab-results applies every rule: the VXU is refused.
    let lab = expected("lab-results");
    assert!(lab.contains("ack: AR"), "{lab}");
    let unknown = Command::new(BINARY)
        .env_clear()
        .current_dir(dir)
        .args([
            "test",
            "--config",
            "gateway.yaml",
            "--listener",
            "nope",
            "cases",
        ])
        .output()
        .expect("test runs");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("adt-epic, lab-results"));
}
