//! The YAML configuration file: settings, connectors and validation rules.
//!
//! Parsed with serde-saphyr (strict: unknown keys are errors that name the key, the file and
//! the line; duplicate keys are errors; YAML bombs are cut off by its budget). The shape is
//! the one the single-binary Go gateways use (`connectors: [{name, type, url, filter}]`,
//! `validation.rules: [{name, expression, message}]`), so their files load unchanged; every
//! setting that has an environment variable may also be written here in lower case.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// A scalar setting written in YAML: text, number or boolean, kept as text so it is parsed
/// exactly like the environment variable of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarText;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a text, number or boolean value")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(value.to_owned()))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<ScalarText, E> {
                Ok(ScalarText(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(value.to_string()))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(value.to_string()))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(value.to_string()))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(value.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl JsonSchema for ScalarText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScalarText".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// A setting with where it was written.
pub type SpannedScalar = Option<Spanned<ScalarText>>;

/// The whole file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mfoundry configuration")]
pub struct FileConfig {
    /// MLLP listen address, Go syntax (`:2575`). Same as `LISTEN_ADDR`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub listen_addr: SpannedScalar,
    /// Most MLLP connections at once; 0 is unlimited. Same as `MAX_CONNECTIONS`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub max_connections: SpannedScalar,
    /// Same as `IDLE_TIMEOUT` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub idle_timeout: SpannedScalar,
    /// Same as `FRAME_TIMEOUT` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub frame_timeout: SpannedScalar,
    /// Same as `WRITE_TIMEOUT` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub write_timeout: SpannedScalar,
    /// Same as `KEEP_ALIVE_PERIOD` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub keep_alive_period: SpannedScalar,
    /// Same as `MAX_FRAME_SIZE` (bytes or 16MiB).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub max_frame_size: SpannedScalar,
    /// Same as `DEFAULT_CHARACTER_SET`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub default_character_set: SpannedScalar,
    /// Same as `DATA_DIR`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub data_dir: SpannedScalar,
    /// Same as `DEDUP_WINDOW` (Go duration; 0 disables).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub dedup_window: SpannedScalar,
    /// Same as `DEDUP_MAX_ENTRIES`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub dedup_max_entries: SpannedScalar,
    /// Same as `LISTENER_NAME`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub listener_name: SpannedScalar,
    /// Same as `RULES_TIME_BUDGET` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub rules_time_budget: SpannedScalar,
    /// Same as `LOG_FORMAT`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub log_format: SpannedScalar,
    /// Same as `RETENTION` (Go duration; 0 keeps everything).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub retention: SpannedScalar,
    /// Same as `ALLOWED_PEERS` (comma-separated CIDR ranges).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub allowed_peers: SpannedScalar,
    /// Same as `TLS_CERT_FILE`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub tls_cert_file: SpannedScalar,
    /// Same as `TLS_KEY_FILE`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub tls_key_file: SpannedScalar,
    /// Same as `TLS_CLIENT_CA`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub tls_client_ca: SpannedScalar,
    /// Same as `TLS_CLIENT_CRL`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub tls_client_crl: SpannedScalar,
    /// Same as `TLS_MIN_VERSION` (1.2 or 1.3).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub tls_min_version: SpannedScalar,
    /// Same as `TLS_HANDSHAKE_TIMEOUT` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub tls_handshake_timeout: SpannedScalar,
    /// Same as `REQUIRE_TLS`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub require_tls: SpannedScalar,
    /// Same as `STORE_JOURNAL`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub store_journal: SpannedScalar,
    /// Same as `STORE_VERIFY_INTERVAL` (Go duration; 0 never).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub store_verify_interval: SpannedScalar,
    /// Same as `DRAIN_TIMEOUT` (Go duration).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub drain_timeout: SpannedScalar,
    /// Same as `AUDIT_RETENTION` (Go duration; 0 keeps every record).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub audit_retention: SpannedScalar,
    /// Same as `ADMIN_ADDR` (`off` disables the admin API).
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub admin_addr: SpannedScalar,
    /// Same as `ADMIN_TOKENS_FILE`.
    #[serde(default)]
    #[schemars(with = "Option<ScalarText>")]
    pub admin_tokens_file: SpannedScalar,
    /// Client certificate identities (mTLS) and the senders (MSH-3/MSH-4) each may send as.
    /// Once set, a certificate no entry names may not send at all.
    #[serde(default)]
    pub tls_senders: Option<Vec<TlsSenderFile>>,
    /// Where messages go. Each connector has its own FIFO queue.
    #[serde(default)]
    pub connectors: Vec<ConnectorFile>,
    /// Checks every message must pass to be accepted.
    #[serde(default)]
    pub validation: ValidationFile,
}

impl FileConfig {
    /// The scalar settings that are present, by lower-case key.
    pub fn scalars(&self) -> BTreeMap<&'static str, &Spanned<ScalarText>> {
        let fields: [(&'static str, &SpannedScalar); 29] = [
            ("listen_addr", &self.listen_addr),
            ("max_connections", &self.max_connections),
            ("idle_timeout", &self.idle_timeout),
            ("frame_timeout", &self.frame_timeout),
            ("write_timeout", &self.write_timeout),
            ("keep_alive_period", &self.keep_alive_period),
            ("max_frame_size", &self.max_frame_size),
            ("default_character_set", &self.default_character_set),
            ("data_dir", &self.data_dir),
            ("dedup_window", &self.dedup_window),
            ("dedup_max_entries", &self.dedup_max_entries),
            ("listener_name", &self.listener_name),
            ("rules_time_budget", &self.rules_time_budget),
            ("log_format", &self.log_format),
            ("retention", &self.retention),
            ("allowed_peers", &self.allowed_peers),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
            ("tls_client_ca", &self.tls_client_ca),
            ("tls_client_crl", &self.tls_client_crl),
            ("tls_min_version", &self.tls_min_version),
            ("tls_handshake_timeout", &self.tls_handshake_timeout),
            ("require_tls", &self.require_tls),
            ("store_journal", &self.store_journal),
            ("store_verify_interval", &self.store_verify_interval),
            ("drain_timeout", &self.drain_timeout),
            ("audit_retention", &self.audit_retention),
            ("admin_addr", &self.admin_addr),
            ("admin_tokens_file", &self.admin_tokens_file),
        ];
        fields
            .into_iter()
            .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)))
            .collect()
    }
}

