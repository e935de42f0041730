//! `mfoundry test`: interface tests kept in git. Each case is a directory with a message and
//! what the gateway must make of it; the real rules, routes, transforms and output formats
//! run on it (the same [`Decider`] intake uses), without binding a port or opening a store.
//!
//! A case directory holds:
//! - `message.hl7`: the message as a sender would send it (one message; any line ends), or
//!   `object.dcm`: a DICOM object (a Part 10 file) as a modality would send it by C-STORE
//!   (calling AE title `TEST`); its `ack` is the C-STORE status (`C-STORE 0000` …) and a connector
//!   sending HL7 gives the ORU^R01 of a Structured Report;
//! - `expect.yaml`: `ack:` the ACK code (`AA`, `AR` …) and `connectors:` the connectors
//!   that take it;
//! - `<connector>.out`: for each of those, what it delivers, in its `format` (the message
//!   id and entry are 1 and the receive time 1970-01-01T00:00:00Z, so JSON and FHIR
//!   outputs are stable); for a transform that fails, the failure's text.
//!
//! Every failing case prints a readable diff; the exit code is 1 when any fails. `--update`
//! writes `expect.yaml` and the `.out` files from what the gateway does now.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Compiled, Config};
use crate::delivery::Envelope;
use crate::hl7::{AckStamp, FixedStamper};
use crate::ingest::{Decided, Decider, Decision, Reply};
use crate::outbox::{ConnectorId, Disposition, MessageRecord, RouteStatus, StoredCopy};
use crate::outputs::format::Format;

/// `mfoundry test` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// YAML configuration file (default: CONFIG_FILE, else ./mfoundry.yaml if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write `expect.yaml` and the `.out` files from what the gateway does now.
    #[arg(long)]
    pub update: bool,
    /// Run the cases as received by this listener of `listeners:` (its name is `inbound`,
    /// its `rules:` apply); default the first.
    #[arg(long, value_name = "NAME")]
    pub listener: Option<String>,
    /// Case directories, or directories of them.
    #[arg(required = true, value_name = "DIR")]
    pub paths: Vec<PathBuf>,
}

/// What the gateway made of one case's message.
#[derive(Debug, PartialEq, Eq)]
struct Actual {
    ack: String,
    connectors: Vec<String>,
    /// Per connector taking it: its output (or the transform's failure).
    outputs: Vec<(String, Vec<u8>)>,
}

