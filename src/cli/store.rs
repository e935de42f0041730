//! `mfoundry store`: checks and repairs of a stopped server's data directory.
//!
//! - `verify` opens the directory as the gateway would (its journal checked and replayed),
//!   runs redb's own check of its pages and trees, reads every record against its checksum
//!   and checks the audit chain. Exit 0 intact, 1 damage found, 2 the store cannot be opened
//!   (the reason, and its way out, are printed).
//! - `recover --accept-loss` is the way out of every refusal: it opens what can be opened,
//!   reports what was given up, and records that in the audit trail.
//! - `rekey` rewrites the store with `ENCRYPTION_KEY_FILE`'s key (reading what older keys
//!   sealed with `ENCRYPTION_OLD_KEY_FILES`; ADR 0011).
//!
//! Every command reads the store keys from `ENCRYPTION_KEY_FILE` and
//! `ENCRYPTION_OLD_KEY_FILES`, as the gateway does.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::outbox::verify::StoreReport;
use crate::outbox::{Chain, Outbox, OutboxOptions, StoreFile};

/// `mfoundry store ...`
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The stopped server's data directory.
    #[arg(
        long,
        global = true,
        env = "DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// The `store` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Read every record of a stopped server's store and report damage (exit 1 when found).
    Verify,
    /// Open a store that mfoundry refuses to open, accepting the loss of what cannot be
    /// read: replays what is safe, reports what was given up, records it in the audit trail.
    Recover {
        /// Required: say that losing what cannot be read is accepted.
        #[arg(long, required = true)]
        accept_loss: bool,
    },
    /// Rewrite a stopped server's store with the key in ENCRYPTION_KEY_FILE: records sealed
    /// with the keys in ENCRYPTION_OLD_KEY_FILES, or stored plain, are sealed with it, into a
    /// new file that replaces the old one. Afterwards the old keys are no longer needed.
    Rekey,
}

/// Options for the store in `data_dir`, through its journal when it has one.
fn options(data_dir: &std::path::Path) -> anyhow::Result<OutboxOptions> {
    let mut options = OutboxOptions::new(data_dir.join(crate::outbox::FILE_NAME));
    options.dedup_window = None;
    options.journal = options
        .storage
        .exists(StoreFile::Journal)
        .with_context(|| format!("cannot look for the journal in {}", data_dir.display()))?;
    options.keys = super::offline::keys_from_environment()?;
    Ok(options)
}

#[derive(Debug, Serialize)]
struct Verified<'a> {
    intact: bool,
    data_dir: String,
    replayed_journal_records: u64,
    #[serde(flatten)]
    report: &'a StoreReport,
}

/// Run a `store` command; output goes to `out`. Returns the exit code.
pub async fn run_store(args: &StoreArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let data = args.data_dir.join(crate::outbox::FILE_NAME);
    if !data.exists() {
        anyhow::bail!(
            "no data file at {} (check DATA_DIR or --data-dir)",
            data.display()
        );
    }
    let options = options(&args.data_dir)?;
    match &args.command {
        StoreCommand::Verify => {
            let opened = tokio::task::spawn_blocking(move || {
                crate::outbox::verify::verify_offline(&options)
            })
            .await
            .context("verify task failed")?;
            let (opened, report) = match opened {
                Ok(found) => found,
                Err(error) if error.is_in_use() => anyhow::bail!(
                    "{} is in use by a running mfoundry; stop it first (a running gateway \
                     verifies its records in the background, see STORE_VERIFY_INTERVAL)",
                    data.display()
                ),
                Err(error) => {
                    if args.json {
                        let refused = serde_json::json!({
                            "intact": false,
                            "data_dir": args.data_dir.display().to_string(),
                            "refused": Chain(&error).to_string(),
                        });
                        writeln!(out, "{}", serde_json::to_string_pretty(&refused)?)?;
                    } else {
                        writeln!(out, "the store cannot be opened as it is:")?;
                        writeln!(out, "{}", Chain(&error))?;
                    }
                    return Ok(2);
                }
            };
            let verified = Verified {
                intact: report.is_intact(),
                data_dir: args.data_dir.display().to_string(),
                replayed_journal_records: opened.replayed.records,
                report: &report,
            };
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&verified)?)?;
            } else {
                print_report(out, &verified)?;
            }
            Ok(if verified.intact { 0 } else { 1 })
        }
        StoreCommand::Rekey => {
            let keys = options.keys.clone();
            let journal = options.journal;
            let json = args.json;
            let rekeyed = tokio::task::spawn_blocking(move || {
                crate::outbox::rekey::rekey(&data, journal, &keys, |table, done| {
                    if !json {
                        eprintln!(
                            "rekey: {table}: {}",
                            crate::units::count(done, "record", "records")
                        );
                    }
                })
            })
            .await
            .context("rekey task failed")??;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rekeyed)?)?;
            } else {
                let total: u64 = rekeyed.records.values().sum();
                writeln!(
                    out,
                    "rekeyed: {} sealed with key {} ({} plain before); keys no longer needed: {}",
                    crate::units::count(total, "record", "records"),
                    rekeyed.key,
                    rekeyed.were_plain,
                    if rekeyed.retired.is_empty() {
                        "none".to_owned()
                    } else {
                        rekeyed.retired.join(", ")
                    }
                )?;
                writeln!(
                    out,
                    "recorded in the audit trail; `mfoundry store verify` checks the result"
                )?;
            }
            Ok(0)
        }
        StoreCommand::Recover { accept_loss } => {
            anyhow::ensure!(
                *accept_loss,
                "recover needs --accept-loss: it may give up what cannot be read"
            );
            let recovered = tokio::task::spawn_blocking(move || recover(options))
                .await
                .context("recover task failed")??;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&recovered)?)?;
            } else {
                writeln!(out, "{}", recovered.summary)?;
                writeln!(
                    out,
                    "recorded in the audit trail (seq {}); run `mfoundry store verify` next",
                    recovered.audit_seq
                )?;
            }
            Ok(0)
        }
    }
}

