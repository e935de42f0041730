//! A connector's queue and dead letters through the API: a dead letter keeps the peer's answer
//! for the roles that read bodies, and its history once replayed; replay on a running server
//! delivers each entry once, in order; a message being retried shows its attempts and last
//! error.

use super::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::peer::{Answer, peer};

/// A dead letter keeps the peer's own answer, shown only to roles that read bodies; a
/// replayed entry takes a fresh place and, dead-lettered again, names its first entry and
/// its earlier life.
#[tokio::test]
async fn a_dead_letter_keeps_the_peers_answer_for_body_readers_and_its_history() {
    let downstream = peer(|_, _| Answer::Ack("AR")).await;
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n",
        downstream.addr.port()
    );
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    send_adts(&app, &["H1"]).await;
    eventually("dead-lettered", async || {
        app.worker("lab")
            .stats()
            .dead_lettered
            .load(Ordering::SeqCst)
            >= 1
    })
    .await;
    let base = app.admin_url();
    let as_viewer = get_json(&format!("{base}/api/v1/dlq"), &tokens[&Role::Viewer]).await;
    let as_operator = get_json(&format!("{base}/api/v1/dlq"), &tokens[&Role::Operator]).await;
    let entry = &as_operator["entries"][0];
    assert_eq!(
        entry["downstream"].as_str(),
        Some("MSA|AR|H1"),
        "the peer's own MSA, for an operator"
    );
    assert!(
        as_viewer["entries"][0].get("downstream").is_none(),
        "never for a viewer: {as_viewer}"
    );
    // The operator's read of the peer's answer is on the trail (the message, not the text);
    // the viewer's, which showed none, is not.
    let reads = admin_actions(&base, &tokens[&Role::Operator], "dlq.read").await;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["token_id"], "operator-token");
    let message_id = entry["message_id"]
        .as_u64()
        .expect("message id")
        .to_string();
    let target = reads[0]["target"].as_str().expect("target");
    assert!(
        target.contains(&message_id) && !target.contains("MSA"),
        "{target}"
    );
    let first = entry["seq"].as_u64().expect("seq");
    let replayed = client()
        .post(format!("{base}/api/v1/dlq/lab/replay"))
        .bearer_auth(&tokens[&Role::Operator])
        .json(&serde_json::json!({"seqs": [first]}))
        .send()
        .await
        .expect("replay");
    assert!(replayed.status().is_success());
    let result: Value = replayed.json().await.expect("json");
    let new_seq = result["replayed"][0]["new_seq"].as_u64().expect("new seq");
    assert!(new_seq > first, "a fresh place at the tail of the queue");
    eventually("dead-lettered again", async || {
        app.worker("lab")
            .stats()
            .dead_lettered
            .load(Ordering::SeqCst)
            >= 2
    })
    .await;
    let again = get_json(&format!("{base}/api/v1/dlq"), &tokens[&Role::Operator]).await;
    let entry = &again["entries"][0];
    assert_eq!(entry["seq"].as_u64(), Some(new_seq));
    assert_eq!(entry["origin"]["seq"].as_u64(), Some(first));
    assert_eq!(entry["origin"]["connector"], "lab");
    assert_eq!(entry["history"][0]["seq"].as_u64(), Some(first));
    assert_eq!(entry["history"][0]["attempts"], 1);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn replay_on_a_running_server_delivers_each_entry_once_in_order() {
    let accept = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&accept);
    let downstream = peer(move |_, _| {
        if switch.load(Ordering::SeqCst) {
            Answer::Ack("AA")
        } else {
            Answer::Ack("AR")
        }
    })
    .await;
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n",
        downstream.addr.port()
    );
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    let ids = ["P1", "P2", "P3", "P4", "P5"];
    send_adts(&app, &ids).await;
    let base = app.admin_url();
    let viewer = &tokens[&Role::Viewer];
    eventually("every message is dead-lettered (AR)", async || {
        let page = get_json(&format!("{base}/api/v1/dlq?connector=lab"), viewer).await;
        page["entries"].as_array().map_or(0, Vec::len) == ids.len()
    })
    .await;
    let refused = downstream.received();
    assert_eq!(refused, ids, "each was tried once and refused");

    accept.store(true, Ordering::SeqCst);
    let result = post_json(
        &format!("{base}/api/v1/dlq/lab/replay"),
        &tokens[&Role::Operator],
        serde_json::json!({"all": true}),
    )
    .await;
    assert_eq!(result["replayed"].as_array().map(Vec::len), Some(ids.len()));
    assert_eq!(result["remaining"], 0);
    eventually("the replayed entries are delivered", async || {
        downstream.received().len() >= 2 * ids.len()
    })
    .await;
    // Once the queue is empty and every send is counted, nothing is left that could arrive
    // twice.
    eventually("the queue is empty", async || {
        let stats = get_json(&format!("{base}/api/v1/stats"), viewer).await;
        stats["connectors"][0]["queue_depth"] == 0 && stats["connectors"][0]["delivered"] == 5
    })
    .await;
    let delivered = downstream.received()[ids.len()..].to_vec();
    assert_eq!(delivered, ids, "once each, in the original order");
    let stats = get_json(&format!("{base}/api/v1/stats"), viewer).await;
    let lab = &stats["connectors"][0];
    assert_eq!(lab["name"], "lab");
    assert_eq!(lab["delivered"], 5);
    assert_eq!(lab["dlq_size"], 0);
    assert_eq!(lab["queue_depth"], 0);
    // Searching by connector state finds them delivered.
    let found = get_json(
        &format!("{base}/api/v1/messages?connector=lab&status=delivered"),
        viewer,
    )
    .await;
    let controls: Vec<&str> = found["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|message| message["control_id"].as_str())
        .collect();
    assert_eq!(controls, ["P5", "P4", "P3", "P2", "P1"], "newest first");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_message_being_retried_shows_its_attempts_and_last_error() {
    let downstream = peer(|_, _| Answer::Ack("AE")).await;
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    retry:\n      initial_delay: 24h\n      max_delay: 24h\n",
        downstream.addr.port()
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(scratch.path());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    send_adts(&app, &["T1"]).await;
    let token = tokens[&Role::Operator].clone();
    let base = app.admin_url();
    eventually("one failed attempt", async || {
        app.worker("lab").stats().retries.load(Ordering::SeqCst) >= 1
    })
    .await;
    // The overview's figures: retrying, one attempt, the downstream's words for operators
    // only.
    let lab = |stats: &Value| {
        stats["connectors"]
            .as_array()
            .and_then(|list| list.iter().find(|c| c["name"] == "lab"))
            .cloned()
            .expect("lab")
    };
    let stats = lab(&get_json(&format!("{base}/api/v1/stats"), &token).await);
    assert_eq!(stats["state"], "retrying", "{stats}");
    assert_eq!(stats["head_attempts"], 1, "{stats}");
    assert!(
        stats["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("AE")),
        "{stats}"
    );
    assert!(stats["last_delivered_at"].is_null(), "{stats}");
    let viewed = lab(&get_json(&format!("{base}/api/v1/stats"), &tokens[&Role::Viewer]).await);
    assert_eq!(viewed["head_attempts"], 1, "{viewed}");
    assert!(
        viewed["last_error"].is_null(),
        "a viewer gets no downstream text: {viewed}"
    );
    // The operator's first view of that error is on the trail, once however often the
    // overview polls it; the viewer, shown none, is not.
    get_json(&format!("{base}/api/v1/stats"), &token).await;
    let views = admin_actions(&base, &token, "stats.last_errors").await;
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(views[0]["token_id"], "operator-token");
    assert_eq!(views[0]["target"], "the last errors of lab");
    let id = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")[0]
        .0;
    let shown = get_json(&format!("{base}/api/v1/messages/{id}"), token.trim()).await;
    let lab = &shown["connectors"][0];
    assert_eq!(lab["connector"], "lab");
    assert_eq!(lab["status"], "QUEUED");
    assert_eq!(lab["attempts"], 1);
    assert!(lab["next_attempt"].is_string(), "{shown}");
    assert!(
        lab["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("AE")),
        "{shown}"
    );
    app.shutdown(Duration::from_secs(5)).await;
}

/// A connector removed by a configuration reload keeps its dead letters: listed, shown as
/// orphaned by `stats`, never replayed to itself (nothing would deliver them), replayed to
/// a configured connector or purged, which settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_connectors_dead_letters_are_listed_replayed_elsewhere_and_purged() {
    let refusing = peer(|_, _| Answer::Ack("AR")).await;
    let accepting = peer(|_, _| Answer::Ack("AA")).await;
    let connector = |name: &str, port: u16| {
        format!("  - name: {name}\n    type: mllp\n    host: 127.0.0.1\n    port: {port}\n")
    };
    let lab = connector("lab", refusing.addr.port());
    let backup = connector("backup", accepting.addr.port());
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let app = common::start_with_yaml(
        Some(&format!("connectors:\n{lab}")),
        &[("ADMIN_TOKENS_FILE", &path)],
    )
    .await;
    send_adts(&app, &["O1", "O2"]).await;
    eventually("dead-lettered", async || {
        app.worker("lab")
            .stats()
            .dead_lettered
            .load(Ordering::SeqCst)
            >= 2
    })
    .await;
    std::fs::write(app.config_file(), format!("connectors:\n{backup}")).expect("write");
    assert_eq!(
        app.reload_config().await,
        Ok(mfoundry::app::Reloaded::Applied)
    );
    let base = app.admin_url();
    let operator = &tokens[&Role::Operator];
    let stats = get_json(&format!("{base}/api/v1/stats"), operator).await;
    assert_eq!(stats["orphaned_connectors"][0]["name"], "lab", "{stats}");
    assert_eq!(stats["orphaned_connectors"][0]["dlq_size"], 2, "{stats}");
    assert_eq!(
        stats["connectors"].as_array().map(Vec::len),
        Some(1),
        "only backup is configured: {stats}"
    );
    let listed = get_json(&format!("{base}/api/v1/dlq?connector=lab"), operator).await;
    let seqs: Vec<u64> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), 2, "{listed}");
    let post = |path: &str, body: serde_json::Value| {
        client()
            .post(format!("{base}{path}"))
            .bearer_auth(operator)
            .json(&body)
            .send()
    };
    let refused = post(
        "/api/v1/dlq/lab/replay",
        serde_json::json!({"seqs": [seqs[0]]}),
    )
    .await
    .expect("replay");
    assert_eq!(refused.status(), 400);
    let text = refused.text().await.expect("text");
    assert!(text.contains("no longer in the configuration"), "{text}");
    let moved = post(
        "/api/v1/dlq/lab/replay",
        serde_json::json!({"seqs": [seqs[0]], "to": "backup"}),
    )
    .await
    .expect("replay");
    assert!(moved.status().is_success());
    eventually("delivered by backup", async || {
        accepting.received() == vec!["O1".to_owned()]
    })
    .await;
    let purged = client()
        .post(format!("{base}/api/v1/dlq/lab/purge"))
        .bearer_auth(&tokens[&Role::Admin])
        .json(&serde_json::json!({"all": true}))
        .send()
        .await
        .expect("purge");
    assert!(purged.status().is_success());
    let stats = get_json(&format!("{base}/api/v1/stats"), operator).await;
    assert_eq!(
        stats["orphaned_connectors"],
        serde_json::json!([]),
        "settled: {stats}"
    );
    assert!(app.shutdown(Duration::from_secs(10)).await);
}
