//! Each connector's output settings, checked and typed at load: required keys per type, keys
//! that do not belong to the type, `${ENV_VAR}` references, durations and templates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::file::{ConnectorFile, ConnectorKind};
use crate::delivery::RetryPolicy;
use crate::outputs::OutputSpec;
use crate::outputs::file::{FileNameTemplate, FileSpec};
use crate::outputs::http::{HttpFormat, HttpSpec, TokenSource};
use crate::outputs::mllp::{MllpSpec, RejectAction};
use crate::outputs::postgres::PostgresSpec;
use crate::units::parse_duration;

/// How a connector delivers, as configured.
#[derive(Clone, Debug)]
pub struct OutputSettings {
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Least time between two sends.
    pub min_interval: Option<Duration>,
    /// Start paused.
    pub paused: bool,
    /// The output itself.
    pub output: OutputSpec,
}

/// Default file name: one directory per day, the message id first so names sort by arrival.
pub const DEFAULT_FILENAME: &str = "{received:%Y%m%d}/{entry}-{control_id}.hl7";
/// Default PostgreSQL table.
pub const DEFAULT_TABLE: &str = "hl7_messages";

/// Replace `${NAME}` with the environment variable's value, `${NAME:-default}` with the value
/// or, when it is unset or empty, the default (`$$` is a literal `$`).
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("`${{{name}}}` is not an environment variable name"));
            }
            let value = match (lookup(name).filter(|value| !value.is_empty()), default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_owned(),
                (None, None) => lookup(name).ok_or_else(|| {
                    format!("refers to ${{{name}}}, which is not set in the environment")
                })?,
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Build and check a connector's output settings. Every problem is returned, each naming the
/// key and what to do.
pub fn build(
    connector: &ConnectorFile,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<OutputSettings, Vec<String>> {
    let mut problems = Vec::new();
    let kind = connector.kind;
    let mut text = |key: &str, value: &Option<String>| -> Option<String> {
        let value = value.as_ref()?;
        match expand_env(value, lookup) {
            Ok(expanded) => Some(expanded),
            Err(problem) => {
                problems.push(format!("`{key}` {problem}"));
                None
            }
        }
    };
    let url = text("url", &connector.url);
    let host = text("host", &connector.host);
    let port = text("port", &connector.port.as_ref().map(|port| port.0.clone()));
    let directory = text("directory", &connector.directory);
    let filename = text("filename", &connector.filename);
    let dsn = text("dsn", &connector.dsn);
    let dsn_file = text("dsn_file", &connector.dsn_file);
    let table = text("table", &connector.table);
    let bearer_token_file = text("bearer_token_file", &connector.bearer_token_file);
    let tls_ca_file = text("tls_ca_file", &connector.tls_ca_file);
    let tls_cert_file = text("tls_cert_file", &connector.tls_cert_file);
    let tls_key_file = text("tls_key_file", &connector.tls_key_file);
    let tls_files = (tls_ca_file.is_some() || tls_cert_file.is_some() || tls_key_file.is_some())
        .then(|| TlsFiles {
            ca: tls_ca_file.map(PathBuf::from),
            cert: tls_cert_file.map(PathBuf::from),
            key: tls_key_file.map(PathBuf::from),
        });
    let mut headers = BTreeMap::new();
    for (name, value) in connector.headers.iter().flatten() {
        if let Some(value) = text(&format!("headers.{name}"), &Some(value.clone())) {
            headers.insert(name.clone(), value);
        }
    }

    // Keys that belong to other types are mistakes (a `port` on a file connector does nothing).
    let present: [(&str, bool, &[ConnectorKind]); 22] = [
        (
            "url",
            connector.url.is_some(),
            &[ConnectorKind::Http, ConnectorKind::Nats],
        ),
        ("host", connector.host.is_some(), &[ConnectorKind::Mllp]),
        ("port", connector.port.is_some(), &[ConnectorKind::Mllp]),
        (
            "connect_timeout",
            connector.connect_timeout.is_some(),
            &[ConnectorKind::Mllp],
        ),
        (
            "ack_timeout",
            connector.ack_timeout.is_some(),
            &[ConnectorKind::Mllp],
        ),
        (
            "on_reject",
            connector.on_reject.is_some(),
            &[ConnectorKind::Mllp],
        ),
        (
            "directory",
            connector.directory.is_some(),
            &[ConnectorKind::File],
        ),
        (
            "filename",
            connector.filename.is_some(),
            &[ConnectorKind::File],
        ),
        ("dsn", connector.dsn.is_some(), &[ConnectorKind::Postgres]),
        (
            "dsn_file",
            connector.dsn_file.is_some(),
            &[ConnectorKind::Postgres],
        ),
        (
            "table",
            connector.table.is_some(),
            &[ConnectorKind::Postgres],
        ),
        (
            "subject",
            connector.subject.is_some(),
            &[ConnectorKind::Nats],
        ),
        ("method", connector.method.is_some(), &[ConnectorKind::Http]),
        (
            "headers",
            connector.headers.is_some(),
            &[ConnectorKind::Http],
        ),
        (
            "bearer_token_env",
            connector.bearer_token_env.is_some(),
            &[ConnectorKind::Http],
        ),
        (
            "bearer_token_file",
            connector.bearer_token_file.is_some(),
            &[ConnectorKind::Http],
        ),
        ("format", connector.format.is_some(), &[ConnectorKind::Http]),
        ("tls", connector.tls.is_some(), &[ConnectorKind::Mllp]),
        (
            "tls_server_name",
            connector.tls_server_name.is_some(),
            &[ConnectorKind::Mllp],
        ),
        (
            "tls_ca_file",
            connector.tls_ca_file.is_some(),
            &[
                ConnectorKind::Http,
                ConnectorKind::Mllp,
                ConnectorKind::Postgres,
            ],
        ),
        (
            "tls_cert_file",
            connector.tls_cert_file.is_some(),
            &[
                ConnectorKind::Http,
                ConnectorKind::Mllp,
                ConnectorKind::Postgres,
            ],
        ),
        (
            "tls_key_file",
            connector.tls_key_file.is_some(),
            &[
                ConnectorKind::Http,
                ConnectorKind::Mllp,
                ConnectorKind::Postgres,
            ],
        ),
    ];
    for (key, is_set, kinds) in present {
        if is_set && !kinds.contains(&kind) {
            problems.push(format!(
                "`{key}` does not apply to type {}; remove it",
                kind.as_str()
            ));
        }
    }
    if connector.timeout.is_some() && kind != ConnectorKind::Http {
        problems.push(format!(
            "`timeout` does not apply to type {}; remove it",
            kind.as_str()
        ));
    }

    let mut duration = |key: &str, value: &Option<String>, default: Duration| -> Duration {
        match value.as_deref().map(parse_duration) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(problem)) => {
                problems.push(format!("`{key}`: {problem} (Go syntax, e.g. 30s)"));
                default
            }
        }
    };
    let connect_timeout = duration(
        "connect_timeout",
        &connector.connect_timeout,
        Duration::from_secs(10),
    );
    let ack_timeout = duration(
        "ack_timeout",
        &connector.ack_timeout,
        Duration::from_secs(30),
    );
    let timeout = duration("timeout", &connector.timeout, Duration::from_secs(30));
    let min_interval = connector
        .min_interval
        .as_ref()
        .map(|_| duration("min_interval", &connector.min_interval, Duration::ZERO))
        .filter(|interval| !interval.is_zero());
    let mut retry = RetryPolicy::default();
    if let Some(file) = &connector.retry {
        retry.initial_delay = duration(
            "retry.initial_delay",
            &file.initial_delay,
            retry.initial_delay,
        );
        retry.max_delay = duration("retry.max_delay", &file.max_delay, retry.max_delay);
        if let Some(multiplier) = file.multiplier {
            if multiplier.is_finite() && (1.0..=100.0).contains(&multiplier) {
                retry.multiplier = multiplier;
            } else {
                problems.push(format!(
                    "`retry.multiplier` is {multiplier}; use a number from 1 to 100"
                ));
            }
        }
        if let Some(max_attempts) = file.max_attempts {
            retry.max_attempts = max_attempts;
        }
        if retry.initial_delay > retry.max_delay {
            problems.push("`retry.initial_delay` is longer than `retry.max_delay`".to_owned());
        }
    }

    let output = match kind {
        ConnectorKind::Mllp => {
            if connector.host.is_none() {
                problems.push(
                    "`host` is required for type mllp (the peer's name or address)".to_owned(),
                );
            }
            let port = match port.as_deref().map(|port| port.trim().parse::<u16>()) {
                Some(Ok(port)) if port > 0 => port,
                Some(_) => {
                    problems.push("`port` must be a number from 1 to 65535".to_owned());
                    0
                }
                None => {
                    if connector.port.is_none() {
                        problems.push("`port` is required for type mllp (1-65535)".to_owned());
                    }
                    0
                }
            };
            let on_reject = match connector.on_reject.as_deref() {
                None | Some("dead_letter") => RejectAction::DeadLetter,
                Some("retry") => RejectAction::Retry,
                Some(other) => {
                    problems.push(format!(
                        "`on_reject` is {other:?}; use dead_letter or retry"
                    ));
                    RejectAction::DeadLetter
                }
            };
            let host = host.unwrap_or_default();
            let addr = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let tls = match connector.tls {
                Some(false) if tls_files.is_some() || connector.tls_server_name.is_some() => {
                    problems.push(
                        "`tls: false` with `tls_*` keys; remove them or set `tls: true`".to_owned(),
                    );
                    None
                }
                Some(false) => None,
                None if tls_files.is_none() && connector.tls_server_name.is_none() => None,
                _ if connector.host.is_none() => None,
                _ => {
                    let server_name = connector
                        .tls_server_name
                        .clone()
                        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
                    tls_client(
                        &Some(tls_files.clone().unwrap_or_default()),
                        Some(server_name),
                        &mut problems,
                    )
                }
            };
            Some(OutputSpec::Mllp(MllpSpec {
                addr,
                connect_timeout,
                ack_timeout,
                on_reject,
                tls,
            }))
        }
        ConnectorKind::Http => {
            let url = url.unwrap_or_default();
            if connector.url.is_none() {
                problems.push("`url` is required for type http".to_owned());
            } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push("`url` must start with http:// or https://".to_owned());
            }
            let method = connector
                .method
                .clone()
                .unwrap_or_else(|| "POST".to_owned())
                .to_ascii_uppercase();
            if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
                problems.push(format!("`method` is {method:?}; use POST, PUT or PATCH"));
            }
            let format = match connector.format.as_deref() {
                None | Some("hl7") => HttpFormat::Hl7,
                Some("json") => HttpFormat::Json,
                Some(other) => {
                    problems.push(format!("`format` is {other:?}; use hl7 or json"));
                    HttpFormat::Hl7
                }
            };
            let token = match (&connector.bearer_token_env, bearer_token_file) {
                (Some(_), Some(_)) => {
                    problems
                        .push("set `bearer_token_env` or `bearer_token_file`, not both".to_owned());
                    None
                }
                (Some(name), None) => Some(TokenSource::Env(name.clone())),
                (None, Some(path)) => Some(TokenSource::File(PathBuf::from(path))),
                (None, None) => None,
            };
            if let Some(TokenSource::Env(name)) = &token
                && lookup(name).is_none()
            {
                problems.push(format!(
                    "`bearer_token_env` names {name}, which is not set in the environment"
                ));
            }
            let tls = tls_client(&tls_files, None, &mut problems);
            Some(OutputSpec::Http(HttpSpec {
                url,
                method,
                headers,
                token,
                format,
                timeout,
                tls,
            }))
        }
        ConnectorKind::File => {
            if connector.directory.is_none() {
                problems.push("`directory` is required for type file".to_owned());
            }
            let template = filename.as_deref().unwrap_or(DEFAULT_FILENAME);
            match FileNameTemplate::parse(template) {
                Ok(filename) => Some(OutputSpec::File(FileSpec {
                    directory: PathBuf::from(directory.unwrap_or_default()),
                    filename,
                })),
                Err(problem) => {
                    problems.push(format!("`filename`: {problem}"));
                    None
                }
            }
        }
        ConnectorKind::Postgres => {
            let dsn = match (dsn, dsn_file) {
                (Some(_), Some(_)) => {
                    problems.push("set `dsn` or `dsn_file`, not both".to_owned());
                    String::new()
                }
                (Some(dsn), None) => dsn,
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(text) => text.trim().to_owned(),
                    Err(error) => {
                        problems.push(format!("`dsn_file` {path:?} cannot be read: {error}"));
                        String::new()
                    }
                },
                // Like psql: the PG* environment variables and libpq's defaults.
                (None, None) => {
                    if let Some(mode) = lookup("PGSSLMODE")
                        && !matches!(mode.trim(), "disable" | "prefer" | "require")
                    {
                        problems.push(format!(
                            "PGSSLMODE is {:?}; mfoundry takes disable, prefer or require (certificates are always checked when TLS is on)",
                            mode.trim()
                        ));
                    }
                    String::new()
                }
            };
            let table = table.unwrap_or_else(|| DEFAULT_TABLE.to_owned());
            if !valid_table_name(&table) {
                problems.push(format!(
                    "`table` {table:?} must be a plain name or schema.name (letters, digits, _; not starting with a digit)"
                ));
            }
            // The server name is the connection string's host.
            let tls = tls_client(&tls_files, None, &mut problems);
            Some(OutputSpec::Postgres(PostgresSpec { dsn, table, tls }))
        }
        ConnectorKind::Nats => {
            problems.push(
                "type nats is not available in this version of mfoundry; use mllp, http, file or postgres"
                    .to_owned(),
            );
            None
        }
    };
    match output {
        Some(output) if problems.is_empty() => Ok(OutputSettings {
            retry,
            min_interval,
            paused: connector.paused.unwrap_or(false),
            output,
        }),
        _ => Err(problems),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DSN" => Some("host=db user=x".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn env_references_expand_and_missing_ones_are_named() {
        assert_eq!(
            expand_env("a ${DSN} b", &env).as_deref(),
            Ok("a host=db user=x b")
        );
        assert_eq!(expand_env("$${DSN} $5", &env).as_deref(), Ok("${DSN} $5"));
        assert_eq!(expand_env("${EMPTY}x", &env).as_deref(), Ok("x"));
        let missing = expand_env("${NOPE}", &env).expect_err("unset");
        assert!(
            missing.contains("${NOPE}") && missing.contains("not set"),
            "{missing}"
        );
        assert!(expand_env("${BAD NAME}", &env).is_err());
        assert_eq!(expand_env("${NOPE:-a b}", &env).as_deref(), Ok("a b"));
        assert_eq!(expand_env("${EMPTY:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(
            expand_env("${DSN:-x}", &env).as_deref(),
            Ok("host=db user=x")
        );
        assert!(expand_env("${OPEN", &env).is_err());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(valid_table_name("hl7_messages"));
        assert!(valid_table_name("lab.hl7_messages"));
        assert!(!valid_table_name("x; drop table y"));
        assert!(!valid_table_name("a.b.c"));
        assert!(!valid_table_name("1abc"));
        assert!(!valid_table_name(""));
    }
}

/// A connector's `tls_*` files.
#[derive(Clone, Debug, Default)]
struct TlsFiles {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The TLS client of a connector: `None` without files; the files are read and checked now
/// (problems name the key and the file).
fn tls_client(
    files: &Option<TlsFiles>,
    server_name: Option<String>,
    problems: &mut Vec<String>,
) -> Option<std::sync::Arc<crate::tls::TlsClient>> {
    let files = files.as_ref()?;
    let paired = files.cert.is_some() == files.key.is_some();
    if !paired {
        problems.push(
            "set both `tls_cert_file` and `tls_key_file` for a client certificate".to_owned(),
        );
    }
    // Without a pair, the CA file is still checked, so one run names every problem.
    let settings = crate::tls::ClientTlsSettings {
        ca_file: files.ca.clone(),
        cert_file: files.cert.clone().filter(|_| paired),
        key_file: files.key.clone().filter(|_| paired),
        server_name,
    };
    match crate::tls::TlsClient::new(
        settings,
        ["`tls_ca_file`", "`tls_cert_file`", "`tls_key_file`"],
    ) {
        Ok(client) if paired => Some(std::sync::Arc::new(client)),
        Ok(_) => None,
        Err(problem) => {
            problems.push(problem);
            None
        }
    }
}
