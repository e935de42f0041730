use super::*;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;

#[test]
fn names_are_what_a_collector_gives_them() {
    for (name, unit, shape, expected) in [
        (
            "messaging.process.duration",
            "s",
            Shape::Histogram,
            "messaging_process_duration_seconds",
        ),
        (
            "messaging.client.consumed.messages",
            "{message}",
            Shape::Counter,
            "messaging_client_consumed_messages_total",
        ),
        (
            "mfoundry.acks.sent",
            "{ack}",
            Shape::Counter,
            "mfoundry_acks_sent_total",
        ),
        (
            "mfoundry.queue.depth",
            "{message}",
            Shape::Gauge,
            "mfoundry_queue_depth",
        ),
        (
            "mfoundry.queue.oldest_age",
            "s",
            Shape::Gauge,
            "mfoundry_queue_oldest_age_seconds",
        ),
        (
            "mfoundry.store.size",
            "By",
            Shape::Gauge,
            "mfoundry_store_size_bytes",
        ),
        (
            "mfoundry.tls.certificate.expiry",
            "d",
            Shape::Gauge,
            "mfoundry_tls_certificate_expiry_days",
        ),
        // A name that already has its unit's word does not get it twice.
        (
            "job.duration.seconds",
            "s",
            Shape::Gauge,
            "job_duration_seconds",
        ),
        ("wait.ms", "ms", Shape::Histogram, "wait_ms_milliseconds"),
        (
            "wait.milliseconds",
            "ms",
            Shape::Histogram,
            "wait_milliseconds",
        ),
        // `1`: a ratio on gauges only.
        (
            "cpu.utilization",
            "1",
            Shape::Gauge,
            "cpu_utilization_ratio",
        ),
        ("cpu.busy", "1", Shape::UpDownCounter, "cpu_busy"),
        ("errors", "1", Shape::Counter, "errors_total"),
        ("disk.free.ratio", "1", Shape::Gauge, "disk_free_ratio"),
        // `_total` once, at the end.
        ("requests.total", "", Shape::Counter, "requests_total"),
        (
            "connections.open",
            "{connection}",
            Shape::UpDownCounter,
            "connections_open",
        ),
        (
            "net.io",
            "By/s",
            Shape::Counter,
            "net_io_bytes_per_second_total",
        ),
        (
            "weird-name..x",
            "parsecs",
            Shape::Gauge,
            "weird_name_x_parsecs",
        ),
        ("2xx.responses", "", Shape::Counter, "_2xx_responses_total"),
    ] {
        assert_eq!(metric_name(name, unit, shape), expected, "{name} {unit}");
    }
}

#[test]
fn attribute_keys_become_label_names() {
    assert_eq!(label_name("mfoundry.connector"), "mfoundry_connector");
    assert_eq!(
        label_name("http.response.status_code"),
        "http_response_status_code"
    );
    assert_eq!(label_name("0day"), "key_0day");
    assert_eq!(label_name("_private"), "key_private");
    assert_eq!(label_name("__reserved"), "__reserved");
    assert_eq!(label_name("a-b/c"), "a_b_c");
}

#[test]
fn label_values_and_help_are_escaped() {
    assert_eq!(
        escape_label_value("back\\slash \"quoted\"\nnext"),
        "back\\\\slash \\\"quoted\\\"\\nnext"
    );
    assert_eq!(escape_label_value("plain é"), "plain é");
    assert_eq!(escape_help("a \"b\" \\ c\nd"), "a \"b\" \\\\ c\\nd");
}

