//! Configuration: built-in defaults < YAML file < environment variables.
//!
//! Only the names listed in [`ENV_VARS`] are read, so variables Kubernetes injects
//! (`<SERVICE>_PORT` …) never disturb startup. The YAML file ([`file`]) holds connectors,
//! validation rules and, in lower case, any setting that has an environment variable; layers
//! are merged with figment. Loading is pure apart from reading the file: every problem is
//! collected (not just the first) with where it came from, and the CLI prints them all and
//! exits 64 before any port is bound. Every variable and key is documented in
//! `docs/configuration.md`; a test keeps that table and [`ENV_VARS`] equal.

pub mod connectors;
pub mod file;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;

use crate::units::{Cidr, parse_duration, parse_listen_address, parse_size};
pub use file::{ConnectorFile, ConnectorKind, FileConfig};

use crate::hl7::Charset;
pub use crate::mllp::ListenerSettings;
use crate::rules::{ExpressionSource, FilterSpec, Origin, RuleSet, RuleSpec};
pub use crate::telemetry::LogFormat;

/// One environment variable mfoundry reads.
#[derive(Clone, Copy, Debug)]
pub struct EnvVar {
    /// The variable's name.
    pub name: &'static str,
    /// Its default, as text.
    pub default: &'static str,
}

/// Every environment variable mfoundry reads, with its default.
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        name: "CONFIG_FILE",
        default: "mfoundry.yaml",
    },
    EnvVar {
        name: "LISTEN_ADDR",
        default: ":2575",
    },
    EnvVar {
        name: "LISTENER_NAME",
        default: "mllp",
    },
    EnvVar {
        name: "MAX_CONNECTIONS",
        default: "256",
    },
    EnvVar {
        name: "IDLE_TIMEOUT",
        default: "30s",
    },
    EnvVar {
        name: "FRAME_TIMEOUT",
        default: "60s",
    },
    EnvVar {
        name: "WRITE_TIMEOUT",
        default: "5s",
    },
    EnvVar {
        name: "KEEP_ALIVE_PERIOD",
        default: "60s",
    },
    EnvVar {
        name: "MAX_FRAME_SIZE",
        default: "16MiB",
    },
    EnvVar {
        name: "DEFAULT_CHARACTER_SET",
        default: "UNICODE UTF-8",
    },
    EnvVar {
        name: "DATA_DIR",
        default: "./data",
    },
    EnvVar {
        name: "STORE_JOURNAL",
        default: "true",
    },
    EnvVar {
        name: "STORE_VERIFY_INTERVAL",
        default: "24h",
    },
    EnvVar {
        name: "DEDUP_WINDOW",
        default: "1h",
    },
    EnvVar {
        name: "DEDUP_MAX_ENTRIES",
        default: "100000",
    },
    EnvVar {
        name: "RULES_TIME_BUDGET",
        default: "100ms",
    },
    EnvVar {
        name: "RETENTION",
        default: "168h",
    },
    EnvVar {
        name: "ALLOWED_PEERS",
        default: "",
    },
    EnvVar {
        name: "TLS_CERT_FILE",
        default: "",
    },
    EnvVar {
        name: "TLS_KEY_FILE",
        default: "",
    },
    EnvVar {
        name: "TLS_CLIENT_CA",
        default: "",
    },
    EnvVar {
        name: "TLS_CLIENT_CRL",
        default: "",
    },
    EnvVar {
        name: "TLS_MIN_VERSION",
        default: "1.2",
    },
    EnvVar {
        name: "TLS_HANDSHAKE_TIMEOUT",
        default: "10s",
    },
    EnvVar {
        name: "REQUIRE_TLS",
        default: "false",
    },
    EnvVar {
        name: "DRAIN_TIMEOUT",
        default: "30s",
    },
    EnvVar {
        name: "AUDIT_RETENTION",
        default: "2160h",
    },
    EnvVar {
        name: "ADMIN_ADDR",
        default: "127.0.0.1:8080",
    },
    EnvVar {
        name: "ADMIN_TOKENS_FILE",
        default: "",
    },
    EnvVar {
        name: "LOG_FORMAT",
        default: "text",
    },
    EnvVar {
        name: "RUST_LOG",
        default: "info",
    },
];

