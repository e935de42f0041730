//! Command line: `serve` (the default), `check`, `config schema`, `send`, `bench`, and the
//! commands that steer a running server through its admin API (`stats`, `messages`, `dlq`,
//! `pause`, `resume`, `audit`, `logs`), plus `token create` and `store` (checks and repairs
//! of a stopped server's data directory).

pub mod admin;
mod bench;
mod bench_dicom;
pub mod client;
mod dlq;
mod drain;
pub mod interfaces;
mod offline;
mod probe;
mod render;
mod send;
mod store;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use bench::{BenchArgs, BenchReport, run_bench};
pub use dlq::{DlqArgs, DlqCommand, run_dlq};
pub use drain::{DrainReport, LatencyMs};
pub use probe::{Probe, ProbeStore, probe};
pub use send::{SendSummary, run_send};
pub use store::{StoreArgs, StoreCommand, run_store};

/// mfoundry: an HL7 v2 integration gateway.
///
/// Without a command it serves MLLP on LISTEN_ADDR (default :2575). Settings come from
/// environment variables; see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "mfoundry", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive HL7 v2 over MLLP, store each message durably, answer with an ACK (the default).
    Serve(ConfigArgs),
    /// Load the configuration, compile every rule and filter, report every problem; binds no
    /// port. Exits 0 when all is well, 64 otherwise.
    Check(ConfigArgs),
    /// Run interface tests: each case directory's message through the real rules, routes,
    /// transforms and output formats (no port, no store), compared with its expect.yaml and
    /// <connector>.out files; prints a diff per failing case. Exits 0 when all pass, 1 when any
    /// fails, 2 when a case cannot be read, 64 on a configuration problem. --update writes
    /// the expectations from what the gateway does now.
    Test(interfaces::TestArgs),
    /// Configuration helpers.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Send the messages in FILEs over MLLP, wait for each ACK and print it.
    ///
    /// A file may hold one or many messages, with any line endings; batch envelopes
    /// (FHS/BHS/BTS/FTS) are dropped and each message is sent on its own. Prints one line per
    /// message: control id, ACK code, text. Exits 0 when every message got AA or CA, 1 when
    /// any did not, 2 when a file cannot be read or the server cannot be reached.
    Send(SendArgs),
    /// Load-test an MLLP server: C connections, N messages, each waiting for its ACK; prints
    /// throughput, ACK latency percentiles and non-AA answers, next to a probe of this
    /// machine's fsync, redb commit and loopback round-trip times.
    Bench(Box<BenchArgs>),
    /// Dead-letter queues of the running server: list, show, replay, purge (--offline: a
    /// stopped server's data directory).
    Dlq(DlqArgs),
    /// Checks and repairs of a stopped server's store: `verify` reads every record and
    /// reports damage; `recover --accept-loss` opens a store mfoundry refuses to open.
    Store(StoreArgs),
    /// Counters per listener and connector, queue depths and ages, DLQ sizes.
    Stats(client::ApiArgs),
    /// Ask a running server whether it is ready (`/readyz`) or alive (`--live`, `/livez`);
    /// no token needed. For images without a shell (container health checks, `helm test`).
    /// Exits 0 when it answers 200, 1 when it answers otherwise (draining, not started),
    /// 2 when it cannot be reached.
    Health(client::HealthArgs),
    /// Search stored messages, or show one with its body.
    Messages {
        /// Admin API address, data directory, output format.
        #[command(flatten)]
        api: client::ApiArgs,
        /// What to do.
        #[command(subcommand)]
        command: admin::MessagesCommand,
    },
    /// Stop delivering to a connector after the message in hand (intake keeps queueing).
    Pause {
        /// Admin API address, data directory, output format.
        #[command(flatten)]
        api: client::ApiArgs,
        /// Connector name.
        connector: String,
    },
    /// Deliver to a paused connector again.
    Resume {
        /// Admin API address, data directory, output format.
        #[command(flatten)]
        api: client::ApiArgs,
        /// Connector name.
        connector: String,
    },
    /// The audit trail: list records, verify the hash chain.
    Audit {
        /// Admin API address, data directory, output format.
        #[command(flatten)]
        api: client::ApiArgs,
        /// Read a stopped server's data directory instead of the admin API (before or after
        /// the subcommand).
        #[arg(long, global = true)]
        offline: bool,
        /// What to do.
        #[command(subcommand)]
        command: admin::AuditCommand,
    },
    /// Recent log lines of the running server.
    Logs {
        /// Admin API address, data directory, output format.
        #[command(flatten)]
        api: client::ApiArgs,
        /// Lines to print (at most 500).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Admin API tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
}

/// `--config`, shared by `serve` and `check`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file (default: CONFIG_FILE, else ./mfoundry.yaml if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `mfoundry config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema (draft-07) of the YAML configuration, for editors.
    Schema,
}

/// Arguments of `mfoundry send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Address of the MLLP server, host:port.
    #[arg(long, default_value = "127.0.0.1:2575")]
    pub addr: String,
    /// How long to wait for each ACK (Go duration: 500ms, 30s, 1m).
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    pub timeout: std::time::Duration,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Send each file whole in one frame, as a batch (FHS/BHS … BTS/FTS, or messages one
    /// after another), and print the answer's codes: one line for the batch, then one per
    /// ACK it holds. Without it, each message is sent on its own and envelopes are dropped.
    #[arg(long)]
    pub batch: bool,
    /// Files with HL7 v2 messages.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// The TLS options of `send` and `bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Connect over TLS (implied by the other --tls-* options); the server's certificate is
    /// checked against the system's CAs and --tls-ca.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of CA certificates to trust in addition to the system's.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of a client certificate (chain, leaf first) for servers that require mTLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS client these options ask for, for a server at `addr` (`host:port`); `None`
    /// for plain MLLP.
    pub fn client(&self, addr: &str) -> anyhow::Result<Option<crate::tls::TlsClient>> {
        let wanted = self.tls
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_server_name.is_some();
        if !wanted {
            return Ok(None);
        }
        let server_name = match &self.tls_server_name {
            Some(name) => name.clone(),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                host.trim_matches(['[', ']']).to_owned()
            }
        };
        let settings = crate::tls::ClientTlsSettings {
            ca_file: self.tls_ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            server_name: Some(server_name),
        };
        crate::tls::TlsClient::new(settings, ["--tls-ca", "--tls-cert", "--tls-key"])
            .map(Some)
            .map_err(|error| anyhow::anyhow!(error))
    }
}

/// A byte size such as `512KiB` (clap value parser).
fn parse_size_arg(text: &str) -> Result<u64, String> {
    crate::units::parse_size(text)
}

fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::units::parse_duration(text)
}
