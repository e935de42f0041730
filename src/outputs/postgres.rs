//! `type: postgres`: one row per message, inserted idempotently.
//!
//! The table is created if missing:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS <table> (
//!     source           TEXT        NOT NULL,  -- the gateway's data file (instance id, hex)
//!     id               BIGINT      NOT NULL,  -- the message id in that file
//!     entry            BIGINT      NOT NULL,  -- the queue entry (the id for a first delivery)
//!     received_at      TIMESTAMPTZ NOT NULL,
//!     msg_type         TEXT        NOT NULL,  -- MSH-9.1
//!     trigger          TEXT        NOT NULL,  -- MSH-9.2
//!     control_id       TEXT        NOT NULL,  -- MSH-10
//!     sending_app      TEXT        NOT NULL,  -- MSH-3
//!     sending_facility TEXT        NOT NULL,  -- MSH-4
//!     message          BYTEA       NOT NULL,  -- the bytes as received
//!     header           JSONB       NOT NULL,  -- the parsed header fields
//!     connector        TEXT        NOT NULL,
//!     inserted_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
//!     PRIMARY KEY (source, connector, entry)
//! );
//! ```
//!
//! `INSERT … ON CONFLICT (source, connector, entry) DO NOTHING` makes a retry or a redelivery
//! of the same queue entry after a crash harmless, while a replayed or reprocessed copy (a new
//! entry) is a new row. A table of the first layout (key `(source, id)`) is migrated at
//! connect, in one transaction under an exclusive lock: `entry` is added and set to `id` (a
//! first delivery's entry is its message id), and the key becomes `(source, connector,
//! entry)` (docs/configuration.md has the SQL for doing it by hand). A failure is transient (a connection problem, or a table an operator must fix:
//! the queue waits rather than dead-lettering every message), except a data exception or a
//! constraint violation (SQLSTATE classes 22 and 23): that message can never be inserted as
//! it is, so it goes to the dead-letter queue and the queue moves on. NUL characters, which
//! PostgreSQL text and JSONB refuse, are dropped from the header columns (the `message`
//! column keeps the exact bytes). Without `dsn`, the
//! connection comes from the standard `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` and
//! `PGDATABASE` variables, with libpq's defaults.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, Statement};
use tracing::warn;

use crate::delivery::{DeliveryError, Envelope};

/// `type: postgres`.
#[derive(Clone)]
pub struct PostgresSpec {
    /// Connection string (a secret: never printed).
    pub dsn: String,
    /// Table name.
    pub table: String,
    /// What the `message` column holds (`format`, default the HL7 bytes).
    pub format: super::format::Format,
    /// TLS files (`tls_*` keys), when set.
    pub tls: Option<std::sync::Arc<crate::tls::TlsClient>>,
    /// `EGRESS_ALLOW`, when set: host names are resolved through it before connecting.
    pub egress: Option<std::sync::Arc<super::egress::EgressAllow>>,
}

impl std::fmt::Debug for PostgresSpec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresSpec")
            .field("dsn", &"<redacted>")
            .field("table", &self.table)
            .finish()
    }
}

/// Default table.
pub const DEFAULT_TABLE: &str = "hl7_messages";

/// The keys a PostgreSQL connector takes.
pub const KEYS: [&str; 7] = [
    "dsn",
    "dsn_file",
    "table",
    "format",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

impl PostgresSpec {
    /// Read a PostgreSQL connector's keys; `None` when a problem was recorded.
    pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<Self> {
        let problems_before = reader.problems.len();
        let dsn = match (reader.text("dsn"), reader.text("dsn_file")) {
            (Some(_), Some(_)) => {
                reader.problem("dsn_file", "set `dsn` or `dsn_file`, not both");
                String::new()
            }
            (Some(dsn), None) => dsn,
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) => text.trim().to_owned(),
                Err(error) => {
                    reader.problem(
                        "dsn_file",
                        format!("`dsn_file` {path:?} cannot be read: {error}"),
                    );
                    String::new()
                }
            },
            // Like psql: the PG* environment variables and libpq's defaults.
            (None, None) => {
                if let Some(mode) = (reader.lookup)("PGSSLMODE")
                    && !matches!(mode.trim(), "disable" | "prefer" | "require")
                {
                    reader.problem(
                        "dsn",
                        format!(
                            "PGSSLMODE is {:?}; mfoundry takes disable, prefer or require (certificates are always checked when TLS is on)",
                            mode.trim()
                        ),
                    );
                }
                String::new()
            }
        };
        let table = reader
            .text("table")
            .unwrap_or_else(|| DEFAULT_TABLE.to_owned());
        if !valid_table_name(&table) {
            reader.problem(
                "table",
                format!(
                    "`table` {table:?} must be a plain name or schema.name (letters, digits, _; not starting with a digit)"
                ),
            );
        }
        // The server name is the connection string's host.
        let files = reader.tls_files();
        let tls = reader.tls_client(files.as_ref(), None);
        let format = super::format::Format::read(reader, &super::format::Format::ALL);
        (reader.problems.len() == problems_before).then_some(Self {
            dsn,
            table,
            format,
            tls,
            egress: None,
        })
    }
}

