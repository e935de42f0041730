//! Commands that talk to a running mfoundry through its admin API: `stats`, `messages`,
//! `dlq`, `pause`, `resume`, `audit`, `logs`; and `token create`, which needs no server.
//!
//! The address comes from `--admin-addr` or `ADMIN_ADDR`; the token from `ADMIN_TOKEN`, else
//! from the server's `DATA_DIR/admin.token` (so the CLI on the server's host needs no setup).
//! Human tables by default, `--json` for scripts. Exit codes: 0 done, 1 a check found problems
//! (`audit verify`), 2 the request failed.

use std::io::Write;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::admin::api::{
    AuditPage, AuditVerification, ConnectorControl, LogsPage, MessageDetail, MessagePage,
    PatientSearch, ReprocessRequest, ReprocessResult, SearchQuery, Stats,
};
use crate::admin::auth::{Role, generate_token, hash_token, hex};
use crate::admin::views::MessageSummary;

use super::client::{AdminClient, ApiArgs, NO_QUERY, segment};
use super::offline::open_offline;
use super::render::{age, connectors_cell, print_json, table};

/// `mfoundry messages ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MessagesCommand {
    /// Find messages, newest first (no bodies).
    Search(Box<SearchArgs>),
    /// One message with its body and delivery history (needs the operator role; audited).
    Show {
        /// Message id (from `search`).
        id: u64,
    },
    /// Queue stored messages again for a connector, through its current transform, whatever
    /// their state (needs the operator role; audited). Each gets a new queue entry.
    Reprocess {
        /// Message ids (from `search`), in the order to queue them.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// The connector to queue them for.
        #[arg(long)]
        to: String,
        /// Also messages that were refused (REJECTED, ERROR).
        #[arg(long)]
        include_rejected: bool,
    },
}

/// Filters of `mfoundry messages search`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SearchArgs {
    /// Received at or after: RFC 3339 or a duration ago (1h, 30m).
    #[arg(long)]
    pub from: Option<String>,
    /// Received before: RFC 3339 or a duration ago.
    #[arg(long)]
    pub to: Option<String>,
    /// MSH-9.1, e.g. ORU.
    #[arg(long = "type")]
    pub message_type: Option<String>,
    /// MSH-9.2, e.g. R01.
    #[arg(long)]
    pub trigger: Option<String>,
    /// MSH-10.
    #[arg(long)]
    pub control_id: Option<String>,
    /// MSH-3 or MSH-4.
    #[arg(long)]
    pub sender: Option<String>,
    /// ROUTED, UNROUTED, REJECTED or ERROR.
    #[arg(long)]
    pub disposition: Option<String>,
    /// Only messages with a state at this connector.
    #[arg(long)]
    pub connector: Option<String>,
    /// QUEUED, FILTERED, DELIVERED, DEAD_LETTERED or PURGED.
    #[arg(long)]
    pub status: Option<String>,
    /// A patient identifier (PID-3), through the patient index; sent in the request body,
    /// never in the URL, and audited (needs the operator role). `-` reads it from a line of
    /// standard input, so it stays out of the process list and the shell's history.
    #[arg(long)]
    pub patient_id: Option<String>,
    /// A family name (PID-5.1), like --patient-id (case and surrounding space aside; `-`
    /// reads it from standard input).
    #[arg(long)]
    pub family_name: Option<String>,
    /// Most messages to print.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// `mfoundry audit ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Print audit records, oldest first.
    List {
        /// Start after this seq.
        #[arg(long)]
        after: Option<u64>,
        /// Most records to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check the hash chain; exits 1 when a record was changed, removed or reordered.
    Verify,
}

/// `mfoundry token ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a new token; prints it once, and the line to add to ADMIN_TOKENS_FILE.
    Create {
        /// viewer, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A name for it (audit records show it).
        #[arg(long)]
        id: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| "use viewer, operator or admin".to_owned())
}

