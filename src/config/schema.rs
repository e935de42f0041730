//! The configuration file's shape, documented for editors: `mfoundry config schema` prints
//! it as a JSON Schema (draft-07). These types only describe; [`super::file`] reads the file,
//! and a test keeps the keys it reads and the keys described here equal.

use schemars::JsonSchema;

pub use super::file::ConnectorKind;

/// A scalar setting written in YAML: text, number or boolean, kept as text so it is parsed
/// exactly like the environment variable of the same name.
#[derive(Debug)]
pub struct ScalarText(pub String);

impl JsonSchema for ScalarText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScalarText".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// A setting, optional.
pub type SpannedScalar = Option<ScalarText>;

/// The whole file.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(title = "mfoundry configuration")]
pub struct FileConfig {
    /// MLLP listen address, Go syntax (`:2575`). Same as `LISTEN_ADDR`.
    #[schemars(with = "Option<ScalarText>")]
    pub listen_addr: SpannedScalar,
    /// Most MLLP connections at once; 0 is unlimited. Same as `MAX_CONNECTIONS`.
    #[schemars(with = "Option<ScalarText>")]
    pub max_connections: SpannedScalar,
    /// Most MLLP connections at once from one IP address; 0 (default) is no per-peer limit.
    /// Same as `MAX_CONNECTIONS_PER_PEER`.
    #[schemars(with = "Option<ScalarText>")]
    pub max_connections_per_peer: SpannedScalar,
    /// Same as `IDLE_TIMEOUT` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub idle_timeout: SpannedScalar,
    /// Same as `FRAME_TIMEOUT` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub frame_timeout: SpannedScalar,
    /// Same as `WRITE_TIMEOUT` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub write_timeout: SpannedScalar,
    /// Same as `KEEP_ALIVE_PERIOD` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub keep_alive_period: SpannedScalar,
    /// Same as `MAX_FRAME_SIZE` (bytes or 16MiB).
    #[schemars(with = "Option<ScalarText>")]
    pub max_frame_size: SpannedScalar,
    /// Same as `MAX_FRAME_MEMORY` (bytes or 256MiB).
    #[schemars(with = "Option<ScalarText>")]
    pub max_frame_memory: SpannedScalar,
    /// Same as `BATCH_ACK` (per_message or batch).
    #[schemars(with = "Option<ScalarText>")]
    pub batch_ack: SpannedScalar,
    /// Same as `BATCH_COUNT_MISMATCH` (reject or accept).
    #[schemars(with = "Option<ScalarText>")]
    pub batch_count_mismatch: SpannedScalar,
    /// Same as `DEFAULT_CHARACTER_SET`.
    #[schemars(with = "Option<ScalarText>")]
    pub default_character_set: SpannedScalar,
    /// Same as `DATA_DIR`.
    #[schemars(with = "Option<ScalarText>")]
    pub data_dir: SpannedScalar,
    /// Same as `DEDUP_WINDOW` (Go duration; 0 disables).
    #[schemars(with = "Option<ScalarText>")]
    pub dedup_window: SpannedScalar,
    /// Same as `DEDUP_MAX_ENTRIES`.
    #[schemars(with = "Option<ScalarText>")]
    pub dedup_max_entries: SpannedScalar,
    /// Same as `LISTENER_NAME`.
    #[schemars(with = "Option<ScalarText>")]
    pub listener_name: SpannedScalar,
    /// Same as `RULES_TIME_BUDGET` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub rules_time_budget: SpannedScalar,
    /// Same as `LOG_FORMAT`.
    #[schemars(with = "Option<ScalarText>")]
    pub log_format: SpannedScalar,
    /// Same as `RETENTION` (Go duration; 0 keeps everything).
    #[schemars(with = "Option<ScalarText>")]
    pub retention: SpannedScalar,
    /// Same as `ALLOWED_PEERS` (comma-separated CIDR ranges).
    #[schemars(with = "Option<ScalarText>")]
    pub allowed_peers: SpannedScalar,
    /// Same as `TLS_CERT_FILE`.
    #[schemars(with = "Option<ScalarText>")]
    pub tls_cert_file: SpannedScalar,
    /// Same as `TLS_KEY_FILE`.
    #[schemars(with = "Option<ScalarText>")]
    pub tls_key_file: SpannedScalar,
    /// Same as `TLS_CLIENT_CA`.
    #[schemars(with = "Option<ScalarText>")]
    pub tls_client_ca: SpannedScalar,
    /// Same as `TLS_CLIENT_CRL`.
    #[schemars(with = "Option<ScalarText>")]
    pub tls_client_crl: SpannedScalar,
    /// Same as `TLS_MIN_VERSION` (1.2 or 1.3).
    #[schemars(with = "Option<ScalarText>")]
    pub tls_min_version: SpannedScalar,
    /// Same as `TLS_HANDSHAKE_TIMEOUT` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub tls_handshake_timeout: SpannedScalar,
    /// Same as `REQUIRE_TLS`.
    #[schemars(with = "Option<ScalarText>")]
    pub require_tls: SpannedScalar,
    /// Same as `STORE_JOURNAL`.
    #[schemars(with = "Option<ScalarText>")]
    pub store_journal: SpannedScalar,
    /// Same as `STORE_VERIFY_INTERVAL` (Go duration; 0 never).
    #[schemars(with = "Option<ScalarText>")]
    pub store_verify_interval: SpannedScalar,
    /// Same as `PATIENT_INDEX`.
    #[schemars(with = "Option<ScalarText>")]
    pub patient_index: SpannedScalar,
    /// Same as `DRAIN_TIMEOUT` (Go duration).
    #[schemars(with = "Option<ScalarText>")]
    pub drain_timeout: SpannedScalar,
    /// Same as `AUDIT_RETENTION` (Go duration; 0 keeps every record).
    #[schemars(with = "Option<ScalarText>")]
    pub audit_retention: SpannedScalar,
    /// Same as `ADMIN_ADDR` (`off` disables the admin API).
    #[schemars(with = "Option<ScalarText>")]
    pub admin_addr: SpannedScalar,
    /// Same as `METRICS_ADDR` (`off`, the default, serves no Prometheus endpoint).
    #[schemars(with = "Option<ScalarText>")]
    pub metrics_addr: SpannedScalar,
    /// Same as `ADMIN_TOKENS_FILE`.
    #[schemars(with = "Option<ScalarText>")]
    pub admin_tokens_file: SpannedScalar,
    /// Same as `ADMIN_TLS_CERT_FILE`.
    #[schemars(with = "Option<ScalarText>")]
    pub admin_tls_cert_file: SpannedScalar,
    /// Same as `ADMIN_TLS_KEY_FILE`.
    #[schemars(with = "Option<ScalarText>")]
    pub admin_tls_key_file: SpannedScalar,
    /// Same as `CONSOLE_IDLE_TIMEOUT` (Go duration, at least 1m).
    #[schemars(with = "Option<ScalarText>")]
    pub console_idle_timeout: SpannedScalar,
    /// Same as `EGRESS_ALLOW` (comma-separated host names, host:port pairs, CIDR ranges).
    #[schemars(with = "Option<ScalarText>")]
    pub egress_allow: SpannedScalar,
    /// Same as `ENCRYPTION_KEY_FILE`.
    #[schemars(with = "Option<ScalarText>")]
    pub encryption_key_file: SpannedScalar,
    /// Same as `ENCRYPTION_OLD_KEY_FILES` (comma-separated paths).
    #[schemars(with = "Option<ScalarText>")]
    pub encryption_old_key_files: SpannedScalar,
    /// Client certificate identities (mTLS) and the senders (MSH-3/MSH-4) each may send as.
    /// Once set, a certificate no entry names may not send at all.
    pub tls_senders: Option<Vec<TlsSenderFile>>,
    /// Where messages go. Each connector has its own FIFO queue.
    pub connectors: Vec<ConnectorFile>,
    /// Checks every message must pass to be accepted.
    pub validation: ValidationFile,
    /// Code tables for `map` steps, by name.
    pub tables: Option<std::collections::BTreeMap<String, TableFile>>,
    /// Several inbound listeners, each with its own address, TLS, limits, rules and
    /// `tls_senders`; without it, the settings describe the one MLLP listener.
    pub listeners: Option<Vec<ListenerFile>>,
}

