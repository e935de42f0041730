//! The admin API as operators meet it: every route behind its role, replay on a running
//! server, readiness during a drain, request limits, the CLI over the API, the OpenAPI
//! document, and the audit trail's tamper detection.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::peer::{Answer, peer};
use mfoundry::admin::auth::{generate_token, hash_token, hex};
use mfoundry::admin::{ApiDoc, Role, api_routes};
use serde_json::Value;
use utoipa::OpenApi;

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

fn audit_records(data: &Path) -> Vec<(u64, Vec<u8>)> {
    let database = mfoundry::outbox::datafile::open_raw(&data.join("mfoundry.redb")).expect("open");
    let transaction = redb::ReadableDatabase::begin_read(&database).expect("read");
    let table = transaction.open_table(AUDIT).expect("audit table");
    redb::ReadableTable::iter(&table)
        .expect("iter")
        .map(|entry| {
            let (key, value) = entry.expect("entry");
            (key.value(), value.value().to_vec())
        })
        .collect()
}

const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");

/// Apply `change` to the audit table of a copy of `data`; return `audit verify --offline`'s
/// exit code and output.
fn tamper(
    directory: &Path,
    data: &Path,
    name: &str,
    change: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>, &[(u64, Vec<u8>)]),
) -> (i32, String) {
    let copy = directory.join(name);
    std::fs::create_dir_all(&copy).expect("copy dir");
    std::fs::copy(data.join("mfoundry.redb"), copy.join("mfoundry.redb")).expect("copy");
    let records = audit_records(&copy);
    {
        let database =
            mfoundry::outbox::datafile::open_raw(&copy.join("mfoundry.redb")).expect("open");
        let transaction = database.begin_write().expect("write");
        {
            let mut table = transaction.open_table(AUDIT).expect("table");
            change(&mut table, &records);
        }
        transaction.commit().expect("commit");
    }
    let copy_text = copy.display().to_string();
    let (code, stdout, stderr) = common::run_binary(
        directory,
        &["audit", "verify", "--offline", "--data-dir", &copy_text],
        &[],
    );
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn the_cli_steers_a_running_server_with_the_local_token_and_the_audit_trail_detects_tampering() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        directory.path().join("gw.yaml"),
        file_yaml(directory.path()),
    )
    .expect("yaml");
    let server = common::Server::start(directory.path(), "gw.yaml", "data", &[]);
    let data = directory.path().join("data");
    let token_path = data.join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the generated token is private");
    }
    let admin = server.admin_addr.clone().expect("admin address");
    let data_text = data.display().to_string();
    let env = [
        ("ADMIN_ADDR", admin.as_str()),
        ("DATA_DIR", data_text.as_str()),
    ];
    let message = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages/adt-a01.hl7");
    let message = message.display().to_string();
    for _ in 0..2 {
        let (code, _, stderr) = common::run_binary(
            directory.path(),
            &["send", "--addr", &server.addr, &message],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
    }
    let oru = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages/oru-r01-lf.hl7");
    let (code, _, stderr) = common::run_binary(
        directory.path(),
        &["send", "--addr", &server.addr, &oru.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");

    let (code, stdout, stderr) = common::run_binary(directory.path(), &["stats"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("archive") && stdout.contains("paused"),
        "{stdout}"
    );
    // Counters restart with the process, and say so.
    assert!(stdout.starts_with("counts since start ("), "{stdout}");
    let (code, stdout, stderr) = common::run_binary(directory.path(), &["stats", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let stats: Value = serde_json::from_str(&stdout).expect("json");
    assert!(
        stats["counters_since"]
            .as_str()
            .is_some_and(|since| since.ends_with('Z') && since.len() == 20),
        "{stats}"
    );
    assert_eq!(stats["listeners"][0]["received"], 3);
    assert_eq!(
        stats["connectors"][0]["queue_depth"], 2,
        "a retransmit is queued once"
    );

    let (code, stdout, _) = common::run_binary(
        directory.path(),
        &["messages", "search", "--type", "ORU"],
        &env,
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains("ORU^R01") && !stdout.contains("ADT^A01"),
        "{stdout}"
    );
    // The oldest message: the first ADT (ids are handed out by the store, above the clock).
    let (code, stdout, _) = common::run_binary(
        directory.path(),
        &["messages", "search", "--type", "ADT", "--json"],
        &env,
    );
    assert_eq!(code, 0);
    let found: Value = serde_json::from_str(&stdout).expect("json");
    let first = found
        .as_array()
        .and_then(|messages| messages.last())
        .map(|message| message["id"].to_string())
        .expect("the ADT is found");
    let (code, stdout, _) =
        common::run_binary(directory.path(), &["messages", "show", &first], &env);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("archive") && stdout.contains("MSH|"),
        "{stdout}"
    );
    let (code, stdout, _) = common::run_binary(directory.path(), &["resume", "archive"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("delivering"), "{stdout}");

    let wrong = [("ADMIN_ADDR", admin.as_str()), ("ADMIN_TOKEN", "mft_wrong")];
    let (code, _, stderr) = common::run_binary(directory.path(), &["stats"], &wrong);
    assert_eq!(code, 2);
    assert!(stderr.contains("401"), "{stderr}");

    let (code, stdout, _) = common::run_binary(directory.path(), &["audit", "verify"], &env);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("intact"), "{stdout}");
    let (code, stdout, _) = common::run_binary(directory.path(), &["audit", "list"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("(retransmit)"), "{stdout}");
    assert!(
        stdout.contains("local-admin: message.read message 1"),
        "{stdout}"
    );
    server.stop();

    let (code, stdout) = tamper(directory.path(), &data, "untouched", |_, _| {});
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout) = tamper(directory.path(), &data, "changed", |table, records| {
        let mut value = records[1].1.clone();
        let last = value.len() - 1;
        value[last] ^= 0x01;
        table.insert(1, value.as_slice()).expect("insert");
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("record 1: content does not match"),
        "{stdout}"
    );
    let (code, stdout) = tamper(directory.path(), &data, "removed", |table, _| {
        table.remove(1).expect("remove");
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("records 1..1 are missing"), "{stdout}");
    let (code, stdout) = tamper(directory.path(), &data, "reordered", |table, records| {
        table.insert(1, records[2].1.as_slice()).expect("insert");
        table.insert(2, records[1].1.as_slice()).expect("insert");
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("does not match its hash"), "{stdout}");
    // The newest receive record removed: its message has no record any more.
    let (code, stdout) = tamper(directory.path(), &data, "truncated", |table, records| {
        let received: Vec<u64> = records
            .iter()
            .filter(|(seq, value)| {
                let keys = mfoundry::outbox::crypt::Keys::plain();
                mfoundry::outbox::audit::decode(&keys, *seq, value).is_ok_and(|record| {
                    matches!(
                        record.event,
                        mfoundry::outbox::audit::AuditEvent::Received {
                            duplicate: false,
                            ..
                        }
                    )
                })
            })
            .map(|(seq, _)| *seq)
            .collect();
        let newest = *received.last().expect("a receive record");
        let last = records.last().expect("records").0;
        for seq in newest..=last {
            table.remove(seq).expect("remove");
        }
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("have no receive record"), "{stdout}");
}

#[tokio::test]
async fn a_message_being_retried_shows_its_attempts_and_last_error() {
    let downstream = peer(|_, _| Answer::Ack("AE")).await;
    let yaml = format!(
        "connectors:\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    retry:\n      initial_delay: 24h\n      max_delay: 24h\n",
        downstream.addr.port()
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send_adts(&app, &["T1"]).await;
    let token = std::fs::read_to_string(app.directory.path().join("admin.token"))
        .expect("the local admin token");
    let base = app.admin_url();
    eventually("one failed attempt", async || {
        app.worker("lab").stats().retries.load(Ordering::SeqCst) >= 1
    })
    .await;
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
