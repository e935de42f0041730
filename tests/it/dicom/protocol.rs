//! What third-party senders do that DCMTK and pynetdicom do not, on the wire: a command and
//! its data set packed into one P-DATA-TF (dcm4che), a C-STORE on a context of another SOP
//! class, an unreadable data set. Written with mfoundry's own PDU codec against the real
//! binary; needs no peer tools.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mfoundry::dicom::dataset::{self, Syntax, write::element};
use mfoundry::dicom::dimse::{self, Command};
use mfoundry::dicom::pdu::{self, AssociateRq, PduType, ProposedContext};

use crate::common;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

fn read_pdu(stream: &mut TcpStream) -> (PduType, Vec<u8>) {
    let mut header = [0u8; pdu::HEADER_LEN];
    stream.read_exact(&mut header).expect("a PDU header");
    let (kind, length) = pdu::header(&header, 1 << 20).expect("a PDU");
    let mut body = vec![0u8; length as usize];
    stream.read_exact(&mut body).expect("a PDU body");
    (kind, body)
}

/// Associate with a CT context (id 1) and a Verification context (id 3).
fn associate(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = AssociateRq {
        called_ae: "MFOUNDRY".to_owned(),
        calling_ae: "RAW".to_owned(),
        application_context: pdu::APPLICATION_CONTEXT.to_owned(),
        contexts: vec![
            ProposedContext {
                id: 1,
                abstract_syntax: CT.to_owned(),
                transfer_syntaxes: vec![dataset::EXPLICIT_VR_LITTLE_ENDIAN.to_owned()],
            },
            ProposedContext {
                id: 3,
                abstract_syntax: pdu::VERIFICATION.to_owned(),
                transfer_syntaxes: vec![dataset::IMPLICIT_VR_LITTLE_ENDIAN.to_owned()],
            },
        ],
        max_pdu: 16_384,
        implementation_class: "1.2.3.4".to_owned(),
    };
    stream
        .write_all(&pdu::encode_associate_rq(&request, "TEST"))
        .expect("write");
    let (kind, body) = read_pdu(&mut stream);
    assert_eq!(kind, PduType::AssociateAc);
    let ac = pdu::parse_associate_ac(&body).expect("an A-ASSOCIATE-AC");
    assert!(
        ac.contexts.iter().all(|context| context.result == 0),
        "{ac:?}"
    );
    stream
}

fn data_set(uid: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let syntax = Syntax::ExplicitLittle;
    element(
        &mut out,
        syntax,
        dataset::SOP_CLASS_UID,
        b"UI",
        CT.as_bytes(),
    );
    element(
        &mut out,
        syntax,
        dataset::SOP_INSTANCE_UID,
        b"UI",
        uid.as_bytes(),
    );
    element(&mut out, syntax, dataset::MODALITY, b"CS", b"CT");
    element(&mut out, syntax, dataset::PATIENT_ID, b"LO", b"RAW-1");
    out
}

/// One P-DATA-TF holding the C-STORE-RQ and the whole data set, as dcm4che packs them.
fn packed_store(context: u8, uid: &str, message_id: u16, data: &[u8]) -> Vec<u8> {
    let command = dimse::encode(&Command {
        field: dimse::C_STORE_RQ,
        sop_class: CT.to_owned(),
        sop_instance: uid.to_owned(),
        message_id,
        data_set_type: 0,
        ..Command::default()
    });
    let mut body = Vec::new();
    for (control, fragment) in [(0b11u8, &command[..]), (0b10, data)] {
        body.extend_from_slice(
            &u32::try_from(fragment.len() + 2)
                .expect("len")
                .to_be_bytes(),
        );
        body.push(context);
        body.push(control);
        body.extend_from_slice(fragment);
    }
    pdu::encode(PduType::PData, &body)
}

