//! The NATS JetStream output against a `nats-server` of its own (Debian's `nats-server`,
//! started with JetStream on a free loopback port): messages reach the stream in order
//! with their headers, a resend of the same entry is dropped by the stream's duplicate
//! window, a stopped server means retries and then delivery in order, a subject no stream
//! takes goes to the dead-letter queue (without `stream`), a missing `stream` is named,
//! kill -9 under load stores every acknowledged message once, in order, and so do
//! connections cut in the middle of a window of publishes. Tokens, passwords, NKeys and TLS
//! are checked against the server; a message over `max_payload` is a dead letter.

use std::sync::atomic::AtomicUsize;

use super::*;

/// A `nats-server -js` on a loopback port, with its store in a directory of its own.
struct NatsServer {
    child: Option<std::process::Child>,
    port: u16,
    store: tempfile::TempDir,
    /// Extra configuration (a `nats-server -c` file), when any.
    config: Option<std::path::PathBuf>,
}

impl NatsServer {
    /// `None` (after saying why) when `nats-server` is not installed and services are not
    /// required.
    fn start() -> Option<Self> {
        Self::start_with("")
    }

    /// [`Self::start`] with `config` (nats-server's configuration syntax) added.
    fn start_with(config: &str) -> Option<Self> {
        if std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("MFOUNDRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "nats-server is required (apt-get install nats-server)"
            );
            eprintln!("SKIPPED: nats-server is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let store = tempfile::tempdir().expect("tempdir");
        let config = (!config.is_empty()).then(|| {
            let path = store.path().join("nats.conf");
            std::fs::write(&path, config).expect("config");
            path
        });
        let mut server = Self {
            child: None,
            port,
            store,
            config,
        };
        server.run();
        Some(server)
    }

    fn run(&mut self) {
        let mut command = std::process::Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server listens");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url()).await.expect("connect");
        async_nats::jetstream::new(client)
    }

    async fn stream(&self, name: &str, subjects: &[&str]) -> async_nats::jetstream::stream::Stream {
        self.jetstream()
            .await
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: name.to_owned(),
                subjects: subjects
                    .iter()
                    .map(|subject| (*subject).to_owned())
                    .collect(),
                ..Default::default()
            })
            .await
            .expect("stream")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control ids of the stream's messages, in stream order, and their headers.
async fn published(
    stream: &async_nats::jetstream::stream::Stream,
) -> Vec<(String, String, async_nats::HeaderMap)> {
    let mut stream = stream.clone();
    let count = stream.info().await.expect("info").state.messages;
    let mut out = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let control = common::field(&message.payload, "MSH", 10);
        out.push((control, message.subject.to_string(), message.headers));
    }
    out
}

/// The last error of the first entry queued at `bus` (empty when none).
fn last_error(app: &common::TestApp) -> String {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .queue(app.outbox().connector_id("bus").expect("bus"))
        .expect("queue")
        .first()
        .and_then(|(_, entry)| entry.last_error.clone())
        .unwrap_or_default()
}

/// Why the first dead letter of `bus` is there.
fn dead_reason(app: &common::TestApp) -> String {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .dead_letters(app.outbox().connector_id("bus").expect("bus"))
        .expect("dead letters")
        .first()
        .map(|(_, entry)| entry.reason.clone())
        .expect("a dead letter")
}

