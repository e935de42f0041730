//! HTTP intake (`type: http` listeners) run as a sender meets it: the real binary with an MLLP
//! and an HTTP listener side by side; `POST /hl7` with a bearer token from `tokens_file`
//! answers with the ACK (200 AA, 422 AR), JSON bodies work, a retransmit gets the original
//! ACK, anything else is refused with a clear status and nothing stored. The configuration
//! refuses an HTTP listener anyone could post to.

use crate::common;
use common::http::{Answer, request};

use std::process::Command;
use std::time::Duration;

use mfoundry::admin::auth::{generate_token, hash_token, hex};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_mfoundry");

const CONFIG: &str = r#"
listeners:
  - name: adt
    type: mllp
    listen_addr: "127.0.0.1:0"
  - name: hl7-http
    type: http
    listen_addr: "127.0.0.1:0"
    tokens_file: intake-tokens
    max_frame_size: 1MiB
connectors:
  - name: from-http
    type: file
    directory: out-http
    filter: inbound == "hl7-http"
validation:
  rules:
    - name: require-patient-id
      expression: 'pid.?id.orValue("") != ""'
      message: PID-3 must carry a patient identifier
"#;

fn message(control: &str, patient: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|NORTH|MFOUNDRY|HUB|20261206083000||ORU^R01|{control}|P|2.5.1\rPID|1||{patient}^^^H^MR||DOE^JANE\r"
    )
}

#[test]
fn post_hl7_answers_with_the_ack_after_the_commit() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let token = generate_token().expect("token");
    std::fs::write(
        dir.join("intake-tokens"),
        format!("lab-system viewer {}\n", hex(&hash_token(&token))),
    )
    .expect("tokens");
    std::fs::write(dir.join("gateway.yaml"), CONFIG).expect("config");
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let http = server.listener_addr("hl7-http");
    let bearer = format!("Bearer {token}");
    let hl7 = [
        ("Content-Type", "application/hl7-v2"),
        ("Authorization", bearer.as_str()),
    ];

    // No token, a wrong token: refused before the body is read.
    let anonymous = request(
        &http,
        "POST",
        "/hl7",
        &[("Content-Type", "application/hl7-v2")],
        message("H0", "1").as_bytes(),
    );
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let wrong = request(
        &http,
        "POST",
        "/hl7",
        &[("Authorization", "Bearer mft_0000")],
        message("H0", "1").as_bytes(),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");

    // Accepted: 200 with the ACK; a retransmit gets the same ACK and is not stored twice.
    let accepted = request(&http, "POST", "/hl7", &hl7, message("H1", "123").as_bytes());
    assert_eq!(accepted.status, 200, "{accepted:?}");
    assert_eq!(accepted.content_type, "application/hl7-v2");
    assert!(accepted.body.contains("\rMSA|AA|H1"), "{accepted:?}");
    let again = request(&http, "POST", "/hl7", &hl7, message("H1", "123").as_bytes());
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, accepted.body.as_str())
    );
    // Refused by a rule: 422 with the AR.
    let refused = request(&http, "POST", "/hl7", &hl7, message("H2", "").as_bytes());
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(refused.body.contains("\rMSA|AR|H2"), "{refused:?}");
    // JSON in, JSON out; LF line endings are segment ends too.
    let json_body = serde_json::json!({ "message": message("H3", "456").replace('\r', "\n") });
    let json = request(
        &http,
        "POST",
        "/hl7",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", bearer.as_str()),
        ],
        json_body.to_string().as_bytes(),
    );
    assert_eq!(json.status, 200, "{json:?}");
    let answer: Value = serde_json::from_str(&json.body).expect("JSON answer");
    assert_eq!(answer["code"], "AA");
    assert!(
        answer["ack"]
            .as_str()
            .is_some_and(|ack| ack.contains("MSA|AA|H3"))
    );

    // What cannot be a message: 400, 413, 415, 404, 405; nothing stored, and no answer
    // repeats what the body held (here a patient's name without a header).
    let headless = b"PID|1||999^^^H^MR||DOE^JOHN\r".to_vec();
    let mut oversize = hl7.to_vec();
    oversize.push(("Content-Length", "1048577"));
    for (method, path, headers, body, status) in [
        ("POST", "/hl7", hl7.to_vec(), headless.clone(), 400),
        ("POST", "/hl7", oversize, b"MSH".to_vec(), 413),
        ("POST", "/hl7", hl7.to_vec(), Vec::new(), 400),
        (
            "POST",
            "/hl7",
            vec![
                ("Content-Type", "application/json"),
                ("Authorization", bearer.as_str()),
            ],
            br#"{"patient": "DOE^JOHN"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/hl7",
            vec![
                ("Content-Type", "image/png"),
                ("Authorization", bearer.as_str()),
            ],
            b"x".to_vec(),
            415,
        ),
        ("POST", "/messages", hl7.to_vec(), b"x".to_vec(), 404),
        ("GET", "/hl7", hl7.to_vec(), Vec::new(), 405),
    ] {
        let answer = request(&http, method, path, &headers, &body);
        assert_eq!(answer.status, status, "{method} {path}: {answer:?}");
        assert!(!answer.body.contains("DOE"), "{answer:?}");
    }

    // Two messages delivered (H1 once, H3); the listener's counters.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::count_files(&dir.join("out-http")) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(common::count_files(&dir.join("out-http")), 2);
    let listener = server.listener_stats(dir, "hl7-http");
    assert_eq!(listener["accepted"].as_u64(), Some(3), "{listener}");
    assert_eq!(listener["rejected"].as_u64(), Some(1), "{listener}");
    // One connection per request here (Connection: close), none open now.
    assert!(
        listener["connections_accepted"]
            .as_u64()
            .is_some_and(|count| count >= 10),
        "{listener}"
    );
    assert_eq!(
        listener["connections_active"].as_u64(),
        Some(0),
        "{listener}"
    );
    // The audit record names the token that posted, as it names a client certificate.
    let admin = server.admin_addr.clone().expect("admin API on");
    let (_, audit, _) = common::run_binary(
        dir,
        &[
            "audit",
            "list",
            "--admin-addr",
            &admin,
            "--data-dir",
            "data",
        ],
        &[],
    );
    assert!(audit.contains("token=lab-system"), "{audit}");
    server.stop();
}

