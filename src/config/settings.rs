//! The scalar settings (`Settings`): the three layers merged by key, each value parsed and
//! checked, every problem collected with where the value came from.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use super::env::{ENV_ONLY, ENV_VARS};
use super::file::FileConfig;
use super::{ConfigErrors, ConfigProblem, ListenerSettings, LogFormat};
use crate::hl7::Charset;
use crate::units::{Cidr, parse_duration, parse_listen_address, parse_size};

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
    /// `PATIENT_INDEX`: keep the patient index (search by PID-3 and PID-5.1, ADR 0019).
    pub patient_index: bool,
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
    /// `METRICS_ADDR`: where `GET /metrics` serves the metrics in Prometheus' text format;
    /// `None` (`off`, the default) serves nothing.
    pub metrics_addr: Option<String>,
    /// `ADMIN_TOKENS_FILE`: the token hashes; `None` uses (and creates) `DATA_DIR/admin.token`.
    pub admin_tokens_file: Option<PathBuf>,
    /// `ADMIN_TLS_CERT_FILE` and `ADMIN_TLS_KEY_FILE`: the admin listener (API and console)
    /// serves HTTPS with them; `None` plain HTTP.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
    /// `CONSOLE_IDLE_TIMEOUT`: a console session unused this long is closed.
    pub console_idle_timeout: Duration,
    /// `ENCRYPTION_KEY_FILE` and `ENCRYPTION_OLD_KEY_FILES`: the store keys; `None` stores
    /// plain.
    pub encryption: Option<EncryptionSettings>,
    /// `EGRESS_ALLOW`: where outputs and the OTLP exporter may connect; `None` anywhere.
    pub egress_allow: Option<std::sync::Arc<crate::outputs::egress::EgressAllow>>,
}

/// Where the store keys are (ADR 0011). The files are read (and checked) when the settings
/// load and again when the store opens; the keys are never kept in the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionSettings {
    /// `ENCRYPTION_KEY_FILE`: seals everything written.
    pub key_file: PathBuf,
    /// `ENCRYPTION_OLD_KEY_FILES`: earlier keys, to read what they sealed.
    pub old_key_files: Vec<PathBuf>,
}

impl EncryptionSettings {
    /// Read the key files.
    pub fn load(&self) -> Result<crate::outbox::crypt::Keys, String> {
        use crate::outbox::crypt::{Keys, StoreKey};
        let current = StoreKey::from_file(&self.key_file, "ENCRYPTION_KEY_FILE")?;
        let old = self
            .old_key_files
            .iter()
            .map(|path| StoreKey::from_file(path, "ENCRYPTION_OLD_KEY_FILES"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keys::new(current, old))
    }
}

/// One listener's settings, as the layers give them: what `listeners:` entries override.
pub(super) struct ListenerParts {
    /// Address, name, limits.
    pub(super) listener: ListenerSettings,
    /// Its TLS, when a certificate is set.
    pub(super) tls: Option<crate::tls::TlsSettings>,
    /// `REQUIRE_TLS`.
    pub(super) require_tls: bool,
}

/// A path setting: empty is unset.
fn path_setting(text: &str) -> Result<Option<PathBuf>, String> {
    Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim())))
}

