//! Search by patient (ADR 0019): `POST /api/v1/messages/search` finds messages by PID-3
//! identifier and PID-5.1 family name through the index, with the other filters and a
//! cursor; viewers are refused; every search is on the audit trail without its values; the
//! CLI searches the same way.

use super::*;

fn adt(control_id: &str, pid3: &str, pid5: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20261206080000||ADT^A08^ADT_A01|{control_id}|P|2.5\r\
         EVN|A08|20261206080000\rPID|1||{pid3}||{pid5}||19700101|F\r"
    )
    .into_bytes()
}

fn control_ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| {
            message["control_id"]
                .as_str()
                .expect("control id")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn patients_are_found_by_identifier_and_family_name_and_each_search_is_audited_without_values()
 {
    let directory = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(directory.path());
    let app = common::start(&[("ADMIN_TOKENS_FILE", &path)]).await;
    let mut stream = common::connect(&app).await;
    for (control_id, pid3, pid5) in [
        ("P1", "MRN-A^^^H^MR~NHS-1^^^NHS^NH", "O\\T\\BRIEN^ANN"),
        ("P2", "MRN-B^^^H^MR", "Smith^AL"),
        ("P3", "mrn-a^^^H^MR", " smith ^BO"),
        ("P4", "MRN-C^^^H^MR", "Jones^CY"),
    ] {
        common::write(&mut stream, &common::framed(&adt(control_id, pid3, pid5))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{control_id}");
    }
    let url = format!("{}/api/v1/messages/search", app.admin_url());
    let operator = &tokens[&Role::Operator];
    let search = async |body: Value| control_ids(&post_json(&url, operator, body).await);
    assert_eq!(
        search(serde_json::json!({"patient_id": "MRN-A"})).await,
        ["P3", "P1"]
    );
    assert_eq!(
        search(serde_json::json!({"patient_id": "nhs-1"})).await,
        ["P1"]
    );
    assert_eq!(
        search(serde_json::json!({"family_name": "SMITH"})).await,
        ["P3", "P2"]
    );
    assert_eq!(
        search(serde_json::json!({"family_name": "o&brien"})).await,
        ["P1"],
        "escape sequences are decoded before indexing"
    );
    assert_eq!(
        search(serde_json::json!({"patient_id": "MRN-A", "family_name": "smith"})).await,
        ["P3"]
    );
    assert_eq!(
        search(serde_json::json!({"patient_id": "MRN-A", "control_id": "P1"})).await,
        ["P1"]
    );
    assert!(
        search(serde_json::json!({"patient_id": "MRN"}))
            .await
            .is_empty(),
        "exact identifiers only"
    );
    // A cursor through the index.
    let first = post_json(
        &url,
        operator,
        serde_json::json!({"patient_id": "MRN-A", "limit": 1}),
    )
    .await;
    assert_eq!(control_ids(&first), ["P3"]);
    let before = first["next_before"].as_u64().expect("a cursor");
    let second = post_json(
        &url,
        operator,
        serde_json::json!({"patient_id": "MRN-A", "limit": 1, "before": before}),
    )
    .await;
    assert_eq!(control_ids(&second), ["P1"]);

    // Viewers may not search by patient; a search without a patient field is refused.
    let refused = |token: &str, body: Value| {
        client()
            .post(&url)
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    let status = refused(
        &tokens[&Role::Viewer],
        serde_json::json!({"patient_id": "MRN-A"}),
    )
    .await
    .expect("request")
    .status();
    assert_eq!(status, 403);
    for body in [
        serde_json::json!({"type": "ADT"}),
        serde_json::json!({"patient_id": "  "}),
    ] {
        let response = refused(operator, body).await.expect("request");
        assert_eq!(response.status(), 400);
        let text = response.text().await.expect("text");
        assert!(text.contains("patient") || text.contains("blank"), "{text}");
    }

    // The viewers' GET search refuses patient fields (they would be in the URL and
    // ignored) and unknown parameters, without repeating the value.
    let list = format!("{}/api/v1/messages", app.admin_url());
    for query in ["patient_id=MRN-A", "family_name=SMITH", "patient=MRN-A"] {
        let response = client()
            .get(format!("{list}?{query}"))
            .bearer_auth(&tokens[&Role::Viewer])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{query}");
        let text = response.text().await.expect("text");
        assert!(!text.contains("MRN-A") && !text.contains("SMITH"), "{text}");
    }
    let page = get_json(&format!("{list}?control_id=P2"), &tokens[&Role::Viewer]).await;
    assert_eq!(control_ids(&page), ["P2"]);
    // A malformed value is refused without being repeated.
    let response = refused(operator, serde_json::json!({"patient_id": 4711}))
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("text");
    assert!(
        !text.contains("4711") && text.contains("patient_id"),
        "{text}"
    );

    // Each search is on the trail, by token and fields, never with what was searched for.
    let audit = get_json(
        &format!(
            "{}/api/v1/audit?order=newest&kind=admin&limit=500",
            app.admin_url()
        ),
        operator,
    )
    .await;
    let text = audit.to_string();
    assert!(
        text.contains("message.search_patient")
            && text.contains("by patient identifier and family name"),
        "{text}"
    );
    for value in ["MRN-A", "NHS-1", "SMITH", "BRIEN"] {
        assert!(!text.to_uppercase().contains(value), "{value} in {text}");
    }

    // The CLI searches by patient the same way (the value goes in the request body).
    // (Off the runtime: the server answers on this test's thread.)
    let (directory, admin, token) = (
        app.directory.path().to_owned(),
        app.admin_url().trim_start_matches("http://").to_owned(),
        operator.clone(),
    );
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        common::run_binary(
            &directory,
            &[
                "messages",
                "search",
                "--family-name",
                "smith",
                "--json",
                "--admin-addr",
                &admin,
            ],
            &[("ADMIN_TOKEN", token.as_str())],
        )
    })
    .await
    .expect("the CLI ran");
    assert_eq!(code, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    let listed: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|message| message["control_id"].as_str().expect("control id"))
        .collect();
    assert_eq!(listed, ["P3", "P2"]);
    app.shutdown(Duration::from_secs(5)).await;
}