/// `name` or `schema.name`, each part an unquoted SQL identifier of at most 63 bytes.
fn valid_table_name(table: &str) -> bool {
    let parts: Vec<&str> = table.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && !part.as_bytes()[0].is_ascii_digit()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one insert, or one batch's transaction, may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL table.
#[derive(Debug)]
pub struct PostgresOutput {
    spec: PostgresSpec,
    connection: Option<(Client, Statement)>,
    /// The system's CAs, loaded once, for `sslmode=require` without `tls_*` files.
    system_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
}

impl PostgresOutput {
    /// An output for `spec`; connects on first use.
    pub fn new(spec: PostgresSpec) -> Self {
        Self {
            spec,
            connection: None,
            system_tls: std::sync::OnceLock::new(),
        }
    }

    /// Connect, create the table and prepare the insert when there is no open connection,
    /// all within one bound: a pooler that holds the client or a silent network must not
    /// stall the connector.
    async fn ensure_connected(&mut self) -> Result<(), DeliveryError> {
        if self
            .connection
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            let setup = tokio::time::timeout(CONNECT_TIMEOUT + STATEMENT_TIMEOUT, self.connect());
            self.connection = Some(setup.await.map_err(|_| {
                DeliveryError::transient(format!(
                    "could not connect and prepare within {:?}",
                    CONNECT_TIMEOUT + STATEMENT_TIMEOUT
                ))
            })??);
        }
        Ok(())
    }

    /// Insert one message.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        let row = Row::of(envelope, self.spec.format)?;
        self.ensure_connected().await?;
        let Some((client, insert)) = self.connection.as_ref() else {
            return Err(DeliveryError::transient("not connected"));
        };
        let started = std::time::Instant::now();
        let inserted =
            tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(insert, &row.params())).await;
        record_insert(&envelope.connector, started, matches!(inserted, Ok(Ok(_))));
        self.outcome(
            inserted.map(|inserted| inserted.map(|_| ())),
            "insert",
            "the row",
        )
    }

    /// Insert several messages in one transaction (one commit for all of them). A message
    /// that cannot be rendered ends the batch there.
    pub async fn deliver_batch(
        &mut self,
        envelopes: &[Envelope],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut rows = Vec::with_capacity(envelopes.len());
        let mut refused = None;
        for envelope in envelopes {
            match Row::of(envelope, self.spec.format) {
                Ok(row) => rows.push(row),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        if rows.is_empty() {
            return refused.map(Err).into_iter().collect();
        }
        if let Err(error) = self.ensure_connected().await {
            return vec![Err(error)];
        }
        let Some((client, insert)) = self.connection.as_mut() else {
            return vec![Err(DeliveryError::transient("not connected"))];
        };
        let started = std::time::Instant::now();
        let inserted = tokio::time::timeout(STATEMENT_TIMEOUT, async {
            let transaction = client.transaction().await?;
            for row in &rows {
                transaction.execute(&*insert, &row.params()).await?;
            }
            transaction.commit().await
        })
        .await;
        if let Some(envelope) = envelopes.first() {
            record_insert(&envelope.connector, started, matches!(inserted, Ok(Ok(()))));
        }
        match self.outcome(inserted, "batch insert", "a row of the batch") {
            Ok(()) => {
                let mut outcomes: Vec<Result<(), DeliveryError>> =
                    rows.iter().map(|_| Ok(())).collect();
                outcomes.extend(refused.map(Err));
                outcomes
            }
            Err(error) => vec![Err(error)],
        }
    }

    /// What an insert's result means: a row refused for its data is permanent; anything
    /// else is transient and closes the connection.
    fn outcome(
        &mut self,
        inserted: Result<Result<(), tokio_postgres::Error>, tokio::time::error::Elapsed>,
        what: &str,
        row: &str,
    ) -> Result<(), DeliveryError> {
        match inserted {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if is_about_the_data(&error) => Err(DeliveryError::permanent(format!(
                "{row} was refused: {}",
                describe(&error)
            ))),
            Ok(Err(error)) => {
                self.connection = None;
                Err(DeliveryError::transient(format!(
                    "{what} failed: {}",
                    describe(&error)
                )))
            }
            Err(_) => {
                self.connection = None;
                Err(DeliveryError::transient(format!(
                    "{what} did not finish within {STATEMENT_TIMEOUT:?}; connection closed"
                )))
            }
        }
    }

    /// TLS for this connection: with `tls_*` files unless `sslmode=disable`, and then
    /// required (`prefer` becomes `require`: a server declining TLS must not get the rows in
    /// the clear); with the system's CAs for `sslmode=require`; none otherwise (`prefer`
    /// without files stays in the clear, as before TLS settings existed).
    fn tls_config(
        &self,
        config: &mut tokio_postgres::Config,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, DeliveryError> {
        use tokio_postgres::config::SslMode;
        match (&self.spec.tls, config.get_ssl_mode()) {
            (_, SslMode::Disable) => Ok(None),
            (Some(tls), _) => {
                config.ssl_mode(SslMode::Require);
                Ok(Some(tls.config()))
            }
            (None, SslMode::Require) => {
                if let Some(config) = self.system_tls.get() {
                    return Ok(Some(Arc::clone(config)));
                }
                let settings = crate::tls::ClientTlsSettings {
                    ca_file: None,
                    cert_file: None,
                    key_file: None,
                    server_name: None,
                };
                let config = crate::tls::client_config(&settings, ["", "", ""])
                    .map_err(DeliveryError::transient)?;
                Ok(Some(Arc::clone(self.system_tls.get_or_init(|| config))))
            }
            (None, _) => Ok(None),
        }
    }

    async fn connect(&self) -> Result<(Client, Statement), DeliveryError> {
        let mut config = postgres_config(&self.spec.dsn, &|name| std::env::var(name).ok())
            .map_err(DeliveryError::transient)?;
        if let Some(allow) = &self.spec.egress {
            restrict(&mut config, allow)
                .await
                .map_err(DeliveryError::transient)?;
        }
        let client = match self.tls_config(&mut config)? {
            None => spawn_connection(config.connect(NoTls)).await?,
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                spawn_connection(config.connect(tls)).await?
            }
        };
        let table = &self.spec.table;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                source TEXT NOT NULL,
                id BIGINT NOT NULL,
                entry BIGINT NOT NULL,
                received_at TIMESTAMPTZ NOT NULL,
                msg_type TEXT NOT NULL,
                trigger TEXT NOT NULL,
                control_id TEXT NOT NULL,
                sending_app TEXT NOT NULL,
                sending_facility TEXT NOT NULL,
                message BYTEA NOT NULL,
                header JSONB NOT NULL,
                connector TEXT NOT NULL,
                inserted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (source, connector, entry)
            )"
        );
        client.batch_execute(&create).await.map_err(|error| {
            DeliveryError::transient(format!("cannot create table {table}: {}", describe(&error)))
        })?;
        migrate_key(&client, table).await?;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {table} (source, id, entry, received_at, msg_type, trigger, \
                 control_id, sending_app, sending_facility, message, header, connector) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (source, connector, entry) DO NOTHING"
            ))
            .await
            .map_err(|error| {
                DeliveryError::transient(format!(
                    "cannot prepare the insert into {table}: {}",
                    describe(&error)
                ))
            })?;
        Ok((client, insert))
    }
}