/// One `listeners:` entry.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ListenerFile {
    /// Unique name: `inbound` in CEL, the metrics' and stats' listener.
    #[schemars(with = "String")]
    pub name: String,
    /// `mllp`, `http`, `directory` or `dicom`.
    #[schemars(rename = "type")]
    #[schemars(with = "String")]
    pub kind: String,
    /// As `LISTEN_ADDR`.
    #[schemars(with = "String")]
    pub listen_addr: String,
    /// This listener's TLS.
    pub tls: Option<ListenerTlsFile>,
    /// Names of `validation.rules` it applies; default every rule.
    pub rules: Option<Vec<String>>,
    /// As the top-level `tls_senders`, for this listener's client certificates.
    pub tls_senders: Option<Vec<TlsSenderFile>>,
    /// http: the senders' bearer tokens (`<id> <role> <sha256>` lines, as `mfoundry token
    /// create` prints them).
    pub tokens_file: Option<String>,
    /// As `MAX_CONNECTIONS`.
    #[schemars(with = "Option<ScalarText>")]
    pub max_connections: SpannedScalar,
    /// As `MAX_CONNECTIONS_PER_PEER`.
    #[schemars(with = "Option<ScalarText>")]
    pub max_connections_per_peer: SpannedScalar,
    /// As `IDLE_TIMEOUT`.
    #[schemars(with = "Option<ScalarText>")]
    pub idle_timeout: SpannedScalar,
    /// As `FRAME_TIMEOUT`.
    #[schemars(with = "Option<ScalarText>")]
    pub frame_timeout: SpannedScalar,
    /// As `WRITE_TIMEOUT`.
    #[schemars(with = "Option<ScalarText>")]
    pub write_timeout: SpannedScalar,
    /// As `KEEP_ALIVE_PERIOD`.
    #[schemars(with = "Option<ScalarText>")]
    pub keep_alive_period: SpannedScalar,
    /// As `MAX_FRAME_SIZE`.
    #[schemars(with = "Option<ScalarText>")]
    pub max_frame_size: SpannedScalar,
    /// As `MAX_FRAME_MEMORY` (this listener's budget).
    #[schemars(with = "Option<ScalarText>")]
    pub max_frame_memory: SpannedScalar,
    /// As `ALLOWED_PEERS`.
    #[schemars(with = "Option<ScalarText>")]
    pub allowed_peers: SpannedScalar,
    /// As `REQUIRE_TLS`.
    #[schemars(with = "Option<ScalarText>")]
    pub require_tls: SpannedScalar,
    /// As `BATCH_ACK`.
    #[schemars(with = "Option<ScalarText>")]
    pub batch_ack: SpannedScalar,
    /// As `BATCH_COUNT_MISMATCH`.
    #[schemars(with = "Option<ScalarText>")]
    pub batch_count_mismatch: SpannedScalar,
    /// directory: the folder read.
    pub path: Option<String>,
    /// directory: the file names read (`*` any run of characters, `?` one); default `*`.
    pub pattern: Option<String>,
    /// directory: the folder stored files move to (or `delete: true`).
    pub done: Option<String>,
    /// directory: delete stored files instead of moving them.
    #[schemars(with = "Option<ScalarText>")]
    pub delete: SpannedScalar,
    /// directory: where files that cannot be taken go, with a reason file; default
    /// `<path>/error`.
    pub error: Option<String>,
    /// directory: how long a file's size and time must stay the same before it is read
    /// (Go duration; default 2s).
    #[schemars(with = "Option<ScalarText>")]
    pub settle_time: SpannedScalar,
    /// directory: how often the folder is listed (Go duration; default 1s).
    #[schemars(with = "Option<ScalarText>")]
    pub poll_interval: SpannedScalar,
    /// directory: larger files go to the error folder unread (default 64MiB).
    #[schemars(with = "Option<ScalarText>")]
    pub max_file_size: SpannedScalar,
    /// dicom: the called AE title it answers to (default `MFOUNDRY`).
    pub ae_title: Option<String>,
    /// dicom: the calling AE titles it accepts; default any.
    pub allowed_callers: Option<Vec<String>>,
    /// dicom: the storage SOP class UIDs it accepts (Verification always); default every
    /// standard Storage SOP class (under 1.2.840.10008.5.1.4.1.1.).
    pub sop_classes: Option<Vec<String>>,
    /// dicom: the largest object's data set (default 512MiB).
    #[schemars(with = "Option<ScalarText>")]
    pub max_object_size: SpannedScalar,
    /// dicom: objects up to this are held in memory and stored in the store; larger ones are
    /// spooled to files as they arrive (default 1MiB, at least 64KiB).
    #[schemars(with = "Option<ScalarText>")]
    pub inline_object_size: SpannedScalar,
    /// dicom: the longest PDU it receives, 4KiB to 4MiB (default 64KiB).
    #[schemars(with = "Option<ScalarText>")]
    pub max_pdu_size: SpannedScalar,
}

