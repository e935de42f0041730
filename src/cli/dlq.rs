//! `mfoundry dlq`: list, show, replay and purge dead-letter entries.
//!
//! By default these go through the running server's admin API. With `--offline` (before or
//! after the subcommand) they work on a stopped server's data directory directly, through the
//! same implementation as the API ([`crate::admin::dlq`]): the same JSON, the same limits,
//! one transaction per replay or purge, and an audit record for every change.

use std::io::{IsTerminal, Write};

use super::client::{AdminClient, NO_QUERY, segment};
use super::offline::open_offline;
use super::render::{connectors_cell, print_json, table};
use crate::admin::dlq::{
    DeadLetters, DlqDetail, DlqError, DlqPage, DlqQuery, MAX_PAGE, PurgeRequest, PurgeResult,
    ReplayRequest, ReplayResult,
};
use crate::outbox::Chain;

/// The token id offline changes are audited under.
const OFFLINE_ACTOR: &str = "cli-offline";

/// `mfoundry dlq ...`
#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {
    /// Admin API address, data directory, output format.
    #[command(flatten)]
    pub api: super::client::ApiArgs,
    /// Work on the data directory directly instead of the running server's admin API (the
    /// server must be stopped). Accepted before or after the subcommand.
    #[arg(long, global = true)]
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
    /// Show one entry with its message's header fields, delivery history, origin and what
    /// the downstream system answered (roles that may read message bodies).
    Show {
        /// Connector name.
        connector: String,
        /// The entry's seq (from `list`).
        seq: u64,
    },
    /// Put entries back at the tail of a queue (theirs, or `--to` another connector's).
    /// Known seqs are replayed, unknown ones named (exit 1).
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
    /// Remove entries without delivering them (asks first on a terminal, unless `--yes`).
    Purge {
        /// Connector name.
        connector: String,
        /// Seqs to purge.
        seqs: Vec<u64>,
        /// Purge every entry of the connector.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Where the dead letters are: a running server's admin API, or a data file.
enum Source<'a> {
    Api(AdminClient),
    Offline(DeadLetters<'a>),
}

fn offline_error(error: DlqError) -> anyhow::Error {
    match error {
        DlqError::Store(store) => anyhow::anyhow!("{}", Chain(&store)),
        other => anyhow::anyhow!("{other}"),
    }
}

impl Source<'_> {
    async fn list(&self, query: &DlqQuery) -> anyhow::Result<DlqPage> {
        match self {
            Self::Api(client) => client.get("/api/v1/dlq", query).await,
            // Whoever reads the data file directly can read bodies too.
            Self::Offline(dead) => dead.list(query, true).await.map_err(offline_error),
        }
    }

    async fn show(&self, connector: &str, seq: u64) -> anyhow::Result<DlqDetail> {
        match self {
            Self::Api(client) => {
                client
                    .get(
                        &format!("/api/v1/dlq/{}/{seq}", segment(connector)),
                        NO_QUERY,
                    )
                    .await
            }
            Self::Offline(dead) => dead.show(connector, seq, true).await.map_err(offline_error),
        }
    }

    async fn replay(
        &self,
        connector: &str,
        request: ReplayRequest,
    ) -> anyhow::Result<ReplayResult> {
        match self {
            Self::Api(client) => {
                let path = format!("/api/v1/dlq/{}/replay", segment(connector));
                client.post(&path, &request).await
            }
            Self::Offline(dead) => dead
                .replay(OFFLINE_ACTOR, connector, request)
                .await
                .map_err(offline_error),
        }
    }

    async fn purge(&self, connector: &str, request: PurgeRequest) -> anyhow::Result<PurgeResult> {
        match self {
            Self::Api(client) => {
                let path = format!("/api/v1/dlq/{}/purge", segment(connector));
                client.post(&path, &request).await
            }
            Self::Offline(dead) => dead
                .purge(OFFLINE_ACTOR, connector, request)
                .await
                .map_err(offline_error),
        }
    }
}

/// Run a `dlq` command; output goes to `out`. Returns the exit code.
pub async fn run_dlq(args: &DlqArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    if !args.offline {
        let source = Source::Api(AdminClient::new(&args.api)?);
        return run(&source, args, out).await;
    }
    let (outbox, writer) = open_offline(&args.api.data_dir).await?;
    let result = run(&Source::Offline(DeadLetters::all_of(&outbox)), args, out).await;
    drop(outbox);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    result
}

/// Ask on the terminal; true for yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ")?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

