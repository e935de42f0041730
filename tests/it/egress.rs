//! `EGRESS_ALLOW` through the real binary: `check` and startup refuse a destination outside
//! the list (connectors and the OTLP exporter), and a name that resolves outside it is
//! refused before any connection: a listener on a loopback address the list leaves out sees
//! nothing, while the same gateway with that address allowed does connect.

use crate::common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Server, run_binary};

fn check(dir: &std::path::Path, yaml: &str, envs: &[(&str, &str)]) -> (i32, String) {
    std::fs::write(dir.join("check.yaml"), yaml).expect("config");
    let (code, stdout, stderr) = run_binary(dir, &["check", "--config", "check.yaml"], envs);
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn check_refuses_destinations_outside_the_list() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    let yaml = "connectors:
  - name: ehr
    type: mllp
    host: 192.0.2.10
    port: 2575
  - name: api
    type: http
    url: https://api.example.org:8443/hl7
  - name: warehouse
    type: postgres
    dsn: host=198.51.100.4 port=5432 user=gw dbname=hl7
    table: messages
  - name: archive
    type: file
    directory: out
";
    // Names only: a destination not listed is refused at load, address or name.
    let (code, output) = check(
        dir,
        yaml,
        &[("EGRESS_ALLOW", "ehr.example.org, api.example.org:443")],
    );
    assert_eq!(code, 64, "{output}");
    for connector in ["\"ehr\"", "\"api\"", "\"warehouse\""] {
        assert!(
            output
                .lines()
                .any(|line| line.contains(connector) && line.contains("outside EGRESS_ALLOW")),
            "{connector}: {output}"
        );
    }
    assert!(!output.contains("\"archive\""), "{output}");
    // With a range, an address outside it is refused; a name waits for its resolution.
    let (code, output) = check(dir, yaml, &[("EGRESS_ALLOW", "10.0.0.0/8")]);
    assert_eq!(code, 64, "{output}");
    assert!(
        output.contains("\"ehr\"") && output.contains("\"warehouse\""),
        "{output}"
    );
    assert!(!output.contains("\"api\""), "{output}");
    let (code, output) = check(
        dir,
        yaml,
        &[(
            "EGRESS_ALLOW",
            "192.0.2.0/24, api.example.org:8443, 198.51.100.4:5432",
        )],
    );
    assert_eq!(code, 0, "{output}");
    // The OTLP exporter is held to the list too.
    let (code, output) = check(
        dir,
        "connectors: []\n",
        &[
            ("EGRESS_ALLOW", "10.0.0.0/8"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://192.0.2.99:4318"),
        ],
    );
    assert_eq!(code, 64, "{output}");
    assert!(
        output.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && output.contains("outside EGRESS_ALLOW"),
        "{output}"
    );
    // The exporter resolves names itself: a name must be listed, a range is not enough.
    let otlp = |allow: &str| {
        check(
            dir,
            "connectors: []\n",
            &[
                ("EGRESS_ALLOW", allow),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://collector.example:4318",
                ),
            ],
        )
    };
    let (code, output) = otlp("10.0.0.0/8");
    assert_eq!(code, 64, "{output}");
    assert!(output.contains("list its name"), "{output}");
    let (code, output) = otlp("10.0.0.0/8, collector.example:4318");
    assert_eq!(code, 0, "{output}");
    let (code, output) = check(dir, "connectors: []\n", &[("EGRESS_ALLOW", "bad host!")]);
    assert_eq!(code, 64, "{output}");
    assert!(output.contains("EGRESS_ALLOW"), "{output}");
}

/// Start a gateway whose connectors reach `localhost:<port>` (MLLP and HTTP) with `allow`;
/// send one message; return what the listener saw within a while and the gateway's lines.
fn run(allow: &str) -> (usize, Vec<String>) {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "connectors:
  - name: peer
    type: mllp
    host: localhost
    port: {port}
    connect_timeout: 2s
    ack_timeout: 1s
    retry:
      initial_delay: 10ms
      max_attempts: 1
  - name: web
    type: http
    url: http://localhost:{port}/hl7
    timeout: 2s
    retry:
      initial_delay: 10ms
      max_attempts: 1
"
        ),
    )
    .expect("config");
    let server = Server::start(dir, "gw.yaml", "data", &[("EGRESS_ALLOW", allow)]);
    common::send_text(
        dir,
        &server.addr,
        "MSH|^~\\&|A|B|C|D|20261205120000||ADT^A08|EG1|P|2.5.1\rPID|1||7\r",
    );
    // Both connectors give up (refused, or no ACK / no HTTP answer from this listener).
    let mut dead = Vec::new();
    while dead.len() < 2 {
        let line = server
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("both connectors give up");
        if line.contains("moved to the dead-letter queue") {
            dead.push(line);
        }
    }
    let mut accepted = 0;
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        if listener.accept().is_ok() {
            accepted += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    server.stop();
    (accepted, dead)
}

#[test]
fn a_name_resolving_outside_the_list_is_refused_before_connecting() {
    // localhost is 127.0.0.1 (and ::1): outside 127.0.0.2/32. Allowed at load (a range can
    // judge a name only once resolved), refused at connect.
    let (accepted, dead) = run("127.0.0.2/32");
    assert_eq!(accepted, 0, "no connection reached the listener");
    for line in &dead {
        assert!(
            line.contains("outside EGRESS_ALLOW") && line.contains("127.0.0.1"),
            "{line}"
        );
    }
    // The same gateway with the address allowed connects (the check above can fail).
    let (accepted, dead) = run("127.0.0.1/32");
    assert!(
        dead.iter().all(|line| !line.contains("EGRESS_ALLOW")),
        "{dead:?}"
    );
    assert!(
        accepted >= 1,
        "connections reached the listener: {accepted}"
    );
}
