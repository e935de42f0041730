//! `mfoundry bench`: a load generator that measures what senders see.
//!
//! C connections each send their share of N messages one at a time, waiting for each ACK (as
//! an ordered MLLP sender does). Every message gets a unique MSH-10 so retransmit detection
//! never short-cuts the work. Before the load, a probe measures this machine's floor: a raw
//! 4 KiB write + fsync, one bare redb commit, and a loopback round trip, so figures can be
//! compared with the disk they ran on (shared disks swing a lot).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::probe::{Probe, ProbeStore, encryption_cost, median, probe};
use crate::hl7::{AckCode, Message};
use crate::mllp::MllpClient;
use anyhow::Context;

/// The default message: a ~1.5 KB ORU^R01 with 17 OBX segments.
const SAMPLE: &[u8] = include_bytes!("../../examples/bench/oru-r01.hl7");

/// Arguments of `mfoundry bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Address of the MLLP server, host:port.
    #[arg(long, default_value = "127.0.0.1:2575")]
    pub addr: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Messages in total, shared among the connections.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub messages: usize,
    /// File holding the message to send (default: a built-in 1.5 KB ORU^R01).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How long to wait for each ACK (Go duration).
    #[arg(long, default_value = "30s", value_parser = super::parse_go_duration)]
    pub timeout: Duration,
    /// Directory for the fsync/commit probe; put it on the disk that holds DATA_DIR.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub probe_dir: PathBuf,
    /// Skip the probe.
    #[arg(long)]
    pub no_probe: bool,
    /// Print every figure as one JSON object on one line instead of the text lines (for
    /// tracking speed over time).
    #[arg(long)]
    pub json: bool,
    /// TLS (each connection does one handshake, then sends its share).
    #[command(flatten)]
    pub tls: super::TlsArgs,
    /// Post each message to an HTTP listener (`http://host:port/hl7`; `https://` with the
    /// --tls-* options) instead of MLLP at --addr; each connection keeps one HTTP/1.1
    /// connection and posts its share one after another.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// After the load, wait until each of these connectors has delivered what the load
    /// queued for it, and report its delivered messages per second (first send to last
    /// delivery) and delivery latency next to the intake rate. Reads the gateway's admin
    /// API (--admin-addr; the token from ADMIN_TOKEN or --data-dir's admin.token).
    #[arg(long, value_name = "CONNECTOR", num_args = 1..)]
    pub drain: Vec<String>,
    /// The admin API's address, for --drain.
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: String,
    /// The gateway's data directory, for --drain: its admin.token is used when ADMIN_TOKEN
    /// is not set.
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Bearer token for --http (the listener's tokens_file holds its line).
    #[arg(
        long,
        env = "INTAKE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Send DICOM objects by C-STORE to a `type: dicom` listener at --addr (each connection
    /// one association) instead of HL7: synthetic CT images of --object-size bytes of pixel
    /// data, each with a new SOP Instance UID; reports objects per second in (and out, with
    /// --drain).
    #[arg(long)]
    pub dicom: bool,
    /// --dicom: bytes of pixel data per object.
    #[arg(long, default_value = "512KiB", value_parser = super::parse_size_arg)]
    pub object_size: u64,
    /// --dicom: the listener's AE title.
    #[arg(long, default_value = "MFOUNDRY", value_name = "AE")]
    pub called_ae: String,
    /// --dicom: the AE title to call as.
    #[arg(long, default_value = "BENCH", value_name = "AE")]
    pub calling_ae: String,
}

/// Where an HTTP bench posts.
#[derive(Clone, Debug)]
struct HttpTarget {
    url: String,
    token: Option<String>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl HttpTarget {
    /// From `--http`, `--token` and the --tls-* options (`https://` implies TLS).
    fn from_args(args: &BenchArgs) -> anyhow::Result<Option<Self>> {
        let Some(url) = &args.http else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--http {url}"))?;
        let authority = format!(
            "{}:{}",
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or(443)
        );
        let mut tls_args = args.tls.clone();
        tls_args.tls |= parsed.scheme() == "https";
        let tls = tls_args.client(&authority)?.map(|client| client.config());
        Ok(Some(Self {
            url: url.clone(),
            token: args.token.clone(),
            tls,
        }))
    }

    /// One client keeping one connection.
    fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        crate::tls::install_crypto_provider();
        let builder = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(1)
            .timeout(timeout);
        match &self.tls {
            Some(config) => builder.tls_backend_preconfigured((**config).clone()),
            None => builder,
        }
        .build()
    }