async fn run(source: &Source<'_>, args: &DlqArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let json = args.api.json;
    match &args.command {
        DlqCommand::List { connector } => {
            let mut entries = Vec::new();
            let mut after = None;
            let mut truncated = false;
            loop {
                let query = DlqQuery {
                    connector: connector.clone(),
                    after,
                    limit: Some(MAX_PAGE),
                };
                let page = source.list(&query).await?;
                entries.extend(page.entries);
                truncated |= page.truncated;
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if json {
                return print_json(out, &entries).map(|()| 0);
            }
            if entries.is_empty() {
                writeln!(out, "no dead-letter entries")?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.connector.clone(),
                        e.seq.to_string(),
                        e.message_id.to_string(),
                        e.control_id.clone(),
                        e.message_type.clone(),
                        e.attempts.to_string(),
                        e.failed_at.clone(),
                        e.reason.clone(),
                    ]
                })
                .collect();
            let headers = [
                "CONNECTOR",
                "SEQ",
                "MESSAGE",
                "CONTROL_ID",
                "TYPE",
                "ATTEMPTS",
                "FAILED_AT",
                "REASON",
            ];
            write!(out, "{}", table(&headers, &rows))?;
            writeln!(
                out,
                "{}",
                crate::units::count(entries.len() as u64, "entry", "entries")
            )?;
            if truncated {
                writeln!(
                    out,
                    "(more entries exist: name a connector to list all of its entries)"
                )?;
            }
            Ok(0)
        }
        DlqCommand::Show { connector, seq } => {
            let detail = source.show(connector, *seq).await?;
            if json {
                return print_json(out, &detail).map(|()| 0);
            }
            let e = &detail.entry;
            writeln!(out, "dead-letter entry {} of {}", e.seq, e.connector)?;
            writeln!(
                out,
                "message      {} ({}, control id {})",
                e.message_id, e.message_type, e.control_id
            )?;
            if e.message_damaged {
                writeln!(
                    out,
                    "             the stored message is damaged (fails its checksum)"
                )?;
            }
            writeln!(
                out,
                "failed at    {} after {}",
                e.failed_at,
                crate::units::count(e.attempts, "attempt", "attempts")
            )?;
            writeln!(out, "reason       {}", e.reason)?;
            if let Some(answer) = &e.downstream {
                writeln!(
                    out,
                    "downstream   {}",
                    answer.replace('\r', "\n             ")
                )?;
            }
            if let Some(origin) = &e.origin {
                writeln!(out, "first entry  {} seq {}", origin.connector, origin.seq)?;
            }
            for past in &e.history {
                writeln!(
                    out,
                    "earlier      {} seq {}: {} after {} ({})",
                    past.connector,
                    past.seq,
                    past.failed_at,
                    crate::units::count(past.attempts, "attempt", "attempts"),
                    past.reason
                )?;
            }
            if let Some(message) = &detail.message {
                writeln!(
                    out,
                    "received     {} from {}",
                    message.received_at, message.peer
                )?;
                writeln!(out, "connectors   {}", connectors_cell(message))?;
            }
            Ok(0)
        }
        DlqCommand::Replay {
            connector,
            seqs,
            all,
            to,
        } => {
            let mut results = Vec::new();
            loop {
                let request = ReplayRequest {
                    seqs: if *all { Vec::new() } else { seqs.clone() },
                    all: *all,
                    to: to.clone(),
                };
                let result = source.replay(connector, request).await?;
                let progress = !result.replayed.is_empty();
                let remaining = result.remaining;
                results.push(result);
                if !*all || !progress || remaining == 0 {
                    break;
                }
            }
            let replayed: usize = results.iter().map(|r| r.replayed.len()).sum();
            let missing: Vec<u64> = results.iter().flat_map(|r| r.missing.clone()).collect();
            let remaining = results.last().map_or(0, |r| r.remaining);
            if json {
                print_json(out, &results)?;
            } else {
                let destination = to.as_deref().unwrap_or(connector);
                writeln!(
                    out,
                    "replayed {replayed} entries of {connector} to the tail of {destination}'s queue; {remaining} left in its dead-letter queue"
                )?;
                if !missing.is_empty() {
                    writeln!(out, "not in the dead-letter queue: {missing:?}")?;
                }
            }
            Ok(if missing.is_empty() { 0 } else { 1 })
        }
        DlqCommand::Purge {
            connector,
            seqs,
            all,
            yes,
        } => {
            if !yes && std::io::stdin().is_terminal() {
                let what = if *all {
                    format!("every dead-letter entry of {connector}")
                } else {
                    format!("{} dead-letter entries of {connector}", seqs.len())
                };
                if !confirm(&format!(
                    "purge {what}? They are removed without being delivered."
                ))? {
                    writeln!(out, "nothing purged")?;
                    return Ok(1);
                }
            }
            let mut results = Vec::new();
            loop {
                let request = PurgeRequest {
                    seqs: if *all { Vec::new() } else { seqs.clone() },
                    all: *all,
                };
                let result = source.purge(connector, request).await?;
                let progress = !result.purged.is_empty();
                let remaining = result.remaining;
                results.push(result);
                if !*all || !progress || remaining == 0 {
                    break;
                }
            }
            let purged: usize = results.iter().map(|r| r.purged.len()).sum();
            let missing: Vec<u64> = results.iter().flat_map(|r| r.missing.clone()).collect();
            if json {
                print_json(out, &results)?;
            } else {
                writeln!(out, "purged {purged} entries of {connector}")?;
                if !missing.is_empty() {
                    writeln!(out, "not in the dead-letter queue: {missing:?}")?;
                }
            }
            Ok(if missing.is_empty() { 0 } else { 1 })
        }
    }
}
