//! Transforms as users meet them: the real app delivering each connector's own copy while
//! the received bytes stay as received, a failed step dead-lettering only that connector's
//! copy (the sender still gets AA), the copies in `GET /api/v1/messages/{id}`, and `check`
//! naming every problem of a file with tables and steps at its line and column.

use crate::common;

use std::path::Path;
use std::time::Duration;

fn client() -> reqwest::Client {
    mfoundry::tls::install_crypto_provider();
    reqwest::Client::new()
}

async fn get_json(app: &common::TestApp, path: &str) -> serde_json::Value {
    let token = std::fs::read_to_string(app.directory.path().join("admin.token")).expect("token");
    let response = client()
        .get(format!("{}{path}", app.admin_url()))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

fn files(directory: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").path())
                .filter(|path| path.extension().is_some_and(|extension| extension == "hl7"))
                .map(|path| {
                    let name = path
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned();
                    (name, std::fs::read(&path).expect("read"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two file connectors, `raw` without steps and `emr` with the steps given.
fn yaml(raw: &Path, emr: &Path, steps: &str, tables: &str) -> String {
    format!(
        "{tables}connectors:\n  - name: raw\n    type: file\n    directory: {}\n    filename: \"{{entry}}.hl7\"\n  - name: emr\n    type: file\n    directory: {}\n    filename: \"{{entry}}.hl7\"\n    transform:\n{steps}",
        raw.display(),
        emr.display()
    )
}

async fn send(app: &common::TestApp, message: &[u8]) -> String {
    let mut stream = common::connect(app).await;
    common::write(&mut stream, &common::framed(message)).await;
    let reply = common::expect_ack(&mut stream).await;
    common::field(&reply, "MSA", 1)
}

#[tokio::test]
async fn each_connector_delivers_its_own_copy_and_the_received_bytes_stay() {
    let out = tempfile::tempdir().expect("tempdir");
    let (raw, emr) = (out.path().join("raw"), out.path().join("emr"));
    let steps = "      - set: MSH-5\n        value: '\"EMR\"'\n      - map: {field: PID-8, table: sex}\n      - copy: {from: \"PID-3[1].1\", to: PID-2}\n      - delete: EVN\n      - set: PID-5.2\n        value: 'field(\"PID-5.2\") + \" Q\"'\n        when: 'msh.sending_fac == \"SENDFAC\"'\n";
    let tables = "tables:\n  sex: {values: {M: male, F: female}, default: unknown}\n";
    let app = common::start_with_yaml(Some(&yaml(&raw, &emr, steps, tables)), &[]).await;
    let message = common::adt("T1", "2.5");
    assert_eq!(send(&app, &message).await, "AA");
    eventually("both delivered", || {
        files(&raw).len() == 1 && files(&emr).len() == 1
    })
    .await;
    let (_, received) = &files(&raw)[0];
    assert_eq!(
        received, &message,
        "a connector without steps gets the bytes as received"
    );
    let (name, copy) = &files(&emr)[0];
    let copy = String::from_utf8(copy.clone()).expect("utf-8");
    assert_eq!(common::field(copy.as_bytes(), "MSH", 5), "EMR");
    assert_eq!(common::field(copy.as_bytes(), "PID", 8), "male");
    assert_eq!(common::field(copy.as_bytes(), "PID", 2), "12345");
    assert_eq!(common::field(copy.as_bytes(), "PID", 5), "DOE^JOHN Q");
    assert!(!copy.contains("\rEVN|"), "{copy:?}");

    // The API shows the received message and what `emr` delivers.
    let id = name.trim_end_matches(".hl7");
    let shown = get_json(&app, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(
        shown["body"].as_str().map(str::as_bytes),
        Some(message.as_slice())
    );
    let copies = shown["copies"].as_array().expect("copies");
    assert_eq!(copies.len(), 1, "{shown}");
    assert_eq!(copies[0]["connector"], "emr");
    assert_eq!(copies[0]["body"].as_str(), Some(copy.as_str()));
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_failed_step_dead_letters_only_that_connectors_copy_and_replay_never_sends_it_raw() {
    let out = tempfile::tempdir().expect("tempdir");
    let (raw, emr) = (out.path().join("raw"), out.path().join("emr"));
    let steps =
        "      - set: MSH-5\n        value: '\"EMR\"'\n      - map: {field: PID-8, table: sex}\n";
    let tables = "tables:\n  sex: {values: {F: female}}\n";
    let app = common::start_with_yaml(Some(&yaml(&raw, &emr, steps, tables)), &[]).await;
    assert_eq!(
        send(&app, &common::adt("T2", "2.5")).await,
        "AA",
        "the message is valid"
    );
    eventually("raw delivered", || files(&raw).len() == 1).await;
    let page = get_json(&app, "/api/v1/dlq?connector=emr").await;
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{page}");
    let reason = entries[0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("transform step 2 (map PID-8 with sex)") && reason.contains("no default"),
        "{reason}"
    );
    assert!(
        !reason.contains("\"M\""),
        "the value is not quoted: {reason}"
    );

    // Replayed, it is dead-lettered again: the received bytes are never sent instead.
    let token = std::fs::read_to_string(app.directory.path().join("admin.token")).expect("token");
    let replayed = client()
        .post(format!("{}/api/v1/dlq/emr/replay", app.admin_url()))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"all": true}))
        .send()
        .await
        .expect("replay");
    assert!(replayed.status().is_success(), "{}", replayed.status());
    eventually("dead-lettered again", || {
        app.worker("emr")
            .stats()
            .dead_lettered
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    assert!(files(&emr).is_empty(), "nothing delivered to emr");
    let page = get_json(&app, "/api/v1/dlq?connector=emr").await;
    let reason = page["entries"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("reprocess"), "{page}");
    app.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn check_names_every_problem_of_tables_and_steps_with_its_place() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(directory.path().join("tables")).expect("dir");
    std::fs::write(
        directory.path().join("tables/lab.csv"),
        "from,to\nGLU,2345-7\nGLU,2339-0\n",
    )
    .expect("csv");
    let yaml = "\
tables:
  lab: {file: tables/lab.csv}
  sex: {values: {M: male}}
connectors:
  - name: emr
    type: file
    directory: out
    transform:
      - set: MSH-2
        value: '\"x\"'
      - map: {field: \"OBX[*]-3.1\", table: loinc}
      - copy: {from: \"PID-3[*]\", to: PID-2}
      - set: PID-5
        value: '1 + 2'
      - delete: PID-19
        when: 'msh.msg_type'
      - sets: PID-4
      - map: {field: PID-8, table: sex}
        value: x
";
    std::fs::write(directory.path().join("gateway.yaml"), yaml).expect("yaml");
    let (code, stdout, stderr) = common::run_binary(
        directory.path(),
        &["check", "--config", "gateway.yaml"],
        &[],
    );
    assert_eq!(code, 64, "{stdout}{stderr}");
    for wanted in [
        "gateway.yaml:2:8: table \"lab\": tables/lab.csv:3: the code \"GLU\" is already mapped by tables/lab.csv:2",
        "gateway.yaml:9:14: connector \"emr\" transform step 1 (set): MSH-2 is part of the message's delimiters",
        "unknown table \"loinc\"; the tables are lab, sex",
        "copy reads one place; PID-3[*] names several",
        "step 4 (set) `value`: the expression gives an int",
        "step 5 (delete) `when`: the expression gives a string",
        "gateway.yaml:17:9: unknown key `sets` in a transform step",
        "`value` belongs to a `set` step",
    ] {
        assert!(stderr.contains(wanted), "missing {wanted:?} in\n{stderr}");
    }

    // Fixed, the same file loads and `check` counts the steps and tables.
    let fixed = yaml
        .replace("MSH-2", "MSH-5")
        .replace("loinc", "lab")
        .replace("PID-3[*]", "PID-3[1]")
        .replace("'1 + 2'", "'\"Doe\"'")
        .replace("'msh.msg_type'", "'msh.msg_type == \"ADT\"'")
        .replace("      - sets: PID-4\n", "")
        .replace("        value: x\n", "");
    std::fs::write(directory.path().join("gateway.yaml"), fixed).expect("yaml");
    std::fs::write(
        directory.path().join("tables/lab.csv"),
        "from,to\nGLU,2345-7\n",
    )
    .expect("csv");
    let (code, stdout, stderr) = common::run_binary(
        directory.path(),
        &["check", "--config", "gateway.yaml"],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 connector, 0 validation rules, 6 transform steps, 2 tables"),
        "{stdout}"
    );
}

async fn post_json(
    app: &common::TestApp,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let token = std::fs::read_to_string(app.directory.path().join("admin.token")).expect("token");
    let response = client()
        .post(format!("{}{path}", app.admin_url()))
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn reprocess_queues_any_stored_message_again_through_the_current_transform() {
    let out = tempfile::tempdir().expect("tempdir");
    let (raw, emr) = (out.path().join("raw"), out.path().join("emr"));
    let steps = "      - set: MSH-5\n        value: '\"EMR\"'\n";
    let yaml = yaml(&raw, &emr, steps, "validation:\n  rules:\n    - name: no-test-patients\n      expression: 'pid.family != \"TEST\"'\n")
        .replace(
            "  - name: emr\n    type: file\n",
            "  - name: emr\n    type: file\n    filter: msh.msg_type == \"ORU\"\n",
        );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    assert_eq!(send(&app, &common::adt("R1", "2.5")).await, "AA");
    let refused = String::from_utf8(common::adt("R2", "2.5"))
        .expect("text")
        .replace("DOE^JOHN", "TEST^JOHN");
    assert_eq!(send(&app, refused.as_bytes()).await, "AR");
    eventually("raw delivered", || files(&raw).len() == 1).await;
    assert!(files(&emr).is_empty(), "emr's filter did not take the ADT");
    let page = get_json(&app, "/api/v1/messages?limit=10").await;
    let id_of = |control_id: &str| {
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .find(|message| message["control_id"] == control_id)
            .and_then(|message| message["id"].as_u64())
            .expect("stored")
    };
    let (accepted, rejected) = (id_of("R1"), id_of("R2"));

    // A filtered message goes to emr through emr's transform; a delivered one to raw again,
    // as a new entry; a refused one only when asked; an unknown id is named.
    let (status, result) = post_json(
        &app,
        "/api/v1/messages/reprocess",
        serde_json::json!({"ids": [accepted, rejected, 42], "to": "emr"}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["queued"][0]["id"], accepted, "{result}");
    assert_eq!(result["refused"], serde_json::json!([rejected]));
    assert_eq!(result["missing"], serde_json::json!([42]));
    eventually("emr delivered", || files(&emr).len() == 1).await;
    let (_, copy) = &files(&emr)[0];
    assert_eq!(
        common::field(copy, "MSH", 5),
        "EMR",
        "through the transform"
    );
    // Each entry keeps its own copy: a second reprocess adds one, the first stays.
    let (status, again) = post_json(
        &app,
        "/api/v1/messages/reprocess",
        serde_json::json!({"ids": [accepted], "to": "emr"}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    let shown = get_json(&app, &format!("/api/v1/messages/{accepted}")).await;
    let entries: Vec<u64> = shown["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .filter(|copy| copy["connector"] == "emr")
        .filter_map(|copy| copy["entry"].as_u64())
        .collect();
    assert_eq!(
        entries,
        [
            result["queued"][0]["entry"].as_u64().expect("entry"),
            again["queued"][0]["entry"].as_u64().expect("entry")
        ],
        "{shown}"
    );
    eventually("emr delivered again", || files(&emr).len() == 2).await;

    let (status, result) = post_json(
        &app,
        "/api/v1/messages/reprocess",
        serde_json::json!({"ids": [accepted, rejected], "to": "raw", "include_rejected": true}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["queued"].as_array().map(Vec::len),
        Some(2),
        "{result}"
    );
    let entry = result["queued"][0]["entry"].as_u64().expect("entry");
    assert_ne!(entry, accepted, "a new queue entry");
    eventually("raw got both", || files(&raw).len() == 3).await;
    let (_, again) = &files(&raw)[0];
    assert_eq!(
        again,
        &common::adt("R1", "2.5"),
        "no transform at raw: as received"
    );

    let (status, body) = post_json(
        &app,
        "/api/v1/messages/reprocess",
        serde_json::json!({"ids": [accepted], "to": "nowhere"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let trail = get_json(&app, "/api/v1/audit?limit=500").await;
    let reprocessed = trail["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|record| record.to_string().contains("message.reprocess"))
        .count();
    assert_eq!(reprocessed, 3, "{trail}");
    assert!(
        trail
            .to_string()
            .contains("connector emr (3 ids: 1 refused, 1 not stored)"),
        "{trail}"
    );
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_dead_letter_is_not_replayed_to_a_connector_whose_transform_it_never_had() {
    let out = tempfile::tempdir().expect("tempdir");
    let (raw, emr) = (out.path().join("raw"), out.path().join("emr"));
    let steps = "      - delete: PID-3\n";
    let yaml = yaml(&raw, &emr, steps, "").replace(
        "  - name: raw\n    type: file\n",
        "  - name: raw\n    type: file\n    paused: true\n",
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    assert_eq!(send(&app, &common::adt("D1", "2.5")).await, "AA");
    let raw_id = app.outbox().connector_id("raw").expect("raw");
    let (seq, _) = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .queue(raw_id)
        .expect("queue")[0]
        .clone();
    assert!(
        app.outbox()
            .dead_letter(raw_id, seq, 1, "refused".to_owned())
            .await
            .expect("dead-letter")
    );
    let (status, body) = post_json(
        &app,
        "/api/v1/dlq/raw/replay",
        serde_json::json!({"all": true, "to": "emr"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("Reprocess the messages to emr"),
        "{body}"
    );
    // Offline (no configuration), the store's copies tell that emr transforms, once it has
    // stored one.
    assert_eq!(send(&app, &common::adt("D2", "2.5")).await, "AA");
    eventually("emr stored a copy", || files(&emr).len() == 2).await;
    let offline = mfoundry::admin::dlq::DeadLetters::all_of(app.outbox());
    let refused = offline
        .replay(
            "cli-offline",
            "raw",
            mfoundry::admin::dlq::ReplayRequest {
                seqs: Vec::new(),
                all: true,
                to: Some("emr".to_owned()),
            },
        )
        .await
        .expect_err("refused offline too");
    assert!(
        refused.to_string().contains("it has stored copies"),
        "{refused}"
    );
    // Replayed to its own connector, it goes.
    let (status, body) = post_json(
        &app,
        "/api/v1/dlq/raw/replay",
        serde_json::json!({"all": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.shutdown(Duration::from_secs(5)).await;
}
