//! `listeners:`: several inbound interfaces, each with its own address, TLS, limits, rules
//! and `tls_senders` (one MLLP port per sending system).
//!
//! Without the key, the environment (`LISTEN_ADDR`, `TLS_*` …) defines the one MLLP listener
//! as it always has. With it, every listener is read from its entry; the limits and timeouts
//! (`MAX_CONNECTIONS`, `IDLE_TIMEOUT` …), `REQUIRE_TLS`, `TLS_MIN_VERSION` and
//! `TLS_HANDSHAKE_TIMEOUT` set elsewhere become defaults an entry may override, and a setting
//! that can only belong to one listener (`LISTEN_ADDR`, `LISTENER_NAME`, the TLS files) set
//! outside the entries is a load error naming both places. An entry's values are read by the
//! same code as the environment's ([`super::settings`]), so they are checked and reported
//! alike, with the entry's place in the file.

use std::collections::HashSet;

use super::file::TlsSender;
use super::settings::{Layers, Settings, listener_from_layers, parse_name};
use super::{ConfigProblem, read_senders};
use crate::mllp::ListenerSettings;
use crate::tls::{SenderMap, TlsSettings};
use crate::yaml::{self, At, Map, Node, Problems, Spanned};

/// The kinds of listener a `listeners:` entry may declare.
pub const LISTENER_KINDS: [&str; 4] = ["mllp", "http", "directory", "dicom"];

/// Limits of an MLLP connection's life that an HTTP listener does not have (hyper closes
/// idle keep-alive connections and bounds headers itself): written in an http entry, they
/// are refused rather than ignored. `frame_timeout` (the body's arrival),
/// `max_frame_size` (the body) and `max_frame_memory` (bodies together) do apply.
const MLLP_ONLY: [&str; 4] = [
    "max_connections_per_peer",
    "idle_timeout",
    "write_timeout",
    "keep_alive_period",
];

/// What kind of listener, with what only that kind has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// MLLP over TCP or TLS.
    Mllp,
    /// `POST /hl7` over HTTP or HTTPS.
    Http {
        /// Bearer tokens of the senders (`<id> <role> <sha256>` lines).
        tokens_file: Option<std::path::PathBuf>,
    },
    /// Files dropped in a folder.
    Directory(crate::file_intake::DirectorySettings),
    /// DICOM C-STORE and C-ECHO over TCP or TLS.
    Dicom(crate::mllp::DicomSettings),
}

/// A listener entry's own keys for limits, timeouts and batches, and the settings they
/// override.
pub const LIMIT_KEYS: [(&str, &str); 12] = [
    ("max_connections", "MAX_CONNECTIONS"),
    ("max_connections_per_peer", "MAX_CONNECTIONS_PER_PEER"),
    ("idle_timeout", "IDLE_TIMEOUT"),
    ("frame_timeout", "FRAME_TIMEOUT"),
    ("write_timeout", "WRITE_TIMEOUT"),
    ("keep_alive_period", "KEEP_ALIVE_PERIOD"),
    ("max_frame_size", "MAX_FRAME_SIZE"),
    ("max_frame_memory", "MAX_FRAME_MEMORY"),
    ("allowed_peers", "ALLOWED_PEERS"),
    ("require_tls", "REQUIRE_TLS"),
    ("batch_ack", "BATCH_ACK"),
    ("batch_count_mismatch", "BATCH_COUNT_MISMATCH"),
];

/// The keys of an entry's `tls:` and the settings they stand for.
pub const TLS_KEYS: [(&str, &str); 6] = [
    ("cert_file", "TLS_CERT_FILE"),
    ("key_file", "TLS_KEY_FILE"),
    ("client_ca", "TLS_CLIENT_CA"),
    ("client_crl", "TLS_CLIENT_CRL"),
    ("min_version", "TLS_MIN_VERSION"),
    ("handshake_timeout", "TLS_HANDSHAKE_TIMEOUT"),
];

/// Settings that belong to one listener: with `listeners:`, set only in an entry.
pub const PER_LISTENER: [&str; 6] = [
    "LISTEN_ADDR",
    "LISTENER_NAME",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA",
    "TLS_CLIENT_CRL",
];