    /// Post one message: the ACK of a 200, 422 or 503 answer.
    async fn post(
        &self,
        client: &reqwest::Client,
        message: Vec<u8>,
    ) -> Result<bytes::Bytes, String> {
        let mut request = client
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                crate::http_intake::HL7_MEDIA_TYPE,
            )
            .body(message);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        if !matches!(status, 200 | 422 | 503) {
            return Err(format!("HTTP {status}"));
        }
        response.bytes().await.map_err(|error| error.to_string())
    }
}

/// How a bench connection sends.
enum Transport {
    Mllp(MllpClient),
    Http(reqwest::Client),
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

impl Percentiles {
    /// Of these latencies (sorted here).
    pub(super) fn of<T: Copy + Ord + Into<f64>>(latencies: &mut [T]) -> Self {
        latencies.sort_unstable();
        Self {
            p50: percentile(latencies, 0.50),
            p99: percentile(latencies, 0.99),
            p999: percentile(latencies, 0.999),
        }
    }
}

/// What a bench run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchReport {
    /// The probe, unless `--no-probe`.
    pub probe: Option<Probe>,
    /// One connection with the probe on: per round, the round's ACK p50 divided by (a bare
    /// redb commit p50 measured just before it + the loopback round trip). None otherwise.
    pub round_ratios: Option<Vec<f64>>,
    /// Messages that got an answer.
    pub answered: usize,
    /// Answers other than AA.
    pub not_aa: usize,
    /// Messages that got no answer (timeout, closed connection).
    pub failed: usize,
    /// Wall time of the load.
    pub elapsed: Duration,
    /// ACK latency.
    pub latency: Percentiles,
    /// What each `--drain` connector delivered.
    pub drain: Vec<super::DrainReport>,
}

impl BenchReport {
    /// The median of [`BenchReport::round_ratios`].
    pub fn floor_ratio(&self) -> Option<f64> {
        self.round_ratios
            .as_ref()
            .map(|ratios| median(ratios.clone()))
    }

    /// The smallest and the largest of [`BenchReport::round_ratios`].
    fn round_ratio_range(&self) -> Option<(f64, f64)> {
        self.round_ratios.as_ref().map(|ratios| {
            (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            )
        })
    }

