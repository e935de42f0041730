//! The environment variables mfoundry reads, with their defaults. The list is the contract
//! with platform teams: `docs/configuration.md` documents each (a test keeps them equal) and
//! the Helm chart's schema is built from it.

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
        name: "MAX_CONNECTIONS_PER_PEER",
        default: "0",
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
        name: "MAX_FRAME_MEMORY",
        default: "256MiB",
    },
    EnvVar {
        name: "BATCH_ACK",
        default: "per_message",
    },
    EnvVar {
        name: "BATCH_COUNT_MISMATCH",
        default: "reject",
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
        name: "PATIENT_INDEX",
        default: "true",
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
        name: "METRICS_ADDR",
        default: "off",
    },
    EnvVar {
        name: "ADMIN_TOKENS_FILE",
        default: "",
    },
    EnvVar {
        name: "ADMIN_TLS_CERT_FILE",
        default: "",
    },
    EnvVar {
        name: "ADMIN_TLS_KEY_FILE",
        default: "",
    },
    EnvVar {
        name: "CONSOLE_IDLE_TIMEOUT",
        default: "15m",
    },
    EnvVar {
        name: "EGRESS_ALLOW",
        default: "",
    },
    EnvVar {
        name: "ENCRYPTION_KEY_FILE",
        default: "",
    },
    EnvVar {
        name: "ENCRYPTION_OLD_KEY_FILES",
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
pub(crate) const ENV_ONLY: &[&str] = &["CONFIG_FILE", "RUST_LOG"];