/// A listener's `tls:`.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ListenerTlsFile {
    /// As `TLS_CERT_FILE`.
    pub cert_file: Option<String>,
    /// As `TLS_KEY_FILE`.
    pub key_file: Option<String>,
    /// As `TLS_CLIENT_CA` (mTLS).
    pub client_ca: Option<String>,
    /// As `TLS_CLIENT_CRL`.
    pub client_crl: Option<String>,
    /// As `TLS_MIN_VERSION`.
    #[schemars(with = "Option<ScalarText>")]
    pub min_version: SpannedScalar,
    /// As `TLS_HANDSHAKE_TIMEOUT`.
    #[schemars(with = "Option<ScalarText>")]
    pub handshake_timeout: SpannedScalar,
}

/// A code table: `file` or `values`, and an optional `default`.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TableFile {
    /// A CSV file of two columns with a header line (`from,to`), UTF-8; relative to the
    /// configuration file's directory.
    pub file: Option<String>,
    /// The rows written here: code → value.
    pub values: Option<std::collections::BTreeMap<String, String>>,
    /// The value for codes not listed; without it such a code fails the step (the copy
    /// goes to the connector's dead-letter queue).
    pub default: Option<String>,
}

/// One transform step: one action (`set`, `copy`, `map`, `delete`) and an optional `when`.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StepFile {
    /// A field path (`MSH-5`, `OBX[*]-3.1`) to write the `value` at.
    pub set: Option<String>,
    /// For `set`: a CEL expression giving a string (`'"EMR"'`, `'field("PV1-3.1") + "-N"'`).
    pub value: Option<String>,
    /// Copy one place to another, escapes and structure kept.
    pub copy: Option<CopyFile>,
    /// Replace each value at a path by its row in a table.
    pub map: Option<MapFile>,
    /// A segment (`NTE`: every one; `NTE[2]`: the second) to remove, or a field to empty.
    pub delete: Option<String>,
    /// A CEL condition on the copy so far; the step runs only when it is true.
    pub when: Option<String>,
}