    /// Answered messages per second.
    pub fn throughput(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Rounds of an interleaved run: with one connection and the probe on, the load is cut into
/// this many rounds, each preceded by [`PROBE_COMMITS_PER_ROUND`] bare commits, so each round's
/// ACKs are compared with a floor measured a second before them, not minutes.
const ROUNDS: usize = 10;
/// Bare redb commits before each round of an interleaved run.
const PROBE_COMMITS_PER_ROUND: usize = 30;

/// Run the probe (unless disabled) and the load; print a report to `out`.
pub async fn run_bench(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    if args.dicom {
        return super::bench_dicom::run(args, out).await;
    }
    let sample = match &args.file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => SAMPLE.to_vec(),
    };
    let template = crate::hl7::split_messages(&sample)
        .context("the sample file")?
        .into_iter()
        .next()
        .context("the sample file holds no message")?;

    // With `--json` the text lines go nowhere and one object is printed at the end.
    let mut sink = std::io::sink();
    let (out, json_out): (&mut dyn Write, Option<&mut dyn Write>) = if args.json {
        (&mut sink, Some(out))
    } else {
        (out, None)
    };
    let mut floor = None;
    if !args.no_probe {
        let probe = probe(&args.probe_dir).await?;
        writeln!(
            out,
            "probe ({}): fsync 4KiB p50 {:.0} µs, redb commit p50 {:.0} µs, loopback round trip p50 {:.0} µs",
            args.probe_dir.display(),
            probe.fsync,
            probe.redb_commit,
            probe.loopback_rtt
        )?;
        writeln!(
            out,
            "floor for one ordered sender (redb commit + round trip): {:.0} µs",
            probe.redb_commit + probe.loopback_rtt
        )?;
        let (seal, open) = encryption_cost(template.len());
        writeln!(
            out,
            "encryption at rest (ENCRYPTION_KEY_FILE), per message of this size: seal p50 {seal:.1} µs at intake, open p50 {open:.1} µs at delivery (record with body, queue entry, audit record)"
        )?;
        floor = Some(Probe {
            seal_per_message: seal,
            open_per_message: open,
            ..probe
        });
    }

    let http = HttpTarget::from_args(args)?.map(std::sync::Arc::new);
    let tls = match &http {
        Some(_) => None,
        None => args.tls.client(&args.addr)?.map(std::sync::Arc::new),
    };
    let watch = drain_watch(args).await?;
    let started = Instant::now();
    let mut report = BenchReport::default();
    let mut latencies: Vec<u32> = Vec::with_capacity(args.messages);
    match floor {
        Some(probe) if args.connections == 1 => {
            let (result, ratios, sending) =
                interleaved(args, tls.as_deref(), http.as_deref(), &template, probe).await?;
            latencies = result.latencies;
            report.not_aa = result.not_aa;
            report.failed = result.failed;
            let rounds = ratios.len();
            report.round_ratios = Some(ratios);
            // Throughput counts the time spent sending, not the probe commits between rounds.
            report.elapsed = sending;
            let (min, max) = report.round_ratio_range().unwrap_or_default();
            writeln!(
                out,
                "ACK p50 ÷ floor, per round ({rounds} rounds, each after {PROBE_COMMITS_PER_ROUND} bare commits): median {:.2}, min {min:.2}, max {max:.2}",
                report.floor_ratio().unwrap_or_default(),
            )?;
        }
        _ => {
            let mut tasks = Vec::with_capacity(args.connections);
            let run = run_tag();
            for connection in 0..args.connections {
                let share = args.messages / args.connections
                    + usize::from(connection < args.messages % args.connections);
                let template = template.clone();
                let addr = args.addr.clone();
                let timeout = args.timeout;
                let tls = tls.clone();
                let http = http.clone();
                let run = run.clone();
                tasks.push(tokio::spawn(async move {
                    let mut sender = Sender::connect(
                        &addr,
                        tls.as_deref(),
                        http.as_deref(),
                        connection,
                        &run,
                        timeout,
                    )
                    .await?;
                    let mut result = ConnectionResult::with_capacity(share);
                    sender.send(0..share, &template, &mut result).await;
                    anyhow::Ok(result)
                }));
            }
            for task in tasks {
                let result = task.await.context("a bench connection panicked")??;
                latencies.extend(result.latencies);
                report.not_aa += result.not_aa;
                report.failed += result.failed;
            }
            report.elapsed = started.elapsed();
        }
    }
    report.answered = latencies.len();
    report.latency = Percentiles::of(&mut latencies);
    writeln!(
        out,
        "{}connections {}, messages {} ({} bytes each): {:.0} msg/s in {:.2} s",
        if http.is_some() {
            "HTTP POST /hl7, "
        } else {
            ""
        },
        args.connections,
        args.messages,
        template.len(),
        report.throughput(),
        report.elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "ACK latency: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
        report.latency.p50, report.latency.p99, report.latency.p999
    )?;
    writeln!(
        out,
        "answers other than AA: {}, no answer: {}",
        report.not_aa, report.failed
    )?;
    if let Some(watch) = watch {
        report.drain = watch.finish(report.throughput(), args.timeout).await?;
        for drained in &report.drain {
            let latency = drained.latency_ms;
            writeln!(
                out,
                "drain {}: {} of {} delivered in {:.2} s: {:.0} msg/s ({:.2}x intake); delivery latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
                drained.connector,
                drained.delivered,
                drained.queued,
                drained.elapsed_secs,
                drained.per_second,
                drained.ratio_to_intake,
                latency.p50,
                latency.p90,
                latency.p99,
                latency.max,
                if drained.drained {
                    ""
                } else {
                    " (NOT drained: no progress for the timeout)"
                }
            )?;
        }
    }
    report.probe = floor;
    if let Some(json_out) = json_out {
        let object = json_report(args, template.len(), &report);
        serde_json::to_writer(&mut *json_out, &object)?;
        writeln!(json_out)?;
    }
    Ok(report)
}

/// The `--drain` watch, started before the load (none without `--drain`).
pub(super) async fn drain_watch(
    args: &BenchArgs,
) -> anyhow::Result<Option<super::drain::DrainWatch>> {
    if args.drain.is_empty() {
        return Ok(None);
    }
    let api = super::client::ApiArgs {
        admin_addr: args.admin_addr.clone(),
        data_dir: args.data_dir.clone(),
        admin_ca: std::env::var_os("ADMIN_CA_FILE").map(std::path::PathBuf::from),
        json: false,
    };
    Ok(Some(
        super::drain::DrainWatch::start(&api, &args.drain).await?,
    ))
}

/// The `--json` object: every figure of the text lines, in microseconds and messages/s.
fn json_report(args: &BenchArgs, message_bytes: usize, report: &BenchReport) -> serde_json::Value {
    let rounds = report
        .round_ratios
        .as_ref()
        .filter(|ratios| !ratios.is_empty())
        .zip(report.round_ratio_range())
        .map(|(ratios, (min, max))| {
            serde_json::json!({
                "rounds": ratios.len(),
                "probe_commits_per_round": PROBE_COMMITS_PER_ROUND,
                "median": report.floor_ratio(),
                "min": min,
                "max": max,
            })
        });
    serde_json::json!({
        "addr": args.http.as_deref().unwrap_or(&args.addr),
        "transport": if args.http.is_some() { "http" } else { "mllp" },
        "connections": args.connections,
        "messages": args.messages,
        "message_bytes": message_bytes,
        "answered": report.answered,
        "not_aa": report.not_aa,
        "no_answer": report.failed,
        "elapsed_secs": report.elapsed.as_secs_f64(),
        "throughput_per_sec": report.throughput(),
        "ack_latency_us": report.latency,
        "probe": report.probe.map(|probe| serde_json::json!({
            "dir": args.probe_dir.display().to_string(),
            "fsync_4k_p50_us": probe.fsync,
            "redb_commit_p50_us": probe.redb_commit,
            "loopback_round_trip_p50_us": probe.loopback_rtt,
            "floor_us": probe.redb_commit + probe.loopback_rtt,
            "seal_per_message_p50_us": probe.seal_per_message,
            "open_per_message_p50_us": probe.open_per_message,
        })),
        "ack_p50_over_floor": rounds,
        "drain": report.drain,
    })
}

/// One connection's run cut into rounds, each after a few bare commits on the probe's disk:
/// returns the result and, per round, the round's ACK p50 divided by (the round's commit p50 +
/// the loopback round trip), and the time spent sending (the probe commits left out).
async fn interleaved(
    args: &BenchArgs,
    tls: Option<&crate::tls::TlsClient>,
    http: Option<&HttpTarget>,
    template: &[u8],
    probe: Probe,
) -> anyhow::Result<(ConnectionResult, Vec<f64>, Duration)> {
    let rounds = ROUNDS.min(args.messages);
    let mut store = ProbeStore::open(&args.probe_dir)?;
    let mut sender = Sender::connect(&args.addr, tls, http, 0, &run_tag(), args.timeout).await?;
    let mut result = ConnectionResult::with_capacity(args.messages);
    let mut ratios = Vec::with_capacity(rounds);
    let mut sending = Duration::ZERO;
    let mut next = 0;
    for round in 0..rounds {
        let share = args.messages / rounds + usize::from(round < args.messages % rounds);
        let (returned, commits) = tokio::task::spawn_blocking(move || {
            let commits = store.commits(PROBE_COMMITS_PER_ROUND);
            (store, commits)
        })
        .await
        .context("probe task failed")?;
        store = returned;
        let commit = median(commits?);
        let mut round_result = ConnectionResult::with_capacity(share);
        let round_started = Instant::now();
        sender
            .send(next..next + share, template, &mut round_result)
            .await;
        sending += round_started.elapsed();
        next += share;
        // Sorted here for the round's p50; the whole run is sorted again for the report.
        round_result.latencies.sort_unstable();
        if !round_result.latencies.is_empty() {
            ratios.push(percentile(&round_result.latencies, 0.5) / (commit + probe.loopback_rtt));
        }
        result.latencies.extend(round_result.latencies);
        result.not_aa += round_result.not_aa;
        result.failed += round_result.failed;
    }
    Ok((result, ratios, sending))
}

/// Nearest-rank percentile of sorted samples; 0 without any.
pub(super) fn percentile<T: Copy + Into<f64>>(sorted: &[T], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * quantile).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].into()
}