/// The other keys of an entry.
const ENTRY_KEYS: [&str; 7] = [
    "name",
    "type",
    "listen_addr",
    "tls",
    "rules",
    "tls_senders",
    "tokens_file",
];

/// Every key a listener entry takes.
pub fn entry_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = ENTRY_KEYS.to_vec();
    keys.extend(LIMIT_KEYS.iter().map(|(key, _)| *key));
    keys.extend(super::directory::DIRECTORY_KEYS);
    keys.extend(super::dicom::DICOM_SCALAR_KEYS);
    keys.extend(super::dicom::DICOM_LIST_KEYS);
    keys
}

/// The settings a directory listener takes of [`LIMIT_KEYS`]: it has no connections.
const DIRECTORY_SETTINGS: [&str; 2] = ["BATCH_ACK", "BATCH_COUNT_MISMATCH"];

/// One `listeners:` entry, as written.
#[derive(Clone, Debug)]
pub struct ListenerEntry {
    /// Its name (`inbound` in CEL, the metrics' and logs' listener).
    pub name: Spanned<String>,
    /// Its type.
    pub kind: Spanned<String>,
    /// Where the entry starts.
    pub at: At,
    /// The settings it writes: `(setting, key as written, value)`.
    pub settings: Vec<(&'static str, String, Spanned<String>)>,
    /// `rules:` (names of `validation.rules`), when written.
    pub rules: Option<Vec<Spanned<String>>>,
    /// `tls_senders:`, when written.
    pub tls_senders: Option<Vec<TlsSender>>,
    /// `tokens_file:` (http), when written.
    pub tokens_file: Option<Spanned<String>>,
    /// The directory keys written (`path`, `done` …).
    pub directory: Vec<(&'static str, Spanned<String>)>,
    /// The dicom scalar keys written (`ae_title`, `max_object_size` …).
    pub dicom: Vec<(&'static str, Spanned<String>)>,
    /// The dicom list keys written (`allowed_callers`, `sop_classes`).
    pub dicom_lists: Vec<(&'static str, Vec<Spanned<String>>)>,
}

/// Read one entry, collecting problems.
pub(super) fn read_entry(
    node: &Node,
    read_sender: impl Fn(&Node, &mut Problems) -> Option<TlsSender>,
    problems: &mut Problems,
) -> Option<ListenerEntry> {
    let what = "a listener";
    let mut map = Map::new(node, what, problems)?;
    let at = map.at();
    let name = map.text("name", problems);
    let kind = map.text("type", problems);
    for key in ["name", "type"] {
        if !map.has(key) {
            problems.push(yaml::Problem {
                at,
                message: format!(
                    "this listener has no `{key}`; add one{}",
                    if key == "type" { " (mllp)" } else { "" }
                ),
            });
        }
    }
    let mut settings = Vec::new();
    if let Some(value) = map.text("listen_addr", problems) {
        settings.push(("LISTEN_ADDR", "listen_addr".to_owned(), value));
    }
    for (key, setting) in LIMIT_KEYS {
        if let Some(value) = map.text(key, problems) {
            settings.push((setting, key.to_owned(), value));
        }
    }
    if let Some(mut tls) = map.map("tls", problems) {
        for (key, setting) in TLS_KEYS {
            if let Some(value) = tls.text(key, problems) {
                settings.push((setting, format!("tls.{key}"), value));
            }
        }
        let keys: Vec<&str> = TLS_KEYS.iter().map(|(key, _)| *key).collect();
        tls.finish("a listener's `tls`", &keys, problems);
    }
    let mut texts = |key: &str, what: &str, problems: &mut Problems| {
        map.list(key, problems).map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let text = item.scalar_text();
                    if text.is_none() {
                        problems.push(yaml::Problem {
                            at: item.at,
                            message: format!("`{key}` lists {what} (text), found {}", item.kind()),
                        });
                    }
                    text.map(|value| Spanned { value, at: item.at })
                })
                .collect::<Vec<_>>()
        })
    };
    let rules = texts("rules", "rule names", problems);
    let dicom_lists = super::dicom::DICOM_LIST_KEYS
        .iter()
        .filter_map(|key| texts(key, "values", problems).map(|values| (*key, values)))
        .collect();
    let tokens_file = map.text("tokens_file", problems);
    let directory = super::directory::DIRECTORY_KEYS
        .iter()
        .filter_map(|key| map.text(key, problems).map(|value| (*key, value)))
        .collect();
    let dicom = super::dicom::DICOM_SCALAR_KEYS
        .iter()
        .filter_map(|key| map.text(key, problems).map(|value| (*key, value)))
        .collect();
    let tls_senders = map.list("tls_senders", problems).map(|items| {
        items
            .iter()
            .filter_map(|item| read_sender(item, problems))
            .collect()
    });
    map.finish(what, &entry_keys(), problems);
    Some(ListenerEntry {
        name: name?,
        kind: kind?,
        at,
        settings,
        rules,
        tls_senders,
        tokens_file,
        directory,
        dicom,
        dicom_lists,
    })
}

