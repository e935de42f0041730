//! Metrics as a collector receives them: the real binary exports over OTLP (http/protobuf,
//! then grpc) to a small receiver in this test, which decodes the protobuf and checks names,
//! units and attributes.

use crate::common;

use common::otlp::{Bodies, http_receiver};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

/// What the receiver saw of one metric: its unit and the attribute sets of its points with
/// their value (the sum, gauge value, or histogram count).
#[derive(Debug, Default, Clone)]
struct Seen {
    unit: String,
    points: Vec<(BTreeMap<String, String>, f64)>,
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|value| value.value.as_ref()) {
                Some(any_value::Value::StringValue(text)) => text.clone(),
                Some(any_value::Value::IntValue(number)) => number.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

/// The newest export's metrics by name, and the service name.
fn decode(body: &[u8]) -> (BTreeMap<String, Seen>, String) {
    let request = ExportMetricsServiceRequest::decode(body).expect("OTLP protobuf");
    let mut seen = BTreeMap::new();
    let mut service = String::new();
    for resource in &request.resource_metrics {
        if let Some(resource) = &resource.resource
            && let Some(name) = attributes(&resource.attributes).get("service.name")
        {
            service = name.clone();
        }
        for scope in &resource.scope_metrics {
            for metric in &scope.metrics {
                let entry: &mut Seen = seen.entry(metric.name.clone()).or_default();
                entry.unit = metric.unit.clone();
                match &metric.data {
                    Some(Data::Sum(opentelemetry_proto::tonic::metrics::v1::Sum {
                        data_points,
                        ..
                    }))
                    | Some(Data::Gauge(opentelemetry_proto::tonic::metrics::v1::Gauge {
                        data_points,
                        ..
                    })) => {
                        for point in data_points {
                            let value = match point.value {
                                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => v as f64,
                                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)) => v,
                                None => 0.0,
                            };
                            entry.points.push((attributes(&point.attributes), value));
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        for point in &histogram.data_points {
                            entry
                                .points
                                .push((attributes(&point.attributes), point.count as f64));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    (seen, service)
}

fn point<'a>(
    seen: &'a BTreeMap<String, Seen>,
    name: &str,
    wanted: &[(&str, &str)],
) -> Option<&'a f64> {
    seen.get(name)?
        .points
        .iter()
        .find_map(|(attributes, value)| {
            wanted
                .iter()
                .all(|(key, want)| attributes.get(*key).map(String::as_str) == Some(*want))
                .then_some(value)
        })
}

/// An OTLP/gRPC receiver.
struct Grpc(Bodies);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .expect("lock")
            .push(request.into_inner().encode_to_vec());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn grpc_receiver(bodies: Bodies) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(Grpc(bodies)))
            .serve_with_incoming(incoming),
    );
    format!("http://127.0.0.1:{port}")
}

/// Start the binary exporting to `endpoint` with `protocol`, send one message, and check the
/// export that shows it.
async fn exports_over(protocol: &str, endpoint: String, bodies: Bodies) {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path().to_owned();
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "connectors:\n  - name: archive\n    type: file\n    directory: {}\n    filename: \"{{id}}.hl7\"\n    paused: true\n",
            dir.join("out").display()
        ),
    )
    .expect("yaml");
    let protocol = protocol.to_owned();
    let server = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            common::Server::start(
                &dir,
                "gw.yaml",
                "data",
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.as_str()),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
                ],
            )
        }
    })
    .await
    .expect("server starts");
    let message = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages/adt-a01.hl7");
    let addr = server.addr.clone();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        common::run_binary(
            &dir,
            &["send", "--addr", &addr, &message.display().to_string()],
            &[],
        )
    })
    .await
    .expect("send");
    assert_eq!(code, 0, "{stderr}");

    // Wait for an export that has seen the message, its queue entry included: the queue
    // gauges read the store at most once a second, so an export right after the ACK may
    // still carry the figures read before the commit.
    let archive = [("mfoundry.connector", "archive")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (seen, service) = loop {
        let latest = bodies.lock().expect("lock").last().cloned();
        if let Some(body) = latest {
            let (seen, service) = decode(&body);
            if point(&seen, "mfoundry.acks.sent", &[("mfoundry.ack_code", "AA")]) == Some(&1.0)
                && seen.contains_key("messaging.process.duration")
                && point(&seen, "mfoundry.queue.depth", &archive).is_some_and(|depth| *depth > 0.0)
            {
                break (seen, service);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no export with the message arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(service, "mfoundry");
    let listener = [("mfoundry.listener", "mllp")];
    assert_eq!(
        point(&seen, "messaging.client.consumed.messages", &listener),
        Some(&1.0)
    );
    assert_eq!(seen["messaging.client.consumed.messages"].unit, "{message}");
    assert_eq!(seen["messaging.process.duration"].unit, "s");
    assert_eq!(
        point(
            &seen,
            "messaging.process.duration",
            &[("mfoundry.listener", "mllp"), ("mfoundry.ack_code", "AA")]
        ),
        Some(&1.0),
        "one histogram sample"
    );
    assert_eq!(point(&seen, "mfoundry.queue.depth", &archive), Some(&1.0));
    assert!(point(&seen, "mfoundry.queue.oldest_age", &archive).is_some_and(|age| *age >= 0.0));
    assert_eq!(seen["mfoundry.queue.oldest_age"].unit, "s");
    assert_eq!(point(&seen, "mfoundry.dlq.size", &archive), Some(&0.0));
    assert!(point(&seen, "mfoundry.store.size", &[]).is_some_and(|size| *size > 0.0));
    assert_eq!(seen["mfoundry.store.size"].unit, "By");
    assert!(seen.contains_key("mfoundry.connections.active"));
    assert!(seen.contains_key("mfoundry.frames.rejected"));
    assert!(seen.contains_key("mfoundry.cap.hits"));
    for name in seen.keys() {
        assert!(
            mfoundry::telemetry::metrics::ALL.contains(&name.as_str()),
            "{name} is listed in the metrics module"
        );
    }
    // Attributes are names and codes only: no control id, no patient field.
    let text = format!("{seen:?}");
    for canary in ["MSG00001", "EVERYWOMAN", "PATID1234"] {
        assert!(!text.contains(canary), "{canary} in metric attributes");
    }
    // The last values are exported at shutdown.
    let before = bodies.lock().expect("lock").len();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stops");
    assert!(
        bodies.lock().expect("lock").len() > before,
        "a final export"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_arrive_over_otlp_http_with_names_units_and_attributes() {
    let bodies: Bodies = Arc::default();
    let endpoint = http_receiver(Arc::clone(&bodies)).await;
    exports_over("http/protobuf", endpoint, bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_arrive_over_otlp_grpc() {
    let bodies: Bodies = Arc::default();
    let endpoint = grpc_receiver(Arc::clone(&bodies)).await;
    exports_over("grpc", endpoint, bodies).await;
}

#[test]
fn a_collector_that_cannot_be_reached_is_logged() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("gw.yaml"), "").expect("yaml");
    // Port 9 (discard) is closed here: every export fails.
    let server = common::Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    // An export error within 30 s (the first export is due after 200 ms, plus retries).
    server.wait_for_log("PeriodicReader.ExportError", 1);
    server.stop();
}