struct ConnectionResult {
    latencies: Vec<u32>,
    not_aa: usize,
    failed: usize,
}

impl ConnectionResult {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            latencies: Vec::with_capacity(capacity),
            not_aa: 0,
            failed: 0,
        }
    }
}

/// Replace MSH-10 of `template` with `control_id`.
fn with_control_id(template: &[u8], control_id: &str) -> Vec<u8> {
    let Some(&separator) = template.get(3) else {
        return template.to_vec();
    };
    let header_end = memchr::memchr2(b'\r', b'\n', template).unwrap_or(template.len());
    let separators: Vec<usize> = memchr::memchr_iter(separator, &template[..header_end])
        .take(10)
        .collect();
    // MSH-n starts after the (n-1)th separator (MSH-1 is the first separator itself).
    let Some(&before) = separators.get(8) else {
        return template.to_vec();
    };
    let after = separators.get(9).copied().unwrap_or(header_end);
    let mut out = Vec::with_capacity(template.len() + control_id.len());
    out.extend_from_slice(&template[..=before]);
    out.extend_from_slice(control_id.as_bytes());
    out.extend_from_slice(&template[after..]);
    out
}

/// One bench connection: sends messages one at a time, reconnecting after a failure.
struct Sender<'a> {
    addr: &'a str,
    tls: Option<&'a crate::tls::TlsClient>,
    http: Option<&'a HttpTarget>,
    /// The start of every control id it sends: unique per run and connection, so a
    /// second run is not answered as retransmissions of the first.
    tag: String,
    timeout: Duration,
    client: Option<Transport>,
}