/// Migrate a table of the first layout (key `(source, id)`, no `entry`) to the key
/// `(source, connector, entry)`, in one transaction under an exclusive lock, so two gateways
/// starting together migrate it once.
async fn migrate_key(client: &Client, table: &str) -> Result<(), DeliveryError> {
    let failed = |error: tokio_postgres::Error| {
        DeliveryError::transient(format!(
            "cannot migrate the key of {table} to (source, connector, entry): {}",
            describe(&error)
        ))
    };
    let has_entry = client
        .query_one(
            "SELECT count(*) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attname = 'entry' AND NOT attisdropped",
            &[&table],
        )
        .await
        .map(|row| row.get::<_, i64>(0) > 0)
        .map_err(failed)?;
    if has_entry {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "BEGIN;
             LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
             ALTER TABLE {table} ADD COLUMN IF NOT EXISTS entry BIGINT;
             UPDATE {table} SET entry = id WHERE entry IS NULL;
             ALTER TABLE {table} ALTER COLUMN entry SET NOT NULL;
             DO $migrate$ DECLARE key_name text; BEGIN
               SELECT conname INTO key_name FROM pg_constraint
                 WHERE conrelid = to_regclass('{table}') AND contype = 'p';
               IF key_name IS NOT NULL THEN
                 EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', '{table}', key_name);
               END IF;
             END $migrate$;
             ALTER TABLE {table} ADD PRIMARY KEY (source, connector, entry);
             COMMIT;"
        ))
        .await
        .map_err(failed)?;
    tracing::warn!(
        table,
        "the table's key was migrated from (source, id) to (source, connector, entry)"
    );
    Ok(())
}

