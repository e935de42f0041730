//! The API as an HTTP server: the OpenAPI document lists exactly the routes (and matches its
//! golden file); readiness turns 503 during a drain while liveness stays 200; requests are
//! bounded and nothing is parsed before authentication; malformed paths, queries and bodies
//! get the JSON error body; the listener caps its connections and times out slow headers.

use super::*;

use crate::common::peer::{Answer, peer};
use mfoundry::admin::{ApiDoc, api_routes};
use utoipa::OpenApi;

#[test]
fn the_openapi_document_lists_exactly_the_routes_and_matches_the_golden_file() {
    let document = serde_json::to_value(ApiDoc::openapi()).expect("json");
    let paths = document["paths"].as_object().expect("paths");
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| (method.to_ascii_uppercase(), path.clone()))
        })
        .filter(|(_, path)| path.starts_with("/api/"))
        .collect();
    documented.sort();
    let mut routed: Vec<(String, String)> = api_routes()
        .iter()
        .map(|route| (route.method.to_owned(), route.path.to_owned()))
        .collect();
    routed.sort();
    assert_eq!(documented, routed, "the document and the router agree");
    for (_, item) in paths.iter().filter(|(path, _)| path.starts_with("/api/")) {
        for operation in item.as_object().expect("item").values() {
            assert!(
                operation["security"].is_array(),
                "every /api route declares the bearer scheme"
            );
        }
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/openapi.json");
    let pretty = serde_json::to_string_pretty(&document).expect("json") + "\n";
    if std::env::var_os("MFOUNDRY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &pretty).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).expect("tests/golden/openapi.json exists");
    assert!(
        expected == pretty,
        "the OpenAPI document changed; review the change, then run with MFOUNDRY_UPDATE_GOLDEN=1"
    );
}

#[tokio::test]
async fn readiness_turns_503_while_draining_and_liveness_stays_200() {
    // A delivery in hand (a downstream that never answers) keeps the drain busy.
    let downstream = peer(|_, _| Answer::Hang).await;
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    ack_timeout: 3s\n",
        downstream.addr.port()
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    let base = app.admin_url();
    let http = client();
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    send_adts(&app, &["D1"]).await;
    eventually("the delivery is in hand", async || {
        !downstream.received().is_empty()
    })
    .await;
    let drain = tokio::spawn(app.shutdown(Duration::from_secs(2)));
    let mut draining = false;
    for _ in 0..100 {
        let answer = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        if answer.status() == 503 {
            let body: Value = answer.json().await.expect("json");
            assert_eq!(body["status"], "draining");
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "/readyz answered 503 during the drain");
    let live = http
        .get(format!("{base}/livez"))
        .send()
        .await
        .expect("livez");
    assert_eq!(live.status(), 200);
    drain.await.expect("drain task");
}

#[tokio::test]
async fn requests_are_bounded_and_nothing_is_parsed_before_authentication() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let yaml = file_yaml(directory.path());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    let base = app.admin_url();
    let http = client();
    let operator = &tokens[&Role::Operator];
    // Malformed JSON without a token: 401, not a parse error.
    let answer = http
        .post(format!("{base}/api/v1/dlq/archive/replay"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 401);
    // With a token, the same body is a client error naming the problem.
    let answer = http
        .post(format!("{base}/api/v1/dlq/archive/replay"))
        .bearer_auth(operator)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("request");
    assert!(answer.status().is_client_error());
    let big = serde_json::json!({"seqs": vec![1u64; 40_000]});
    let answer = http
        .post(format!("{base}/api/v1/dlq/archive/replay"))
        .bearer_auth(operator)
        .json(&big)
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 413, "bodies over 64 KiB are refused");
    let answer = http
        .get(format!("{base}/api/v1/messages?limit=501"))
        .bearer_auth(operator)
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("json");
    assert!(body["error"].as_str().expect("error").contains("limit"));
    let answer = http
        .get(format!("{base}/api/v1/nothing-here"))
        .bearer_auth(operator)
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 404);
    let answer = http
        .post(format!("{base}/api/v1/connectors/nope/pause"))
        .bearer_auth(operator)
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.expect("json");
    assert!(
        body["error"].as_str().expect("error").contains("archive"),
        "names the known ones"
    );
    app.shutdown(Duration::from_secs(5)).await;
}

/// A path segment that is not a number, a malformed query and a malformed body are answered
/// like every other error: 400 with the JSON error body, never the framework's plain text.
#[tokio::test]
async fn malformed_paths_queries_and_bodies_get_the_json_error_body() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let yaml = file_yaml(directory.path());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    let base = app.admin_url();
    let token = &tokens[&Role::Admin];
    let requests = [
        client().get(format!("{base}/api/v1/messages/not-a-number")),
        client().get(format!("{base}/api/v1/dlq/archive/x")),
        client().get(format!("{base}/api/v1/messages?limit=many")),
        client()
            .post(format!("{base}/api/v1/dlq/archive/replay"))
            .header("content-type", "application/json")
            .body("{not json"),
        client()
            .post(format!("{base}/api/v1/messages/reprocess"))
            .header("content-type", "application/json")
            .body("{\"ids\": \"x\"}"),
    ];
    for request in requests {
        let response = request.bearer_auth(token).send().await.expect("request");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, 400, "{body}");
        assert!(kind.starts_with("application/json"), "{kind}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|error| error.contains("is not valid")),
            "{body}"
        );
    }
    app.shutdown(Duration::from_secs(5)).await;
}

/// The admin listener holds at most its connection limit (one more is closed at once and
/// counted), and closes a connection that sends no complete headers in time, idle or
/// half-sent, so idle clients cannot take the descriptors the MLLP listener needs.
#[tokio::test]
async fn the_admin_listener_caps_connections_and_times_out_slow_headers() {
    use mfoundry::admin::{AdminCounters, ConnectionLimits, serve_router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/livez", axum::routing::get(|| async { "ok" }));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let counters = std::sync::Arc::new(AdminCounters::default());
    let limits = ConnectionLimits {
        name: "admin API",
        max_connections: 4,
        header_timeout: Duration::from_millis(500),
    };
    let server = tokio::spawn(serve_router(
        listener,
        app,
        shutdown.clone(),
        limits,
        std::sync::Arc::clone(&counters),
    ));
    let closed_within = |mut stream: tokio::net::TcpStream, limit: Duration| async move {
        let mut buffer = [0u8; 256];
        matches!(
            tokio::time::timeout(limit, stream.read(&mut buffer)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    // Four idle connections fill the listener; a half-sent request is one of them.
    let mut idle = Vec::new();
    for index in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        if index == 0 {
            stream
                .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fifth = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(fifth, Duration::from_millis(300)).await,
        "closed at once"
    );
    assert_eq!(
        counters.refused.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The header timeout closes all four, idle and half-sent alike...
    for stream in idle {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "closed by the timeout"
        );
    }
    // ...and the listener serves again, a kept connection included.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let read = stream.read(&mut answer).await.expect("read");
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..read])
    );
    // Kept open and idle after the answer: closed by the same timeout.
    assert!(
        closed_within(stream, Duration::from_secs(3)).await,
        "idle kept connection closed"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops")
        .expect("no panic");
}
