//! The HTTP and PostgreSQL outputs against real peers: an HTTP server played by the test,
//! and the PostgreSQL server of the machine (skipped with a printed reason when it is not
//! there, unless `MFOUNDRY_REQUIRE_SERVICES=1`). This file holds what every part shares: the
//! test HTTP server and the requests it saw, MLLP messages sent in, a connector's counts
//! waited on, and the test database. The tests, by subject:
//!
//! - [`http`]: what the HTTP output sends, what it retries, its JSON format;
//! - [`https`]: the HTTP output over TLS, and TLS files checked at load;
//! - [`postgresql`]: the PostgreSQL output, unreachable, over TLS, `PGSSLMODE`;
//! - [`backup`]: after a restore from an older backup, new messages reach all four outputs.

mod backup;
mod http;
mod https;
mod nats;
mod postgresql;

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the test server saw it.
#[derive(Clone, Debug)]
struct Request {
    head: String,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

type Script = dyn Fn(usize) -> (u16, &'static str) + Send + Sync;

/// Serve HTTP/1.1 requests on one connection, recording each.
async fn serve_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    script: Arc<Script>,
    recorded: Arc<Mutex<Vec<Request>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        let number = {
            let mut seen = recorded.lock().expect("lock");
            seen.push(Request { head, body });
            seen.len()
        };
        let (status, extra) = script(number);
        let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n");
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An HTTP/1.1 server answering the n-th request (from 1) with `script(n)`: (status, extra
/// header lines).
async fn http_server(
    script: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (script, recorded) = (Arc::clone(&script), Arc::clone(&recorded));
            tokio::spawn(serve_http(stream, script, recorded));
        }
    });
    (port, seen)
}

async fn send(app: &common::TestApp, ids: &[&str]) {
    let mut stream = common::connect(app).await;
    for id in ids {
        common::write(&mut stream, &common::framed(&common::adt(id, "2.5"))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{id}");
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stat(app: &common::TestApp, connector: &str, which: &str) -> u64 {
    let worker = app.worker(connector);
    let stats = worker.stats();
    match which {
        "delivered" => stats.delivered.load(Ordering::SeqCst),
        "dead" => stats.dead_lettered.load(Ordering::SeqCst),
        _ => stats.retries.load(Ordering::SeqCst),
    }
}

/// The id the store gave the message with this control id.
fn id_of(app: &common::TestApp, control_id: &str) -> u64 {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .find(|(_, record)| record.header.control_id == control_id)
        .map(|(id, _)| id.0)
        .unwrap_or_else(|| panic!("{control_id} is stored"))
}

/// The test database, or `None` (after saying why) when PostgreSQL is not reachable and
/// services are not required.
async fn postgres() -> Option<(tokio_postgres::Client, String)> {
    let dsn = std::env::var("MFOUNDRY_TEST_POSTGRES_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned());
    match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some((client, dsn))
        }
        Err(error) => {
            let required =
                std::env::var("MFOUNDRY_REQUIRE_SERVICES").is_ok_and(|value| value == "1");
            assert!(
                !required,
                "PostgreSQL is required (MFOUNDRY_REQUIRE_SERVICES=1) but {dsn:?} failed: {error}"
            );
            eprintln!(
                "SKIPPED: PostgreSQL not reachable at {dsn:?} ({error}); set MFOUNDRY_REQUIRE_SERVICES=1 to fail instead"
            );
            None
        }
    }
}