fn yaml(url: &str, extra: &str) -> String {
    format!(
        "connectors:\n  - name: bus\n    type: nats\n    url: {url}\n    subject: \"hl7.{{msg_type}}.{{trigger}}\"\n    retry:\n      initial_delay: 10ms\n      max_delay: 100ms\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publishes_in_order_with_headers_and_drops_a_resend() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let stream = server.stream("HL7", &["hl7.>"]).await;
    let app = common::start_with_yaml(Some(&yaml(&server.url(), "    stream: HL7\n")), &[]).await;
    send(&app, &["N1", "N2"]).await;
    eventually("two published", || stat(&app, "bus", "delivered") == 2).await;
    // Queued while paused: published one after another, each after its acknowledgement.
    app.worker("bus").pause();
    let ids: Vec<String> = (3..=40).map(|n| format!("N{n}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    send(&app, &refs).await;
    app.worker("bus").resume();
    eventually("forty published", || stat(&app, "bus", "delivered") == 40).await;
    let messages = published(&stream).await;
    let controls: Vec<&str> = messages.iter().map(|(c, _, _)| c.as_str()).collect();
    let expected: Vec<String> = (1..=40).map(|n| format!("N{n}")).collect();
    assert_eq!(controls, expected, "in the order received, each once");
    let (_, subject, headers) = &messages[0];
    assert_eq!(subject, "hl7.ADT.A01");
    let n1 = id_of(&app, "N1");
    let header = |name: &str| headers.get(name).map(|value| value.as_str().to_owned());
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(format!(
            "mfoundry-{:016x}-bus-{n1}",
            app.outbox().instance_id()
        ))
    );
    assert_eq!(header("Mfoundry-Control-Id").as_deref(), Some("N1"));
    assert_eq!(header("Mfoundry-Type").as_deref(), Some("ADT"));
    assert_eq!(header("Mfoundry-Trigger").as_deref(), Some("A01"));

    // The same entry published again (a crash between the publish and the mark): the
    // stream's duplicate window drops it.
    let record = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .message(mfoundry::outbox::MessageId(n1))
        .expect("read")
        .expect("N1");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bus.yaml");
    std::fs::write(&path, yaml(&server.url(), "")).expect("write");
    let config = mfoundry::config::Config::load_with(Some(&path), &|_| None).expect("loads");
    let spec = match &config.connectors[0].output.as_ref().expect("output").output {
        mfoundry::outputs::OutputSpec::Nats(spec) => spec.clone(),
        other => panic!("{other:?}"),
    };
    let mut output = mfoundry::outputs::nats::NatsOutput::new(spec);
    let envelope = mfoundry::delivery::Envelope {
        instance_id: app.outbox().instance_id(),
        message_id: n1,
        seq: n1,
        connector: Arc::from("bus"),
        record,
        body: bytes::Bytes::from(common::adt("N1", "2.5")),
        attempt: 2,
        default_charset: mfoundry::hl7::Charset::UTF_8,
    };
    output.deliver(&envelope).await.expect("acknowledged");
    assert_eq!(published(&stream).await.len(), 40, "the resend was dropped");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nats_server_means_retries_then_delivery_in_order() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let stream = server.stream("HL7", &["hl7.>"]).await;
    drop(stream);
    let app = common::start_with_yaml(Some(&yaml(&server.url(), "")), &[]).await;
    send(&app, &["S1"]).await;
    eventually("one published", || stat(&app, "bus", "delivered") == 1).await;
    server.stop();
    send(&app, &["S2", "S3", "S4"]).await;
    eventually("retried", || stat(&app, "bus", "retries") >= 1).await;
    assert_eq!(stat(&app, "bus", "delivered"), 1);
    server.run();
    eventually("all published", || stat(&app, "bus", "delivered") == 4).await;
    let stream = server
        .jetstream()
        .await
        .get_stream("HL7")
        .await
        .expect("the stream survived the restart");
    let controls: Vec<String> = published(&stream)
        .await
        .into_iter()
        .map(|(control, _, _)| control)
        .collect();
    assert_eq!(controls, ["S1", "S2", "S3", "S4"]);
    assert_eq!(stat(&app, "bus", "dead"), 0);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_for_the_subject_is_a_dead_letter_and_a_missing_stream_is_named() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    // JetStream on, but no stream takes hl7.>: the publish is refused.
    let app = common::start_with_yaml(Some(&yaml(&server.url(), "")), &[]).await;
    send(&app, &["X1"]).await;
    eventually("dead-lettered", || stat(&app, "bus", "dead") == 1).await;
    assert!(app.shutdown(Duration::from_secs(5)).await);
    // `stream` names one that is not there: retried, with the name and the fix.
    let app = common::start_with_yaml(Some(&yaml(&server.url(), "    stream: NOPE\n")), &[]).await;
    send(&app, &["X2"]).await;
    eventually("retried", || stat(&app, "bus", "retries") >= 1).await;
    let error = last_error(&app);
    assert!(error.contains("stream NOPE is not there"), "{error}");
    assert!(app.shutdown(Duration::from_secs(5)).await);
    // `stream` names one that is there, but another stream takes the subject: refused
    // (Nats-Expected-Stream), never counted as delivered.
    server.stream("HL7", &["hl7.>"]).await;
    server.stream("OTHER", &["other.>"]).await;
    let app = common::start_with_yaml(Some(&yaml(&server.url(), "    stream: OTHER\n")), &[]).await;
    send(&app, &["X3"]).await;
    eventually("dead-lettered", || stat(&app, "bus", "dead") == 1).await;
    assert_eq!(stat(&app, "bus", "delivered"), 0);
    let reason = dead_reason(&app);
    assert!(reason.contains("10060"), "{reason}");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// kill -9 while the gateway publishes, twice, then a clean restart: every acknowledged
/// message is in the stream once (a resend of an entry published before the kill but not
/// yet marked is dropped by its `Nats-Msg-Id`), in the order received.
#[test]
fn nats_keeps_order_and_drops_resends_across_sigkill() {
    use std::sync::atomic::AtomicBool;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stream = runtime.block_on(server.stream("HL7", &["hl7.>"]));
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("mfoundry.yaml"),
        yaml(&server.url(), "    stream: HL7\n"),
    )
    .expect("config");
    let message = |sender: usize, sequence: usize| {
        let control = format!("K{sender}-{sequence}");
        (control.clone(), common::adt(&control, "2.5"))
    };
    let mut acknowledged = Vec::new();
    let kills = 2;
    for round in 0..=kills {
        let mut gateway = common::Server::start(dir, "mfoundry.yaml", "data", &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (addr, stop) = (gateway.addr.clone(), Arc::clone(&stop));
            std::thread::spawn(move || common::send_until_stopped(&addr, round, &stop, message))
        };
        std::thread::sleep(Duration::from_millis(700));
        if round < kills {
            gateway.child.kill().expect("SIGKILL");
            gateway.child.wait().expect("reaped");
        }
        stop.store(true, Ordering::Relaxed);
        acknowledged.extend(sender.join().expect("sender"));
        if round == kills {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let controls: Vec<String> = runtime
                    .block_on(published(&stream))
                    .into_iter()
                    .map(|(control, _, _)| control)
                    .collect();
                if acknowledged
                    .iter()
                    .all(|control| controls.contains(control))
                {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "every acknowledged message published within 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            gateway.stop();
        }
    }
    assert!(
        acknowledged.len() > 50,
        "the load ran: {}",
        acknowledged.len()
    );
    let controls: Vec<String> = runtime
        .block_on(published(&stream))
        .into_iter()
        .map(|(control, _, _)| control)
        .collect();
    let unique: std::collections::HashSet<&String> = controls.iter().collect();
    assert_eq!(
        unique.len(),
        controls.len(),
        "no message twice in the stream"
    );
    let in_order: Vec<&String> = controls
        .iter()
        .filter(|control| acknowledged.contains(control))
        .collect();
    assert_eq!(
        in_order,
        acknowledged.iter().collect::<Vec<_>>(),
        "in the order received"
    );
}

/// What a [`cutting_relay`] saw.
#[derive(Default)]
struct Relayed {
    /// Connections cut.
    cut: AtomicUsize,
    /// The most publishes (`HPUB`) one read from the client held: more than one means
    /// publishes were in flight together.
    most_in_one_read: AtomicUsize,
}

/// A TCP relay to `target` that cuts each of its first `cuts` connections once the client
/// has sent `budget` bytes on it (mid-publish, as a network failure would); later
/// connections pass everything. Returns its port and what it saw.
async fn cutting_relay(target: u16, cuts: usize, budget: usize) -> (u16, Arc<Relayed>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let relayed = Arc::new(Relayed::default());
    let counter = Arc::clone(&relayed);
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((client, _)) = listener.accept().await {
            accepted += 1;
            let limit = (accepted <= cuts).then_some(budget + accepted * 997);
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut sent = 0;
                let mut buffer = vec![0u8; 16 * 1024];
                while let Ok(read) = client_read.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                    let publishes = buffer[..read]
                        .windows(5)
                        .filter(|window| window == b"HPUB ")
                        .count();
                    counter
                        .most_in_one_read
                        .fetch_max(publishes, Ordering::SeqCst);
                    let allowed = limit.map_or(read, |limit| read.min(limit - sent));
                    if server_write.write_all(&buffer[..allowed]).await.is_err() {
                        break;
                    }
                    sent += allowed;
                    if limit.is_some_and(|limit| sent >= limit) {
                        counter.cut.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                // Both directions end: the client sees its connection fail.
                back.abort();
            });
        }
    });
    (port, relayed)
}