/// The connection settings: the DSN (key=value or a `postgres://` URL), or without one the
/// PG* environment variables and libpq's defaults.
/// Pin every TCP host of `config` to an address `allow` permits (resolved now), keeping the
/// names for TLS; `Err` names the host that may not be reached.
async fn restrict(
    config: &mut tokio_postgres::Config,
    allow: &super::egress::EgressAllow,
) -> Result<(), String> {
    use tokio_postgres::config::Host;
    let ports = config.get_ports().to_vec();
    let port_of = |index: usize| ports.get(index).or(ports.first()).copied().unwrap_or(5432);
    if !config.get_hostaddrs().is_empty() {
        for (index, ip) in config.get_hostaddrs().iter().enumerate() {
            if !allow.allows_address(*ip, port_of(index)) {
                return Err(format!(
                    "hostaddr {ip} is outside EGRESS_ALLOW ({}); refused before connecting",
                    allow.text()
                ));
            }
        }
        return Ok(());
    }
    let hosts = config.get_hosts().to_vec();
    if hosts.iter().all(|host| !matches!(host, Host::Tcp(_))) {
        // Unix sockets only: nothing leaves the machine.
        return Ok(());
    }
    let mut pinned = Vec::with_capacity(hosts.len());
    for (index, host) in hosts.iter().enumerate() {
        let Host::Tcp(name) = host else {
            return Err(
                "EGRESS_ALLOW with a DSN that mixes Unix sockets and TCP hosts is not supported; list TCP hosts only"
                    .to_owned(),
            );
        };
        let found = allow.resolve(name, port_of(index)).await?;
        let Some(first) = found.first() else {
            return Err(format!("cannot resolve {name}"));
        };
        pinned.push(first.ip());
    }
    for ip in pinned {
        config.hostaddr(ip);
    }
    Ok(())
}

/// Every TCP `host:port` a DSN names (for the load-time check of `EGRESS_ALLOW`).
pub fn destinations(config: &tokio_postgres::Config) -> Vec<(String, u16)> {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let port_of = |index: usize| ports.get(index).or(ports.first()).copied().unwrap_or(5432);
    if !config.get_hostaddrs().is_empty() {
        return config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(index, ip)| (ip.to_string(), port_of(index)))
            .collect();
    }
    config
        .get_hosts()
        .iter()
        .enumerate()
        .filter_map(|(index, host)| match host {
            Host::Tcp(name) => Some((name.clone(), port_of(index))),
            Host::Unix(_) => None,
        })
        .collect()
}

pub fn postgres_config(
    dsn: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<tokio_postgres::Config, String> {
    if !dsn.trim().is_empty() {
        // The DSN is a secret: its parse error names no part of it.
        return dsn
            .parse()
            .map_err(|_| "the dsn is not a valid PostgreSQL connection string".to_owned());
    }
    let mut config = tokio_postgres::Config::new();
    let host = lookup("PGHOST").unwrap_or_else(|| "localhost".to_owned());
    config.host(&host);
    let port = match lookup("PGPORT") {
        Some(port) => port
            .trim()
            .parse()
            .map_err(|_| "PGPORT is not a port number".to_owned())?,
        None => 5432,
    };
    config.port(port);
    let user = lookup("PGUSER")
        .or_else(|| lookup("USER"))
        .unwrap_or_else(|| "postgres".to_owned());
    config.user(&user);
    config.dbname(lookup("PGDATABASE").unwrap_or(user));
    if let Some(password) = lookup("PGPASSWORD") {
        config.password(password);
    }
    if let Some(mode) = lookup("PGSSLMODE") {
        use tokio_postgres::config::SslMode;
        config.ssl_mode(match mode.trim() {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            _ => return Err("PGSSLMODE must be disable, prefer or require".to_owned()),
        });
    }
    config.application_name("mfoundry");
    Ok(config)
}

/// SQLSTATE class 22 (data exception) or 23 (integrity constraint violation): the row itself
/// is refused, and sending it again cannot help.
fn is_about_the_data(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| matches!(db.code().code().get(..2), Some("22" | "23")))
}