/// A boolean setting: set but empty is false; a variable that is not set at all takes the
/// default.
fn boolean_setting(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

impl Reader<'_> {
    /// The settings of one listener: address, name, limits, TLS, `REQUIRE_TLS`.
    fn listener(&mut self) -> ListenerParts {
        let listen_addr = self.read(
            "LISTEN_ADDR",
            |text| parse_listen_address(text).map(|_| text.trim().to_owned()),
            String::new(),
        );
        let name = self.read("LISTENER_NAME", parse_name, String::new());
        let max_connections = self.read(
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
        let max_connections_per_peer = self.read(
            "MAX_CONNECTIONS_PER_PEER",
            |text| match text.trim().parse::<usize>() {
                Ok(0) => Ok(None),
                Ok(limit) if limit <= MAX_CONNECTIONS_LIMIT => Ok(Some(limit)),
                _ => Err(format!(
                    "expected a whole number of connections up to {MAX_CONNECTIONS_LIMIT}, 0 for no per-peer limit"
                )),
            },
            None,
        );
        let idle_timeout = self.read("IDLE_TIMEOUT", optional_duration, None);
        let frame_timeout = self.read("FRAME_TIMEOUT", optional_duration, None);
        let write_timeout = self.read("WRITE_TIMEOUT", optional_duration, None);
        let keep_alive_period = self.read("KEEP_ALIVE_PERIOD", optional_duration, None);
        let max_frame_size = self.read(
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
        let max_frame_memory = self.read(
            "MAX_FRAME_MEMORY",
            |text| {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                let size = parse_size(text)?;
                if !((1 << 20)..=(1 << 40)).contains(&size) {
                    return Err("expected a size from 1MiB to 1TiB, e.g. 256MiB".to_owned());
                }
                usize::try_from(size)
                    .map(Some)
                    .map_err(|_| "size out of range".to_owned())
            },
            None,
        );
        // Unset: 256 MiB, or four frames of MAX_FRAME_SIZE when that is more. Set: it must
        // hold one frame whose buffer grew by doubling.
        let max_frame_memory = match max_frame_memory {
            None => (256 << 20).max(max_frame_size.saturating_mul(4)),
            Some(memory) if memory < max_frame_size.saturating_mul(2) => {
                self.problems.push(ConfigProblem {
                    name: "MAX_FRAME_MEMORY".to_owned(),
                    subject: format!("MAX_FRAME_MEMORY={memory}"),
                    problem: format!(
                        "must be at least twice MAX_FRAME_SIZE ({max_frame_size} bytes): a frame's buffer grows by doubling"
                    ),
                });
                memory
            }
            Some(memory) => memory,
        };
        let allowed_peers = self.read(
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
        let cert_file = self.read("TLS_CERT_FILE", path_setting, None);
        let key_file = self.read("TLS_KEY_FILE", path_setting, None);
        let client_ca = self.read("TLS_CLIENT_CA", path_setting, None);
        let client_crl = self.read("TLS_CLIENT_CRL", path_setting, None);
        let min_version = self.read(
            "TLS_MIN_VERSION",
            |text| match text.trim() {
                "1.2" => Ok(crate::tls::TlsVersion::V1_2),
                "1.3" => Ok(crate::tls::TlsVersion::V1_3),
                _ => Err("expected 1.2 or 1.3 (older versions are never accepted)".to_owned()),
            },
            crate::tls::TlsVersion::V1_2,
        );
        let handshake_timeout = self.read(
            "TLS_HANDSHAKE_TIMEOUT",
            |text| {
                optional_duration(text)?
                    .ok_or_else(|| "the handshake needs some time, e.g. 10s".to_owned())
            },
            Duration::ZERO,
        );
        let require_tls = self.read("REQUIRE_TLS", boolean_setting, false);
        let ack = self.read(
            "BATCH_ACK",
            |text| match text.trim() {
                "per_message" => Ok(crate::ingest::BatchAck::PerMessage),
                "batch" => Ok(crate::ingest::BatchAck::Batch),
                _ => Err("expected per_message (a batch of ACKs) or batch (one ACK)".to_owned()),
            },
            crate::ingest::BatchAck::PerMessage,
        );
        let count_mismatch = self.read(
            "BATCH_COUNT_MISMATCH",
            |text| match text.trim() {
                "reject" => Ok(crate::ingest::CountMismatch::Reject),
                "accept" => Ok(crate::ingest::CountMismatch::Accept),
                _ => Err("expected reject or accept".to_owned()),
            },
            crate::ingest::CountMismatch::Reject,
        );
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
                self.problems.push(ConfigProblem {
                    name: "TLS_CLIENT_CA".to_owned(),
                    subject: String::new(),
                    problem: "TLS_CLIENT_CA is set but TLS is off; set TLS_CERT_FILE and TLS_KEY_FILE too".to_owned(),
                });
                None
            }
            (None, None) => None,
            _ => {
                self.problems.push(ConfigProblem {
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
            self.problems.push(ConfigProblem {
                name: "TLS_CLIENT_CRL".to_owned(),
                subject: String::new(),
                problem: "TLS_CLIENT_CRL checks client certificates, which are only asked for when TLS_CLIENT_CA is set; set TLS_CLIENT_CA too".to_owned(),
            });
        }
        ListenerParts {
            listener: ListenerSettings {
                listen_addr,
                name,
                max_connections,
                max_connections_per_peer,
                idle_timeout,
                frame_timeout,
                write_timeout,
                keep_alive_period,
                max_frame_size,
                max_frame_memory,
                allowed_peers,
                batches: crate::ingest::BatchSettings {
                    ack,
                    count_mismatch,
                },
            },
            tls,
            require_tls,
        }
    }
}

/// One listener's settings from `layers` (a `listeners:` entry laid over the settings),
/// without reading the others again (the store's keys, the admin API's).
pub(super) fn listener_from_layers(layers: &Layers<'_>) -> Result<ListenerParts, ConfigErrors> {
    let mut reader = Reader {
        layers,
        problems: Vec::new(),
    };
    let parts = reader.listener();
    if reader.problems.is_empty() {
        Ok(parts)
    } else {
        Err(ConfigErrors(reader.problems))
    }
}

impl Settings {
    /// The keys the store is sealed with (plain without `ENCRYPTION_KEY_FILE`).
    pub fn store_keys(&self) -> anyhow::Result<crate::outbox::crypt::Keys> {
        match &self.encryption {
            None => Ok(crate::outbox::crypt::Keys::plain()),
            Some(encryption) => encryption.load().map_err(anyhow::Error::msg),
        }
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
    /// A listener entry's own key.
    Listener {
        file: String,
        line: u64,
        column: u64,
        key: String,
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
                    Source::Listener {
                        file,
                        line,
                        column,
                        key,
                    } => format!("{file}:{line}:{column}: {key}={value:?}"),
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

/// A listen address (Go syntax, as `LISTEN_ADDR`), or `off` for none.
fn optional_listen_address(text: &str, off_means: &str) -> Result<Option<String>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_listen_address(text)
        .map(|_| Some(text.to_owned()))
        .map_err(|error| format!("{error}; or off {off_means}"))
}

impl Settings {
    /// Read the settings from the environment alone (no file).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        Self::from_layers(&merge_layers(None, "", lookup))
    }

    pub(super) fn from_layers(layers: &Layers<'_>) -> Result<Self, ConfigErrors> {
        let mut reader = Reader {
            layers,
            problems: Vec::new(),
        };
        let ListenerParts {
            listener,
            tls,
            require_tls,
        } = reader.listener();
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
        let store_journal = reader.read("STORE_JOURNAL", boolean_setting, true);
        let patient_index = reader.read("PATIENT_INDEX", boolean_setting, true);
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
            |text| optional_listen_address(text, "to disable the admin API"),
            None,
        );
        let metrics_addr = reader.read(
            "METRICS_ADDR",
            |text| optional_listen_address(text, "to serve no metrics endpoint"),
            None,
        );
        let admin_tokens_file = reader.read(
            "ADMIN_TOKENS_FILE",
            |text| Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim()))),
            None,
        );
        let admin_tls_cert = reader.read(
            "ADMIN_TLS_CERT_FILE",
            |text| Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim()))),
            None,
        );
        let admin_tls_key = reader.read(
            "ADMIN_TLS_KEY_FILE",
            |text| Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim()))),
            None,
        );
        let admin_tls = match (admin_tls_cert, admin_tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (cert, _) => {
                let (name, missing) = if cert.is_some() {
                    ("ADMIN_TLS_KEY_FILE", "ADMIN_TLS_CERT_FILE is set")
                } else {
                    ("ADMIN_TLS_CERT_FILE", "ADMIN_TLS_KEY_FILE is set")
                };
                reader.problems.push(ConfigProblem {
                    name: name.to_owned(),
                    subject: format!("{name}=\"\""),
                    problem: format!(
                        "{missing}: set both for HTTPS on the admin listener, or neither"
                    ),
                });
                None
            }
        };
        let console_idle_timeout = reader.read(
            "CONSOLE_IDLE_TIMEOUT",
            |text| match crate::units::parse_duration(text.trim()) {
                Ok(timeout) if timeout >= Duration::from_secs(60) => Ok(timeout),
                Ok(_) => Err("at least 1m".to_owned()),
                Err(problem) => Err(problem),
            },
            Duration::from_secs(15 * 60),
        );
        let egress_allow = reader.read(
            "EGRESS_ALLOW",
            |text| {
                crate::outputs::egress::EgressAllow::parse(text)
                    .map(|allow| allow.map(std::sync::Arc::new))
            },
            None,
        );
        let key_file = reader.read("ENCRYPTION_KEY_FILE", path_setting, None);
        let old_key_files = reader.read(
            "ENCRYPTION_OLD_KEY_FILES",
            |text| {
                Ok(text
                    .split(',')
                    .map(str::trim)
                    .filter(|entry| !entry.is_empty())
                    .map(PathBuf::from)
                    .collect::<Vec<_>>())
            },
            Vec::new(),
        );
        let encryption = match key_file {
            Some(key_file) => {
                let encryption = EncryptionSettings {
                    key_file,
                    old_key_files,
                };
                if let Err(problem) = encryption.load() {
                    let name = if problem.starts_with("ENCRYPTION_OLD") {
                        "ENCRYPTION_OLD_KEY_FILES"
                    } else {
                        "ENCRYPTION_KEY_FILE"
                    };
                    reader.problems.push(ConfigProblem {
                        name: name.to_owned(),
                        subject: String::new(),
                        problem,
                    });
                }
                Some(encryption)
            }
            None if !old_key_files.is_empty() => {
                reader.problems.push(ConfigProblem {
                    name: "ENCRYPTION_OLD_KEY_FILES".to_owned(),
                    subject: String::new(),
                    problem: "older keys only read records; set ENCRYPTION_KEY_FILE to the key that seals new ones (a store is not decrypted back to plain)".to_owned(),
                });
                None
            }
            None => None,
        };
        if !reader.problems.is_empty() {
            return Err(ConfigErrors(reader.problems));
        }
        Ok(Self {
            listener,
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
            patient_index,
            store_verify_interval,
            drain_timeout,
            audit_retention,
            admin_addr,
            metrics_addr,
            admin_tokens_file,
            admin_tls,
            console_idle_timeout,
            encryption,
            egress_allow,
        })
    }

    /// The outbox file.
    pub fn outbox_path(&self) -> PathBuf {
        self.data_dir.join(crate::outbox::FILE_NAME)
    }
}