/// `mfoundry stats`.
pub async fn stats(args: &ApiArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let client = AdminClient::new(args)?;
    let stats: Stats = client.get("/api/v1/stats", NO_QUERY).await?;
    if args.json {
        print_json(out, &stats)?;
        return Ok(0);
    }
    writeln!(
        out,
        "counts since start ({}, up {}): they start again at zero with every restart",
        stats.counters_since,
        age(Some(stats.uptime_secs as f64))
    )?;
    let rows: Vec<Vec<String>> = stats
        .listeners
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.connections_active.to_string(),
                l.received.to_string(),
                l.accepted.to_string(),
                l.rejected.to_string(),
                l.errors.to_string(),
                l.unreadable.to_string(),
            ]
        })
        .collect();
    let headers = [
        "LISTENER",
        "CONNECTIONS",
        "RECEIVED",
        "ACCEPTED",
        "REJECTED",
        "ERRORS",
        "UNREADABLE",
    ];
    write!(out, "{}", table(&headers, &rows))?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = stats
        .connectors
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.kind.clone(),
                c.state.clone(),
                c.queued.to_string(),
                c.filtered.to_string(),
                c.queue_depth.to_string(),
                age(c.oldest_queued_age_secs),
                c.delivered.to_string(),
                c.failed.to_string(),
                c.dlq_size.to_string(),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .chain(stats.orphaned_connectors.iter().map(|o| {
            vec![
                o.name.clone(),
                "-".to_owned(),
                "orphaned".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                o.queue_depth.to_string(),
                age(o.oldest_queued_age_secs),
                "-".to_owned(),
                "-".to_owned(),
                o.dlq_size.to_string(),
            ]
        }))
        .collect();
    let headers = [
        "CONNECTOR",
        "KIND",
        "STATE",
        "QUEUED",
        "FILTERED",
        "DEPTH",
        "OLDEST",
        "DELIVERED",
        "FAILED",
        "DLQ",
    ];
    write!(out, "{}", table(&headers, &rows))?;
    writeln!(
        out,
        "\nstore: {} messages, {:.1} MiB, {} commits ({} failed); up {}",
        stats.store.messages,
        stats.store.file_bytes as f64 / (1024.0 * 1024.0),
        stats.store.commits,
        stats.store.failed_commits,
        age(Some(stats.uptime_secs as f64))
    )?;
    let configuration = &stats.configuration;
    match (
        &configuration.last_failure_at,
        configuration.last_failure_problems,
    ) {
        (Some(at), Some(problems)) => writeln!(
            out,
            "configuration: {} reloads, {} refused (the last at {at}, {problems} problems: see the log); the running configuration stayed",
            configuration.reloads, configuration.reload_failures
        )?,
        _ => writeln!(
            out,
            "configuration: {} reloads, {} refused",
            configuration.reloads, configuration.reload_failures
        )?,
    }
    writeln!(
        out,
        "QUEUED, FILTERED, DELIVERED and FAILED count since start; DEPTH, OLDEST and DLQ are now."
    )?;
    if !stats.orphaned_connectors.is_empty() {
        writeln!(
            out,
            "orphaned: no longer in the configuration; its queue waits for it to be added back, its dead letters for `dlq purge`."
        )?;
    }
    Ok(0)
}

/// `value`, or for `-` the next line of standard input (without its line end).
fn from_stdin_if_dash(value: Option<&str>) -> anyhow::Result<Option<String>> {
    match value {
        Some("-") => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the value from standard input")?;
            Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
        }
        other => Ok(other.map(str::to_owned)),
    }
}

