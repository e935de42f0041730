//! `mfoundry dlq`: list, show, replay and purge dead-letter entries.
//!
//! By default these go through the running server's admin API ([`super::admin`]). With
//! `--offline` they work on the data file directly, so the server must be stopped (redb locks
//! the file).

use std::io::Write;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::outbox::{DlqEntry, Outbox, OutboxOptions};

/// `mfoundry dlq ...`
#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {
    /// Admin API address, data directory, output format.
    #[command(flatten)]
    pub api: super::admin::ApiArgs,
    /// Work on the data directory directly instead of the running server's admin API (the
    /// server must be stopped).
    #[arg(long)]
    pub offline: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The `dlq` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead-letter entries (of one connector, or all).
    List {
        /// Connector name.
        connector: Option<String>,
    },
    /// Show one entry with its message's header fields and delivery history.
    Show {
        /// Connector name.
        connector: String,
        /// The entry's seq (from `list`).
        seq: u64,
    },
    /// Put entries back at the tail of a queue (theirs, or `--to` another connector's).
    Replay {
        /// Connector name.
        connector: String,
        /// Seqs to replay.
        seqs: Vec<u64>,
        /// Replay every entry of the connector.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        /// Queue them for this connector instead.
        #[arg(long, value_name = "CONNECTOR")]
        to: Option<String>,
    },
    /// Remove entries without delivering them.
    Purge {
        /// Connector name.
        connector: String,
        /// Seqs to purge.
        seqs: Vec<u64>,
        /// Purge every entry of the connector.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
    },
}

/// One listed entry.
#[derive(Debug, Serialize)]
struct Listed {
    connector: String,
    seq: u64,
    message_id: u64,
    control_id: String,
    message_type: String,
    attempts: u32,
    failed_at: String,
    reason: String,
}

/// Run a `dlq` command; output goes to `out`. Returns the exit code.
pub async fn run_dlq(args: &DlqArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    if !args.offline {
        return super::admin::dlq(&args.api, &args.command, out).await;
    }
    let (outbox, writer) = open_offline(&args.api.data_dir).await?;
    let result = execute(args, &outbox, out).await;
    drop(outbox);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    result.map(|()| 0)
}

/// Open a stopped server's data directory.
pub(super) async fn open_offline(
    data_dir: &std::path::Path,
) -> anyhow::Result<(Outbox, crate::outbox::WriterHandle)> {
    let path = data_dir.join(crate::outbox::FILE_NAME);
    let mut options = OutboxOptions::new(path.clone());
    options.dedup_window = None;
    // Leave the directory as the gateway uses it: through its journal when it has one (a
    // crash's commits are replayed either way; a clean close leaves the journal empty).
    let journal = crate::outbox::journal_path(&path);
    options.journal = journal
        .try_exists()
        .with_context(|| format!("cannot look for {}", journal.display()))?;
    let opened = tokio::task::spawn_blocking(move || Outbox::open_existing(options))
        .await
        .context("open task failed")?;
    let (outbox, writer) = match opened {
        Ok(opened) => opened,
        Err(error) if error.is_in_use() => {
            bail!(
                "{} is in use by a running mfoundry; leave out --offline to go through its admin API",
                path.display()
            )
        }
        Err(error) => return Err(error).context("cannot open the data directory"),
    };
    Ok((outbox, writer))
}