/// Names of listeners and connectors end up in metrics, logs and file names: keep them plain.
pub(super) fn parse_name(text: &str) -> Result<String, String> {
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
#[derive(Clone)]
pub(super) struct Layers<'a> {
    /// Merged values by lower-case key.
    values: BTreeMap<String, String>,
    /// Keys set in the environment.
    env_keys: HashSet<String>,
    file: Option<&'a FileConfig>,
    file_name: &'a str,
    /// Keys a listener entry sets for itself (on top of everything): where, and the key as
    /// written there (`tls.cert_file`).
    overrides: BTreeMap<String, (crate::yaml::At, String)>,
}

impl<'a> Layers<'a> {
    /// Where a setting was written when it was (`the environment`, the file's place), not
    /// left at its default.
    pub(super) fn written_at(&self, name: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        // Set to nothing is not set, in the environment or the file.
        let env_value = self.values.get(&key).map_or("", |value| value.trim());
        if self.env_keys.contains(&key) && !env_value.is_empty() {
            return Some("the environment".to_owned());
        }
        self.file
            .and_then(|file| file.scalars.get(key.as_str()))
            .filter(|spanned| !spanned.value.trim().is_empty())
            .map(|spanned| {
                format!(
                    "{}:{}:{}",
                    self.file_name, spanned.at.line, spanned.at.column
                )
            })
    }

