//! Settings: built-in defaults overridden by environment variables.
//!
//! Only the names listed in [`ENV_VARS`] are read, so variables Kubernetes injects
//! (`<SERVICE>_PORT` …) never disturb startup. Loading is pure: [`Settings::from_lookup`] takes
//! a lookup function, collects every problem (not just the first), and does no I/O; the CLI
//! prints them all and exits 64 before any port is bound. Every variable is documented in
//! `docs/configuration.md`; a test keeps that table and [`ENV_VARS`] equal.

mod values;

use std::fmt;
use std::time::Duration;

pub use values::{format_duration, parse_duration, parse_listen_address, parse_size};

use crate::hl7::Charset;

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
        name: "LISTEN_ADDR",
        default: ":2575",
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
        name: "LOG_FORMAT",
        default: "text",
    },
    EnvVar {
        name: "RUST_LOG",
        default: "info",
    },
];

/// Largest `MAX_CONNECTIONS` accepted (more would exceed what a semaphore can hold).
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Default of a variable in [`ENV_VARS`].
fn default_of(name: &str) -> &'static str {
    ENV_VARS
        .iter()
        .find(|var| var.name == name)
        .map(|var| var.default)
        .unwrap_or_default()
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of the MLLP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    /// `LISTEN_ADDR`, Go syntax (`:2575` is every interface).
    pub listen_addr: String,
    /// `MAX_CONNECTIONS`; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// `IDLE_TIMEOUT`: close a connection that sends nothing for this long; `None` never.
    pub idle_timeout: Option<Duration>,
    /// `FRAME_TIMEOUT`: a frame must be complete this long after its start block; `None` never.
    pub frame_timeout: Option<Duration>,
    /// `WRITE_TIMEOUT`: each ACK write must finish within this; `None` never.
    pub write_timeout: Option<Duration>,
    /// `KEEP_ALIVE_PERIOD`: TCP keep-alive probe period; `None` disables keep-alive.
    pub keep_alive_period: Option<Duration>,
    /// `MAX_FRAME_SIZE` in bytes, between the start and end blocks.
    pub max_frame_size: usize,
}

/// Everything `mfoundry serve` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The MLLP listener.
    pub listener: ListenerSettings,
    /// `DEFAULT_CHARACTER_SET`: used for messages whose MSH-18 is empty or unknown.
    pub default_charset: Charset,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

/// One invalid setting: which variable, what it held, what is expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable's name.
    pub name: &'static str,
    /// The value it held.
    pub value: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}={:?}: {}",
            self.name, self.value, self.problem
        )
    }
}

/// Every problem found while loading settings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(formatter, "  {problem}")?;
        }
        Ok(())
    }
}

/// Collects problems while reading variables one by one.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    fn read<T>(
        &mut self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
        fallback: T,
    ) -> T {
        let value = (self.lookup)(name).unwrap_or_else(|| default_of(name).to_owned());
        match parse(&value) {
            Ok(parsed) => parsed,
            Err(problem) => {
                self.problems.push(ConfigProblem {
                    name,
                    value,
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
    /// Read the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Read the settings through `lookup` (a name-to-value function), reporting every problem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut reader = Reader {
            lookup,
            problems: Vec::new(),
        };
        let listen_addr = reader.read(
            "LISTEN_ADDR",
            |text| parse_listen_address(text).map(|_| text.trim().to_owned()),
            String::new(),
        );
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
        let log_format = reader.read(
            "LOG_FORMAT",
            |text| match text.trim().to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected text or json".to_owned()),
            },
            LogFormat::Text,
        );
        if !reader.problems.is_empty() {
            return Err(ConfigErrors(reader.problems));
        }
        Ok(Self {
            listener: ListenerSettings {
                listen_addr,
                max_connections,
                idle_timeout,
                frame_timeout,
                write_timeout,
                keep_alive_period,
                max_frame_size,
            },
            default_charset,
            log_format,
        })
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
        let names: Vec<_> = errors.0.iter().map(|problem| problem.name).collect();
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
