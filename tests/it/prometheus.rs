//! `METRICS_ADDR`: the real binary serves `GET /metrics` in Prometheus' text format, with the
//! series the shipped Grafana dashboard queries (the names a collector gives the OTLP
//! export, checked in `deploy/`'s dashboard tests). Off by default: nothing is served then.

use crate::common;
use crate::deploy::dashboard::{dashboard, dashboard_names, metric_for_series};
use common::http::get;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use mfoundry::telemetry::metrics;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory with `gateway.yaml`: one file connector, `archive`, writing to `out/`.
fn gateway_directory() -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(directory.path().join("out")).expect("out directory");
    std::fs::write(
        directory.path().join("gateway.yaml"),
        format!(
            "connectors:\n  - name: archive\n    type: file\n    directory: {}\n",
            directory.path().join("out").display()
        ),
    )
    .expect("write");
    directory
}

/// The address the server logged for its metrics endpoint (it logs it before the admin
/// API's, which [`common::Server::start`] waits for).
fn metrics_addr(server: &common::Server) -> String {
    let key = "\"metrics_addr\":\"";
    server
        .early
        .iter()
        .find_map(|line| {
            let start = line.find(key)? + key.len();
            let rest = &line[start..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .unwrap_or_else(|| panic!("no metrics_addr logged: {:#?}", server.early))
}

/// The value of the first series line that starts with `prefix` (name and labels).
fn value_of(scrape: &str, prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
}

/// The series names in a scrape (comments left out).
fn series_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every series of mfoundry's metrics the dashboard's queries name (panel expressions and
/// query variables), as the dashboard tests in `deploy/` read them.
fn dashboard_series() -> BTreeSet<String> {
    dashboard_names(&dashboard())
        .metrics
        .into_iter()
        .filter(|series| metric_for_series(series).is_some())
        .collect()
}

#[test]
fn the_metrics_endpoint_serves_every_series_the_dashboard_queries() {
    let directory = gateway_directory();
    let gateway = common::Server::start(
        directory.path(),
        "gateway.yaml",
        "data",
        &[("METRICS_ADDR", "127.0.0.1:0")],
    );
    let addr = metrics_addr(&gateway);
    let message = std::fs::read_to_string(root().join("examples/messages/adt-a01.hl7"))
        .expect("example message");
    common::send_text(directory.path(), &gateway.addr, &message);

    // Wait until the scrape shows the message delivered (its delivery attempt recorded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let response = get(&addr, "/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.content_type, "text/plain; version=0.0.4; charset=utf-8",
            "the text exposition format"
        );
        let delivered = value_of(
            &response.body,
            "messaging_client_sent_messages_total{mfoundry_connector=\"archive\"} ",
        );
        let attempted = value_of(
            &response.body,
            "messaging_client_operation_duration_seconds_count{mfoundry_connector=\"archive\"",
        );
        if delivered == Some(1.0) && attempted.is_some() {
            break response.body;
        }
        assert!(
            Instant::now() < deadline,
            "the scrape never showed the delivery:\n{}",
            response.body
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // The intake histogram: cumulative buckets ending with +Inf, a sum and a count.
    for line in [
        "# HELP messaging_process_duration_seconds Time from a complete frame to its ACK decision, the durable commit included",
        "# TYPE messaging_process_duration_seconds histogram",
        "# TYPE mfoundry_acks_sent_total counter",
        "# TYPE mfoundry_queue_depth gauge",
        "# TYPE target_info gauge",
    ] {
        assert!(
            scrape.lines().any(|candidate| candidate == line),
            "{line:?} not in:\n{scrape}"
        );
    }
    let inf = value_of(
        &scrape,
        "messaging_process_duration_seconds_bucket{mfoundry_ack_code=\"AA\",mfoundry_listener=\"mllp\",le=\"+Inf\"} ",
    );
    assert_eq!(inf, Some(1.0), "{scrape}");
    let smallest = value_of(
        &scrape,
        "messaging_process_duration_seconds_bucket{mfoundry_ack_code=\"AA\",mfoundry_listener=\"mllp\",le=\"5e-05\"} ",
    );
    assert!(smallest.is_some_and(|count| count <= 1.0), "{scrape}");
    assert_eq!(
        value_of(
            &scrape,
            "messaging_process_duration_seconds_count{mfoundry_ack_code=\"AA\",mfoundry_listener=\"mllp\"} "
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &scrape,
            "mfoundry_acks_sent_total{mfoundry_ack_code=\"AA\",mfoundry_listener=\"mllp\"} "
        ),
        Some(1.0),
        "{scrape}"
    );
    // The queue figures are read at most once a second: 1 or already 0.
    let depth = value_of(
        &scrape,
        "mfoundry_queue_depth{mfoundry_connector=\"archive\"} ",
    );
    assert!(depth.is_some_and(|depth| depth <= 1.0), "{scrape}");
    assert!(
        scrape
            .lines()
            .any(|line| line.starts_with("target_info{")
                && line.contains("service_name=\"mfoundry\"")),
        "{scrape}"
    );

    // Every series the dashboard queries is there, but for the outputs and TLS this gateway
    // has no traffic for.
    let served = series_names(&scrape);
    let without_traffic = [
        metrics::HTTP_CLIENT_DURATION,
        metrics::DB_CLIENT_DURATION,
        metrics::TLS_CERTIFICATE_EXPIRY,
        metrics::TLS_RELOADS,
    ];
    let wanted = dashboard_series();
    let mut checked = 0;
    for series in &wanted {
        let metric = metric_for_series(series).expect("a series of a metric");
        if without_traffic.contains(&metric) {
            continue;
        }
        assert!(
            served.contains(series),
            "the dashboard queries {series}, which the scrape does not hold:\n{scrape}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} of {wanted:?} checked");
    gateway.stop();
}

#[test]
fn the_metrics_endpoint_answers_only_metrics() {
    let directory = gateway_directory();
    let gateway = common::Server::start(
        directory.path(),
        "gateway.yaml",
        "data",
        &[("METRICS_ADDR", "127.0.0.1:0")],
    );
    let addr = metrics_addr(&gateway);
    assert_eq!(get(&addr, "/").status, 200);
    for path in ["/api/v1/stats", "/livez", "/metricsx"] {
        assert_eq!(get(&addr, path).status, 404, "{path}");
    }
    gateway.stop();
}

#[test]
fn metrics_addr_is_off_by_default_and_serves_nothing() {
    let directory = gateway_directory();
    let gateway = common::Server::start(directory.path(), "gateway.yaml", "data", &[]);
    let admin = gateway.admin_addr.clone().expect("the admin API is on");
    // Not on the admin API either.
    assert_eq!(get(&admin, "/metrics").status, 404);
    let mut lines = gateway.early.clone();
    lines.extend(gateway.stop_and_collect());
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("metrics_addr") || line.contains("Prometheus")),
        "{lines:#?}"
    );
}

#[test]
fn a_metrics_addr_in_use_names_the_setting() {
    let directory = gateway_directory();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let data = directory.path().join("data").display().to_string();
    let (code, _, stderr) = common::run_binary(
        directory.path(),
        &["serve", "--config", "gateway.yaml"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("ADMIN_ADDR", "off"),
            ("DATA_DIR", data.as_str()),
            ("METRICS_ADDR", taken_addr.as_str()),
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on METRICS_ADDR={taken_addr}: the address is in use"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("set METRICS_ADDR to"), "{stderr}");
    drop(taken);
}

/// With an OTLP endpoint set too, the exporter and the endpoint read the same instruments.
#[test]
fn the_metrics_endpoint_works_alongside_the_otlp_exporter() {
    use common::otlp::{Bodies, http_receiver};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bodies: Bodies = std::sync::Arc::default();
    let endpoint = runtime.block_on(http_receiver(std::sync::Arc::clone(&bodies)));
    let directory = gateway_directory();
    let gateway = common::Server::start(
        directory.path(),
        "gateway.yaml",
        "data",
        &[
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    let addr = metrics_addr(&gateway);
    let scrape = get(&addr, "/metrics");
    assert_eq!(scrape.status, 200);
    assert!(
        value_of(
            &scrape.body,
            "messaging_client_consumed_messages_total{mfoundry_listener=\"mllp\"} "
        )
        .is_some(),
        "{}",
        scrape.body
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while bodies.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "no OTLP export arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    gateway.stop();
}