    /// These layers with `names` back at their defaults (the settings `listeners:` entries
    /// own, so that what is set beside them is reported once, as a conflict).
    pub(super) fn with_defaults(&self, names: &[&str]) -> Layers<'a> {
        let mut layers = self.clone();
        for name in names {
            if let Some(var) = ENV_VARS.iter().find(|var| var.name == *name) {
                let key = name.to_ascii_lowercase();
                layers.values.insert(key.clone(), var.default.to_owned());
                layers.env_keys.remove(&key);
            }
        }
        layers
    }

    /// These layers with a listener's own values on top: `(setting, key as written, value)`.
    pub(super) fn with_overrides(
        &self,
        overrides: &[(&'static str, String, crate::yaml::Spanned<String>)],
    ) -> Layers<'a> {
        let mut layers = self.clone();
        for (name, written, value) in overrides {
            let key = name.to_ascii_lowercase();
            layers.values.insert(key.clone(), value.value.clone());
            layers.env_keys.remove(&key);
            layers.overrides.insert(key, (value.at, written.clone()));
        }
        layers
    }

    fn source(&self, name: &str) -> Source {
        let key = name.to_ascii_lowercase();
        if let Some((at, written)) = self.overrides.get(&key) {
            return Source::Listener {
                file: self.file_name.to_owned(),
                line: at.line,
                column: at.column,
                key: written.clone(),
            };
        }
        if self.env_keys.contains(&key) {
            return Source::Environment;
        }
        let spanned = self.file.and_then(|file| file.scalars.get(key.as_str()));
        match spanned {
            Some(spanned) => Source::File {
                file: self.file_name.to_owned(),
                line: spanned.at.line,
                column: spanned.at.column,
            },
            None => Source::Default,
        }
    }
}

/// Merge defaults < file < environment: each layer replaces the keys it sets.
pub(super) fn merge_layers<'a>(
    file: Option<&'a FileConfig>,
    file_name: &'a str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Layers<'a> {
    let yaml_vars = ENV_VARS.iter().filter(|var| !ENV_ONLY.contains(&var.name));
    let mut values: BTreeMap<String, String> = yaml_vars
        .clone()
        .map(|var| (var.name.to_ascii_lowercase(), var.default.to_owned()))
        .collect();
    if let Some(file) = file {
        values.extend(
            file.scalars
                .iter()
                .map(|(key, value)| (key.clone(), value.value.clone())),
        );
    }
    let from_env: BTreeMap<String, String> = yaml_vars
        .filter_map(|var| lookup(var.name).map(|value| (var.name.to_ascii_lowercase(), value)))
        .collect();
    let env_keys = from_env.keys().cloned().collect();
    values.extend(from_env);
    Layers {
        values,
        env_keys,
        file,
        file_name,
        overrides: BTreeMap::new(),
    }
}
