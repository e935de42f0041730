//! The HTTP output against a server played by the test: it posts the bytes as received with
//! the bearer token, configured headers and an idempotency key naming the queue entry,
//! retries what is transient and does not follow a redirect; the JSON format carries the
//! header and the segments; kill -9 under load loses nothing and keeps the order.

use super::*;

#[tokio::test]
async fn http_posts_the_bytes_as_received_with_the_token_and_retries_what_is_transient() {
    // 1: 503 with Retry-After 0 → retried; 2: 409 (the key is still being processed) →
    // retried; 3: 200 (M1); 4: 302 (M2 → DLQ: a redirect is not followed, it would turn the
    // POST into a GET without the message); 5: 200 (M3).
    let (port, requests) = http_server(|n| match n {
        1 => (503, "retry-after: 0\r\n"),
        2 => (409, ""),
        4 => (302, "location: /elsewhere\r\n"),
        _ => (200, ""),
    })
    .await;
    let token_file = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token_file.path(), "s3cret\n").expect("token");
    let yaml = format!(
        "connectors:\n  - name: ehr\n    type: http\n    url: http://127.0.0.1:{port}/hl7\n    bearer_token_file: {}\n    headers:\n      X-Site: ${{SITE}}\n    retry:\n      initial_delay: 5ms\n      max_delay: 20ms\n",
        token_file.path().display()
    );
    let app = common::start_with_yaml(Some(&yaml), &[("SITE", "north")]).await;
    send(&app, &["M1", "M2", "M3"]).await;
    eventually("2 delivered, 1 dead", || {
        stat(&app, "ehr", "delivered") == 2 && stat(&app, "ehr", "dead") == 1
    })
    .await;
    let requests = requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 5, "the redirect was not followed");
    let ids: Vec<String> = requests
        .iter()
        .map(|r| common::field(&r.body, "MSH", 10))
        .collect();
    assert_eq!(ids, vec!["M1", "M1", "M1", "M2", "M3"]);
    let first = &requests[2];
    assert!(
        first.head.starts_with("POST /hl7 HTTP/1.1"),
        "{}",
        first.head
    );
    assert_eq!(first.body, common::adt("M1", "2.5"));
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("x-application/hl7-v2+er7")
    );
    assert_eq!(
        first.header("authorization").as_deref(),
        Some("Bearer s3cret")
    );
    assert_eq!(first.header("x-site").as_deref(), Some("north"));
    let m1 = id_of(&app, "M1");
    assert_eq!(
        first.header("idempotency-key"),
        Some(format!(
            "mfoundry-{:016x}-ehr-{m1}",
            app.outbox().instance_id()
        )),
        "the key names the queue entry (a first delivery's entry is its message id)"
    );
    assert_eq!(first.header("x-mfoundry-entry"), Some(m1.to_string()));
    let connector = app.outbox().connector_id("ehr").expect("id");
    let dead = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .dead_letters(connector)
        .expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.message_id.0, id_of(&app, "M2"));
    assert_eq!(dead[0].1.reason, "the endpoint answered HTTP 302");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn http_json_format_carries_header_and_segments() {
    let (port, requests) = http_server(|_| (204, "")).await;
    let yaml = format!(
        "connectors:\n  - name: fhir\n    type: http\n    method: PUT\n    format: json\n    url: http://127.0.0.1:{port}/in\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["J1"]).await;
    eventually("delivered", || stat(&app, "fhir", "delivered") == 1).await;
    let request = requests.lock().expect("lock")[0].clone();
    assert!(request.head.starts_with("PUT /in HTTP/1.1"));
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_slice(&request.body).expect("json");
    assert_eq!(json["id"], id_of(&app, "J1"));
    assert_eq!(json["entry"], id_of(&app, "J1"));
    assert_eq!(json["connector"], "fhir");
    assert_eq!(json["header"]["control_id"], "J1");
    assert_eq!(json["header"]["msg_type"], "ADT");
    assert_eq!(json["segments"][0]["name"], "MSH");
    assert_eq!(json["segments"][0]["fields"][0], "|");
    assert_eq!(
        json["segments"][0]["fields"][9], "J1",
        "fields[n-1] is MSH-n"
    );
    assert_eq!(json["segments"][2]["name"], "PID");
    assert_eq!(json["segments"][2]["fields"][2], "12345^^^HOSP^MR", "PID-3");
    assert_eq!(
        json["hl7"].as_str().map(str::as_bytes),
        Some(common::adt("J1", "2.5").as_slice())
    );
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// kill -9 twice under load with a FIFO HTTP connector: nothing acknowledged is lost, first
/// arrivals keep the order received, and only entries not yet marked delivered arrive twice
/// (each with the same `Idempotency-Key`, so a receiver that honours it drops them).
#[test]
fn http_keeps_order_and_loses_nothing_across_sigkill() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (port, requests) = runtime.block_on(http_server(|_| (200, "")));
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("mfoundry.yaml"),
        format!(
            "connectors:\n  - name: web\n    type: http\n    url: http://127.0.0.1:{port}/in\n"
        ),
    )
    .expect("config");
    let message = |sender: usize, sequence: usize| {
        let control = format!("H{sender}-{sequence}");
        (control.clone(), common::adt(&control, "2.5"))
    };
    let received = || -> Vec<String> {
        requests
            .lock()
            .expect("lock")
            .iter()
            .map(|request| common::field(&request.body, "MSH", 10))
            .collect()
    };
    let kills = 2;
    let acknowledged = crate::lanes::load_with_kills(dir, 1, kills, message, &received);
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );
    let repeats = crate::lanes::first_arrivals_in_order(&received(), &acknowledged);
    assert!(
        repeats <= (2 * 16 + 1) * kills,
        "only unrecorded entries arrive twice: {repeats}"
    );
    // A repeat carries the key of its first arrival.
    let keys: std::collections::HashMap<String, String> = requests
        .lock()
        .expect("lock")
        .iter()
        .map(|request| {
            (
                common::field(&request.body, "MSH", 10),
                request.header("idempotency-key").unwrap_or_default(),
            )
        })
        .collect();
    for request in requests.lock().expect("lock").iter() {
        let control = common::field(&request.body, "MSH", 10);
        assert_eq!(
            request.header("idempotency-key").unwrap_or_default(),
            keys[&control],
            "{control}"
        );
    }
    drop(runtime);
}
