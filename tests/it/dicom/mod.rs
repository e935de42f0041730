//! The DICOM lane against real peers: DCMTK's `storescu`/`echoscu` and pynetdicom (in the
//! Python of `MFOUNDRY_DICOM_PYTHON`, with pydicom for synthetic objects: never real
//! patient data). Without them the tests are skipped with a reason, unless
//! `MFOUNDRY_REQUIRE_SERVICES=1` (`.ci/run` installs them).

mod intake;
mod outputs;
mod protocol;
mod report;
mod spool;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The peers the tests drive.
pub struct Peers {
    /// A Python with pydicom and pynetdicom.
    pub python: PathBuf,
}

/// The peers, or `None` (after saying why) to skip.
pub fn peers() -> Option<Peers> {
    let python = std::env::var_os("MFOUNDRY_DICOM_PYTHON").map(PathBuf::from);
    let python_ok = python.as_ref().is_some_and(|python| {
        Command::new(python)
            .args(["-c", "import pydicom, pynetdicom"])
            .output()
            .is_ok_and(|output| output.status.success())
    });
    let dcmtk_ok = ["storescu", "echoscu", "dcmodify"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if python_ok && dcmtk_ok {
        return python.map(|python| Peers { python });
    }
    let reason = match (python_ok, dcmtk_ok) {
        (false, _) => "no Python with pydicom and pynetdicom in MFOUNDRY_DICOM_PYTHON",
        _ => "DCMTK (storescu, echoscu, dcmodify) is not installed",
    };
    assert!(
        std::env::var("MFOUNDRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "{reason}"
    );
    eprintln!("SKIPPED: {reason}");
    None
}

/// A fixture script's path.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dicom")
        .join(name)
}

impl Peers {
    /// Write `count` synthetic CT objects of about `size` bytes of pixel data and one
    /// Structured Report into `out`; returns (file name, SOP Instance UID) of each.
    pub fn objects(&self, out: &Path, count: usize, size: usize) -> Vec<(String, String)> {
        let output = Command::new(&self.python)
            .arg(script("objects.py"))
            .arg(out)
            .args(["--count", &count.to_string(), "--size", &size.to_string()])
            .output()
            .expect("python runs");
        assert!(
            output.status.success(),
            "objects.py: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (name, uid) = line.split_once(' ')?;
                Some((name.to_owned(), uid.to_owned()))
            })
            .collect()
    }

    /// [`Peers::objects`], with each file's path.
    pub fn object_files(
        &self,
        out: &Path,
        count: usize,
        size: usize,
    ) -> (Vec<(String, String)>, Vec<PathBuf>) {
        let objects = self.objects(out, count, size);
        let files = objects.iter().map(|(name, _)| out.join(name)).collect();
        (objects, files)
    }

    /// pynetdicom's C-STORE of `args` (files, or `--synthetic N`): whether it exited 0, each
    /// object's status and UID as printed, and everything it printed.
    pub fn pynetdicom_store(
        &self,
        addr: &str,
        calling: &str,
        called: &str,
        args: &[&str],
    ) -> (bool, Vec<(String, String)>, String) {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let output = Command::new(&self.python)
            .arg(script("send.py"))
            .args([host, port, calling, called])
            .args(args)
            .output()
            .expect("python runs");
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (status, uid) = line.split_once(' ')?;
                Some((status.to_owned(), uid.to_owned()))
            })
            .collect();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), lines, printed)
    }
}

/// DCMTK's `storescu` of `files` to `addr` as `calling`, called `called`, with `extra`
/// options first; (exit 0, everything it printed).
pub fn storescu(
    addr: &str,
    calling: &str,
    called: &str,
    extra: &[&str],
    files: &[PathBuf],
) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let output = Command::new("storescu")
        .args(extra)
        .args(["-aet", calling, "-aec", called, "-v", host, port])
        .args(files)
        .output()
        .expect("storescu runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `mfoundry <args> --json` against `server`'s admin API (its token from `directory/data`):
/// the JSON it printed (exit 0 asserted).
pub fn cli_json(
    server: &crate::common::Server,
    directory: &Path,
    args: &[&str],
) -> serde_json::Value {
    let admin = server.admin_addr.clone().expect("admin API");
    let mut all = args.to_vec();
    all.extend(["--json", "--admin-addr", &admin, "--data-dir", "data"]);
    let (code, stdout, stderr) = crate::common::run_binary(directory, &all, &[]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("JSON")
}