/// One listener, ready to bind.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// MLLP or HTTP.
    pub kind: ListenerKind,
    /// Address, name, limits.
    pub settings: ListenerSettings,
    /// Its TLS, when a certificate is set.
    pub tls: Option<TlsSettings>,
    /// `require_tls`: refuse to start it without TLS on a non-loopback address.
    pub require_tls: bool,
    /// The validation rules it applies, by name; `None` applies every rule.
    pub rules: Option<Vec<String>>,
    /// Its `tls_senders`.
    pub senders: Option<SenderMap>,
    /// Whether it comes from a `listeners:` entry (its errors name the entry's keys, not
    /// the settings).
    pub entry: bool,
}

impl ListenerConfig {
    /// The one listener the settings describe (no `listeners:`).
    pub(super) fn from_settings(settings: &Settings, senders: Option<SenderMap>) -> Self {
        Self {
            kind: ListenerKind::Mllp,
            settings: settings.listener.clone(),
            tls: settings.tls.clone(),
            require_tls: settings.require_tls,
            rules: None,
            senders,
            entry: false,
        }
    }
}

impl super::Config {
    /// The rules `listener` applies when its `rules:` names some, compiled with every
    /// connector's filter; `None` when it applies every rule.
    pub fn listener_rules(
        &self,
        listener: &ListenerConfig,
    ) -> Result<Option<crate::rules::RuleSet>, super::ConfigErrors> {
        let Some(names) = &listener.rules else {
            return Ok(None);
        };
        let chosen: Vec<_> = self
            .rules
            .iter()
            .filter(|rule| names.contains(&rule.name))
            .cloned()
            .collect();
        crate::rules::RuleSet::compile(&chosen, &self.filters, self.settings.rules_time_budget)
            .map(Some)
            .map_err(super::rule_errors)
    }

    /// Whether the connector `name` sends HL7 (a DICOM object it takes becomes an ORU^R01
    /// or a dead letter, ADR 0020).
    pub fn sends_hl7(&self, name: &str) -> bool {
        self.connectors
            .iter()
            .find(|connector| connector.name == name)
            .and_then(|connector| connector.output.as_ref())
            .is_some_and(|settings| settings.output.sends_hl7())
    }

    /// A listener by name (`None`: the first).
    pub fn listener(&self, name: Option<&str>) -> Option<&ListenerConfig> {
        match name {
            None => self.listeners.first(),
            Some(name) => self
                .listeners
                .iter()
                .find(|listener| listener.settings.name == name),
        }
    }
}

/// What the whole file needs to resolve its entries.
pub(super) struct Context<'a, 'b> {
    /// Defaults < file < environment, as set (for what is set beside `listeners:`).
    pub(super) layers: &'a Layers<'b>,
    /// The same with the settings that belong to one listener at their defaults: what each
    /// entry's values are laid over.
    pub(super) base: &'a Layers<'b>,
    /// The file's name, for places.
    pub(super) file_name: &'a str,
    /// The names of `validation.rules`.
    pub(super) rule_names: &'a [String],
    /// Where a top-level `tls_senders` is, when there is one.
    pub(super) top_senders: Option<At>,
}

