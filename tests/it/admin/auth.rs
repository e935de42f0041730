//! Who may do what: every route refuses no token, an unknown one and weaker roles, and serves
//! its role (the audit trail names the token of each action, never the token); a changed
//! tokens file is used without a restart and a broken one is not; a tokens file every user
//! of the host can read is warned about.

use super::*;

use mfoundry::admin::api_routes;

#[tokio::test]
async fn every_route_refuses_no_token_and_weak_roles_and_serves_its_role() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let yaml = file_yaml(directory.path());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    send_adts(&app, &["R1"]).await;
    let archive = app.outbox().connector_id("archive").expect("connector");
    let (seq, _) = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .queue(archive)
        .expect("queue")[0]
        .clone();
    assert!(
        app.outbox()
            .dead_letter(archive, seq, 1, "test".to_owned())
            .await
            .expect("dead-letter")
    );
    let base = app.admin_url();
    let routes = api_routes();
    assert!(routes.len() >= 12, "every route is listed");
    for route in &routes {
        let path = route
            .path
            .replace("{id}", &seq.to_string())
            .replace("{connector}", "archive")
            .replace("{seq}", &seq.to_string());
        let url = format!("{base}{path}");
        let request = |token: Option<&str>| {
            let builder = match route.method {
                "GET" => client().get(&url),
                "POST" if path.ends_with("/reprocess") => client()
                    .post(&url)
                    .json(&serde_json::json!({"ids": [seq.0], "to": "archive"})),
                "POST" if path.ends_with("/search") => client()
                    .post(&url)
                    .json(&serde_json::json!({"patient_id": "12345"})),
                "POST" => client().post(&url).json(&serde_json::json!({"all": true})),
                other => panic!("method {other} is not covered by this test"),
            };
            match token {
                Some(token) => builder.bearer_auth(token),
                None => builder,
            }
        };
        let status = request(None).send().await.expect("request").status();
        assert_eq!(status, 401, "{} {path} without a token", route.method);
        let status = request(Some("mft_not-a-token"))
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status, 401, "{} {path} with an unknown token", route.method);
        for weaker in ROLES.iter().filter(|role| **role < route.role) {
            let status = request(Some(&tokens[weaker]))
                .send()
                .await
                .expect("request")
                .status();
            assert_eq!(status, 403, "{} {path} as {weaker}", route.method);
        }
        let response = request(Some(&tokens[&route.role]))
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "{} {path} as {}: {}",
            route.method,
            route.role,
            response.status()
        );
    }
    // The audit trail names the token of each action (never the token itself).
    let audit = get_json(
        &format!("{base}/api/v1/audit?limit=500"),
        &tokens[&Role::Admin],
    )
    .await;
    let text = audit.to_string();
    assert!(text.contains("\"token_id\":\"operator-token\""), "{text}");
    assert!(text.contains("\"action\":\"message.read\""), "{text}");
    assert!(text.contains("\"action\":\"dlq.purge\""), "{text}");
    for token in tokens.values() {
        assert!(!text.contains(token.as_str()));
    }
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_changed_tokens_file_is_used_without_a_restart_and_a_broken_one_is_not() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let app = common::start(&[("ADMIN_TOKENS_FILE", &path)]).await;
    let url = format!("{}/api/v1/stats", app.admin_url());
    let status = async |token: &str| {
        client()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    };
    let old = tokens[&Role::Viewer].clone();
    assert_eq!(status(&old).await, 200);

    // Rotate: a new viewer token replaces the old one (written aside, then renamed in, as a
    // mounted secret changes).
    let new = generate_token().expect("random");
    let write = |text: String| {
        let temporary = directory.path().join("tokens.tmp");
        std::fs::write(&temporary, text).expect("write");
        std::fs::rename(&temporary, &path).expect("rename");
    };
    write(format!("rotated viewer {}\n", hex(&hash_token(&new))));
    eventually("the new token works", async || status(&new).await == 200).await;
    assert_eq!(status(&old).await, 401, "the old token is gone");

    // A broken file keeps the tokens in use.
    write("rotated viewer not-a-hash\n".to_owned());
    let tokens_stats = async || {
        let stats = get_json(&url, &new).await;
        let tokens = &stats["admin_tokens"];
        (
            tokens["reloads"].as_u64(),
            tokens["reload_failures"].as_u64(),
        )
    };
    eventually("the broken file is looked at and refused", async || {
        tokens_stats().await == (Some(1), Some(1))
    })
    .await;
    assert_eq!(status(&new).await, 200);
    app.shutdown(Duration::from_secs(5)).await;
}

/// A token file every user of the host can read is warned about at start (naming the fix);
/// a private one is not.
#[cfg(unix)]
#[test]
fn a_token_file_readable_by_everyone_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, _) = tokens_file(directory.path());
    std::fs::write(directory.path().join("gw.yaml"), "connectors: []\n").expect("config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let server = common::Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[("ADMIN_TOKENS_FILE", &path)],
    );
    let warned = |lines: &[String]| {
        lines
            .iter()
            .any(|line| line.contains("readable by every user") && line.contains("chmod 600"))
    };
    assert!(warned(&server.early), "{:?}", server.early);
    server.stop();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let server = common::Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[("ADMIN_TOKENS_FILE", &path)],
    );
    assert!(!warned(&server.early), "{:?}", server.early);
    server.stop();
}