#[test]
fn an_http_listener_anyone_could_post_to_is_refused() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("empty-tokens"), "# nobody yet\n").expect("tokens");
    let config = r#"
listeners:
  - {name: open, type: http, listen_addr: ":8443"}
  - {name: loop, type: http, listen_addr: "127.0.0.1:8444"}
  - {name: slow, type: http, listen_addr: "127.0.0.1:8445", idle_timeout: 5m}
  - {name: nobody, type: http, listen_addr: ":8446", tokens_file: empty-tokens}
  - {name: mllp-token, type: mllp, listen_addr: ":2575", tokens_file: empty-tokens}
"#;
    std::fs::write(dir.join("check.yaml"), config).expect("config");
    let output = Command::new(BINARY)
        .env_clear()
        .current_dir(dir)
        .env("DATA_DIR", dir.join("data"))
        .args(["check", "--config", "check.yaml"])
        .output()
        .expect("check runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(64), "{printed}");
    for expected in [
        "listener \"open\": an http listener without tokens_file or tls.client_ca",
        "idle_timeout: applies to MLLP connections only",
        "tokens_file: holds no token",
        "bearer tokens are for http listeners",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    assert!(
        !printed.contains("\"loop\""),
        "a loopback listener needs no tokens:\n{printed}"
    );
}

/// `POST /hl7` over TLS with `settings` (a client certificate or none): the answer, or the
/// handshake's or the connection's error.
async fn post_tls(
    addr: &str,
    settings: mfoundry::tls::ClientTlsSettings,
    body: &str,
) -> Result<Answer, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    mfoundry::tls::install_crypto_provider();
    let client = mfoundry::tls::TlsClient::new(settings, ["--tls-ca", "--tls-cert", "--tls-key"])
        .map_err(|error| error.to_string())?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|error| error.to_string())?;
    let mut stream = client
        .connect(stream)
        .await
        .map_err(|error| error.to_string())?;
    let request = format!(
        "POST /hl7 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/hl7-v2\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| error.to_string())?;
    let mut raw = Vec::new();
    // A refused client certificate surfaces here, at the first read.
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|error| error.to_string())?;
    Ok(common::http::parse(&String::from_utf8_lossy(&raw)))
}