/// One `tls_senders` entry.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSenderFile {
    /// The client certificate: a subject common name, a DNS, e-mail, URI or IP alternative
    /// name, or (with an `=`) the whole subject as the audit record shows it.
    #[schemars(with = "String")]
    pub identity: Spanned<String>,
    /// The CA that must have issued it (its whole subject, as the audit record shows the
    /// issuer). Set it when `TLS_CLIENT_CA` holds several CAs: any of them can issue a
    /// certificate with any name.
    #[serde(default)]
    pub issuer: Option<String>,
    /// MSH-3.1 values it may send as; `"*"` for any.
    pub sending_applications: Vec<String>,
    /// MSH-4.1 values it may send as; `"*"` for any.
    pub sending_facilities: Vec<String>,
}

/// Kinds of connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorKind {
    /// Forward over MLLP.
    Mllp,
    /// POST to an HTTP endpoint.
    Http,
    /// Write files into a directory.
    File,
    /// Insert into a PostgreSQL table.
    Postgres,
    /// Publish to NATS JetStream.
    Nats,
}

impl ConnectorKind {
    /// The name used in the YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Mllp => "mllp",
            Self::Http => "http",
            Self::File => "file",
            Self::Postgres => "postgres",
            Self::Nats => "nats",
        }
    }
}