/// `copy: {from, to}`.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CopyFile {
    /// One place (`PID-3[1].1`).
    #[schemars(with = "String")]
    pub from: String,
    /// Where to write (`PID-2`, `[*]` allowed).
    #[schemars(with = "String")]
    pub to: String,
}

/// `map: {field, table}`.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MapFile {
    /// The places to map (`OBX[*]-3.1`).
    #[schemars(with = "String")]
    pub field: String,
    /// A table under `tables:`.
    #[schemars(with = "String")]
    pub table: String,
}

/// One `tls_senders` entry.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TlsSenderFile {
    /// The client certificate: a subject common name, a DNS, e-mail, URI or IP alternative
    /// name, or (with an `=`) the whole subject as the audit record shows it.
    #[schemars(with = "String")]
    pub identity: String,
    /// The CA that must have issued it (its whole subject, as the audit record shows the
    /// issuer). Set it when `TLS_CLIENT_CA` holds several CAs: any of them can issue a
    /// certificate with any name.
    pub issuer: Option<String>,
    /// MSH-3.1 values it may send as; `"*"` for any.
    pub sending_applications: Vec<String>,
    /// MSH-4.1 values it may send as; `"*"` for any.
    pub sending_facilities: Vec<String>,
}

/// Retry policy of a connector.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RetryFile {
    /// First delay after a failure (Go duration).
    pub initial_delay: Option<String>,
    /// Factor applied to the delay after each failure.
    pub multiplier: Option<f64>,
    /// Longest delay (Go duration).
    pub max_delay: Option<String>,
    /// Attempts before the message goes to the dead-letter queue; 0 is forever.
    pub max_attempts: Option<u32>,
}

