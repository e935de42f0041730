//! The README's end-to-end example, run as a user would: `examples/end-to-end.yaml` with a
//! second mfoundry as the MLLP peer, `examples/http-receiver.py` as the HTTP endpoint, a
//! results directory and the machine's PostgreSQL; `mfoundry send` with every example
//! message. ADT must reach the MLLP peer and the HTTP endpoint, ORU the files and the table.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, run_binary};

fn count_files(directory: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    entries
        .map(|entry| {
            let entry = entry.expect("entry");
            let path = entry.path();
            if path.is_dir() {
                count_files(&path)
            } else {
                // A file being written has a temporary dot-name until it is complete.
                usize::from(!entry.file_name().to_string_lossy().starts_with('.'))
            }
        })
        .sum()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn required() -> bool {
    std::env::var("MFOUNDRY_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

#[test]
fn adt_goes_to_mllp_and_http_and_oru_to_files_and_postgres() {
    let dsn = std::env::var("MFOUNDRY_TEST_POSTGRES_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = match runtime.block_on(tokio_postgres::connect(&dsn, tokio_postgres::NoTls)) {
        Ok((client, connection)) => {
            runtime.spawn(connection);
            client
        }
        Err(error) => {
            assert!(
                !required(),
                "PostgreSQL is required but {dsn:?} failed: {error}"
            );
            eprintln!("SKIPPED: PostgreSQL not reachable at {dsn:?} ({error})");
            return;
        }
    };
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));

    let http_port = free_port();
    let receiver = Command::new("python3")
        .arg(manifest.join("examples/http-receiver.py"))
        .arg(http_port.to_string())
        .arg(dir.join("http-in"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut receiver) = receiver else {
        eprintln!("SKIPPED: python3 is needed for the example HTTP receiver");
        return;
    };
    // Wait for the receiver to listen.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTP receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    std::fs::write(dir.join("none.yaml"), "").expect("write");
    let emr = Server::start(dir, "none.yaml", "emr-data", &[]);
    let emr_port = emr.addr.rsplit(':').next().expect("port").to_owned();
    let config = manifest.join("examples/end-to-end.yaml");
    let http_url = format!("http://127.0.0.1:{http_port}/hl7");
    let gateway = Server::start(
        dir,
        config.to_str().expect("utf-8"),
        "gateway-data",
        &[
            ("EMR_MLLP_PORT", &emr_port),
            ("EMR_HTTP_URL", &http_url),
            ("ARCHIVE_DSN", &dsn),
            ("RUST_LOG", "info,mfoundry::delivery=debug"),
        ],
    );

    let mut messages: Vec<String> = std::fs::read_dir(manifest.join("examples/messages"))
        .expect("messages")
        .map(|entry| entry.expect("entry").path().display().to_string())
        .collect();
    messages.sort();
    let mut args = vec!["send", "--addr", gateway.addr.as_str()];
    args.extend(messages.iter().map(String::as_str));
    let (code, stdout, stderr) = run_binary(dir, &args, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // 4 ADT (adt-a01, two in the batch file, the Latin-1 A08) × 2 connectors, 1 ORU × 2.
    gateway.wait_for_log("\"message\":\"delivered\"", 10);
    assert_eq!(count_files(&dir.join("http-in")), 4, "ADT to HTTP");
    assert_eq!(count_files(&dir.join("results")), 1, "ORU to files");
    let first_http = std::fs::read(dir.join("http-in/1.hl7")).expect("first request body");
    let first_message =
        std::fs::read(manifest.join("examples/messages/adt-a01.hl7")).expect("example");
    assert_eq!(
        common::field(&first_http, "MSH", 10),
        common::field(&first_message, "MSH", 10)
    );
    gateway.stop();
    emr.stop();
    let _ = receiver.kill();
    let _ = receiver.wait();

    // The MLLP peer stored the four ADT messages.
    let open = |data: &str| {
        let mut options =
            mfoundry::outbox::OutboxOptions::new(dir.join(data).join("mfoundry.redb"));
        options.dedup_window = None;
        mfoundry::outbox::Outbox::open_existing(options).expect("opens")
    };
    let (emr_outbox, writer) = open("emr-data");
    let types: Vec<String> = emr_outbox
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(_, record)| format!("{}^{}", record.header.msg_type, record.header.trigger))
        .collect();
    assert_eq!(types, vec!["ADT^A01", "ADT^A04", "ADT^A04", "ADT^A08"]);
    drop(emr_outbox);
    writer.join();

    // The table holds the ORU, keyed by this gateway's data file.
    let (gateway_outbox, writer) = open("gateway-data");
    let source = format!("{:016x}", gateway_outbox.instance_id());
    drop(gateway_outbox);
    writer.join();
    let rows = runtime
        .block_on(client.query(
            "SELECT msg_type, control_id FROM hl7_results WHERE source = $1",
            &[&source],
        ))
        .expect("select");
    let found: Vec<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(found, vec![("ORU".to_owned(), "LAB00042".to_owned())]);
    runtime
        .block_on(client.execute("DELETE FROM hl7_results WHERE source = $1", &[&source]))
        .expect("clean up");
}