fn print_report(out: &mut impl Write, verified: &Verified<'_>) -> std::io::Result<()> {
    let report = verified.report;
    if verified.replayed_journal_records > 0 {
        writeln!(
            out,
            "journal: {} commits written again into the data file",
            verified.replayed_journal_records
        )?;
    }
    match (report.redb_intact, &report.redb_problem) {
        (Some(true), _) => writeln!(out, "redb: pages and trees intact")?,
        (Some(false), None) => writeln!(out, "redb: problems found and repaired")?,
        (Some(false), Some(problem)) => writeln!(
            out,
            "redb: damaged pages that cannot be repaired: {problem}"
        )?,
        (None, _) => {}
    }
    let counts: Vec<String> = report
        .records
        .iter()
        .map(|(table, count)| format!("{table} {count}"))
        .collect();
    writeln!(out, "records read: {}", counts.join(", "))?;
    if report.unsealed > 0 {
        writeln!(
            out,
            "{} values are stored plain (written before ENCRYPTION_KEY_FILE was set); `mfoundry store rekey` seals them",
            report.unsealed
        )?;
    }
    if report.unchecked > 0 {
        writeln!(
            out,
            "{} message records were written before checksums (format 1) and were read without one",
            report.unchecked
        )?;
    }
    writeln!(
        out,
        "audit trail: {}, {}",
        crate::units::count(report.audit.records, "record", "records"),
        if report.audit.is_intact() {
            "chain intact".to_owned()
        } else {
            format!("{} problems", report.audit.problem_count)
        }
    )?;
    for problem in &report.audit.problems {
        writeln!(out, "  audit: {problem}")?;
    }
    if report.damaged_count == 0 {
        writeln!(out, "damaged records: none")?;
    } else {
        writeln!(out, "damaged records: {}", report.damaged_count)?;
        for what in &report.damaged {
            writeln!(out, "  {what}")?;
        }
    }
    writeln!(
        out,
        "{}",
        if verified.intact {
            "intact"
        } else {
            "DAMAGED: restore DATA_DIR from a backup, or purge the damaged entries"
        }
    )
}

#[derive(Debug, Serialize)]
struct Recovered {
    refused: Option<String>,
    journal_records_given_up: u64,
    journal_records_replayed: u64,
    header_rewritten: bool,
    created: bool,
    audit_seq: u64,
    summary: String,
}

/// Open accepting loss, then record what was done in the audit trail.
fn recover(options: OutboxOptions) -> anyhow::Result<Recovered> {
    let (database, report) = crate::outbox::open_accepting_loss(&options)
        .map_err(|error| anyhow::anyhow!("{}", Chain(&error)))?;
    drop(database);
    let (refused, given_up) = match &report.lost {
        Some((refusal, records)) => (Some(refusal.to_string()), *records),
        None => (None, 0),
    };
    let summary = match &refused {
        None if !report.header_rewritten => format!(
            "nothing was refused: the store opens as it is ({} journal records replayed)",
            report.replayed.records
        ),
        _ => format!(
            "opened accepting loss: {}{}{} journal records replayed, {given_up} given up",
            refused
                .as_deref()
                .map(|reason| format!("{reason}. "))
                .unwrap_or_default(),
            if report.header_rewritten {
                "The data file's header was written anew. "
            } else {
                ""
            },
            report.replayed.records,
        ),
    };
    let outcome = format!(
        "refused: {}; journal records replayed {}, given up {given_up}; header rewritten: {}",
        refused.as_deref().unwrap_or("nothing"),
        report.replayed.records,
        report.header_rewritten
    );
    let (outbox, writer) =
        Outbox::open_existing(options).map_err(|error| anyhow::anyhow!("{}", Chain(&error)))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start a runtime")?;
    let audited = runtime.block_on(outbox.audit(crate::outbox::audit::AuditEvent::Admin {
        token_id: "cli".to_owned(),
        action: "store.recover".to_owned(),
        target: "data directory".to_owned(),
        outcome,
    }));
    drop(outbox);
    writer.join();
    let audit_seq = audited.map_err(|error| anyhow::anyhow!("{}", Chain(&error)))?;
    Ok(Recovered {
        refused,
        journal_records_given_up: given_up,
        journal_records_replayed: report.replayed.records,
        header_rewritten: report.header_rewritten,
        created: report.created,
        audit_seq,
        summary,
    })
}
