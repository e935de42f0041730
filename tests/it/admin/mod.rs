//! The admin API as operators meet it. This file holds what every part shares: a tokens file
//! with one token per role, an HTTP client and JSON requests with a bearer token, MLLP
//! messages sent in, waiting for a condition, and a paused file connector. The tests, by
//! subject:
//!
//! - [`auth`]: every route behind its role, and the tokens file changed or readable by all;
//! - [`queues`]: dead letters, replay on a running server, a message being retried;
//! - [`http`]: the OpenAPI document, readiness during a drain, request limits and malformed
//!   requests, the listener's connection cap and header timeout;
//! - [`patients`]: search by patient identifier and family name, its role and its audit;
//! - [`command_line`]: the CLI over the API, and the audit trail's tamper detection.

mod auth;
mod command_line;
mod http;
mod patients;
mod queues;

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mfoundry::admin::Role;
use mfoundry::admin::auth::{generate_token, hash_token, hex};
use serde_json::Value;

const ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

/// A token file with one token per role; returns its path and the tokens.
fn tokens_file(directory: &Path) -> (String, HashMap<Role, String>) {
    let mut tokens = HashMap::new();
    let mut text = String::from("# id role sha256\n");
    for role in ROLES {
        let token = generate_token().expect("random");
        text.push_str(&format!(
            "{role}-token {role} {}\n",
            hex(&hash_token(&token))
        ));
        tokens.insert(role, token);
    }
    let path = directory.join("tokens");
    std::fs::write(&path, text).expect("write tokens");
    (path.display().to_string(), tokens)
}

fn client() -> reqwest::Client {
    mfoundry::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Send a request with a bearer token; it must succeed; its JSON answer.
async fn json(request: reqwest::RequestBuilder, token: &str) -> Value {
    let response = request.bearer_auth(token).send().await.expect("request");
    assert!(
        response.status().is_success(),
        "{}: {}",
        response.url(),
        response.status()
    );
    response.json().await.expect("json")
}

async fn get_json(url: &str, token: &str) -> Value {
    json(client().get(url), token).await
}

async fn post_json(url: &str, token: &str, body: Value) -> Value {
    json(client().post(url).json(&body), token).await
}

/// The admin audit records of `action`, newest first.
async fn admin_actions(base: &str, token: &str, action: &str) -> Vec<Value> {
    let audit = get_json(
        &format!("{base}/api/v1/audit?order=newest&kind=admin"),
        token,
    )
    .await;
    audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|record| record["action"] == action)
        .cloned()
        .collect()
}

async fn send_adts(app: &common::TestApp, ids: &[&str]) {
    let mut stream = common::connect(app).await;
    for id in ids {
        common::write(&mut stream, &common::framed(&common::adt(id, "2.5"))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{id}");
    }
}

async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn file_yaml(directory: &Path) -> String {
    format!(
        "connectors:\n  - name: archive\n    type: file\n    directory: {}\n    filename: \"{{id}}.hl7\"\n    paused: true\n",
        directory.join("out").display()
    )
}