/// Connections cut in the middle of a window of publishes: everything reaches the stream
/// once, in order. What the server took before each cut is a prefix of what was written; the
/// rest is published again on a new connection (and a resend of what had been taken is
/// dropped by its `Nats-Msg-Id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_window_keep_the_stream_in_order() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let stream = server.stream("HL7", &["hl7.>"]).await;
    let (port, relayed) = cutting_relay(server.port, 6, 20_000).await;
    let url = format!("nats://127.0.0.1:{port}");
    let app = common::start_with_yaml(Some(&yaml(&url, "    stream: HL7\n")), &[]).await;
    app.worker("bus").pause();
    let ids: Vec<String> = (1..=600).map(|n| format!("W{n}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    send(&app, &refs).await;
    app.worker("bus").resume();
    common::eventually_within(Duration::from_secs(60), "all published", || {
        stat(&app, "bus", "delivered") == 600
    })
    .await;
    assert_eq!(
        relayed.cut.load(Ordering::SeqCst),
        6,
        "the relay cut six connections"
    );
    assert!(
        relayed.most_in_one_read.load(Ordering::SeqCst) > 1,
        "publishes were in flight together"
    );
    assert!(stat(&app, "bus", "retries") >= 1, "the cuts were retried");
    let controls: Vec<String> = published(&stream)
        .await
        .into_iter()
        .map(|(control, _, _)| control)
        .collect();
    assert_eq!(controls, ids, "each once, in the order received");
    assert_eq!(stat(&app, "bus", "dead"), 0);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// Each kind of credential the server checks: a token, a user and password, an NKey; and a
/// wrong token is retried with the server's refusal, without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_passwords_and_nkeys_are_accepted_and_a_wrong_token_is_named() {
    let user = nkeys::KeyPair::new_user();
    let keys = tempfile::tempdir().expect("tempdir");
    let seed_file = keys.path().join("user.nk");
    std::fs::write(&seed_file, user.seed().expect("seed")).expect("seed file");
    let cases = [
        (
            "authorization { token: \"t0ken-s3cret\" }\n".to_owned(),
            "    token: t0ken-s3cret\n".to_owned(),
        ),
        (
            "authorization { user: gateway, password: \"pw-s3cret\" }\n".to_owned(),
            "    user: gateway\n    password: pw-s3cret\n".to_owned(),
        ),
        (
            format!(
                "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
                user.public_key()
            ),
            format!("    nkey_file: {}\n", seed_file.display()),
        ),
    ];
    for (server_config, connector) in &cases {
        let Some(server) = NatsServer::start_with(server_config) else {
            return;
        };
        let app = common::start_with_yaml(Some(&yaml(&server.url(), connector)), &[]).await;
        send(&app, &["C1", "C2"]).await;
        common::eventually_within(Duration::from_secs(20), connector, || {
            stat(&app, "bus", "dead") == 2
        })
        .await;
        // Refused by JetStream (no stream takes the subject), so the connection and the
        // credentials worked.
        let reason = dead_reason(&app);
        assert!(reason.contains("no stream takes subject"), "{reason}");
        assert!(app.shutdown(Duration::from_secs(5)).await);
    }
    let Some(server) = NatsServer::start_with(&cases[0].0) else {
        return;
    };
    let app =
        common::start_with_yaml(Some(&yaml(&server.url(), "    token: wrong-s3cret\n")), &[]).await;
    send(&app, &["C3"]).await;
    eventually("refused and retried", || {
        last_error(&app).contains("Authorization Violation")
    })
    .await;
    let error = last_error(&app);
    assert!(!error.contains("s3cret"), "{error}");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// A message larger than the server's `max_payload` goes to the dead-letter queue with
/// the reason, and the ones around it are published in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_payload_is_a_dead_letter() {
    let Some(server) = NatsServer::start_with("max_payload: 4096\n") else {
        return;
    };
    let stream = server.stream("HL7", &["hl7.>"]).await;
    let app = common::start_with_yaml(Some(&yaml(&server.url(), "    stream: HL7\n")), &[]).await;
    app.worker("bus").pause();
    let mut tcp = common::connect(&app).await;
    let mut big = common::adt("P2", "2.5");
    big.extend_from_slice(format!("NTE|1||{}\r", "x".repeat(6000)).as_bytes());
    for message in [common::adt("P1", "2.5"), big, common::adt("P3", "2.5")] {
        common::write(&mut tcp, &common::framed(&message)).await;
        let reply = common::expect_ack(&mut tcp).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA");
    }
    app.worker("bus").resume();
    eventually("two published, one dead", || {
        stat(&app, "bus", "delivered") == 2 && stat(&app, "bus", "dead") == 1
    })
    .await;
    let reason = dead_reason(&app);
    assert!(reason.contains("max_payload"), "{reason}");
    let controls: Vec<String> = published(&stream)
        .await
        .into_iter()
        .map(|(control, _, _)| control)
        .collect();
    assert_eq!(controls, ["P1", "P3"]);
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// TLS to the server (`tls://` and the CA file): published; without the CA the
/// handshake fails and is retried, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_server_checks_its_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    common::certs::certificates(certs.path());
    let pem = |name: &str| certs.path().join(name).display().to_string();
    let config = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        pem("server.pem"),
        pem("server.key")
    );
    let Some(server) = NatsServer::start_with(&config) else {
        return;
    };
    let url = format!("tls://127.0.0.1:{}", server.port);
    let connector = format!("    tls_ca_file: {}\n", pem("ca.pem"));
    let app = common::start_with_yaml(Some(&yaml(&url, &connector)), &[]).await;
    send(&app, &["T1"]).await;
    // No stream takes the subject: refused by JetStream, so TLS and the connection worked.
    eventually("refused by the stream", || stat(&app, "bus", "dead") == 1).await;
    assert!(app.shutdown(Duration::from_secs(5)).await);
    let app = common::start_with_yaml(Some(&yaml(&url, "")), &[]).await;
    send(&app, &["T2"]).await;
    eventually("retried", || stat(&app, "bus", "retries") >= 1).await;
    let error = last_error(&app);
    assert!(error.contains("TLS handshake"), "{error}");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}
