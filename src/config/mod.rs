//! Configuration: built-in defaults < YAML file < environment variables.
//!
//! Only the names listed in [`ENV_VARS`] are read, so variables Kubernetes injects
//! (`<SERVICE>_PORT` …) never disturb startup. The YAML file ([`file`]) holds connectors,
//! validation rules and, in lower case, any setting that has an environment variable; each
//! layer replaces the keys it sets ([`settings`]). Loading is pure apart from reading the file: every problem is
//! collected (not just the first) with where it came from, and the CLI prints them all and
//! exits 64 before any port is bound. Every variable and key is documented in
//! `docs/configuration.md`; a test keeps that table and [`ENV_VARS`] equal.

pub mod connectors;
mod dicom;
mod directory;
mod env;
pub mod file;
pub mod listeners;
pub mod schema;
mod settings;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use env::{ENV_VARS, EnvVar};
pub use file::{ConnectorKind, FileConfig};
pub use listeners::{ListenerConfig, ListenerKind};
use settings::parse_name;
pub use settings::{EncryptionSettings, Settings};

pub use crate::mllp::ListenerSettings;
use crate::rules::{ExpressionSource, FilterSpec, Origin, RuleProblem, RuleSet, RuleSpec};
pub use crate::telemetry::LogFormat;
use crate::transform::{TableSpec, TransformSpec, Transforms};

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
    pub(crate) fn one(problem: String) -> Self {
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

/// A connector as configured.
#[derive(Clone, Debug)]
pub struct Connector {
    /// Unique name.
    pub name: String,
    /// Kind of output.
    pub kind: ConnectorKind,
    /// Its output settings, checked (`${ENV}` references resolved).
    pub output: Option<connectors::OutputSettings>,
    /// Its delivery as written (type, output and delivery settings, whether it has
    /// `order_by`; not its filter, transform or the `order_by` expression): equal for two
    /// loads of the file when its worker can keep running (a configuration reload). Holds
    /// secrets as written: compared, never shown.
    pub delivery: String,
}

/// The whole configuration: settings, connectors and rules.
#[derive(Clone, Debug)]
pub struct Config {
    /// Scalar settings.
    pub settings: Settings,
    /// The YAML file read, if any.
    pub file: Option<PathBuf>,
    /// The SHA-256 of that file's bytes as read (stored with each message it decides, in
    /// the audit trail for a reload).
    pub sha256: Option<[u8; 32]>,
    /// Connectors in file order.
    pub connectors: Vec<Connector>,
    /// Validation rules in file order.
    pub rules: Vec<RuleSpec>,
    /// Each connector's filter, in connector order.
    pub filters: Vec<FilterSpec>,
    /// `tls_senders`: what each client certificate may send as; `None` when not set (with
    /// `listeners:`, each listener's own are in [`Config::listeners`]).
    pub senders: Option<crate::tls::SenderMap>,
    /// The inbound listeners: the entries of `listeners:`, or the one the settings describe.
    pub listeners: Vec<ListenerConfig>,
    /// Code tables (`tables:`), read by [`Config::compile`].
    pub tables: Vec<TableSpec>,
    /// Each connector's transform steps, in connector order.
    pub transforms: Vec<TransformSpec>,
}

/// What [`Config::compile`] makes of the expressions and steps: ready for every message.
#[derive(Debug)]
pub struct Compiled {
    /// Validation rules and connector filters.
    pub rules: RuleSet,
    /// Each connector's transform, with the tables loaded.
    pub transforms: Transforms,
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
        // Problems found in the file's sections, with their places; reported with the rest.
        let mut found = Vec::new();
        let mut sha256 = None;
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => {
                use sha2::Digest as _;
                sha256 = Some(sha2::Sha256::digest(text.as_bytes()).into());
                Some(file::parse(&text, &file_name, &mut found).map_err(ConfigErrors::one)?)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(error) => {
                return Err(ConfigErrors::one(format!(
                    "cannot read the configuration file {file_name}: {error}"
                )));
            }
        };
        let layers = settings::merge_layers(file.as_ref(), &file_name, lookup);
        let with_listeners = file.as_ref().is_some_and(|file| file.listeners.is_some());
        // With `listeners:`, the entries own the listener's address and files: what is set
        // beside them is one conflict each (listeners::resolve), not also a bad value here.
        let base = layers.with_defaults(&listeners::PER_LISTENER);
        let settings = if with_listeners {
            Settings::from_layers(&base)
        } else {
            Settings::from_layers(&layers)
        };
        let place = |at: crate::yaml::At| format!("{file_name}:{}:{}", at.line, at.column);
        let file_origin = |at: crate::yaml::At| Origin {
            file: Some(file_name.clone()),
            line: at.line,
            column: at.column,
        };
        let mut problems: Vec<ConfigProblem> = found
            .into_iter()
            .map(|problem| ConfigProblem {
                name: String::new(),
                subject: place(problem.at),
                problem: problem.message,
            })
            .collect();
        problems.extend(
            settings
                .as_ref()
                .err()
                .map(|errors| errors.0.clone())
                .unwrap_or_default(),
        );
        let mut connectors = Vec::new();
        let mut filters = Vec::new();
        let mut rules = Vec::new();
        let mut senders = None;
        let mut transforms = Vec::new();
        let mut tables = Vec::new();
        if let Some(file) = &file {
            if let (Some(listed), false) = (&file.tls_senders, with_listeners) {
                let mutual = settings
                    .as_ref()
                    .ok()
                    .and_then(|settings| settings.tls.as_ref())
                    .is_some_and(|tls| tls.client_ca.is_some());
                senders = Some(read_senders(
                    listed,
                    &file_name,
                    settings.is_ok() && !mutual,
                    &mut problems,
                ));
            }
            let mut seen = HashSet::new();
            for connector in &file.connectors {
                let name = &connector.name;
                let at = place(name.at);
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
                        origin: file_origin(filter.at),
                    }),
                    order_by: connector
                        .order_by
                        .as_ref()
                        .map(|order_by| ExpressionSource {
                            text: order_by.value.clone(),
                            origin: file_origin(order_by.at),
                        }),
                });
                let mut found = Vec::new();
                let mut output = connectors::build(connector, lookup, &mut found);
                if let (Some(output), Ok(Some(allow))) = (
                    output.as_mut(),
                    settings.as_ref().map(|settings| &settings.egress_allow),
                ) {
                    let destinations = output
                        .output
                        .destinations(lookup)
                        .map_err(|problem| vec![problem]);
                    let checked = destinations.and_then(|destinations| {
                        let refused: Vec<String> = destinations
                            .iter()
                            .filter_map(|(host, port)| allow.check(host, *port).err())
                            .collect();
                        if refused.is_empty() {
                            Ok(())
                        } else {
                            Err(refused)
                        }
                    });
                    for problem in checked.err().unwrap_or_default() {
                        problems.push(ConfigProblem {
                            name: "EGRESS_ALLOW".to_owned(),
                            subject: format!(
                                "{}: connector {:?} (type {})",
                                place(name.at),
                                name.value,
                                connector.kind.as_str()
                            ),
                            problem,
                        });
                    }
                    output.output.restrict(allow);
                }
                problems.extend(found.into_iter().map(|problem| ConfigProblem {
                    name: String::new(),
                    subject: format!(
                        "{}: connector {:?} (type {})",
                        place(problem.at),
                        name.value,
                        connector.kind.as_str()
                    ),
                    problem: problem.message,
                }));
                // Keyed lanes (ADR 0015): their keys need `order_by`, and exclude
                // `min_interval`.
                let lanes_problem = output.as_ref().and_then(|output| {
                    let keyed = connector.order_by.is_some();
                    if keyed && output.min_interval.is_some() {
                        Some("`min_interval` spaces the sends of a connector that delivers one message at a time; with `order_by` its lanes send in parallel: remove one of them")
                    } else if !keyed && (output.lanes.is_some() || output.on_dead_letter.is_some()) {
                        Some("`lanes` and `on_dead_letter` need `order_by` (the key messages are kept in order by, e.g. order_by: pid.id); without it the connector delivers strictly in order, one message at a time")
                    } else {
                        None
                    }
                });
                if let Some(problem) = lanes_problem {
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!(
                            "{}: connector {:?} (type {})",
                            place(name.at),
                            name.value,
                            connector.kind.as_str()
                        ),
                        problem: problem.to_owned(),
                    });
                }
                connectors.push(Connector {
                    name: name.value.clone(),
                    kind: connector.kind,
                    output,
                    delivery: format!(
                        "{} order_by={}",
                        connector
                            .node
                            .without_places(&["filter", "transform", "order_by"]),
                        connector.order_by.is_some()
                    ),
                });
                let mut steps = connector.transform.clone();
                for origin in steps
                    .iter_mut()
                    .flat_map(crate::transform::StepSpec::origins_mut)
                {
                    origin.file = Some(file_name.clone());
                }
                transforms.push(TransformSpec {
                    connector: name.value.clone(),
                    steps,
                });
            }
            tables = file.tables.clone();
            for table in &mut tables {
                table.origin.file = Some(file_name.clone());
            }
            let mut seen = HashSet::new();
            for rule in &file.rules {
                let name = &rule.name;
                if name.value.trim().is_empty() || !seen.insert(name.value.clone()) {
                    problems.push(ConfigProblem {
                        name: String::new(),
                        subject: format!(
                            "{}: validation rule name {:?}",
                            place(name.at),
                            name.value
                        ),
                        problem: "rule names must be non-empty and unique".to_owned(),
                    });
                }
                rules.push(RuleSpec {
                    name: name.value.clone(),
                    expression: ExpressionSource {
                        text: rule.expression.value.clone(),
                        origin: file_origin(rule.expression.at),
                    },
                    message: rule.message.clone(),
                });
            }
        }
        if let Ok(Some(allow)) = settings.as_ref().map(|settings| &settings.egress_allow) {
            problems.extend(check_otlp_egress(allow, lookup));
        }
        let listeners = match (&file, &settings) {
            (Some(file), Ok(_)) if with_listeners => {
                let rule_names: Vec<String> = rules.iter().map(|rule| rule.name.clone()).collect();
                let context = listeners::Context {
                    layers: &layers,
                    base: &base,
                    file_name: &file_name,
                    rule_names: &rule_names,
                    top_senders: file.tls_senders_at,
                };
                listeners::resolve(
                    file.listeners.as_deref().unwrap_or_default(),
                    &context,
                    &mut problems,
                )
            }
            (_, Ok(settings)) => vec![ListenerConfig::from_settings(settings, senders.clone())],
            (_, Err(_)) => Vec::new(),
        };
        if !problems.is_empty() || settings.is_err() {
            // Report the expressions' and steps' problems too, so one run shows everything.
            if let Err(errors) = compile(
                &rules,
                &filters,
                &tables,
                &transforms,
                &base_directory(&path),
                Duration::from_secs(1),
            ) {
                problems.extend(errors.0);
            }
        }
        match settings {
            Ok(settings) if problems.is_empty() => Ok(Self {
                settings,
                file: file.is_some().then_some(path),
                sha256,
                connectors,
                rules,
                filters,
                senders,
                listeners,
                tables,
                transforms,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }

    /// Compile the rules, filters and transforms and load the tables (what `serve` and
    /// `mfoundry check` do before anything is opened); every problem at once.
    pub fn compile(&self) -> Result<Compiled, ConfigErrors> {
        let base = self
            .file
            .as_deref()
            .map_or_else(PathBuf::new, base_directory);
        compile(
            &self.rules,
            &self.filters,
            &self.tables,
            &self.transforms,
            &base,
            self.settings.rules_time_budget,
        )
    }

    /// Compile every rule and filter (the second half of `mfoundry check`).
    pub fn compile_rules(&self) -> Result<RuleSet, ConfigErrors> {
        RuleSet::compile(&self.rules, &self.filters, self.settings.rules_time_budget)
            .map_err(rule_errors)
    }
}

/// Compile problems of expressions, as configuration problems.
fn rule_errors(problems: Vec<RuleProblem>) -> ConfigErrors {
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
}

/// The directory a configuration file's relative paths (table files) are read from.
fn base_directory(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Rules and filters, tables, transforms: every problem of all three.
fn compile(
    rules: &[RuleSpec],
    filters: &[FilterSpec],
    tables: &[TableSpec],
    transforms: &[TransformSpec],
    base: &Path,
    budget: Duration,
) -> Result<Compiled, ConfigErrors> {
    let convert = |problems: Vec<RuleProblem>| rule_errors(problems).0;
    let mut problems = Vec::new();
    let rules =
        RuleSet::compile(rules, filters, budget).map_err(|found| problems.extend(convert(found)));
    // A table that does not load is named once, not again by every step that uses it.
    let (tables, table_problems) = crate::transform::Tables::load_all(tables, base);
    problems.extend(convert(table_problems));
    let transforms = Transforms::compile(transforms, &tables, budget)
        .map_err(|found| problems.extend(convert(found)));
    match (rules, transforms) {
        (Ok(rules), Ok(transforms)) if problems.is_empty() => Ok(Compiled { rules, transforms }),
        _ => Err(ConfigErrors(problems)),
    }
}

/// `tls_senders`: what each client certificate may send as. `needs_mtls` when mTLS is off
/// while the settings are otherwise fine (the map would never be used).
fn read_senders(
    listed: &[file::TlsSender],
    file_name: &str,
    needs_mtls: bool,
    problems: &mut Vec<ConfigProblem>,
) -> crate::tls::SenderMap {
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
        let subject = format!(
            "{file_name}:{}:{}: tls_senders identity {:?}",
            identity.at.line, identity.at.column, identity.value
        );
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
        if entry.sending_applications.is_empty() || entry.sending_facilities.is_empty() {
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
    if needs_mtls {
        problems.push(ConfigProblem {
            name: String::new(),
            subject: format!("{file_name}: tls_senders"),
            problem: "tls_senders maps client certificates, which are only asked for with mTLS; set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA".to_owned(),
        });
    }
    crate::tls::SenderMap::new(entries)
}

/// The OTLP exporter's endpoint against `EGRESS_ALLOW`. The exporter resolves names itself,
/// out of mfoundry's reach, so its endpoint must be an address the list allows or a name it
/// lists (a listed name is trusted with what it resolves to, as for every output); a name
/// that would pass only by resolving into a range is refused.
fn check_otlp_egress(
    allow: &crate::outputs::egress::EgressAllow,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for name in [
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        let Some(url) = lookup(name).filter(|url| !url.trim().is_empty()) else {
            continue;
        };
        let problem = |problem: String| ConfigProblem {
            name: name.to_owned(),
            subject: name.to_owned(),
            problem,
        };
        match crate::outputs::egress::url_destination(url.trim()) {
            None => problems.push(problem(format!(
                "{name} is not an http:// or https:// URL with a host; EGRESS_ALLOW cannot check it"
            ))),
            Some((host, port)) => {
                let allowed = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => allow.allows_address(ip, port),
                    Err(_) => allow.lists(&host, port),
                };
                if !allowed {
                    problems.push(problem(format!(
                        "{host}:{port} is outside EGRESS_ALLOW ({}): the OTLP exporter resolves names itself, so list its name (or its address) there",
                        allow.text()
                    )));
                }
            }
        }
        // The metrics endpoint wins when both are set.
        break;
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::env::ENV_ONLY;
    use super::*;
    use crate::hl7::Charset;
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
            let mut problems = Vec::new();
            let parsed = file::parse(&text, "test.yaml", &mut problems)
                .unwrap_or_else(|error| panic!("{key} is not YAML: {error}"));
            assert_eq!(problems, [], "{key} is not a YAML key");
            let value = parsed
                .scalars
                .get(key.as_str())
                .unwrap_or_else(|| panic!("{key} is not read"));
            assert_eq!(value.value, var.default);
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

    #[test]
    fn metrics_addr_is_off_unless_set_to_a_listen_address() {
        assert_eq!(load(&[]).expect("defaults").metrics_addr, None);
        assert_eq!(
            load(&[("METRICS_ADDR", "OFF")]).expect("off").metrics_addr,
            None
        );
        for addr in [":9464", "127.0.0.1:9464", "[::1]:0"] {
            assert_eq!(
                load(&[("METRICS_ADDR", addr)])
                    .expect(addr)
                    .metrics_addr
                    .as_deref(),
                Some(addr)
            );
        }
        let text = load(&[("METRICS_ADDR", "9464")])
            .expect_err("no colon")
            .to_string();
        assert!(text.contains("METRICS_ADDR=\"9464\""), "{text}");
        assert!(
            text.contains("or off to serve no metrics endpoint"),
            "{text}"
        );
    }
}