/// Retry policy of a connector.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// First delay after a failure (Go duration).
    #[serde(default)]
    pub initial_delay: Option<String>,
    /// Factor applied to the delay after each failure.
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Longest delay (Go duration).
    #[serde(default)]
    pub max_delay: Option<String>,
    /// Attempts before the message goes to the dead-letter queue; 0 is forever.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// One connector.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Unique name (letters, digits, `-`, `_`, `.`); it names the queue, metrics and logs.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Kind of output.
    #[serde(rename = "type")]
    pub kind: ConnectorKind,
    /// CEL expression; the connector gets the messages for which it is true. Without a filter
    /// it gets every accepted message.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub filter: Option<Spanned<String>>,
    /// `http`, `nats`: the endpoint URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `mllp`: the peer's host.
    #[serde(default)]
    pub host: Option<String>,
    /// `mllp`: the peer's port (a number, or text such as `${EMR_PORT}`).
    #[serde(default)]
    pub port: Option<ScalarText>,
    /// `file`: the directory to write into.
    #[serde(default)]
    pub directory: Option<String>,
    /// `file`: the file-name template.
    #[serde(default)]
    pub filename: Option<String>,
    /// `postgres`: the connection string.
    #[serde(default)]
    pub dsn: Option<String>,
    /// `postgres`: the table.
    #[serde(default)]
    pub table: Option<String>,
    /// `nats`: the subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// `postgres`: a file holding the connection string (a mounted secret).
    #[serde(default)]
    pub dsn_file: Option<String>,
    /// `mllp`: how long to wait for a connection (Go duration, default `10s`).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// `mllp`: how long to wait for the ACK (Go duration, default `30s`).
    #[serde(default)]
    pub ack_timeout: Option<String>,
    /// `mllp`: what an AR/CR answer means: `dead_letter` (default) or `retry`.
    #[serde(default)]
    pub on_reject: Option<String>,
    /// `http`: the method (default `POST`).
    #[serde(default)]
    pub method: Option<String>,
    /// `http`: extra request headers.
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// `http`: environment variable holding a bearer token.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// `http`: file holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    /// `http`: body format, `hl7` (default, the bytes as received) or `json`.
    #[serde(default)]
    pub format: Option<String>,
    /// `mllp`: `true` connects over TLS (implied by any `tls_*` key).
    #[serde(default)]
    pub tls: Option<bool>,
    /// `http`, `mllp`: PEM file of CA certificates trusted in addition to the system's.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// `http`, `mllp`: PEM file of the client certificate (chain) presented to the peer.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// `http`, `mllp`: PEM file of the client certificate's private key.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// `mllp`: the name the peer's certificate must carry (default: `host`).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// `http`: whole-request timeout (Go duration, default `30s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Least time between two sends to this connector (Go duration), for fragile receivers.
    #[serde(default)]
    pub min_interval: Option<String>,
    /// Start with delivery paused (messages are still accepted and queued).
    #[serde(default)]
    pub paused: Option<bool>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<RetryFile>,
}

/// The `validation` section.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationFile {
    /// Rules, evaluated in order; the first that is false rejects the message (AR).
    #[serde(default)]
    pub rules: Vec<RuleFile>,
}

/// One validation rule.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name, sent back in the ERR segment when the rule fails.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// CEL expression that must be true.
    #[schemars(with = "String")]
    pub expression: Spanned<String>,
    /// Reason sent back when the rule fails (defaults to naming the rule).
    #[serde(default)]
    pub message: Option<String>,
}

/// Parse a configuration file's text. Errors are rendered with the file name, line, column
/// and the offending lines.
pub fn parse(text: &str, file_name: &str) -> Result<FileConfig, String> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: 32, max_nodes: 100_000, max_total_scalar_bytes: 8 << 20 },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    serde_saphyr::from_str_with_options::<FileConfig>(text, options).map_err(|error| {
        error.render_with_options(serde_saphyr::render_options! {
            source_name: Some(file_name),
        })
    })
}

/// The JSON Schema (draft-07) of the file, for editors.
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<FileConfig>();
    serde_json::to_value(schema).unwrap_or_default()
}