/// Most rows inserted in one transaction ([`PostgresOutput::deliver_batch`]); the worker
/// reads its queue 64 entries at a time, so a batch is at most that.
pub const BATCH: usize = 64;

/// One message as the values of an insert.
struct Row {
    source: String,
    id: i64,
    entry: i64,
    received_at: chrono::DateTime<chrono::Utc>,
    header: crate::outbox::HeaderFields,
    header_json: serde_json::Value,
    connector: String,
    body: Vec<u8>,
}

impl Row {
    fn of(envelope: &Envelope, format: super::format::Format) -> Result<Self, DeliveryError> {
        let header = without_nul(&envelope.record.header);
        Ok(Self {
            source: format!("{:016x}", envelope.instance_id),
            id: i64::try_from(envelope.message_id)
                .map_err(|_| DeliveryError::permanent("the message id does not fit a BIGINT"))?,
            entry: i64::try_from(envelope.seq)
                .map_err(|_| DeliveryError::permanent("the queue entry does not fit a BIGINT"))?,
            received_at: chrono::DateTime::from_timestamp_micros(
                envelope.record.received_at_micros,
            )
            .unwrap_or_default(),
            header_json: serde_json::to_value(&header).unwrap_or_default(),
            header,
            connector: envelope.connector.to_string(),
            body: format.render(envelope)?.to_vec(),
        })
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 12] {
        [
            &self.source,
            &self.id,
            &self.entry,
            &self.received_at,
            &self.header.msg_type,
            &self.header.trigger,
            &self.header.control_id,
            &self.header.sending_app,
            &self.header.sending_fac,
            &self.body,
            &self.header_json,
            &self.connector,
        ]
    }
}

/// Count an insert (or a batch) in `db.client.operation.duration`.
fn record_insert(connector: &Arc<str>, started: std::time::Instant, ok: bool) {
    crate::telemetry::metrics::record(
        &crate::telemetry::metrics::instruments().db,
        started.elapsed(),
        &[
            opentelemetry::KeyValue::new(
                crate::telemetry::metrics::CONNECTOR,
                opentelemetry::StringValue::from(Arc::clone(connector)),
            ),
            opentelemetry::KeyValue::new("db.system.name", "postgresql"),
            opentelemetry::KeyValue::new("db.operation.name", "INSERT"),
            opentelemetry::KeyValue::new(
                crate::telemetry::metrics::OUTCOME,
                if ok { "ok" } else { "error" },
            ),
        ],
    );
}

/// The header fields without NUL characters (PostgreSQL text refuses them).
fn without_nul(header: &crate::outbox::HeaderFields) -> crate::outbox::HeaderFields {
    let clean = |value: &String| value.replace('\0', "");
    crate::outbox::HeaderFields {
        msg_type: clean(&header.msg_type),
        trigger: clean(&header.trigger),
        structure: clean(&header.structure),
        control_id: clean(&header.control_id),
        sending_app: clean(&header.sending_app),
        sending_fac: clean(&header.sending_fac),
        receiving_app: clean(&header.receiving_app),
        receiving_fac: clean(&header.receiving_fac),
        version: clean(&header.version),
        processing_id: clean(&header.processing_id),
    }
}

/// A PostgreSQL error with the server's message (which names tables and columns, not values).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Finish connecting within [`CONNECT_TIMEOUT`] and drive the connection on its own task.
async fn spawn_connection<S, T>(
    connect: impl std::future::Future<
        Output = Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
    >,
) -> Result<Client, DeliveryError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            DeliveryError::transient(format!("could not connect within {CONNECT_TIMEOUT:?}"))
        })?
        .map_err(|error| {
            DeliveryError::transient(format!("could not connect: {}", describe(&error)))
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            warn!(error = %describe(&error), "PostgreSQL connection closed");
        }
    });
    Ok(client)
}