/// One connector.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Unique name (letters, digits, `-`, `_`, `.`); it names the queue, metrics and logs.
    #[schemars(with = "String")]
    pub name: String,
    /// Kind of output.
    #[schemars(rename = "type")]
    pub kind: ConnectorKind,
    /// CEL expression; the connector gets the messages for which it is true. Without a filter
    /// it gets every accepted message.
    #[schemars(with = "Option<String>")]
    pub filter: Option<String>,
    /// `http`, `nats`: the endpoint URL.
    pub url: Option<String>,
    /// `mllp`: the peer's host.
    pub host: Option<String>,
    /// `mllp`: the peer's port (a number, or text such as `${EMR_PORT}`).
    pub port: Option<ScalarText>,
    /// `file`: the directory to write into.
    pub directory: Option<String>,
    /// `file`: the file-name template.
    pub filename: Option<String>,
    /// `postgres`: the connection string.
    pub dsn: Option<String>,
    /// `postgres`: the table.
    pub table: Option<String>,
    /// `nats`: the subject, a template with the file output's placeholders
    /// (`hl7.{msg_type}.{trigger}`).
    pub subject: Option<String>,
    /// `nats`: the JetStream stream that must take the subject (checked when connecting).
    pub stream: Option<String>,
    /// `nats`: a `.creds` file (JWT and NKey seed).
    pub creds_file: Option<String>,
    /// `nats`: a file holding an NKey seed.
    pub nkey_file: Option<String>,
    /// `nats`: a token.
    pub token: Option<String>,
    /// `nats`: a user (with `password`).
    pub user: Option<String>,
    /// `nats`: the user's password.
    pub password: Option<String>,
    /// `postgres`: a file holding the connection string (a mounted secret).
    pub dsn_file: Option<String>,
    /// `mllp`: how long to wait for a connection (Go duration, default `10s`).
    pub connect_timeout: Option<String>,
    /// `mllp`: how long to wait for the ACK (Go duration, default `30s`).
    pub ack_timeout: Option<String>,
    /// `mllp`: what an AR/CR answer means: `dead_letter` (default) or `retry`.
    pub on_reject: Option<String>,
    /// dicom: the peer's (called) AE title.
    pub ae_title: Option<String>,
    /// dicom: mfoundry's (calling) AE title towards the peer; default `MFOUNDRY`.
    pub calling_ae_title: Option<String>,
    /// dicom: how long to wait for the association's acceptance and each C-STORE response
    /// (Go duration; default 60s).
    pub response_timeout: Option<String>,
    /// `http`: the method (default `POST`).
    pub method: Option<String>,
    /// `http`: extra request headers.
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// `http`: environment variable holding a bearer token.
    pub bearer_token_env: Option<String>,
    /// `http`: file holding a bearer token.
    pub bearer_token_file: Option<String>,
    /// `http`, `file`, `postgres`: what is sent of the connector's copy, `hl7` (default, the
    /// bytes), `json` (mfoundry's JSON shape) or `fhir` (a FHIR R4 transaction Bundle);
    /// `mllp`: `hl7` only.
    pub format: Option<String>,
    /// `mllp`: `true` connects over TLS (implied by any `tls_*` key).
    pub tls: Option<bool>,
    /// `http`, `mllp`: PEM file of CA certificates trusted in addition to the system's.
    pub tls_ca_file: Option<String>,
    /// `http`, `mllp`: PEM file of the client certificate (chain) presented to the peer.
    pub tls_cert_file: Option<String>,
    /// `http`, `mllp`: PEM file of the client certificate's private key.
    pub tls_key_file: Option<String>,
    /// `mllp`: the name the peer's certificate must carry (default: `host`).
    pub tls_server_name: Option<String>,
    /// `http`: whole-request timeout (Go duration, default `30s`).
    pub timeout: Option<String>,
    /// Least time between two sends to this connector (Go duration), for fragile receivers.
    pub min_interval: Option<String>,
    /// Start with delivery paused (messages are still accepted and queued).
    pub paused: Option<bool>,
    /// CEL expression giving a string: the key messages are delivered in order by (e.g.
    /// `pid.id`); different keys go in parallel (keyed lanes). Computed once at intake.
    pub order_by: Option<String>,
    /// With `order_by`: deliveries at once, each with its own connection (1 to 256, default 1).
    #[schemars(with = "Option<ScalarText>")]
    pub lanes: SpannedScalar,
    /// With `order_by`: `continue` (a dead letter releases its key, the default) or
    /// `hold_key` (its key's later messages wait until it is replayed or purged).
    pub on_dead_letter: Option<String>,
    /// Steps that rewrite this connector's copy, in order (the received bytes stay as
    /// received).
    pub transform: Option<Vec<StepFile>>,
    /// Retry policy.
    pub retry: Option<RetryFile>,
}

