//! PHI stays inside: messages whose patient fields carry canary strings go through every path
//! (accepted, refused by a rule, failing a rule, dead-lettered, replayed, read by an operator,
//! inserted into PostgreSQL) with `RUST_LOG=trace`, and no log line, metric-free CLI output or
//! admin answer other than the message itself carries a canary, as text or as bytes.

use crate::common;

use std::time::Duration;

use common::{Server, run_binary};

/// Every canary starts with this, so one search finds them all.
const CANARY: &str = "PHICANARY";

fn message(control_id: &str, sex: &str, birth: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|NORTH|EHR|NORTH|20261129100000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||{CANARY}MRN^^^NORTH^MR~{CANARY}SSN^^^USSSA^SS||{CANARY}FAMILY^{CANARY}GIVEN||{birth}|{sex}|||{CANARY}STREET^^{CANARY}CITY\r\
         PV1|1|I|{CANARY}WARD^12^1||||0047^{CANARY}DOCTOR^ANNA\r\
         OBX|1|ST|GLU^Glucose||{CANARY}VALUE|mg/dL|||||F\r"
    )
}

const CONFIG: &str = "\
connectors:
  - name: lab
    type: mllp
    host: 127.0.0.1
    port: 1
    retry:
      initial_delay: 10ms
      max_attempts: 2
  - name: archive
    type: postgres
    dsn: host=127.0.0.1 port=5432 user=postgres dbname=test
    table: phi_canary_rows
    retry:
      initial_delay: 10ms
      max_attempts: 2
validation:
  rules:
    - name: known-sex
      expression: pid.sex in ['F', 'M', 'U']
      message: PID-8 must be F, M or U
    - name: plausible-birth-year
      expression: int(pid.dob) > 18800101
      message: PID-7 must be a date after 1880
";

#[test]
fn no_canary_reaches_logs_cli_errors_or_admin_answers_at_trace_level() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("gw.yaml"), CONFIG).expect("config");
    let messages = [
        ("ACCEPT-1", "F", "19700101"),
        // Refused by a rule: AR.
        ("REJECT-1", "X", "19700101"),
        // A rule that cannot be evaluated on this value: AR (stored as ERROR).
        ("ERROR-1", "M", &format!("{CANARY}DOB")),
    ];
    let file = dir.join("messages.hl7");
    let text: String = messages
        .iter()
        .map(|(id, sex, birth)| message(id, sex, birth))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&file, text).expect("messages");

    let server = Server::start(
        dir,
        "gw.yaml",
        "data",
        &[("RUST_LOG", "trace"), ("LOG_FORMAT", "json")],
    );
    let admin = server.admin_addr.clone().expect("admin API");
    let data = dir.join("data").display().to_string();
    let env = [("ADMIN_ADDR", admin.as_str()), ("DATA_DIR", data.as_str())];
    let mut outputs = Vec::new();
    let (code, stdout, stderr) = run_binary(
        dir,
        &["send", "--addr", &server.addr, &file.display().to_string()],
        &[],
    );
    assert_eq!(
        code, 1,
        "one accepted, one refused, one error: {stdout}{stderr}"
    );
    assert!(stdout.contains("ACCEPT-1\tAA"), "{stdout}");
    assert!(stdout.contains("REJECT-1\tAR"), "{stdout}");
    assert!(stdout.contains("ERROR-1\tAR"), "{stdout}");
    outputs.push(("send", stdout + &stderr));

    // The accepted message is dead-lettered (nothing listens on port 1), then replayed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stdout, _) = run_binary(dir, &["dlq", "list", "--json"], &env);
        if stdout.contains("ACCEPT-1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [
        &["dlq", "list"][..],
        &["dlq", "replay", "lab", "--all"],
        &["stats"],
        &["messages", "search"],
        &["messages", "search", "--json"],
        &["audit", "list"],
        &["logs", "--limit", "500"],
        &["logs", "--json", "--limit", "500"],
    ] {
        let (code, stdout, stderr) = run_binary(dir, args, &env);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        outputs.push((args[0], stdout + &stderr));
    }
    // The failed message is stored with a reason that names the rule, not the value.
    let (code, stdout, _) = run_binary(
        dir,
        &["messages", "search", "--disposition", "ERROR", "--json"],
        &env,
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("plausible-birth-year"), "{stdout}");
    outputs.push(("messages search --disposition ERROR", stdout));
    // Reading a body is the one place PHI leaves, on purpose: to the operator's stdout.
    let (_, listed, _) = run_binary(dir, &["messages", "search", "--json"], &env);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let oldest = listed
        .as_array()
        .and_then(|messages| messages.last())
        .map(|message| message["id"].to_string())
        .expect("a message");
    let (code, stdout, stderr) = run_binary(dir, &["messages", "show", &oldest], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("{CANARY}FAMILY")),
        "the body is shown"
    );
    outputs.push(("messages show (stderr)", stderr));
    std::thread::sleep(Duration::from_millis(300));
    let logs = server.stop_and_collect();
    assert!(
        logs.iter().any(|line| line.contains("frame answered")),
        "debug logging is on: every frame is logged:\n{}",
        logs.join("\n")
    );
    // A body logged as bytes (a driver's parameter list) shows the canary as numbers.
    let as_bytes = CANARY
        .bytes()
        .map(|byte| byte.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for line in &logs {
        assert!(
            !line.contains(CANARY) && !line.contains(&as_bytes),
            "a log line carries PHI: {line}"
        );
    }
    for (command, output) in &outputs {
        assert!(
            !output.contains(CANARY) && !output.contains(&as_bytes),
            "`mfoundry {command}` printed PHI:\n{output}"
        );
    }
}
