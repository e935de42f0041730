//! What every output uses to read its settings from its connector's YAML: text with
//! `${ENV}` references expanded, Go durations, the `tls_*` files. Each problem names the key
//! and carries its place; reading goes on after a problem, so one run reports them all.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{ClientTlsSettings, TlsClient};
use crate::units::parse_duration;
use crate::yaml::{At, Map, Problem, Problems};

/// Reads one connector's output keys.
pub struct Reader<'r, 'a> {
    /// The connector's mapping.
    pub map: &'r mut Map<'a>,
    /// Stands in for the environment (`${NAME}` references, `bearer_token_env`, `PG*`).
    pub lookup: &'r dyn Fn(&str) -> Option<String>,
    /// Where problems go.
    pub problems: &'r mut Problems,
}

impl std::fmt::Debug for Reader<'_, '_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Reader")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl Reader<'_, '_> {
    /// Record a problem at `key`'s value (or the connector, when the key is absent).
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let at = self.place(key);
        self.problems.push(Problem {
            at,
            message: message.into(),
        });
    }

    /// Where `key`'s value is written, or the connector when it is not.
    pub fn place(&self, key: &str) -> At {
        self.map.place(key)
    }

    /// Whether `key` is written.
    pub fn has(&self, key: &str) -> bool {
        self.map.has(key)
    }

    /// The text under `key` turned into a value by `convert`; its error, which follows the
    /// key's name in the problem, is recorded at the value.
    fn converted<T>(
        &mut self,
        key: &str,
        convert: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.map.text(key, self.problems)?;
        match convert(&value.value) {
            Ok(converted) => Some(converted),
            Err(problem) => {
                self.problems.push(Problem {
                    at: value.at,
                    message: format!("`{}`{problem}", self.map.name(key)),
                });
                None
            }
        }
    }

    /// A text value with `${ENV}` references expanded.
    pub fn text(&mut self, key: &str) -> Option<String> {
        let lookup = self.lookup;
        self.converted(key, |text| {
            crate::yaml::expand_env(text, lookup).map_err(|problem| format!(" {problem}"))
        })
    }

    /// A text value taken as written (no `${ENV}` expansion).
    pub fn raw_text(&mut self, key: &str) -> Option<String> {
        self.map.text(key, self.problems).map(|value| value.value)
    }

    /// `true` or `false`.
    pub fn bool(&mut self, key: &str) -> Option<bool> {
        self.map.bool(key, self.problems)
    }

    /// A mapping of text to text, each value with `${ENV}` references expanded.
    pub fn text_map(&mut self, key: &str) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let at = self.place(key);
        let Some(entries) = self.map.text_map(key, self.problems) else {
            return out;
        };
        for (name, value) in entries {
            match crate::yaml::expand_env(&value, self.lookup) {
                Ok(value) => {
                    out.insert(name, value);
                }
                Err(problem) => self.problems.push(Problem {
                    at,
                    message: format!("`{key}.{name}` {problem}"),
                }),
            }
        }
        out
    }

    /// A Go duration (`30s`), or `default` when absent or wrong (the problem is recorded).
    pub fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.optional_duration(key).unwrap_or(default)
    }

    /// A Go duration, `None` when absent or wrong (the problem is recorded).
    pub fn optional_duration(&mut self, key: &str) -> Option<Duration> {
        self.converted(key, |text| {
            parse_duration(text).map_err(|problem| format!(": {problem} (Go syntax, e.g. 30s)"))
        })
    }

    /// A required value is missing: say what it is for.
    pub fn require(&mut self, key: &str, what: &str) {
        if !self.has(key) {
            let name = self.map.name(key);
            self.problem(key, format!("`{name}` is required {what}"));
        }
    }

    /// The `tls_*` files, when any is written.
    pub fn tls_files(&mut self) -> Option<TlsFiles> {
        let ca = self.text("tls_ca_file");
        let cert = self.text("tls_cert_file");
        let key = self.text("tls_key_file");
        (ca.is_some() || cert.is_some() || key.is_some()).then(|| TlsFiles {
            ca: ca.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
        })
    }

    /// A socket peer's address (`host:port`, IPv6 in brackets) and its TLS (`tls`,
    /// `tls_server_name`, the `tls_*` files), as the MLLP and DICOM outputs take them: TLS is
    /// on with `tls: true` or any `tls_*` key, the server name defaulting to `host`.
    pub fn peer(&mut self, host: &str, port: u16) -> (String, Option<Arc<TlsClient>>) {
        let tls_on = self.bool("tls");
        let server_name = self.text("tls_server_name");
        let files = self.tls_files();
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = match tls_on {
            Some(false) if files.is_some() || server_name.is_some() => {
                self.problem(
                    "tls",
                    "`tls: false` with `tls_*` keys; remove them or set `tls: true`",
                );
                None
            }
            Some(false) => None,
            None if files.is_none() && server_name.is_none() => None,
            _ if host.is_empty() => None,
            _ => {
                let server_name =
                    server_name.unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
                self.tls_client(Some(&files.unwrap_or_default()), Some(server_name))
            }
        };
        (addr, tls)
    }

    /// The TLS client for `files`: `None` without files; the files are read and checked
    /// now (problems name the key and the file).
    pub fn tls_client(
        &mut self,
        files: Option<&TlsFiles>,
        server_name: Option<String>,
    ) -> Option<Arc<TlsClient>> {
        let files = files?;
        let paired = files.cert.is_some() == files.key.is_some();
        if !paired {
            self.problem(
                if files.cert.is_some() {
                    "tls_cert_file"
                } else {
                    "tls_key_file"
                },
                "set both `tls_cert_file` and `tls_key_file` for a client certificate",
            );
        }
        // Without a pair, the CA file is still checked, so one run names every problem.
        let settings = ClientTlsSettings {
            ca_file: files.ca.clone(),
            cert_file: files.cert.clone().filter(|_| paired),
            key_file: files.key.clone().filter(|_| paired),
            server_name,
        };
        match TlsClient::new(
            settings,
            ["`tls_ca_file`", "`tls_cert_file`", "`tls_key_file`"],
        ) {
            Ok(client) if paired => Some(Arc::new(client)),
            Ok(_) => None,
            Err(problem) => {
                let key = if problem.contains("tls_ca_file") {
                    "tls_ca_file"
                } else if problem.contains("tls_key_file") {
                    "tls_key_file"
                } else {
                    "tls_cert_file"
                };
                self.problem(key, problem);
                None
            }
        }
    }
}

/// A connector's `tls_*` files.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// `tls_ca_file`.
    pub ca: Option<PathBuf>,
    /// `tls_cert_file`.
    pub cert: Option<PathBuf>,
    /// `tls_key_file`.
    pub key: Option<PathBuf>,
}

/// The `tls_*` keys the outputs that speak TLS take.
pub const TLS_KEYS: [&str; 3] = ["tls_ca_file", "tls_cert_file", "tls_key_file"];
