//! `type: dicom` (C-STORE SCU) and `type: stowrs` against a real PACS: Orthanc with its
//! DICOMweb plugin, run from a private configuration on free loopback ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{peers, storescu};
use crate::common;

/// A running Orthanc, killed when dropped.
struct Orthanc {
    child: std::process::Child,
    dicom_port: u16,
    http_port: u16,
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The Orthanc binary, or `None` (after saying why) to skip.
fn orthanc_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    if found.is_none() {
        let reason = "Orthanc (Debian packages orthanc and orthanc-dicomweb) is not installed";
        assert!(
            std::env::var("MFOUNDRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{reason}"
        );
        eprintln!("SKIPPED: {reason}");
    }
    found
}

impl Orthanc {
    /// Start Orthanc in `directory` with its DICOM AE title `ORTHANC`.
    fn start(binary: &Path, directory: &Path, check_called_aet: bool) -> Self {
        let dicom_port = free_port();
        let http_port = free_port();
        let plugin = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("the orthanc-dicomweb plugin");
        let config = serde_json::json!({
            "Name": "mfoundry-test",
            "StorageDirectory": directory.join("storage"),
            "IndexDirectory": directory.join("index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "DicomCheckCalledAet": check_called_aet,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/"},
        });
        let file = directory.join("orthanc.json");
        std::fs::write(&file, config.to_string()).expect("orthanc.json");
        let log = std::fs::File::create(directory.join("orthanc.log")).expect("log");
        let child = std::process::Command::new(binary)
            .arg(&file)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("Orthanc starts");
        let orthanc = Self {
            child,
            dicom_port,
            http_port,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let http = format!("127.0.0.1:{http_port}");
        while std::net::TcpStream::connect(&http).is_err()
            || common::http::get(&http, "/system").status != 200
        {
            assert!(
                std::time::Instant::now() < deadline,
                "Orthanc did not answer: {}",
                std::fs::read_to_string(directory.join("orthanc.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        orthanc
    }

    /// Whether Orthanc holds the instance with this SOP Instance UID.
    fn has(&self, uid: &str) -> bool {
        let answer = common::http::request(
            &format!("127.0.0.1:{}", self.http_port),
            "POST",
            "/tools/lookup",
            &[],
            uid.as_bytes(),
        );
        answer.status == 200 && answer.body.contains("\"Instance\"")
    }
}

#[test]
fn objects_are_forwarded_to_orthanc_by_c_store_and_by_stow_rs() {
    let Some(peers) = peers() else { return };
    let Some(binary) = orthanc_binary() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::create_dir_all(dir.join("pacs")).expect("pacs dir");
    let pacs = Orthanc::start(&binary, &dir.join("pacs"), true);
    let config = format!(
        r#"listeners:
  - name: modalities
    type: dicom
    listen_addr: "127.0.0.1:0"
connectors:
  - name: pacs
    type: dicom
    host: 127.0.0.1
    port: {dicom}
    ae_title: ORTHANC
    calling_ae_title: MFOUNDRY
    filter: dicom.modality == "CT"
  - name: archive
    type: stowrs
    url: http://127.0.0.1:{http}/dicom-web
    filter: dicom.modality == "SR"
  - name: wrong-title
    type: dicom
    host: 127.0.0.1
    port: {dicom}
    ae_title: NOT-ORTHANC
    filter: dicom.modality == "SR"
"#,
        dicom = pacs.dicom_port,
        http = pacs.http_port,
    );
    std::fs::write(dir.join("gateway.yaml"), config).expect("config");
    let (objects, files) = peers.object_files(&dir.join("objects"), 2, 4096);
    let server = common::Server::start(dir, "gateway.yaml", "data", &[("LISTEN_ADDR", "")]);
    let addr = server.listener_addr("modalities");
    let (ok, text) = storescu(&addr, "CT1", "MFOUNDRY", &[], &files);
    assert!(ok, "{text}");

    for (name, uid) in &objects {
        common::wait_until(
            Duration::from_secs(60),
            || pacs.has(uid),
            || {
                format!(
                    "{name} ({uid}) did not reach Orthanc: {}",
                    std::fs::read_to_string(dir.join("pacs/orthanc.log")).unwrap_or_default()
                )
            },
        );
    }

    // A peer that refuses the association for good: the object is in the dead-letter
    // queue with the rejection, not retried for ever.
    let admin = server.admin_addr.clone().expect("admin API");
    let mut dead = String::new();
    for _ in 0..400 {
        let (code, stdout, stderr) = common::run_binary(
            dir,
            &[
                "dlq",
                "list",
                "wrong-title",
                "--json",
                "--admin-addr",
                &admin,
                "--data-dir",
                "data",
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        dead = stdout;
        if dead.contains("association rejected") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dead.contains("association rejected (permanent)"), "{dead}");

    // A later object on the kept (or replaced) association still arrives.
    let more = peers.objects(&dir.join("more"), 1, 2048);
    let (ok, text) = storescu(
        &addr,
        "CT1",
        "MFOUNDRY",
        &[],
        &[dir.join("more").join(&more[0].0)],
    );
    assert!(ok, "{text}");
    common::wait_until(
        Duration::from_secs(60),
        || pacs.has(&more[0].1),
        || "the later object did not arrive".to_owned(),
    );
    server.stop();
}