/// Variables that have no YAML key.
const ENV_ONLY: &[&str] = &["CONFIG_FILE", "RUST_LOG"];

/// Largest `MAX_CONNECTIONS` accepted (more would exceed what a semaphore can hold).
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Every scalar setting, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The MLLP listener.
    pub listener: ListenerSettings,
    /// `DEFAULT_CHARACTER_SET`: used for messages whose MSH-18 is empty or unknown.
    pub default_charset: Charset,
    /// `DATA_DIR`: where the outbox file lives.
    pub data_dir: PathBuf,
    /// `DEDUP_WINDOW`: how long an accepted frame is remembered; `None` disables.
    pub dedup_window: Option<Duration>,
    /// `DEDUP_MAX_ENTRIES`: most accepted frames remembered at once.
    pub dedup_max_entries: usize,
    /// `RULES_TIME_BUDGET`: the most time rules and filters may spend on one message.
    pub rules_time_budget: Duration,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RETENTION`: delivered and filtered messages older than this are removed; `None` keeps
    /// everything.
    pub retention: Option<Duration>,
    /// Inbound TLS, when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set.
    pub tls: Option<crate::tls::TlsSettings>,
    /// `REQUIRE_TLS`: refuse to start a listener without TLS.
    pub require_tls: bool,
    /// `STORE_JOURNAL`: commit through a sequential journal next to the data file.
    pub store_journal: bool,
    /// `STORE_VERIFY_INTERVAL`: how often every stored record is read and checked in the
    /// background; `None` never.
    pub store_verify_interval: Option<Duration>,
    /// `DRAIN_TIMEOUT`: the longest a SIGTERM/SIGINT drain may take.
    pub drain_timeout: Duration,
    /// `AUDIT_RETENTION`: audit records older than this (and than `RETENTION`) are removed;
    /// `None` keeps them all.
    pub audit_retention: Option<Duration>,
    /// `ADMIN_ADDR`: where the admin HTTP API listens; `None` (`off`) disables it.
    pub admin_addr: Option<String>,
    /// `ADMIN_TOKENS_FILE`: the token hashes; `None` uses (and creates) `DATA_DIR/admin.token`.
    pub admin_tokens_file: Option<PathBuf>,
}

/// One configuration problem: what, where, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The setting's environment name, when the problem is about one setting.
    pub name: String,
    /// Where: `IDLE_TIMEOUT="30"`, or `mfoundry.yaml:4:15: idle_timeout="30"`; may be empty.
    pub subject: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subject.is_empty() {
            write!(formatter, "{}", self.problem)
        } else {
            write!(formatter, "{}: {}", self.subject, self.problem)
        }
    }
}

/// Every problem found while loading the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    fn one(problem: String) -> Self {
        Self(vec![ConfigProblem {
            name: String::new(),
            subject: String::new(),
            problem,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "invalid configuration:")?;
        for problem in &self.0 {
            let text = problem.to_string();
            for (index, line) in text.lines().enumerate() {
                let marker = if index == 0 { "  - " } else { "    " };
                writeln!(formatter, "{marker}{line}")?;
            }
        }
        Ok(())
    }
}

/// Where a setting's value came from.
#[derive(Clone, Debug)]
enum Source {
    Default,
    Environment,
    File {
        file: String,
        line: u64,
        column: u64,
    },
}

/// Collects problems while reading settings one by one.
struct Reader<'a> {
    layers: &'a Layers<'a>,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    fn read<T>(
        &mut self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
        fallback: T,
    ) -> T {
        let key = name.to_ascii_lowercase();
        let value = self.layers.values.get(&key).cloned().unwrap_or_default();
        match parse(&value) {
            Ok(parsed) => parsed,
            Err(problem) => {
                let subject = match self.layers.source(name) {
                    Source::File { file, line, column } => {
                        format!("{file}:{line}:{column}: {key}={value:?}")
                    }
                    Source::Environment | Source::Default => format!("{name}={value:?}"),
                };
                self.problems.push(ConfigProblem {
                    name: name.to_owned(),
                    subject,
                    problem,
                });
                fallback
            }
        }
    }
}

fn optional_duration(text: &str) -> Result<Option<Duration>, String> {
    let duration = parse_duration(text).map_err(|problem| {
        format!("{problem}; expected a Go duration such as 30s, 5m or 0 for none")
    })?;
    Ok((!duration.is_zero()).then_some(duration))
}

impl Settings {
    /// Read the settings from the environment alone (no file).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let layers = merge_layers(None, "", lookup)?;
        Self::from_layers(&layers)
    }

    fn from_layers(layers: &Layers<'_>) -> Result<Self, ConfigErrors> {
        let mut reader = Reader {
            layers,
            problems: Vec::new(),
        };
        let listen_addr = reader.read(
            "LISTEN_ADDR",
            |text| parse_listen_address(text).map(|_| text.trim().to_owned()),
            String::new(),
        );
        let name = reader.read("LISTENER_NAME", parse_name, String::new());
        let max_connections = reader.read(
            "MAX_CONNECTIONS",
            |text| match text.trim().parse::<usize>() {
                Ok(0) => Ok(None),
                Ok(limit) if limit <= MAX_CONNECTIONS_LIMIT => Ok(Some(limit)),
                _ => Err(format!(
                    "expected a whole number of connections up to {MAX_CONNECTIONS_LIMIT}, 0 for unlimited"
                )),
            },
            None,
        );
        let idle_timeout = reader.read("IDLE_TIMEOUT", optional_duration, None);
        let frame_timeout = reader.read("FRAME_TIMEOUT", optional_duration, None);
        let write_timeout = reader.read("WRITE_TIMEOUT", optional_duration, None);
        let keep_alive_period = reader.read("KEEP_ALIVE_PERIOD", optional_duration, None);
        let max_frame_size = reader.read(
            "MAX_FRAME_SIZE",
            |text| {
                let size = parse_size(text)?;
                if !(1024..=1 << 30).contains(&size) {
                    return Err("expected a size from 1KiB to 1GiB, e.g. 16MiB".to_owned());
                }
                usize::try_from(size).map_err(|_| "size out of range".to_owned())
            },
            0,
        );
        let default_charset = reader.read(
            "DEFAULT_CHARACTER_SET",
            |text| {
                Charset::from_name(text).ok_or_else(|| {
                    "unknown character set; use an HL7 table 0211 name such as UNICODE UTF-8 or 8859/1"
                        .to_owned()
                })
            },
            Charset::UTF_8,
        );
        let data_dir = reader.read(
            "DATA_DIR",
            |text| {
                if text.trim().is_empty() {
                    Err("expected a directory, e.g. ./data or /var/lib/mfoundry".to_owned())
                } else {
                    Ok(PathBuf::from(text.trim()))
                }
            },
            PathBuf::new(),
        );
        let dedup_window = reader.read("DEDUP_WINDOW", optional_duration, None);
        let dedup_max_entries = reader.read(
            "DEDUP_MAX_ENTRIES",
            |text| match text.trim().parse::<usize>() {
                Ok(count) if (1..=100_000_000).contains(&count) => Ok(count),
                _ => Err("expected a whole number from 1 to 100000000".to_owned()),
            },
            1,
        );
        let rules_time_budget = reader.read(
            "RULES_TIME_BUDGET",
            |text| {
                optional_duration(text)?
                    .ok_or_else(|| "the budget must be more than 0, e.g. 10ms".to_owned())
            },
            Duration::ZERO,
        );
        let log_format = reader.read(
            "LOG_FORMAT",
            |text| match text.trim().to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected text or json".to_owned()),
            },
            LogFormat::Text,
        );
        let retention = reader.read("RETENTION", optional_duration, None);
        let store_verify_interval = reader.read("STORE_VERIFY_INTERVAL", optional_duration, None);
        let audit_retention = reader.read("AUDIT_RETENTION", optional_duration, None);
        let allowed_peers = reader.read(
            "ALLOWED_PEERS",
            |text| {
                let entries: Vec<&str> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|entry| !entry.is_empty())
                    .collect();
                if entries.is_empty() {
                    return Ok(None);
                }
                entries
                    .into_iter()
                    .map(Cidr::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            },
            None,
        );
        let path = |text: &str| Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim())));
        let cert_file = reader.read("TLS_CERT_FILE", path, None);
        let key_file = reader.read("TLS_KEY_FILE", path, None);
        let client_ca = reader.read("TLS_CLIENT_CA", path, None);
        let client_crl = reader.read("TLS_CLIENT_CRL", path, None);
        let min_version = reader.read(
            "TLS_MIN_VERSION",
            |text| match text.trim() {
                "1.2" => Ok(crate::tls::TlsVersion::V1_2),
                "1.3" => Ok(crate::tls::TlsVersion::V1_3),
                _ => Err("expected 1.2 or 1.3 (older versions are never accepted)".to_owned()),
            },
            crate::tls::TlsVersion::V1_2,
        );
        let handshake_timeout = reader.read(
            "TLS_HANDSHAKE_TIMEOUT",
            |text| {
                optional_duration(text)?
                    .ok_or_else(|| "the handshake needs some time, e.g. 10s".to_owned())
            },
            Duration::ZERO,
        );
        // A value that is set but empty is false; a variable that is not set at all takes
        // the default.
        let boolean = |text: &str| match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        };
        let require_tls = reader.read("REQUIRE_TLS", boolean, false);
        let store_journal = reader.read("STORE_JOURNAL", boolean, true);
        let tls = match (cert_file, key_file) {
            (Some(cert_file), Some(key_file)) => Some(crate::tls::TlsSettings {
                cert_file,
                key_file,
                client_ca,
                client_crl,
                min_version,
                handshake_timeout,
            }),
            (None, None) if client_ca.is_some() => {
                reader.problems.push(ConfigProblem {
                    name: "TLS_CLIENT_CA".to_owned(),
                    subject: String::new(),
                    problem: "TLS_CLIENT_CA is set but TLS is off; set TLS_CERT_FILE and TLS_KEY_FILE too".to_owned(),
                });
                None
            }
            (None, None) => None,
            _ => {
                reader.problems.push(ConfigProblem {
                    name: "TLS_CERT_FILE".to_owned(),
                    subject: String::new(),
                    problem: "TLS needs both TLS_CERT_FILE and TLS_KEY_FILE; only one is set"
                        .to_owned(),
                });
                None
            }
        };
        if let Some(tls) = &tls
            && tls.client_crl.is_some()
            && tls.client_ca.is_none()
        {
            reader.problems.push(ConfigProblem {
                name: "TLS_CLIENT_CRL".to_owned(),
                subject: String::new(),
                problem: "TLS_CLIENT_CRL checks client certificates, which are only asked for when TLS_CLIENT_CA is set; set TLS_CLIENT_CA too".to_owned(),
            });
        }
        let drain_timeout = reader.read(
            "DRAIN_TIMEOUT",
            |text| {
                optional_duration(text)?
                    .ok_or_else(|| "the drain needs some time, e.g. 30s".to_owned())
            },
            Duration::ZERO,
        );
        let admin_addr = reader.read(
            "ADMIN_ADDR",
            |text| {
                let text = text.trim();
                if text.eq_ignore_ascii_case("off") {
                    return Ok(None);
                }
                parse_listen_address(text)
                    .map(|_| Some(text.to_owned()))
                    .map_err(|error| format!("{error}; or off to disable the admin API"))
            },
            None,
        );
        let admin_tokens_file = reader.read(
            "ADMIN_TOKENS_FILE",
            |text| Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim()))),
            None,
        );
        if !reader.problems.is_empty() {
            return Err(ConfigErrors(reader.problems));
        }
        Ok(Self {
            listener: ListenerSettings {
                listen_addr,
                name,
                max_connections,
                idle_timeout,
                frame_timeout,
                write_timeout,
                keep_alive_period,
                max_frame_size,
                allowed_peers,
            },
            default_charset,
            data_dir,
            dedup_window,
            dedup_max_entries,
            rules_time_budget,
            log_format,
            retention,
            tls,
            require_tls,
            store_journal,
            store_verify_interval,
            drain_timeout,
            audit_retention,
            admin_addr,
            admin_tokens_file,
        })
    }

    /// The outbox file.
    pub fn outbox_path(&self) -> PathBuf {
        self.data_dir.join(crate::outbox::FILE_NAME)
    }
}

/// Names of listeners and connectors end up in metrics, logs and file names: keep them plain.
fn parse_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 letters, digits, '-', '_' or '.'".to_owned())
    }
}

/// The merged scalar settings and where each came from.
struct Layers<'a> {
    /// Merged values by lower-case key.
    values: BTreeMap<String, String>,
    /// Keys set in the environment.
    env_keys: HashSet<String>,
    file: Option<&'a FileConfig>,
    file_name: &'a str,
}

impl Layers<'_> {
    fn source(&self, name: &str) -> Source {
        let key = name.to_ascii_lowercase();
        if self.env_keys.contains(&key) {
            return Source::Environment;
        }
        let spanned = self
            .file
            .and_then(|file| file.scalars().get(key.as_str()).copied().cloned());
        match spanned {
            Some(spanned) => Source::File {
                file: self.file_name.to_owned(),
                line: spanned.referenced.line(),
                column: spanned.referenced.column(),
            },
            None => Source::Default,
        }
    }
}

/// Merge defaults < file < environment with figment.
fn merge_layers<'a>(
    file: Option<&'a FileConfig>,
    file_name: &'a str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Layers<'a>, ConfigErrors> {
    let yaml_vars = ENV_VARS.iter().filter(|var| !ENV_ONLY.contains(&var.name));
    let defaults: BTreeMap<String, String> = yaml_vars
        .clone()
        .map(|var| (var.name.to_ascii_lowercase(), var.default.to_owned()))
        .collect();
    let from_file: BTreeMap<String, String> = file
        .map(|file| {
            file.scalars()
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.value.0.clone()))
                .collect()
        })
        .unwrap_or_default();
    let from_env: BTreeMap<String, String> = yaml_vars
        .filter_map(|var| lookup(var.name).map(|value| (var.name.to_ascii_lowercase(), value)))
        .collect();
    let values: BTreeMap<String, String> = Figment::new()
        .merge(Serialized::defaults(defaults))
        .merge(Serialized::defaults(from_file))
        .merge(Serialized::defaults(from_env.clone()))
        .extract()
        .map_err(|error| ConfigErrors::one(format!("cannot merge settings: {error}")))?;
    Ok(Layers {
        values,
        env_keys: from_env.into_keys().collect(),
        file,
        file_name,
    })
}

/// A connector as configured.
#[derive(Clone, Debug)]
pub struct Connector {
    /// Unique name.
    pub name: String,
    /// Kind of output.
    pub kind: ConnectorKind,
    /// Everything written for it in the file.
    pub spec: ConnectorFile,
    /// Its output settings, checked (`${ENV}` references resolved).
    pub output: Option<connectors::OutputSettings>,
}

/// The whole configuration: settings, connectors and rules.
#[derive(Clone, Debug)]
pub struct Config {
    /// Scalar settings.
    pub settings: Settings,
    /// The YAML file read, if any.
    pub file: Option<PathBuf>,
    /// Connectors in file order.
    pub connectors: Vec<Connector>,
    /// Validation rules in file order.
    pub rules: Vec<RuleSpec>,
    /// Each connector's filter, in connector order.
    pub filters: Vec<FilterSpec>,
    /// `tls_senders`: what each client certificate may send as; `None` when not set.
    pub senders: Option<crate::tls::SenderMap>,
}

impl Config {
    /// Load from the process environment and the file it names (`--config` wins over
    /// `CONFIG_FILE`; without either, `mfoundry.yaml` is read if it exists).
    pub fn load(explicit_file: Option<&Path>) -> Result<Self, ConfigErrors> {
        Self::load_with(explicit_file, &|name| std::env::var(name).ok())
    }

    /// Load with `lookup` standing in for the environment.
    pub fn load_with(
        explicit_file: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let (path, required) = match (explicit_file, lookup("CONFIG_FILE")) {
            (Some(path), _) => (path.to_path_buf(), true),
            (None, Some(path)) if !path.trim().is_empty() => (PathBuf::from(path.trim()), true),
            _ => (PathBuf::from("mfoundry.yaml"), false),
        };
        let file_name = path.display().to_string();
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => Some(file::parse(&text, &file_name).map_err(ConfigErrors::one)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(error) => {
                return Err(ConfigErrors::one(format!(
                    "cannot read the configuration file {file_name}: {error}"
                )));
            }
        };
        let layers = merge_layers(file.as_ref(), &file_name, lookup)?;
        let settings = Settings::from_layers(&layers);
        let file_origin = |spanned_line: u64, spanned_column: u64| Origin {
            file: Some(file_name.clone()),
            line: spanned_line,
            column: spanned_column,
        };
        let mut problems = settings
            .as_ref()
            .err()
            .map(|errors| errors.0.clone())
            .unwrap_or_default();
        let mut connectors = Vec::new();
        let mut filters = Vec::new();
        let mut rules = Vec::new();
        let mut senders = None;
        if let Some(file) = &file {
            if let Some(listed) = &file.tls_senders {
                if listed.is_empty() {
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!("{file_name}: tls_senders"),
                        problem: "tls_senders is empty, which would let no certificate send; list the senders, or remove the key to let every trusted certificate send as anyone".to_owned(),
                    });
                }
                let mut entries = Vec::new();
                for entry in listed {
                    let identity = &entry.identity;
                    let at = file_origin(identity.referenced.line(), identity.referenced.column());
                    let subject = format!("{at}: tls_senders identity {:?}", identity.value);
                    let mut complain = |problem: &str| {
                        problems.push(ConfigProblem {
                            name: String::new(),
                            subject: subject.clone(),
                            problem: problem.to_owned(),
                        });
                    };
                    if identity.value.trim().is_empty() {
                        complain(
                            "the identity is empty; write the certificate's common name, an alternative name or its whole subject",
                        );
                    }
                    if entry.sending_applications.is_empty() || entry.sending_facilities.is_empty()
                    {
                        complain(
                            "list at least one value in sending_applications and in sending_facilities (\"*\" allows any)",
                        );
                    }
                    entries.push(crate::tls::SenderRule {
                        identity: identity.value.trim().to_owned(),
                        issuer: entry.issuer.as_ref().map(|issuer| issuer.trim().to_owned()),
                        sending_applications: entry.sending_applications.clone(),
                        sending_facilities: entry.sending_facilities.clone(),
                    });
                }
                let mutual = settings
                    .as_ref()
                    .ok()
                    .and_then(|settings| settings.tls.as_ref())
                    .is_some_and(|tls| tls.client_ca.is_some());
                if settings.is_ok() && !mutual {
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!("{file_name}: tls_senders"),
                        problem: "tls_senders maps client certificates, which are only asked for with mTLS; set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA".to_owned(),
                    });
                }
                senders = Some(crate::tls::SenderMap::new(entries));
            }
            let mut seen = HashSet::new();
            for connector in &file.connectors {
                let name = &connector.name;
                let at = file_origin(name.referenced.line(), name.referenced.column());
                if let Err(problem) = parse_name(&name.value) {
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!("{at}: connector name {:?}", name.value),
                        problem,
                    });
                } else if !seen.insert(name.value.clone()) {
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!("{at}: connector name {:?}", name.value),
                        problem: "another connector has this name; names must be unique".to_owned(),
                    });
                }
                filters.push(FilterSpec {
                    connector: name.value.clone(),
                    expression: connector.filter.as_ref().map(|filter| ExpressionSource {
                        text: filter.value.clone(),
                        origin: file_origin(filter.referenced.line(), filter.referenced.column()),
                    }),
                });
                let output = match connectors::build(connector, lookup) {
                    Ok(output) => Some(output),
                    Err(found) => {
                        problems.extend(found.into_iter().map(|problem| ConfigProblem {
                            name: String::new(),
                            subject: format!(
                                "{at}: connector {:?} (type {})",
                                name.value,
                                connector.kind.as_str()
                            ),
                            problem,
                        }));
                        None
                    }
                };
                connectors.push(Connector {
                    name: name.value.clone(),
                    kind: connector.kind,
                    spec: connector.clone(),
                    output,
                });
            }
            let mut seen = HashSet::new();
            for rule in &file.validation.rules {
                let name = &rule.name;
                if name.value.trim().is_empty() || !seen.insert(name.value.clone()) {
                    let at = file_origin(name.referenced.line(), name.referenced.column());
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!("{at}: validation rule name {:?}", name.value),
                        problem: "rule names must be non-empty and unique".to_owned(),
                    });
                }
                rules.push(RuleSpec {
                    name: name.value.clone(),
                    expression: ExpressionSource {
                        text: rule.expression.value.clone(),
                        origin: file_origin(
                            rule.expression.referenced.line(),
                            rule.expression.referenced.column(),
                        ),
                    },
                    message: rule.message.clone(),
                });
            }
        }
        if !problems.is_empty() || settings.is_err() {
            // Report the expressions' problems too, so one run shows everything.
            if let Err(rule_problems) = RuleSet::compile(&rules, &filters, Duration::from_secs(1)) {
                problems.extend(rule_problems.into_iter().map(|problem| ConfigProblem {
                    name: String::new(),
                    subject: String::new(),
                    problem: problem.to_string(),
                }));
            }
        }
        match settings {
            Ok(settings) if problems.is_empty() => Ok(Self {
                settings,
                file: file.is_some().then_some(path),
                connectors,
                rules,
                filters,
                senders,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }

    /// Compile every rule and filter (the second half of `mfoundry check`).
    pub fn compile_rules(&self) -> Result<RuleSet, ConfigErrors> {
        RuleSet::compile(&self.rules, &self.filters, self.settings.rules_time_budget).map_err(
            |problems| {
                ConfigErrors(
                    problems
                        .into_iter()
                        .map(|problem| ConfigProblem {
                            name: String::new(),
                            subject: String::new(),
                            problem: problem.to_string(),
                        })
                        .collect(),
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        Settings::from_lookup(&|name| map.get(name).cloned())
    }

    #[test]
    fn every_setting_can_be_written_in_the_yaml_file() {
        for var in ENV_VARS.iter().filter(|var| !ENV_ONLY.contains(&var.name)) {
            let key = var.name.to_ascii_lowercase();
            let text = format!("{key}: {:?}\n", var.default);
            let parsed = file::parse(&text, "test.yaml")
                .unwrap_or_else(|error| panic!("{key} is not a YAML key: {error}"));
            let scalars = parsed.scalars();
            let value = scalars
                .get(key.as_str())
                .unwrap_or_else(|| panic!("{key} is not read"));
            assert_eq!(value.value.0, var.default);
        }
    }

    #[test]
    fn data_dir_dedup_and_budget_have_defaults() {
        let settings = load(&[]).expect("defaults");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.dedup_window, Some(Duration::from_secs(3600)));
        assert_eq!(settings.rules_time_budget, Duration::from_millis(100));
        assert_eq!(settings.listener.name, "mllp");
        assert_eq!(
            settings.outbox_path(),
            PathBuf::from("./data/mfoundry.redb")
        );
        assert!(load(&[("RULES_TIME_BUDGET", "0")]).is_err());
        assert!(load(&[("LISTENER_NAME", "bad name")]).is_err());
    }

    #[test]
    fn defaults_need_no_environment() {
        let settings = load(&[]).expect("defaults load");
        let listener = &settings.listener;
        assert_eq!(listener.listen_addr, ":2575");
        assert_eq!(listener.max_connections, Some(256));
        assert_eq!(listener.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(listener.frame_timeout, Some(Duration::from_secs(60)));
        assert_eq!(listener.write_timeout, Some(Duration::from_secs(5)));
        assert_eq!(listener.keep_alive_period, Some(Duration::from_secs(60)));
        assert_eq!(listener.max_frame_size, 16 << 20);
        assert_eq!(settings.default_charset, Charset::UTF_8);
        assert_eq!(settings.log_format, LogFormat::Text);
        assert!(
            settings.store_journal,
            "the commit journal is on by default (the power-cut harness passes for it)"
        );
    }

    /// `STORE_JOURNAL` is on when not set; `false` (or a value set but empty, as for every
    /// boolean) turns it off, and anything else is an error naming it.
    #[test]
    fn store_journal_defaults_to_on() {
        assert!(load(&[]).expect("loads").store_journal);
        let journal = |value: &str| load(&[("STORE_JOURNAL", value)]).map(|s| s.store_journal);
        assert!(!journal("").expect("empty loads"));
        assert!(journal("true").expect("true loads"));
        assert!(journal("yes").expect("yes loads"));
        assert!(!journal("false").expect("false loads"));
        assert!(!journal("0").expect("0 loads"));
        let errors = journal("maybe").expect_err("refused").to_string();
        assert!(errors.contains("STORE_JOURNAL"), "{errors}");
        assert!(!load(&[("REQUIRE_TLS", "")]).expect("loads").require_tls);
    }

    #[test]
    fn environment_overrides_and_zero_disables() {
        let settings = load(&[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("MAX_CONNECTIONS", "10"),
            ("IDLE_TIMEOUT", "0"),
            ("FRAME_TIMEOUT", "1m30s"),
            ("MAX_FRAME_SIZE", "64MiB"),
            ("DEFAULT_CHARACTER_SET", "8859/1"),
            ("LOG_FORMAT", "JSON"),
            ("MFOUNDRY_PORT", "tcp://10.0.0.1:2575"),
        ])
        .expect("loads");
        assert_eq!(settings.listener.listen_addr, "127.0.0.1:0");
        assert_eq!(settings.listener.max_connections, Some(10));
        assert_eq!(settings.listener.idle_timeout, None);
        assert_eq!(
            settings.listener.frame_timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(settings.listener.max_frame_size, 64 << 20);
        assert_eq!(settings.default_charset.name(), "windows-1252");
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn every_problem_is_reported_with_name_and_fix() {
        let errors = load(&[
            ("LISTEN_ADDR", "2575"),
            ("IDLE_TIMEOUT", "30"),
            ("MAX_FRAME_SIZE", "12"),
            ("MAX_CONNECTIONS", "18446744073709551615"),
            ("DEFAULT_CHARACTER_SET", "KLINGON"),
        ])
        .expect_err("invalid");
        let names: Vec<_> = errors
            .0
            .iter()
            .map(|problem| problem.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "LISTEN_ADDR",
                "MAX_CONNECTIONS",
                "IDLE_TIMEOUT",
                "MAX_FRAME_SIZE",
                "DEFAULT_CHARACTER_SET"
            ]
        );
        let text = errors.to_string();
        assert!(text.contains("IDLE_TIMEOUT=\"30\": missing unit"), "{text}");
        assert!(text.contains("e.g. :2575"), "{text}");
    }
}