/// Runs of `bench` in this process (a part of each control id).
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A tag for this run's control ids: the process, the run's start and its number.
pub(super) fn run_tag() -> String {
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = chrono::Utc::now().timestamp_millis() % 1_000_000;
    format!("B{}.{started}.{run}", std::process::id())
}

impl<'a> Sender<'a> {
    /// The first connection must work: a wrong address is an error, not a measurement.
    async fn connect(
        addr: &'a str,
        tls: Option<&'a crate::tls::TlsClient>,
        http: Option<&'a HttpTarget>,
        connection: usize,
        run: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut sender = Self {
            addr,
            tls,
            http,
            tag: format!("{run}-{connection}"),
            timeout,
            client: None,
        };
        sender.client = Some(sender.reconnect().await?);
        Ok(sender)
    }

    async fn reconnect(&self) -> anyhow::Result<Transport> {
        match self.http {
            Some(http) => {
                let client = http.client(self.timeout)?;
                // Open the connection before the clock starts, as MLLP connects first: a
                // GET is answered 405 without touching the store, and the connection stays.
                let _ = client.get(&http.url).send().await;
                Ok(Transport::Http(client))
            }
            None => Ok(Transport::Mllp(
                MllpClient::connect_with(self.addr, self.tls, Duration::from_secs(10), 1 << 20)
                    .await?,
            )),
        }
    }

    /// Send the messages numbered `sequences`, each waiting for its ACK.
    async fn send(
        &mut self,
        sequences: std::ops::Range<usize>,
        template: &[u8],
        result: &mut ConnectionResult,
    ) {
        let end = sequences.end;
        for sequence in sequences {
            let Some(connected) = self.client.as_mut() else {
                // The server went away (stopped, or refusing connections): the rest of this
                // share is not sent and counts as unanswered.
                result.failed += end - sequence;
                break;
            };
            let control_id = format!("{}-{sequence}", self.tag);
            let message = with_control_id(template, &control_id);
            let sent = Instant::now();
            let answered = match connected {
                Transport::Mllp(client) => client
                    .request(&message, self.timeout)
                    .await
                    .map_err(|error| error.to_string()),
                Transport::Http(client) => match self.http {
                    Some(http) => http.post(client, message).await,
                    None => Err("no URL".to_owned()),
                },
            };
            match answered {
                Ok(ack) => {
                    let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                    result.latencies.push(micros);
                    let code = Message::parse(ack)
                        .ok()
                        .and_then(|ack| ack.value("MSA-1").and_then(AckCode::parse));
                    if code != Some(AckCode::AA) {
                        result.not_aa += 1;
                    }
                }
                Err(_) => {
                    result.failed += 1;
                    self.client = self.reconnect().await.ok();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn control_id_is_replaced_in_place() {
        let template = b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|OLD|P|2.5.1\rPID|1|OLD\r";
        let out = with_control_id(template, "NEW-1");
        assert_eq!(
            out,
            b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|NEW-1|P|2.5.1\rPID|1|OLD\r"
        );
        let bytes = Bytes::from(out);
        assert_eq!(
            Message::parse(bytes).expect("parses").header_field(10),
            b"NEW-1"
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 500.0);
        assert_eq!(percentile(&sorted, 0.99), 990.0);
        assert_eq!(percentile(&sorted, 0.999), 999.0);
        assert_eq!(percentile::<u32>(&[], 0.5), 0.0);
    }
}