/// Every entry, resolved against the settings; every problem collected.
pub(super) fn resolve(
    entries: &[ListenerEntry],
    context: &Context<'_, '_>,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<ListenerConfig> {
    let file_name = context.file_name;
    let place = |at: At| format!("{file_name}:{}:{}", at.line, at.column);
    for name in PER_LISTENER {
        if let Some(written) = context.layers.written_at(name) {
            problems.push(ConfigProblem {
                name: name.to_owned(),
                subject: format!("{name} (set in {written})"),
                problem: format!(
                    "the file defines `listeners:`, where each listener has its own {}; remove {name} there, or move it into the listener it belongs to",
                    entry_key(name)
                ),
            });
        }
    }
    if let Some(at) = context.top_senders {
        problems.push(ConfigProblem {
            name: String::new(),
            subject: format!("{}: tls_senders", place(at)),
            problem: "with `listeners:`, tls_senders belongs to the listener whose client certificates it maps; move it into that entry".to_owned(),
        });
    }
    if entries.is_empty() {
        problems.push(ConfigProblem {
            name: String::new(),
            subject: format!("{file_name}: listeners"),
            problem: "`listeners:` is empty, so nothing would be received; list at least one listener, or remove the key to use LISTEN_ADDR".to_owned(),
        });
    }
    let mut names = HashSet::new();
    let mut addresses: Vec<(Option<String>, u16, String)> = Vec::new();
    let mut resolved = Vec::new();
    for entry in entries {
        let subject = format!("{}: listener {:?}", place(entry.name.at), entry.name.value);
        let mut complain = |problem: String| {
            problems.push(ConfigProblem {
                name: String::new(),
                subject: subject.clone(),
                problem,
            });
        };
        if let Err(problem) = parse_name(&entry.name.value) {
            complain(problem);
        } else if !names.insert(entry.name.value.clone()) {
            complain("another listener has this name; names must be unique".to_owned());
        }
        if !LISTENER_KINDS.contains(&entry.kind.value.as_str()) {
            complain(format!(
                "`type` is {:?}; use one of {}",
                entry.kind.value,
                LISTENER_KINDS.join(", ")
            ));
            continue;
        }
        let directory = entry.kind.value == "directory";
        if !directory
            && !entry
                .settings
                .iter()
                .any(|(name, ..)| *name == "LISTEN_ADDR")
        {
            complain(format!(
                "an {} listener needs `listen_addr`, e.g. \":2575\"",
                entry.kind.value
            ));
            continue;
        }
        let http = entry.kind.value == "http";
        let entry_problem = |at: At, key: &str, problem: String| ConfigProblem {
            name: String::new(),
            subject: format!("{}: listener {:?} {key}", place(at), entry.name.value),
            problem,
        };
        if directory {
            for (setting, written, value) in &entry.settings {
                if !DIRECTORY_SETTINGS.contains(setting) {
                    problems.push(entry_problem(value.at, written, "applies to network listeners only; a directory listener takes path, pattern, done or delete, error, settle_time, poll_interval, max_file_size, rules, batch_ack and batch_count_mismatch".to_owned()));
                }
            }
            if let Some(tokens) = &entry.tokens_file {
                problems.push(entry_problem(
                    tokens.at,
                    "tokens_file",
                    "bearer tokens are for http listeners; a directory listener reads files"
                        .to_owned(),
                ));
            }
            if entry.tls_senders.is_some() {
                problems.push(entry_problem(entry.at, "tls_senders", "tls_senders maps client certificates, which a directory listener has none of; remove it".to_owned()));
            }
        } else {
            for (key, value) in &entry.directory {
                problems.push(entry_problem(
                    value.at,
                    key,
                    "applies to directory listeners only (type: directory)".to_owned(),
                ));
            }
        }
        let dicom = entry.kind.value == "dicom";
        if !dicom {
            for (key, value) in &entry.dicom {
                problems.push(entry_problem(
                    value.at,
                    key,
                    "applies to dicom listeners only (type: dicom)".to_owned(),
                ));
            }
            for (key, _) in &entry.dicom_lists {
                problems.push(entry_problem(
                    entry.at,
                    key,
                    "applies to dicom listeners only (type: dicom)".to_owned(),
                ));
            }
        } else {
            for (setting, written, value) in &entry.settings {
                if matches!(
                    *setting,
                    "BATCH_ACK" | "BATCH_COUNT_MISMATCH" | "MAX_FRAME_SIZE"
                ) {
                    let text = if *setting == "MAX_FRAME_SIZE" {
                        "is for HL7 frames; a dicom listener caps objects with max_object_size"
                    } else {
                        "is for HL7 batches; a dicom listener receives DICOM objects"
                    };
                    problems.push(entry_problem(value.at, written, text.to_owned()));
                }
            }
            if entry.tls_senders.is_some() {
                problems.push(entry_problem(entry.at, "tls_senders", "tls_senders checks HL7 MSH-3/MSH-4; a dicom listener checks callers with allowed_callers (and client certificates with tls.client_ca)".to_owned()));
            }
        }
        if http {
            for (_, written, value) in &entry.settings {
                if MLLP_ONLY.contains(&written.as_str()) {
                    problems.push(entry_problem(value.at, written, "applies to MLLP connections only; an http listener takes max_connections, max_frame_size (the body), frame_timeout (the body's arrival) and max_frame_memory (bodies together)".to_owned()));
                }
            }
        } else if let Some(tokens) = &entry.tokens_file {
            problems.push(entry_problem(tokens.at, "tokens_file", format!("bearer tokens are for http listeners; an {} listener authenticates senders with client certificates (tls.client_ca)", entry.kind.value)));
        }
        let dicom_settings = if dicom {
            super::dicom::resolve(&entry.dicom, &entry.dicom_lists, |value, key, problem| {
                problems.push(entry_problem(
                    value.map_or(entry.at, |value| value.at),
                    key,
                    problem,
                ));
            })
        } else {
            None
        };
        if dicom && dicom_settings.is_none() {
            continue;
        }
        let tokens_file = entry.tokens_file.as_ref().map(|tokens| {
            let path = std::path::PathBuf::from(tokens.value.trim());
            let read = std::fs::read_to_string(&path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))
                .and_then(|text| crate::admin::auth::TokenStore::parse(&text, &path));
            match read {
                Ok(store) if store.is_empty() => problems.push(entry_problem(tokens.at, "tokens_file", "holds no token, so no sender could post; add the lines `mfoundry token create` prints".to_owned())),
                Ok(_) => {}
                Err(problem) => problems.push(entry_problem(tokens.at, "tokens_file", problem)),
            }
            path
        });
        for rule in entry.rules.iter().flatten() {
            if !context.rule_names.contains(&rule.value) {
                problems.push(ConfigProblem {
                    name: String::new(),
                    subject: format!(
                        "{}: listener {:?} rule {:?}",
                        place(rule.at),
                        entry.name.value,
                        rule.value
                    ),
                    problem: if context.rule_names.is_empty() {
                        "validation.rules names no rule; define it there first".to_owned()
                    } else {
                        format!(
                            "no validation rule has this name; the rules are {}",
                            context.rule_names.join(", ")
                        )
                    },
                });
            }
        }
        let mut overrides = entry.settings.clone();
        overrides.push(("LISTENER_NAME", "name".to_owned(), entry.name.clone()));
        if dicom {
            // A dicom listener takes no HL7 frames: MAX_FRAME_SIZE (which max_frame_memory
            // must hold twice) is not its limit; what its objects hold is checked below.
            overrides.push((
                "MAX_FRAME_SIZE",
                "max_frame_size".to_owned(),
                crate::yaml::Spanned {
                    value: "64KiB".to_owned(),
                    at: entry.at,
                },
            ));
        }
        let layers = context.base.with_overrides(&overrides);
        let settings = match listener_from_layers(&layers) {
            Ok(settings) => settings,
            Err(errors) => {
                problems.extend(errors.0);
                continue;
            }
        };
        if let Some(dicom) = &dicom_settings
            && dicom.inline_object_size.min(dicom.max_object_size)
                > settings.listener.max_frame_memory
        {
            let at = entry
                .dicom
                .iter()
                .find(|(key, _)| *key == "inline_object_size")
                .map_or(entry.at, |(_, value)| value.at);
            problems.push(entry_problem(
                at,
                "inline_object_size",
                format!(
                    "is larger than this listener's max_frame_memory ({} bytes), so one object could not be held while it arrives; raise max_frame_memory or lower inline_object_size (larger objects are spooled to files)",
                    settings.listener.max_frame_memory
                ),
            ));
            continue;
        }
        if directory {
            let directory_settings =
                super::directory::resolve(&entry.directory, |at, key, problem| {
                    problems.push(entry_problem(
                        at.map_or(entry.at, |value| value.at),
                        key,
                        problem,
                    ));
                });
            if let Some(directory_settings) = directory_settings {
                resolved.push(ListenerConfig {
                    kind: ListenerKind::Directory(directory_settings),
                    settings: settings.listener,
                    tls: None,
                    require_tls: false,
                    rules: entry
                        .rules
                        .as_ref()
                        .map(|rules| rules.iter().map(|rule| rule.value.clone()).collect()),
                    senders: None,
                    entry: true,
                });
            }
            continue;
        }
        if let Ok((host, port)) = crate::units::parse_listen_address(&settings.listener.listen_addr)
            && port != 0
        {
            let clash = addresses.iter().find(|(other_host, other_port, _)| {
                *other_port == port
                    && (other_host.is_none() || host.is_none() || *other_host == host)
            });
            if let Some((.., other)) = clash {
                problems.push(ConfigProblem {
                    name: String::new(),
                    subject: subject.clone(),
                    problem: format!(
                        "listen_addr {} takes the port of listener {other:?}; give each listener its own port",
                        settings.listener.listen_addr
                    ),
                });
            }
            addresses.push((host, port, entry.name.value.clone()));
        }
        let mutual = settings
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca.is_some());
        // Without tokens or client certificates, an HTTP listener would take messages from
        // anyone who reaches it: only on loopback.
        let loopback = is_loopback(&settings.listener.listen_addr);
        if http && tokens_file.is_some() && settings.tls.is_none() && !loopback {
            problems.push(ConfigProblem {
                name: String::new(),
                subject: subject.clone(),
                problem: format!(
                    "bearer tokens would cross the network in clear to {}; give the listener tls.cert_file and tls.key_file, or bind it to 127.0.0.1",
                    settings.listener.listen_addr
                ),
            });
        }
        if http && tokens_file.is_none() && !mutual && !loopback {
            problems.push(ConfigProblem {
                name: String::new(),
                subject: subject.clone(),
                problem: format!(
                    "an http listener without tokens_file or tls.client_ca would take messages from anyone who reaches {}; set tokens_file (or mTLS), or bind it to 127.0.0.1",
                    settings.listener.listen_addr
                ),
            });
        }
        let senders = entry
            .tls_senders
            .as_ref()
            .map(|listed| read_senders(listed, file_name, !mutual, problems));
        resolved.push(ListenerConfig {
            kind: match dicom_settings {
                Some(dicom) => ListenerKind::Dicom(dicom),
                None if http => ListenerKind::Http { tokens_file },
                None => ListenerKind::Mllp,
            },
            settings: settings.listener,
            tls: settings.tls,
            require_tls: settings.require_tls,
            rules: entry
                .rules
                .as_ref()
                .map(|rules| rules.iter().map(|rule| rule.value.clone()).collect()),
            senders,
            entry: true,
        });
    }
    resolved
}

/// How an entry writes `setting`.
fn entry_key(setting: &str) -> String {
    match setting {
        "LISTEN_ADDR" => "listen_addr".to_owned(),
        "LISTENER_NAME" => "name".to_owned(),
        _ => TLS_KEYS
            .iter()
            .find(|(_, name)| *name == setting)
            .map_or_else(
                || setting.to_ascii_lowercase(),
                |(key, _)| format!("tls.{key}"),
            ),
    }
}

/// Whether a listen address binds loopback only (`127.0.0.1:…`, `[::1]:…`, `localhost:…`).
fn is_loopback(address: &str) -> bool {
    crate::units::parse_listen_address(address).is_ok_and(|(host, _)| {
        host.is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    })
}