/// Run every case; prints a line per case and a diff per failure. Exit code: 0 all passed
/// (or were updated), 1 a case failed, 2 a case cannot be read.
pub fn run(
    config: &Config,
    compiled: Compiled,
    args: &TestArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let stamper = Arc::new(FixedStamper(AckStamp {
        timestamp: "19700101000000+0000".to_owned(),
        control_id: "TEST".to_owned(),
    }));
    let names: Vec<String> = config.connectors.iter().map(|c| c.name.clone()).collect();
    let id_of = |name: &str| {
        names
            .iter()
            .position(|known| known == name)
            .and_then(|index| u32::try_from(index + 1).ok())
            .map(ConnectorId)
    };
    let listener = config.listener(args.listener.as_deref()).ok_or_else(|| {
        let names: Vec<&str> = config
            .listeners
            .iter()
            .map(|listener| listener.settings.name.as_str())
            .collect();
        anyhow::anyhow!(
            "--listener {:?}: no such listener; the listeners are {}",
            args.listener.as_deref().unwrap_or_default(),
            names.join(", ")
        )
    })?;
    let rules = match config.listener_rules(listener) {
        Ok(Some(rules)) => rules,
        Ok(None) => compiled.rules,
        Err(errors) => anyhow::bail!("listener {}: {errors}", listener.settings.name),
    };
    let decider = Decider::new(
        config.settings.default_charset,
        stamper,
        Arc::new(rules),
        id_of,
        &listener.settings.name,
    )?
    .with_transforms(Arc::new(compiled.transforms))
    .with_senders(None)
    .with_hl7_outputs(|name| config.sends_hl7(name));
    let formats: Vec<(String, Format)> = config
        .connectors
        .iter()
        .map(|connector| {
            let format = connector
                .output
                .as_ref()
                .map_or(Format::Hl7, |settings| settings.output.format());
            (connector.name.clone(), format)
        })
        .collect();
    let mut cases = Vec::new();
    for path in &args.paths {
        find_cases(path, &mut cases)?;
    }
    if cases.is_empty() {
        anyhow::bail!(
            "no cases found under {}: a case is a directory with a message.hl7 or an object.dcm",
            args.paths
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (mut passed, mut failed, mut updated) = (0, 0, 0);
    for case in &cases {
        let actual = match run_case(&decider, &formats, case) {
            Ok(actual) => actual,
            Err(error) => {
                writeln!(out, "ERROR  {}: {error:#}", case.display())?;
                return Ok(2);
            }
        };
        if args.update {
            write_case(case, &actual)?;
            writeln!(out, "UPDATED {}", case.display())?;
            updated += 1;
            continue;
        }
        let differences = compare(case, &actual)?;
        if differences.is_empty() {
            writeln!(out, "ok     {}", case.display())?;
            passed += 1;
        } else {
            writeln!(out, "FAILED {}", case.display())?;
            for difference in differences {
                for line in difference.lines() {
                    writeln!(out, "    {line}")?;
                }
            }
            failed += 1;
        }
    }
    if args.update {
        writeln!(out, "{updated} cases updated")?;
        return Ok(0);
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(u8::from(failed > 0))
}

/// `path` if it is a case (holds `message.hl7`), else every case below it, sorted.
fn find_cases(path: &Path, cases: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.join("message.hl7").is_file() || path.join("object.dcm").is_file() {
        cases.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?
        .filter_map(Result::ok)
        // Symbolic links are not followed: a link back up would never end.
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    for entry in entries {
        find_cases(&entry, cases)?;
    }
    Ok(())
}

fn run_case(
    decider: &Decider,
    formats: &[(String, Format)],
    case: &Path,
) -> anyhow::Result<Actual> {
    if case.join("object.dcm").is_file() {
        return run_object_case(decider, formats, case);
    }
    let text = std::fs::read(case.join("message.hl7"))
        .map_err(|error| anyhow::anyhow!("cannot read message.hl7: {error}"))?;
    let mut messages = crate::hl7::split_messages(&text)
        .map_err(|error| anyhow::anyhow!("message.hl7: {error}"))?;
    if messages.len() != 1 {
        anyhow::bail!(
            "message.hl7 holds {} messages; a case has exactly one",
            messages.len()
        );
    }
    let frame = Bytes::from(messages.remove(0));
    let decided = match decider.decide_frame(frame, None) {
        Decision::Done(outcome) => {
            let ack = match outcome.reply {
                Reply::Ignore => "none (ignored)",
                Reply::Close => "none (connection closed: unreadable header)",
                _ => "none",
            };
            return Ok(Actual {
                ack: ack.to_owned(),
                connectors: Vec::new(),
                outputs: Vec::new(),
            });
        }
        Decision::Decided(decided) => decided,
    };
    let Decided {
        message,
        routes,
        copies,
        decided: code,
        disposition,
        ..
    } = *decided;
    let names: Vec<&str> = decider.connector_names().collect();
    let decider_charset = decider.default_charset();
    let mut connectors = Vec::new();
    let mut outputs = Vec::new();
    let accepted = matches!(disposition, Disposition::Routed | Disposition::Unrouted);
    for (route, name) in routes.iter().zip(&names) {
        if !accepted || route.status != RouteStatus::Queued {
            continue;
        }
        connectors.push((*name).to_owned());
        let body = match copy_for(&copies, route.connector) {
            Some(StoredCopy::Failed(reason)) => {
                outputs.push((
                    (*name).to_owned(),
                    format!("transform failed: {reason}\n").into_bytes(),
                ));
                continue;
            }
            Some(StoredCopy::Bytes(bytes)) => bytes,
            None => message.raw().clone(),
        };
        let record = MessageRecord {
            received_at_micros: 0,
            peer: "test".to_owned(),
            listener: "test".to_owned(),
            header: crate::ingest::header_fields(&message),
            disposition,
            reason: None,
            routes: routes.clone(),
            ack_code: code.as_str().to_owned(),
            body_len: message.raw().len() as u64,
            ack: None,
            dedup_key: None,
            body_inline: true,
            config: None,
        };
        outputs.push((
            (*name).to_owned(),
            render(formats, name, record, body, decider_charset),
        ));
    }
    Ok(Actual {
        ack: code.as_str().to_owned(),
        connectors,
        outputs,
    })
}

/// The copy of the connector with this id, when it has one.
fn copy_for(
    copies: &[(crate::outbox::ConnectorId, StoredCopy)],
    connector: crate::outbox::ConnectorId,
) -> Option<StoredCopy> {
    copies
        .iter()
        .find(|(id, _)| *id == connector)
        .map(|(_, copy)| copy.clone())
}

/// A case whose input is a DICOM object: routed as a `dicom` listener would, each
/// connector's delivery rendered as for a message.
fn run_object_case(
    decider: &Decider,
    formats: &[(String, Format)],
    case: &Path,
) -> anyhow::Result<Actual> {
    let bytes = std::fs::read(case.join("object.dcm"))
        .map_err(|error| anyhow::anyhow!("cannot read object.dcm: {error}"))?;
    let object =
        crate::ingest::ReceivedObject::from_file(&bytes, "TEST", "MFOUNDRY").ok_or_else(|| {
            anyhow::anyhow!("object.dcm is not a DICOM file (no DICM preamble and meta group)")
        })?;
    let decided = match decider.decide_object(&object, 0) {
        Ok(decided) => decided,
        Err(outcome) => {
            return Ok(Actual {
                ack: format!("C-STORE {:04X} ({})", outcome.status, outcome.comment),
                connectors: Vec::new(),
                outputs: Vec::new(),
            });
        }
    };
    let names: Vec<&str> = decider.connector_names().collect();
    let mut connectors = Vec::new();
    let mut outputs = Vec::new();
    for (route, name) in decided.routes.iter().zip(&names) {
        if route.status != RouteStatus::Queued {
            continue;
        }
        connectors.push((*name).to_owned());
        let body = match copy_for(&decided.copies, route.connector) {
            Some(StoredCopy::Failed(reason)) => {
                outputs.push((
                    (*name).to_owned(),
                    format!("not delivered: {reason}\n").into_bytes(),
                ));
                continue;
            }
            Some(StoredCopy::Bytes(bytes)) => bytes,
            None => Bytes::from(object.file.clone()),
        };
        let record = MessageRecord {
            received_at_micros: 0,
            peer: "test".to_owned(),
            listener: "test".to_owned(),
            header: crate::ingest::header_fields(&decided.view),
            disposition: decided.disposition,
            reason: None,
            routes: decided.routes.clone(),
            ack_code: "AA".to_owned(),
            body_len: object.file.len() as u64,
            ack: None,
            dedup_key: None,
            body_inline: true,
            config: None,
        };
        outputs.push((
            (*name).to_owned(),
            render(formats, name, record, body, decider.default_charset()),
        ));
    }
    let ack = if decided.disposition == Disposition::Error {
        "C-STORE 0110 (a routing filter could not be evaluated)".to_owned()
    } else {
        "C-STORE 0000".to_owned()
    };
    Ok(Actual {
        ack,
        connectors,
        outputs,
    })
}

/// What connector `name` delivers of `body` in its format (message id and entry 1), or
/// `not delivered: …`.
fn render(
    formats: &[(String, Format)],
    name: &str,
    record: MessageRecord,
    body: Bytes,
    default_charset: crate::hl7::Charset,
) -> Vec<u8> {
    let format = formats
        .iter()
        .find(|(connector, _)| connector == name)
        .map_or(Format::Hl7, |(_, format)| *format);
    let envelope = Envelope {
        instance_id: 0,
        message_id: 1,
        seq: 1,
        connector: Arc::from(name),
        record,
        body,
        attempt: 1,
        default_charset,
    };
    match format.render(&envelope) {
        Ok(bytes) => bytes.to_vec(),
        Err(error) => format!("not delivered: {error}\n").into_bytes(),
    }
}

fn expect_text(actual: &Actual) -> String {
    let connectors = actual
        .connectors
        .iter()
        .map(|name| format!("{name:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ack: {}\nconnectors: [{connectors}]\n", actual.ack)
}

fn write_case(case: &Path, actual: &Actual) -> anyhow::Result<()> {
    std::fs::write(case.join("expect.yaml"), expect_text(actual))?;
    // Goldens of connectors that no longer take the message go.
    for entry in std::fs::read_dir(case)?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "out") {
            std::fs::remove_file(&path)?;
        }
    }
    for (name, bytes) in &actual.outputs {
        std::fs::write(case.join(format!("{name}.out")), bytes)?;
    }
    Ok(())
}

/// Expected `ack` and `connectors` from `expect.yaml`.
fn read_expect(case: &Path) -> anyhow::Result<(String, Vec<String>)> {
    let path = case.join("expect.yaml");
    let text = std::fs::read_to_string(&path).map_err(|error| {
        anyhow::anyhow!("cannot read expect.yaml ({error}); run with --update to write it")
    })?;
    let node = crate::yaml::parse(&text, &path.display().to_string())
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut problems = Vec::new();
    let mut map = crate::yaml::Map::new(&node, "expect.yaml", &mut problems)
        .ok_or_else(|| anyhow::anyhow!("expect.yaml must be a mapping (ack, connectors)"))?;
    let ack = map.text("ack", &mut problems).map(|value| value.value);
    let connectors = map
        .text_list("connectors", &mut problems)
        .unwrap_or_default();
    map.finish("expect.yaml", &["ack", "connectors"], &mut problems);
    if let Some(problem) = problems.first() {
        anyhow::bail!("expect.yaml:{}: {}", problem.at, problem.message);
    }
    let ack = ack.ok_or_else(|| anyhow::anyhow!("expect.yaml has no `ack`"))?;
    Ok((ack, connectors))
}

/// Every difference between the case's expectations and `actual`, each readable.
fn compare(case: &Path, actual: &Actual) -> anyhow::Result<Vec<String>> {
    let mut differences = Vec::new();
    let (ack, connectors) = match read_expect(case) {
        Ok(expected) => expected,
        Err(error) => return Ok(vec![format!("{error:#}")]),
    };
    if ack != actual.ack {
        differences.push(format!("ACK: expected {ack}, got {}", actual.ack));
    }
    let mut expected_sorted = connectors.clone();
    expected_sorted.sort();
    let mut actual_sorted = actual.connectors.clone();
    actual_sorted.sort();
    if expected_sorted != actual_sorted {
        differences.push(format!(
            "connectors: expected [{}], got [{}]",
            connectors.join(", "),
            actual.connectors.join(", ")
        ));
    }
    for (name, bytes) in &actual.outputs {
        let path = case.join(format!("{name}.out"));
        match std::fs::read(&path) {
            Ok(golden) if golden == *bytes => {}
            Ok(golden) => differences.push(format!(
                "{name}.out differs (- expected, + actual):\n{}",
                diff(&golden, bytes)
            )),
            Err(_) => differences.push(format!(
                "{name}.out is missing; run with --update to write what {name} delivers"
            )),
        }
    }
    Ok(differences)
}

/// A line diff (segments for HL7, lines for JSON): `-` expected, `+` actual, with a line of
/// context; at most 40 lines shown.
fn diff(expected: &[u8], actual: &[u8]) -> String {
    let lines = |bytes: &[u8]| -> Vec<String> {
        let text = String::from_utf8_lossy(bytes);
        let text = if text.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|value| serde_json::to_string_pretty(&value).ok())
                .unwrap_or_else(|| text.into_owned())
        } else {
            text.into_owned()
        };
        text.split(['\r', '\n'])
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (old, new) = (lines(expected), lines(actual));
    // Longest common subsequence table.
    let mut table = vec![vec![0usize; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            table[i][j] = if old[i] == new[j] {
                table[i + 1][j + 1] + 1
            } else {
                table[i + 1][j].max(table[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j, mut shown) = (0, 0, 0);
    while (i < old.len() || j < new.len()) && shown < 40 {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            let near = (i + 1 < old.len() && j + 1 < new.len() && old[i + 1] != new[j + 1])
                || (i > 0 && j > 0 && old[i - 1] != new[j - 1]);
            if near {
                let _ = writeln!(out, "  {}", old[i]);
                shown += 1;
            }
            i += 1;
            j += 1;
        } else if i < old.len() && (j == new.len() || table[i + 1][j] >= table[i][j + 1]) {
            let _ = writeln!(out, "- {}", old[i]);
            shown += 1;
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", new[j]);
            shown += 1;
            j += 1;
        }
    }
    if shown >= 40 {
        out.push_str("  … (more differences)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn the_diff_shows_changed_segments_with_context() {
        let shown = diff(
            b"MSH|a\rPID|1|x\rPV1|1\r",
            b"MSH|a\rPID|1|y\rPV1|1\rNTE|1\r",
        );
        assert_eq!(shown, "  MSH|a\n- PID|1|x\n+ PID|1|y\n  PV1|1\n+ NTE|1\n");
    }
}
