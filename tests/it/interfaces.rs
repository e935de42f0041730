//! `mfoundry test` as an interface analyst runs it: the shipped example cases pass; a
//! changed golden, a wrong ACK and a missing output fail with a readable diff and exit 1;
//! `--update` writes what the gateway does now, after which the cases pass.

use crate::common;

use std::path::Path;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

#[test]
fn the_example_cases_pass_and_a_broken_one_fails_with_a_diff_until_updated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("examples/transform.yaml");
    let config = config.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = common::run_binary(
        root,
        &["test", "--config", config, "examples/interfaces"],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");

    let directory = tempfile::tempdir().expect("tempdir");
    let cases = directory.path().join("cases");
    copy_tree(&root.join("examples/interfaces"), &cases);
    let emr = cases.join("adt-a01-to-emr/emr.out");
    let golden = std::fs::read_to_string(&emr).expect("golden");
    std::fs::write(&emr, golden.replace("2000-N", "2000-S")).expect("write");
    let expect = cases.join("oru-r01-to-lab/expect.yaml");
    let text = std::fs::read_to_string(&expect).expect("expect");
    std::fs::write(&expect, text.replace("ack: AA", "ack: AR")).expect("write");
    std::fs::remove_file(cases.join("lab-code-not-in-table/lab.out")).expect("remove");
    let cases_arg = cases.to_str().expect("utf-8 path");
    let (code, stdout, _) = common::run_binary(root, &["test", "--config", config, cases_arg], &[]);
    assert_eq!(code, 1, "{stdout}");
    for wanted in [
        "FAILED",
        "- PV1|1|I|2000-S^2012^01",
        "+ PV1|1|I|2000-N^2012^01",
        "ACK: expected AR, got AA",
        "lab.out is missing; run with --update",
        "0 passed, 3 failed",
    ] {
        assert!(stdout.contains(wanted), "missing {wanted:?} in\n{stdout}");
    }

    let (code, stdout, _) = common::run_binary(
        root,
        &["test", "--config", config, "--update", cases_arg],
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(std::fs::read_to_string(&emr).expect("golden"), golden);
    let (code, stdout, _) = common::run_binary(root, &["test", "--config", config, cases_arg], &[]);
    assert_eq!(code, 0, "{stdout}");

    // A configuration problem is exit 64, as for `check`; an empty directory is named.
    let (code, _, stderr) = common::run_binary(
        root,
        &["test", "--config", "examples/missing.yaml", cases_arg],
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    let empty = directory.path().join("empty");
    std::fs::create_dir(&empty).expect("dir");
    let (code, _, stderr) = common::run_binary(
        root,
        &["test", "--config", config, empty.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no cases found"), "{stderr}");
}
