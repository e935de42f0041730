//! File descriptors: the MLLP listener's connections must never be starved of descriptors by
//! anything else. At startup the open-file limit is raised to its hard limit, and a warning
//! names the settings when even that is below what the configured limits can hold open at
//! once: every MLLP connection (and the reserved slots), the admin listener's and the
//! metrics endpoint's caps, and a reserve for the store, outputs, certificate files and logs. The admin listener's own cap
//! ([`crate::admin::MAX_CONNECTIONS`]) is what keeps admin clients from taking the MLLP
//! listener's share.

use tracing::{info, warn};

use crate::config::Config;

/// Descriptors kept for everything but connections: the store and its journal, outputs'
/// connections and files, TLS and token files, the log, the runtime.
pub const RESERVE: u64 = 256;

/// What the configured limits can hold open at once; `None` when a listener's connections
/// are unlimited (`MAX_CONNECTIONS=0`).
pub fn needed(config: &Config) -> Option<u64> {
    let settings = &config.settings;
    let mut listeners = 0;
    for listener in &config.listeners {
        let mllp = listener.settings.max_connections? as u64;
        // Reserved slots for known certificates (mllp/listener.rs: an eighth, at least one)
        // and as many handshakes on probation again.
        listeners += mllp + (mllp / 8).max(1) * 5;
    }
    let admin = settings
        .admin_addr
        .as_ref()
        .map_or(0, |_| crate::admin::MAX_CONNECTIONS as u64);
    let metrics = settings
        .metrics_addr
        .as_ref()
        .map_or(0, |_| super::metrics::MAX_CONNECTIONS as u64);
    Some(listeners + admin + metrics + RESERVE)
}

/// Raise the soft open-file limit to the hard one; warn when it is below [`needed`].
pub fn ensure(config: &Config) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let mut current = limit.current;
        if let (Some(soft), hard) = (limit.current, limit.maximum)
            && hard.is_none_or(|hard| hard > soft)
        {
            let raised = Rlimit {
                current: hard,
                maximum: hard,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    current = hard;
                    info!(from = soft, to = ?hard, "open-file limit raised to its hard limit");
                }
                Err(error) => {
                    warn!(error = %error, "cannot raise the open-file limit")
                }
            }
        }
        match (current, needed(config)) {
            (Some(limit), Some(needed)) if limit < needed => warn!(
                limit,
                needed,
                "the open-file limit is below what MAX_CONNECTIONS (with its reserved slots), the admin API and the store can hold open; raise it (ulimit -n, the container runtime's nofile) or lower MAX_CONNECTIONS"
            ),
            (Some(limit), None) => warn!(
                limit,
                "MAX_CONNECTIONS=0 (unlimited): connections can use every file descriptor the process has; set a limit"
            ),
            _ => {}
        }
    }
    #[cfg(not(unix))]
    let _ = config;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Config {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        crate::config::Config::load_with(None, &|name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        })
        .unwrap_or_else(|_| panic!("settings load"))
    }

    #[test]
    fn what_the_limits_can_hold_open() {
        // 256 connections, 32 reserved slots and as many handshakes four times over, the
        // admin API's 64, the reserve.
        assert_eq!(needed(&settings(&[])), Some(256 + 160 + 64 + RESERVE));
        assert_eq!(
            needed(&settings(&[
                ("MAX_CONNECTIONS", "1000"),
                ("ADMIN_ADDR", "off")
            ])),
            Some(1000 + 625 + RESERVE)
        );
        assert_eq!(needed(&settings(&[("MAX_CONNECTIONS", "0")])), None);
        // The metrics endpoint's 4 when it is on.
        assert_eq!(
            needed(&settings(&[("METRICS_ADDR", ":9464")])),
            Some(256 + 160 + 64 + 4 + RESERVE)
        );
    }
}
