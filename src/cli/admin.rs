//! Commands that talk to a running mfoundry through its admin API: `stats`, `messages`,
//! `dlq`, `pause`, `resume`, `audit`, `logs`; and `token create`, which needs no server.
//!
//! The address comes from `--admin-addr` or `ADMIN_ADDR`; the token from `ADMIN_TOKEN`, else
//! from the server's `DATA_DIR/admin.token` (so the CLI on the server's host needs no setup).
//! Human tables by default, `--json` for scripts. Exit codes: 0 done, 1 a check found problems
//! (`audit verify`), 2 the request failed.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::api::{
    AuditPage, AuditVerification, ConnectorControl, LogsPage, MessageDetail, MessagePage,
    MessageSummary, SearchQuery, Stats,
};
use crate::admin::auth::{LOCAL_TOKEN_FILE, Role, generate_token, hash_token, hex};

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The admin API's address (the server's ADMIN_ADDR), host:port or a URL.
    #[arg(
        long,
        global = true,
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: String,
    /// The server's data directory: its admin.token is used when ADMIN_TOKEN is not set.
    #[arg(
        long,
        global = true,
        env = "DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

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

/// No query parameters.
pub(super) const NO_QUERY: &[(&str, &str)] = &[];

/// A client of one server's admin API.
#[derive(Debug)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// `host:port`, `:port`, `0.0.0.0:port` or a URL → a base URL to connect to.
fn base_url(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return addr.to_owned();
    }
    let (host, port) = match addr.rfind(':') {
        Some(colon) => (&addr[..colon], &addr[colon + 1..]),
        None => (addr, "8080"),
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        other => other,
    };
    format!("http://{host}:{port}")
}

impl AdminClient {
    /// A client for `args`: the token from `ADMIN_TOKEN`, else `DATA_DIR/admin.token`.
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = match std::env::var("ADMIN_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => {
                let path = args.data_dir.join(LOCAL_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token: set ADMIN_TOKEN, or run where the server's {} is readable (--data-dir)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Self::with_token(&args.admin_addr, &token)
    }

    /// A client with an explicit token.
    pub fn with_token(addr: &str, token: &str) -> anyhow::Result<Self> {
        crate::outputs::http::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(crate::admin::api::CLIENT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base: base_url(addr),
            token: token.to_owned(),
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot reach the admin API at {}: {} (is mfoundry running? check ADMIN_ADDR)",
                    self.base,
                    error_chain(&error)
                )
            })?;
        let status = response.status();
        let body = response.bytes().await.context("the answer was cut off")?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<crate::admin::api::ErrorBody>(&body)
                .map(|error| error.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{}: {reason}", status);
        }
        serde_json::from_slice(&body).context("the admin API answered something unexpected")
    }

    /// GET `path` with `query`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &(impl Serialize + ?Sized),
    ) -> anyhow::Result<T> {
        self.call(self.http.get(format!("{}{path}", self.base)).query(query))
            .await
    }

    /// POST `body` as JSON to `path`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> anyhow::Result<T> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Percent-encode a path segment (connector names are plain, but be safe).
pub(super) fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let width = widths.get(index).copied().unwrap_or(0);
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub(super) fn print_json(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn age(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds else {
        return "-".to_owned();
    };
    let seconds = seconds.max(0.0) as u64;
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `mfoundry stats`.
pub async fn stats(args: &ApiArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let client = AdminClient::new(args)?;
    let stats: Stats = client.get("/api/v1/stats", NO_QUERY).await?;
    if args.json {
        print_json(out, &stats)?;
        return Ok(0);
    }
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
            let state = if c.paused {
                "paused"
            } else if c.backing_off {
                "retrying"
            } else {
                "running"
            };
            vec![
                c.name.clone(),
                c.kind.clone(),
                state.to_owned(),
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
    writeln!(
        out,
        "QUEUED, FILTERED, DELIVERED and FAILED count since start; DEPTH, OLDEST and DLQ are now."
    )?;
    Ok(0)
}

pub(super) fn connectors_cell(message: &MessageSummary) -> String {
    message
        .connectors
        .iter()
        .map(|state| format!("{}:{}", state.connector, state.status))
        .collect::<Vec<_>>()
        .join(" ")
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
            let mut found: Vec<MessageSummary> = Vec::new();
            let mut scanned = 0u64;
            loop {
                let wanted = search.limit.saturating_sub(found.len());
                if wanted == 0 {
                    break;
                }
                query.limit = Some(wanted.min(crate::admin::api::MAX_PAGE));
                let page: MessagePage = client.get("/api/v1/messages", &query).await?;
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
            writeln!(out, "{} messages", found.len())?;
            Ok(0)
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
            for segment in detail.body.split(['\r', '\n']).filter(|s| !s.is_empty()) {
                writeln!(out, "{segment}")?;
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
                    "audit trail intact: {} records{}",
                    report.records,
                    match (report.first_seq, report.last_seq) {
                        (Some(first), Some(last)) => format!(" (seq {first} to {last})"),
                        _ => String::new(),
                    }
                )?;
            } else {
                writeln!(
                    out,
                    "audit trail NOT intact: {} problem(s) in {} records",
                    report.problem_count, report.records
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
    let (outbox, writer) = super::dlq::open_offline(&args.data_dir).await?;
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
    let (outbox, writer) = super::dlq::open_offline(&args.data_dir).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_become_urls() {
        assert_eq!(base_url(":8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(base_url("[::]:8080"), "http://[::1]:8080");
        assert_eq!(base_url("10.0.0.5:8080"), "http://10.0.0.5:8080");
        assert_eq!(base_url("https://gw.example/"), "https://gw.example");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&["A", "BB"], &[vec!["xyz".to_owned(), "1".to_owned()]]);
        assert_eq!(text, "A    BB\nxyz  1\n");
    }
}