/// `mfoundry messages ...`.
pub async fn messages(
    args: &ApiArgs,
    command: &MessagesCommand,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let client = AdminClient::new(args)?;
    match command {
        MessagesCommand::Search(search) => {
            let mut query = SearchQuery {
                from: search.from.clone(),
                to: search.to.clone(),
                message_type: search.message_type.clone(),
                trigger: search.trigger.clone(),
                control_id: search.control_id.clone(),
                sender: search.sender.clone(),
                disposition: search.disposition.clone(),
                connector: search.connector.clone(),
                status: search.status.clone(),
                limit: None,
                before: None,
            };
            let patient = (
                from_stdin_if_dash(search.patient_id.as_deref())?,
                from_stdin_if_dash(search.family_name.as_deref())?,
            );
            let mut found: Vec<MessageSummary> = Vec::new();
            let mut scanned = 0u64;
            loop {
                let wanted = search.limit.saturating_sub(found.len());
                if wanted == 0 {
                    break;
                }
                query.limit = Some(wanted.min(crate::admin::api::MAX_PAGE));
                let page: MessagePage =
                    if search.patient_id.is_some() || search.family_name.is_some() {
                        let request = PatientSearch {
                            patient_id: patient.0.clone(),
                            family_name: patient.1.clone(),
                            filters: query.clone(),
                        };
                        client.post("/api/v1/messages/search", &request).await?
                    } else {
                        client.get("/api/v1/messages", &query).await?
                    };
                scanned += page.scanned;
                found.extend(page.messages);
                match page.next_before {
                    Some(before) => query.before = Some(before),
                    None => break,
                }
            }
            found.truncate(search.limit);
            if args.json {
                return print_json(out, &found).map(|()| 0);
            }
            if found.is_empty() {
                writeln!(out, "no matching messages ({scanned} looked at)")?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.received_at.clone(),
                        m.message_type.clone(),
                        m.control_id.clone(),
                        format!("{}/{}", m.sending_app, m.sending_facility),
                        m.disposition.clone(),
                        m.ack_code.clone(),
                        connectors_cell(m),
                    ]
                })
                .collect();
            let headers = [
                "ID",
                "RECEIVED",
                "TYPE",
                "CONTROL_ID",
                "SENDER",
                "DISPOSITION",
                "ACK",
                "CONNECTORS",
            ];
            write!(out, "{}", table(&headers, &rows))?;
            writeln!(
                out,
                "{}",
                crate::units::count(found.len() as u64, "message", "messages")
            )?;
            Ok(0)
        }
        MessagesCommand::Reprocess {
            ids,
            to,
            include_rejected,
        } => {
            let request = ReprocessRequest {
                ids: ids.clone(),
                to: to.clone(),
                include_rejected: *include_rejected,
            };
            let result: ReprocessResult =
                client.post("/api/v1/messages/reprocess", &request).await?;
            if args.json {
                print_json(out, &result)?;
            } else {
                for entry in &result.queued {
                    writeln!(
                        out,
                        "{}\tqueued for {to} as entry {}",
                        entry.id, entry.entry
                    )?;
                }
                for entry in &result.dead_lettered {
                    writeln!(
                        out,
                        "{}\tdead-lettered at {to}: {}",
                        entry.id,
                        entry.reason.as_deref().unwrap_or("")
                    )?;
                }
                for id in &result.refused {
                    writeln!(
                        out,
                        "{id}\tleft alone: it was refused (REJECTED or ERROR); pass --include-rejected"
                    )?;
                }
                for id in &result.missing {
                    writeln!(out, "{id}\tnot stored")?;
                }
            }
            // Every id queued (even if its transform failed, which the output says) is 0.
            let incomplete = !result.missing.is_empty() || !result.refused.is_empty();
            Ok(u8::from(incomplete))
        }
        MessagesCommand::Show { id } => {
            let detail: MessageDetail = client
                .get(&format!("/api/v1/messages/{id}"), NO_QUERY)
                .await?;
            if args.json {
                return print_json(out, &detail).map(|()| 0);
            }
            let m = &detail.summary;
            writeln!(out, "message {}", m.id)?;
            writeln!(
                out,
                "received     {} from {} on {}",
                m.received_at, m.peer, m.listener
            )?;
            writeln!(
                out,
                "type         {}   control id {}",
                m.message_type, m.control_id
            )?;
            writeln!(
                out,
                "from         {}/{} to {}/{}",
                m.sending_app, m.sending_facility, m.receiving_app, m.receiving_facility
            )?;
            writeln!(
                out,
                "disposition  {} (ACK {}){}",
                m.disposition,
                m.ack_code,
                m.reason
                    .as_deref()
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default()
            )?;
            if let Some(config) = &m.config {
                writeln!(
                    out,
                    "configuration {config} (SHA-256 of the file, first 16 hex digits)"
                )?;
            }
            writeln!(out)?;
            let rows: Vec<Vec<String>> = m
                .connectors
                .iter()
                .map(|c| {
                    vec![
                        c.connector.clone(),
                        c.status.clone(),
                        c.at.clone().unwrap_or_else(|| "-".to_owned()),
                        c.attempts.to_string(),
                        c.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(
                    &["CONNECTOR", "STATUS", "AT", "ATTEMPTS", "LAST_ERROR"],
                    &rows
                )
            )?;
            writeln!(out, "\n{} bytes:", m.body_len)?;
            let segments = |text: &str, out: &mut dyn Write| -> std::io::Result<()> {
                for segment in text.split(['\r', '\n']).filter(|s| !s.is_empty()) {
                    writeln!(out, "{segment}")?;
                }
                Ok(())
            };
            segments(&detail.body, out)?;
            for copy in &detail.copies {
                match (&copy.body, &copy.transform_failure) {
                    (Some(body), _) => {
                        writeln!(
                            out,
                            "\n{} delivers (entry {}, after its transform):",
                            copy.connector, copy.entry
                        )?;
                        segments(body, out)?;
                    }
                    (None, failure) => writeln!(
                        out,
                        "\n{} (entry {}): its transform failed: {}",
                        copy.connector,
                        copy.entry,
                        failure.as_deref().unwrap_or("")
                    )?,
                }
            }
            Ok(0)
        }
    }
}