#[test]
fn https_with_client_certificates_checks_each_sender_against_tls_senders() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    common::certs::certificates(dir);
    std::fs::write(
        dir.join("gateway.yaml"),
        r#"
listeners:
  - name: lab-https
    type: http
    listen_addr: "127.0.0.1:0"
    tls: {cert_file: server.pem, key_file: server.key, client_ca: ca.pem}
    tls_senders:
      - identity: mfoundry
        sending_applications: [LAB]
        sending_facilities: ["*"]
connectors:
  - name: results
    type: file
    directory: out
"#,
    )
    .expect("config");
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("lab-https");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let with_certificate = mfoundry::tls::ClientTlsSettings {
        ca_file: Some(dir.join("ca.pem")),
        cert_file: Some(dir.join("client.pem")),
        key_file: Some(dir.join("client.key")),
        server_name: Some("localhost".to_owned()),
    };
    let lab = runtime
        .block_on(post_tls(
            &addr,
            with_certificate.clone(),
            &message("T1", "123"),
        ))
        .expect("an answer");
    assert_eq!(lab.status, 200, "{lab:?}");
    assert!(lab.body.contains("MSA|AA|T1"), "{lab:?}");
    // The same certificate may not send as another system.
    let other = message("T2", "123").replace("|LAB|", "|ADT1|");
    let refused = runtime
        .block_on(post_tls(&addr, with_certificate.clone(), &other))
        .expect("an answer");
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(refused.body.contains("MSA|AR|T2"), "{refused:?}");
    // Without a client certificate nothing is read.
    let anonymous = runtime.block_on(post_tls(
        &addr,
        mfoundry::tls::ClientTlsSettings {
            cert_file: None,
            key_file: None,
            ..with_certificate
        },
        &message("T3", "123"),
    ));
    assert!(anonymous.is_err(), "{anonymous:?}");
    server.stop();
}

#[test]
fn bench_posts_to_the_http_listener_and_reports_it() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let token = generate_token().expect("token");
    std::fs::write(
        dir.join("intake-tokens"),
        format!("bench viewer {}\n", hex(&hash_token(&token))),
    )
    .expect("tokens");
    std::fs::write(
        dir.join("gateway.yaml"),
        "listeners:\n  - {name: hl7-http, type: http, listen_addr: \"127.0.0.1:0\", tokens_file: intake-tokens}\n",
    )
    .expect("config");
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let url = format!("http://{}/hl7", server.listener_addr("hl7-http"));
    let bench = |token: &str| {
        Command::new(BINARY)
            .env_clear()
            .current_dir(dir)
            .env("INTAKE_TOKEN", token)
            .args([
                "bench",
                "--http",
                &url,
                "-c",
                "2",
                "-n",
                "40",
                "--no-probe",
                "--json",
            ])
            .output()
            .expect("bench runs")
    };
    let output = bench(&token);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["transport"], "http");
    assert_eq!(report["answered"].as_u64(), Some(40), "{report}");
    assert_eq!(report["not_aa"].as_u64(), Some(0), "{report}");
    assert!(
        report["throughput_per_sec"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0)
    );
    // A wrong token is no measurement: every post fails, and the exit code says so.
    let refused = bench("mft_wrong");
    assert!(!refused.status.success());
    let report: Value = serde_json::from_slice(&refused.stdout).expect("one JSON object");
    assert_eq!(report["no_answer"].as_u64(), Some(40), "{report}");
    server.stop();
}
