//! A Structured Report taken by a connector that sends HL7 becomes an ORU^R01, the same in
//! `mfoundry test` as at intake; another object sent there is a dead letter with the reason.

use super::peers;
use crate::common;

const CONFIG: &str = r#"connectors:
  - name: ehr
    type: mllp
    host: 127.0.0.1
    port: 9
  - name: archive
    type: file
    format: dicom
    directory: ./archive
"#;

#[test]
fn mfoundry_test_maps_a_report_to_an_oru_and_refuses_other_objects_for_hl7() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(dir.join("mfoundry.yaml"), CONFIG).expect("config");
    let objects = peers.objects(&dir.join("objects"), 1, 1024);
    for (case, (name, _)) in ["cases/ct", "cases/report"].iter().zip(&objects) {
        std::fs::create_dir_all(dir.join(case)).expect("case dir");
        std::fs::copy(
            dir.join("objects").join(name),
            dir.join(case).join("object.dcm"),
        )
        .expect("object");
    }
    let run = |args: &[&str]| common::run_binary(dir, args, &[]);
    let (code, stdout, stderr) = run(&["test", "--config", "mfoundry.yaml", "--update", "cases"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = run(&["test", "--config", "mfoundry.yaml", "cases"]);
    assert_eq!(code, 0, "the cases pass as written: {stdout}{stderr}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");

    let oru = std::fs::read_to_string(dir.join("cases/report/ehr.out")).expect("the ORU");
    let segments: Vec<&str> = oru.split('\r').filter(|s| !s.is_empty()).collect();
    // The calling AE title is the one that wrote the file (SourceApplicationEntityTitle).
    assert!(segments[0].starts_with("MSH|^~\\&|REPORTS|"), "{oru}");
    assert!(segments[0].contains("|ORU^R01^ORU_R01|SR"), "{oru}");
    assert!(
        segments
            .iter()
            .any(|s| s.starts_with("OBX|1|NM|8867-4^Heart rate^LN|1|72|")),
        "{oru}"
    );
    let expect = std::fs::read_to_string(dir.join("cases/report/expect.yaml")).expect("expect");
    assert!(expect.contains("ack: C-STORE 0000"), "{expect}");
    assert!(expect.contains("\"ehr\", \"archive\""), "{expect}");
    // The archive gets the object itself.
    let archived = std::fs::read(dir.join("cases/report/archive.out")).expect("archived");
    assert!(mfoundry::dicom::is_dicom(&archived));

    let refused = std::fs::read_to_string(dir.join("cases/ct/ehr.out")).expect("ct to ehr");
    assert!(
        refused.starts_with("not delivered: the DICOM object is not a Structured Report"),
        "{refused}"
    );

    // A changed mapping shows as a failing case with a diff.
    std::fs::write(dir.join("cases/report/ehr.out"), "MSH|^~\\&|OTHER\r").expect("tamper");
    let (code, stdout, _) = run(&["test", "--config", "mfoundry.yaml", "cases"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn a_report_reprocessed_to_an_hl7_connector_is_sent_as_its_oru() {
    let Some(peers) = peers() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("gateway.yaml"),
        r#"listeners:
  - name: modalities
    type: dicom
    listen_addr: "127.0.0.1:0"
connectors:
  - name: archive
    type: file
    format: dicom
    directory: ./archive
  - name: later
    type: file
    directory: ./later
    filter: "false"
"#,
    )
    .expect("config");
    let (objects, files) = peers.object_files(&dir.join("objects"), 1, 1024);
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let (ok, text) = super::storescu(&addr, "CT1", "MFOUNDRY", &[], &files);
    assert!(ok, "{text}");
    super::intake::files_in(&dir.join("archive"), 2);
    let messages = super::intake::stored(&server, dir);
    let id_of = |uid: &str| {
        messages
            .iter()
            .find(|message| message["control_id"] == uid)
            .and_then(|message| message["id"].as_u64())
            .expect("stored")
            .to_string()
    };
    let (ct, report) = (id_of(&objects[0].1), id_of(&objects[1].1));
    let result = super::cli_json(
        &server,
        dir,
        &["messages", "reprocess", "--to", "later", &report, &ct],
    );
    // The CT cannot be HL7: a dead letter with the reason, at once.
    let dead = result["dead_lettered"].as_array().expect("dead-lettered");
    assert_eq!(dead.len(), 1, "{result}");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a Structured Report"),
        "{result}"
    );
    super::intake::files_in(&dir.join("later"), 1);
    let oru = super::intake::walk(&dir.join("later"));
    let oru = std::fs::read_to_string(&oru[0]).expect("the ORU");
    assert!(oru.starts_with("MSH|^~\\&|CT1|"), "{oru}");
    assert!(oru.contains("|ORU^R01^ORU_R01|SR"), "{oru}");
    assert!(
        oru.contains("\rOBX|1|NM|8867-4^Heart rate^LN|1|72|"),
        "{oru}"
    );
    server.stop();
}