/// `mfoundry pause|resume CONNECTOR`.
pub async fn control(
    args: &ApiArgs,
    connector: &str,
    pause: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let client = AdminClient::new(args)?;
    let action = if pause { "pause" } else { "resume" };
    let state: ConnectorControl = client
        .post(
            &format!("/api/v1/connectors/{}/{action}", segment(connector)),
            &serde_json::json!({}),
        )
        .await?;
    if args.json {
        return print_json(out, &state).map(|()| 0);
    }
    writeln!(
        out,
        "{}: {}",
        state.connector,
        if state.paused {
            "paused (intake keeps queueing; not kept across a restart)"
        } else {
            "delivering"
        }
    )?;
    Ok(0)
}

/// `mfoundry audit ...` against a running server.
pub async fn audit(
    args: &ApiArgs,
    offline: bool,
    command: &AuditCommand,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    match command {
        AuditCommand::List { after, limit } => {
            let records = if offline {
                audit_offline(args, *after, *limit).await?
            } else {
                let client = AdminClient::new(args)?;
                #[derive(Serialize)]
                struct Query {
                    after: Option<u64>,
                    limit: usize,
                }
                let mut records = Vec::new();
                let mut after = *after;
                while records.len() < *limit {
                    let wanted = (*limit - records.len()).min(crate::admin::api::MAX_PAGE);
                    let page: AuditPage = client
                        .get(
                            "/api/v1/audit",
                            &Query {
                                after,
                                limit: wanted,
                            },
                        )
                        .await?;
                    records.extend(page.records);
                    match page.next_after {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                records
            };
            if args.json {
                return print_json(out, &records).map(|()| 0);
            }
            for record in &records {
                let text = match &record.event {
                    crate::admin::api::AuditEventView::Received {
                        message_id,
                        duplicate,
                        peer,
                        tls_identity,
                        listener,
                        control_id,
                        message_type,
                        ack_code,
                    } => format!(
                        "received message {message_id}{} {message_type} control id {control_id} from {peer}{} on {listener}: {ack_code}",
                        if *duplicate { " (retransmit)" } else { "" },
                        tls_identity
                            .as_deref()
                            .map(|identity| format!(" ({identity})"))
                            .unwrap_or_default()
                    ),
                    crate::admin::api::AuditEventView::Admin {
                        token_id,
                        action,
                        target,
                        outcome,
                    } => format!("{token_id}: {action} {target}: {outcome}"),
                };
                writeln!(out, "{:>8}  {}  {text}", record.seq, record.at)?;
            }
            Ok(0)
        }
        AuditCommand::Verify => {
            let report: AuditVerification = if offline {
                verify_offline(args).await?
            } else {
                AdminClient::new(args)?
                    .get("/api/v1/audit/verify", NO_QUERY)
                    .await?
            };
            if args.json {
                print_json(out, &report)?;
            } else if report.intact {
                writeln!(
                    out,
                    "audit trail intact: {}{}",
                    crate::units::count(report.records, "record", "records"),
                    match (report.first_seq, report.last_seq) {
                        (Some(first), Some(last)) => format!(" (seq {first} to {last})"),
                        _ => String::new(),
                    }
                )?;
            } else {
                writeln!(
                    out,
                    "audit trail NOT intact: {} in {}",
                    crate::units::count(report.problem_count, "problem", "problems"),
                    crate::units::count(report.records, "record", "records")
                )?;
                for problem in &report.problems {
                    writeln!(out, "  {problem}")?;
                }
            }
            Ok(if report.intact { 0 } else { 1 })
        }
    }
}

/// Up to `limit` audit records of a stopped server's data directory, after `after`.
async fn audit_offline(
    args: &ApiArgs,
    after: Option<u64>,
    limit: usize,
) -> anyhow::Result<Vec<crate::admin::api::AuditView>> {
    let (outbox, writer) = open_offline(&args.data_dir).await?;
    let read = outbox
        .read(move |snapshot| snapshot.audit_records(after, limit))
        .await;
    drop(outbox);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let records = read.map_err(|error| anyhow::anyhow!("{}", crate::outbox::Chain(&error)))?;
    Ok(records
        .into_iter()
        .map(|(seq, record)| crate::admin::api::audit_view(seq, record))
        .collect())
}

async fn verify_offline(args: &ApiArgs) -> anyhow::Result<AuditVerification> {
    let (outbox, writer) = open_offline(&args.data_dir).await?;
    let result = outbox.read(|snapshot| snapshot.verify_audit()).await;
    drop(outbox);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(result?.into())
}

/// `mfoundry logs`.
pub async fn logs(args: &ApiArgs, limit: usize, out: &mut impl Write) -> anyhow::Result<u8> {
    let client = AdminClient::new(args)?;
    let page: LogsPage = client
        .get(
            "/api/v1/logs",
            &[("limit", limit.clamp(1, crate::admin::api::MAX_PAGE))],
        )
        .await?;
    if args.json {
        return print_json(out, &page.lines).map(|()| 0);
    }
    for line in &page.lines {
        let fields: Vec<String> = line
            .fields
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        writeln!(
            out,
            "{} {:>5} {}: {} {}",
            line.at,
            line.level,
            line.target,
            line.message,
            fields.join(" ")
        )?;
    }
    Ok(0)
}

/// `mfoundry token create`.
pub fn token(command: &TokenCommand, out: &mut impl Write) -> anyhow::Result<u8> {
    match command {
        TokenCommand::Create { role, id } => {
            let valid = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
            if !valid {
                bail!("--id must be 1 to 64 letters, digits, - _ . or @");
            }
            let token = generate_token()?;
            writeln!(
                out,
                "token (give it to its user; mfoundry does not keep it):"
            )?;
            writeln!(out, "  {token}")?;
            writeln!(out, "line for ADMIN_TOKENS_FILE:")?;
            writeln!(out, "  {id} {role} {}", hex(&hash_token(&token)))?;
            Ok(0)
        }
    }
}