#[test]
fn numbers_are_written_as_go_writes_them() {
    for (value, expected) in [
        (0.00005, "5e-05"),
        (0.0001, "0.0001"),
        (0.00025, "0.00025"),
        (1.0, "1"),
        (2.5, "2.5"),
        (30.0, "30"),
        (100_000.0, "100000"),
        (123_456.7, "123456.7"),
        (1_234_567.0, "1.234567e+06"),
        (1e21, "1e+21"),
        (1e-10, "1e-10"),
        (-0.5, "-0.5"),
        (0.0, "0"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(go_float(value), expected, "{value}");
    }
}

#[test]
fn histogram_buckets_are_cumulative_and_end_with_inf() {
    let family = Family {
        help: "One \"thing\"\nper line".to_owned(),
        shape: Shape::Histogram,
        points: vec![Point {
            labels: vec![("mfoundry_listener".to_owned(), "mllp".to_owned())],
            value: Value::Histogram {
                bounds: vec![0.00005, 0.1, 1.0],
                counts: vec![0, 2, 3, 1],
                sum: Number::Float(4.5),
                count: 6,
            },
        }],
    };
    let mut out = String::new();
    write_family(&mut out, "op_duration_seconds", &family);
    assert_eq!(
        out,
        "# HELP op_duration_seconds One \"thing\"\\nper line\n\
         # TYPE op_duration_seconds histogram\n\
         op_duration_seconds_bucket{mfoundry_listener=\"mllp\",le=\"5e-05\"} 0\n\
         op_duration_seconds_bucket{mfoundry_listener=\"mllp\",le=\"0.1\"} 2\n\
         op_duration_seconds_bucket{mfoundry_listener=\"mllp\",le=\"1\"} 5\n\
         op_duration_seconds_bucket{mfoundry_listener=\"mllp\",le=\"+Inf\"} 6\n\
         op_duration_seconds_sum{mfoundry_listener=\"mllp\"} 4.5\n\
         op_duration_seconds_count{mfoundry_listener=\"mllp\"} 6\n"
    );
}

#[test]
fn keys_that_become_one_label_have_their_values_joined() {
    let attributes = [KeyValue::new("a.b", "1"), KeyValue::new("a_b", "2")];
    assert_eq!(
        labels(attributes.iter()),
        [("a_b".to_owned(), "1;2".to_owned())]
    );
}

/// A provider of its own (not the global one) with the pull reader, as `init` builds it.
#[test]
fn a_scrape_renders_what_the_instruments_recorded() {
    let reader = PullReader::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader.clone())
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("mfoundry")
                .build(),
        )
        .build();
    let meter = provider.meter("mfoundry");
    let acks = meter
        .u64_counter("mfoundry.acks.sent")
        .with_unit("{ack}")
        .with_description("ACKs written, by code")
        .build();
    let listener = KeyValue::new("mfoundry.listener", "in \"quotes\"");
    acks.add(
        2,
        &[listener.clone(), KeyValue::new("mfoundry.ack_code", "AA")],
    );
    acks.add(
        1,
        &[listener.clone(), KeyValue::new("mfoundry.ack_code", "AE")],
    );
    let duration = meter
        .f64_histogram("messaging.process.duration")
        .with_unit("s")
        .with_description("Time to an ACK")
        .with_boundaries(vec![0.001, 0.01])
        .build();
    // Powers of two: the sum is exact.
    for seconds in [0.0009765625, 0.00390625, 0.00390625, 4.0] {
        duration.record(seconds, std::slice::from_ref(&listener));
    }
    let open = meter
        .i64_up_down_counter("mfoundry.connections.open")
        .with_unit("{connection}")
        .build();
    open.add(3, &[]);
    open.add(-1, &[]);
    let _depth = meter
        .f64_observable_gauge("mfoundry.queue.depth")
        .with_unit("{message}")
        .with_description("Entries in the connector's queue")
        .with_callback(|observer| {
            observer.observe(7.0, &[KeyValue::new("mfoundry.connector", "archive")]);
        })
        .build();

    let text = reader.scrape().expect("scrape");
    for line in [
        "# HELP target_info Target metadata",
        "# TYPE target_info gauge",
        "target_info{service_name=\"mfoundry\"} 1",
        "# HELP mfoundry_acks_sent_total ACKs written, by code",
        "# TYPE mfoundry_acks_sent_total counter",
        "mfoundry_acks_sent_total{mfoundry_ack_code=\"AA\",mfoundry_listener=\"in \\\"quotes\\\"\"} 2",
        "mfoundry_acks_sent_total{mfoundry_ack_code=\"AE\",mfoundry_listener=\"in \\\"quotes\\\"\"} 1",
        "# TYPE messaging_process_duration_seconds histogram",
        "messaging_process_duration_seconds_bucket{mfoundry_listener=\"in \\\"quotes\\\"\",le=\"0.001\"} 1",
        "messaging_process_duration_seconds_bucket{mfoundry_listener=\"in \\\"quotes\\\"\",le=\"0.01\"} 3",
        "messaging_process_duration_seconds_bucket{mfoundry_listener=\"in \\\"quotes\\\"\",le=\"+Inf\"} 4",
        "messaging_process_duration_seconds_sum{mfoundry_listener=\"in \\\"quotes\\\"\"} 4.0087890625",
        "messaging_process_duration_seconds_count{mfoundry_listener=\"in \\\"quotes\\\"\"} 4",
        "# TYPE mfoundry_connections_open gauge",
        "mfoundry_connections_open 2",
        "# TYPE mfoundry_queue_depth gauge",
        "mfoundry_queue_depth{mfoundry_connector=\"archive\"} 7",
    ] {
        assert!(
            text.lines().any(|candidate| candidate == line),
            "{line:?} not in:\n{text}"
        );
    }
    // Cumulative: a second scrape counts everything again, plus what came since.
    acks.add(
        1,
        &[listener.clone(), KeyValue::new("mfoundry.ack_code", "AA")],
    );
    let again = reader.scrape().expect("scrape");
    assert!(
        again.contains(
            "mfoundry_acks_sent_total{mfoundry_ack_code=\"AA\",mfoundry_listener=\"in \\\"quotes\\\"\"} 3\n"
        ),
        "{again}"
    );
    // Every line is a comment or a series with a value.
    for line in text.lines() {
        assert!(
            line.starts_with("# HELP ")
                || line.starts_with("# TYPE ")
                || line
                    .rsplit_once(' ')
                    .is_some_and(|(_, value)| !value.is_empty()),
            "{line:?}"
        );
    }
    provider.shutdown().expect("shutdown");
    assert!(
        reader.scrape().is_err(),
        "a reader shut down collects nothing"
    );
}