fn response(stream: &mut TcpStream) -> Command {
    let (kind, body) = read_pdu(stream);
    assert_eq!(kind, PduType::PData);
    let items = pdu::pdvs(&body).expect("PDVs");
    assert!(items.iter().all(|item| item.command));
    let bytes: Vec<u8> = items.iter().flat_map(|item| item.data.to_vec()).collect();
    dimse::parse(&bytes).expect("a response")
}

#[test]
fn packed_commands_are_stored_and_wrong_contexts_and_unreadable_data_sets_are_refused() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("gateway.yaml"),
        "listeners:\n  - name: modalities\n    type: dicom\n    listen_addr: \"127.0.0.1:0\"\nconnectors:\n  - name: all\n    type: file\n    format: dicom\n    directory: ./out\n",
    )
    .expect("config");
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let mut stream = associate(&addr);

    // Command and data set in one PDU: stored.
    let uid = "1.2.826.0.1.3680043.10.1.1";
    stream
        .write_all(&packed_store(1, uid, 1, &data_set(uid)))
        .expect("write");
    let answer = response(&mut stream);
    assert_eq!(answer.status, dimse::SUCCESS, "{answer:?}");
    assert_eq!(answer.responding_to, 1);

    // A C-STORE of a CT on the Verification context: refused, not stored.
    let other = "1.2.826.0.1.3680043.10.1.2";
    stream
        .write_all(&packed_store(3, other, 2, &data_set(other)))
        .expect("write");
    let answer = response(&mut stream);
    assert_eq!(answer.status, dimse::SOP_CLASS_NOT_SUPPORTED, "{answer:?}");

    // A data set whose element runs past its end: cannot understand, not stored.
    let broken = "1.2.826.0.1.3680043.10.1.3";
    let mut data = data_set(broken);
    data.extend_from_slice(&[
        0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
    ]);
    stream
        .write_all(&packed_store(1, broken, 3, &data))
        .expect("write");
    let answer = response(&mut stream);
    assert_eq!(answer.status, dimse::CANNOT_UNDERSTAND, "{answer:?}");

    // C-ECHO on the Verification context.
    let echo = dimse::encode(&Command {
        field: dimse::C_ECHO_RQ,
        sop_class: pdu::VERIFICATION.to_owned(),
        message_id: 4,
        data_set_type: dimse::NO_DATA_SET,
        ..Command::default()
    });
    for pdu in pdu::encode_pdata(3, true, &echo, 16_384) {
        stream.write_all(&pdu).expect("write");
    }
    assert_eq!(response(&mut stream).status, dimse::SUCCESS);
    stream.write_all(&pdu::release_rq()).expect("release");
    assert_eq!(read_pdu(&mut stream).0, PduType::ReleaseRp);

    let stored = super::cli_json(&server, dir, &["messages", "search"]);
    let uids: Vec<&str> = stored
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|message| message["control_id"].as_str())
        .collect();
    assert_eq!(
        uids,
        vec![uid],
        "only the packed, well-formed object is stored"
    );
    server.stop();
}

#[test]
fn bench_dicom_reports_objects_per_second_in_and_out() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("gateway.yaml"),
        "listeners:\n  - name: modalities\n    type: dicom\n    listen_addr: \"127.0.0.1:0\"\nconnectors:\n  - name: archive\n    type: file\n    format: dicom\n    directory: ./out\n",
    )
    .expect("config");
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let admin = server.admin_addr.clone().expect("admin API");
    let (code, stdout, stderr) = common::run_binary(
        dir,
        &[
            "bench",
            "--dicom",
            "--addr",
            &addr,
            "-c",
            "2",
            "-n",
            "40",
            "--object-size",
            "8KiB",
            "--no-probe",
            "--drain",
            "archive",
            "--admin-addr",
            &admin,
            "--data-dir",
            "data",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("DICOM C-STORE, associations 2, objects 40"),
        "{stdout}"
    );
    assert!(stdout.contains("objects not stored: 0"), "{stdout}");
    assert!(
        stdout.contains("drain archive: 40 of 40 delivered"),
        "{stdout}"
    );
    assert_eq!(common::count_files(&dir.join("out")), 40);
    server.stop();
}