async fn execute(args: &DlqArgs, outbox: &Outbox, out: &mut impl Write) -> anyhow::Result<()> {
    let id_of = |name: &str| -> anyhow::Result<u32> {
        outbox.connector_id(name).with_context(|| {
            let mut known: Vec<&str> = outbox.connectors().map(|(name, _)| name).collect();
            known.sort_unstable();
            format!(
                "no connector named {name:?} in this data file (known: {})",
                known.join(", ")
            )
        })
    };
    match &args.command {
        DlqCommand::List { connector } => {
            let mut connectors: Vec<(String, u32)> = match connector {
                Some(name) => vec![(name.clone(), id_of(name)?)],
                None => outbox
                    .connectors()
                    .map(|(name, id)| (name.to_owned(), id))
                    .collect(),
            };
            connectors.sort();
            let snapshot = outbox.snapshot()?;
            let mut listed = Vec::new();
            for (name, id) in connectors {
                for (seq, entry) in snapshot.dead_letters(id)? {
                    let header = snapshot
                        .message(entry.message_id)?
                        .map(|record| record.header)
                        .unwrap_or_default();
                    listed.push(listed_entry(
                        &name,
                        seq,
                        &entry,
                        header.control_id,
                        format!("{}^{}", header.msg_type, header.trigger),
                    ));
                }
            }
            if args.api.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&listed)?)?;
            } else if listed.is_empty() {
                writeln!(out, "no dead-letter entries")?;
            } else {
                writeln!(
                    out,
                    "{:<16} {:>8} {:>8} {:<20} {:<10} {:>8} {:<20} REASON",
                    "CONNECTOR", "SEQ", "MESSAGE", "CONTROL_ID", "TYPE", "ATTEMPTS", "FAILED_AT"
                )?;
                for entry in &listed {
                    writeln!(
                        out,
                        "{:<16} {:>8} {:>8} {:<20} {:<10} {:>8} {:<20} {}",
                        entry.connector,
                        entry.seq,
                        entry.message_id,
                        entry.control_id,
                        entry.message_type,
                        entry.attempts,
                        entry.failed_at,
                        entry.reason
                    )?;
                }
                writeln!(out, "{} entries", listed.len())?;
            }
        }
        DlqCommand::Show { connector, seq } => {
            let id = id_of(connector)?;
            let snapshot = outbox.snapshot()?;
            let entry = snapshot.dead_letter(id, *seq)?.with_context(|| {
                format!("connector {connector:?} has no dead-letter entry {seq}")
            })?;
            let record = snapshot.message(entry.message_id)?;
            let names: std::collections::HashMap<u32, String> = outbox
                .connectors()
                .map(|(name, id)| (id, name.to_owned()))
                .collect();
            let history: Vec<serde_json::Value> = snapshot
                .deliveries(entry.message_id)?
                .into_iter()
                .map(|(connector, state)| {
                    serde_json::json!({
                        "connector": names.get(&connector).cloned().unwrap_or_else(|| connector.to_string()),
                        "status": state.status.as_str(),
                        "attempts": state.attempts,
                        "at": format_micros(state.at_micros),
                        "last_error": state.last_error,
                    })
                })
                .collect();
            let shown = serde_json::json!({
                "connector": connector,
                "seq": seq,
                "message_id": entry.message_id,
                "attempts": entry.attempts,
                "failed_at": format_micros(entry.failed_at_micros),
                "reason": entry.reason,
                "message": record.map(|record| serde_json::json!({
                    "received_at": format_micros(record.received_at_micros),
                    "peer": record.peer,
                    "listener": record.listener,
                    "header": record.header,
                    "body_bytes": record.body_len,
                })),
                "history": history,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?;
        }
        DlqCommand::Replay {
            connector,
            seqs,
            all,
            to,
        } => {
            let id = id_of(connector)?;
            let target = to.as_deref().map(id_of).transpose()?;
            let seqs = selected(outbox, id, seqs, *all)?;
            let mut replayed = Vec::new();
            for seq in &seqs {
                match outbox.replay(id, *seq, target).await? {
                    Some(new_seq) => {
                        replayed.push(serde_json::json!({"seq": seq, "queued_as": new_seq}))
                    }
                    None => bail!(
                        "connector {connector:?} has no dead-letter entry {seq} (nothing after it was replayed)"
                    ),
                }
            }
            let destination = to.as_deref().unwrap_or(connector);
            if args.api.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&replayed)?)?;
            } else {
                writeln!(
                    out,
                    "replayed {} entries of {connector} to the tail of {destination}'s queue; they are delivered when mfoundry runs",
                    replayed.len()
                )?;
            }
        }
        DlqCommand::Purge {
            connector,
            seqs,
            all,
        } => {
            let id = id_of(connector)?;
            let seqs = selected(outbox, id, seqs, *all)?;
            for seq in &seqs {
                if !outbox.purge(id, *seq).await? {
                    bail!(
                        "connector {connector:?} has no dead-letter entry {seq} (nothing after it was purged)"
                    );
                }
            }
            if args.api.json {
                writeln!(out, "{}", serde_json::json!({"purged": seqs.len()}))?;
            } else {
                writeln!(out, "purged {} entries of {connector}", seqs.len())?;
            }
        }
    }
    Ok(())
}

fn selected(outbox: &Outbox, connector: u32, seqs: &[u64], all: bool) -> anyhow::Result<Vec<u64>> {
    if all {
        return Ok(outbox
            .snapshot()?
            .dead_letters(connector)?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect());
    }
    if seqs.is_empty() {
        bail!("name the entries (their seq, from `mfoundry dlq list`) or pass --all");
    }
    Ok(seqs.to_vec())
}

fn listed_entry(
    connector: &str,
    seq: u64,
    entry: &DlqEntry,
    control_id: String,
    message_type: String,
) -> Listed {
    Listed {
        connector: connector.to_owned(),
        seq,
        message_id: entry.message_id,
        control_id,
        message_type,
        attempts: entry.attempts,
        failed_at: format_micros(entry.failed_at_micros),
        reason: entry.reason.clone(),
    }
}

fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