/// The `validation` section.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ValidationFile {
    /// Rules, evaluated in order; the first that is false rejects the message (AR).
    pub rules: Vec<RuleFile>,
}

/// One validation rule.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name, sent back in the ERR segment when the rule fails.
    #[schemars(with = "String")]
    pub name: String,
    /// CEL expression that must be true.
    #[schemars(with = "String")]
    pub expression: String,
    /// Reason sent back when the rule fails (defaults to naming the rule).
    pub message: Option<String>,
}

/// The JSON Schema (draft-07) of the file, for editors.
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<FileConfig>();
    serde_json::to_value(schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::connectors::{RETRY_KEYS, keys};
    use crate::config::file::{
        COPY_KEYS, MAP_KEYS, RULE_KEYS, SENDER_KEYS, STEP_KEYS, TABLE_KEYS, top_keys,
    };

    fn properties(schema: &serde_json::Value) -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .map(|properties| properties.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn set<'a>(keys: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        keys.into_iter().map(str::to_owned).collect()
    }

    /// The keys the reader takes are the keys the schema documents, section by section: a
    /// key added to one and not the other fails here.
    #[test]
    fn the_schema_documents_exactly_the_keys_that_are_read() {
        let schema = schema();
        let definition = |name: &str| schema["definitions"][name].clone();
        assert_eq!(properties(&schema), top_keys().into_iter().collect());
        let connector_keys: BTreeSet<String> = ConnectorKind::ALL
            .into_iter()
            .flat_map(keys)
            .map(str::to_owned)
            .collect();
        assert_eq!(properties(&definition("ConnectorFile")), connector_keys);
        assert_eq!(properties(&definition("RetryFile")), set(RETRY_KEYS));
        assert_eq!(properties(&definition("TlsSenderFile")), set(SENDER_KEYS));
        assert_eq!(properties(&definition("RuleFile")), set(RULE_KEYS));
        assert_eq!(properties(&definition("ValidationFile")), set(["rules"]));
        assert_eq!(properties(&definition("TableFile")), set(TABLE_KEYS));
        assert_eq!(properties(&definition("StepFile")), set(STEP_KEYS));
        assert_eq!(properties(&definition("CopyFile")), set(COPY_KEYS));
        assert_eq!(properties(&definition("MapFile")), set(MAP_KEYS));
        assert_eq!(
            properties(&definition("ListenerFile")),
            set(super::super::listeners::entry_keys())
        );
        assert_eq!(
            properties(&definition("ListenerTlsFile")),
            set(super::super::listeners::TLS_KEYS.map(|(key, _)| key))
        );
    }
}
