//! The Grafana dashboard asks only for metrics and labels the code emits, under the names
//! Prometheus gives them.

use super::*;

pub(crate) fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/mfoundry.json"))
        .expect("deploy/grafana/mfoundry.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|list| list.iter().collect())
        .unwrap_or_default()
}

/// The query text of a Grafana query variable.
fn variable_query(variable: &Value) -> Option<String> {
    match &variable["query"] {
        Value::String(query) => Some(query.clone()),
        Value::Object(map) => map.get("query").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

#[test]
fn the_dashboard_uses_its_datasource_variable_in_every_panel() {
    let dashboard = dashboard();
    let variables = variables(&dashboard);
    let datasource = variables
        .iter()
        .find(|variable| variable["type"] == "datasource")
        .expect("a datasource template variable");
    assert_eq!(datasource["query"], "prometheus");
    let variable = datasource["name"].as_str().expect("a name");
    let accepted = [format!("${{{variable}}}"), format!("${variable}")];
    let uses_it = |source: &Value| {
        source["uid"]
            .as_str()
            .is_some_and(|uid| accepted.iter().any(|wanted| wanted == uid))
            || source
                .as_str()
                .is_some_and(|uid| accepted.iter().any(|wanted| wanted == uid))
    };
    let panels = panels(&dashboard);
    let queried: Vec<&&Value> = panels
        .iter()
        .filter(|panel| panel["type"] != "row")
        .collect();
    assert!(queried.len() >= 10, "{} panels", queried.len());
    let mut ids = BTreeSet::new();
    for panel in &queried {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_i64().expect("a panel id")),
            "{title}: duplicate id"
        );
        assert!(
            uses_it(&panel["datasource"]),
            "{title}: {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(
                target["datasource"].is_null() || uses_it(&target["datasource"]),
                "{title}: {}",
                target["datasource"]
            );
            assert!(target["expr"].is_string(), "{title}: {target}");
        }
    }
    for variable in variables
        .iter()
        .filter(|variable| variable["type"] == "query")
    {
        assert!(
            uses_it(&variable["datasource"]),
            "variable {}: {}",
            variable["name"],
            variable["datasource"]
        );
    }
}

/// Metric and label names a PromQL expression (or a Grafana `label_values` query) uses.
#[derive(Debug, Default)]
pub(crate) struct QueryNames {
    /// Series names.
    pub(crate) metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Words after which a parenthesised list of labels follows.
const GROUPING_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL words that are neither metrics nor labels: operators, and aggregations
/// (which may be followed by `by (...)` rather than their parenthesised argument).
const PROMQL_WORDS: &[&str] = &[
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

impl QueryNames {
    fn add_query(&mut self, query: &str) {
        let query = query.trim();
        if let Some(arguments) = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            match arguments.rsplit_once(',') {
                Some((selector, label)) => {
                    self.add_expression(selector);
                    self.labels.insert(label.trim().to_owned());
                }
                None => {
                    self.labels.insert(arguments.trim().to_owned());
                }
            }
            return;
        }
        self.add_expression(query);
    }

    fn add_expression(&mut self, expression: &str) {
        let characters: Vec<char> = expression.chars().collect();
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut index = 0;
        let mut brace_depth = 0usize;
        let mut grouping_expected = false;
        let mut in_grouping = false;
        while index < characters.len() {
            let character = characters[index];
            match character {
                // Strings: label values, regular expressions, Grafana variables in them.
                '"' | '\'' | '`' => {
                    index += 1;
                    while index < characters.len() && characters[index] != character {
                        if characters[index] == '\\' {
                            index += 1;
                        }
                        index += 1;
                    }
                    index += 1;
                }
                // Ranges: `[5m]`, `[$__rate_interval]`.
                '[' => {
                    while index < characters.len() && characters[index] != ']' {
                        index += 1;
                    }
                    index += 1;
                }
                // Grafana variables: `$name`, `${name}`.
                '$' => {
                    index += 1;
                    if characters.get(index) == Some(&'{') {
                        while index < characters.len() && characters[index] != '}' {
                            index += 1;
                        }
                        index += 1;
                    } else {
                        while index < characters.len() && is_word(characters[index]) {
                            index += 1;
                        }
                    }
                }
                '{' => {
                    brace_depth += 1;
                    index += 1;
                }
                '}' => {
                    brace_depth = brace_depth.saturating_sub(1);
                    index += 1;
                }
                '(' => {
                    in_grouping = grouping_expected;
                    grouping_expected = false;
                    index += 1;
                }
                ')' => {
                    in_grouping = false;
                    index += 1;
                }
                c if c.is_ascii_digit() || c == '.' => {
                    while index < characters.len()
                        && (characters[index].is_ascii_alphanumeric() || characters[index] == '.')
                    {
                        index += 1;
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                    let start = index;
                    while index < characters.len() && is_word(characters[index]) {
                        index += 1;
                    }
                    let word: String = characters[start..index].iter().collect();
                    let next = characters[index..]
                        .iter()
                        .find(|c| !c.is_whitespace())
                        .copied();
                    if in_grouping || brace_depth > 0 {
                        self.labels.insert(word);
                    } else if GROUPING_WORDS.contains(&word.as_str()) {
                        grouping_expected = true;
                    } else if !PROMQL_WORDS.contains(&word.as_str()) && next != Some('(') {
                        // Not a keyword, not a function or aggregation: a metric.
                        self.metrics.insert(word);
                    }
                }
                _ => index += 1,
            }
        }
    }
}

/// Every query of the dashboard: panel targets and query variables.
pub(crate) fn dashboard_names(dashboard: &Value) -> QueryNames {
    let mut names = QueryNames::default();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expression) = target["expr"].as_str() {
                names.add_query(expression);
            }
        }
    }
    for variable in variables(dashboard) {
        if variable["type"] != "query" {
            continue;
        }
        if let Some(query) = variable_query(variable) {
            names.add_query(&query);
        }
        // What Grafana shows for the variable: it must not drift from the query.
        if let Some(definition) = variable["definition"].as_str() {
            names.add_query(definition);
        }
    }
    names
}

/// The metric of the telemetry module a Prometheus series name comes from: dots become
/// underscores, then a unit (`_seconds`, `_bytes`, `_days`) and a kind suffix (`_total`,
/// `_bucket`, `_sum`, `_count`) may follow.
pub(crate) fn metric_for_series(series: &str) -> Option<&'static str> {
    metrics::ALL.iter().copied().find(|name| {
        let base = name.replace('.', "_");
        ["", "_seconds", "_bytes", "_days"].iter().any(|unit| {
            ["", "_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|kind| format!("{base}{unit}{kind}") == series)
        })
    })
}

/// Labels the exported series carry: the module's attribute keys (dots become
/// underscores), and what Prometheus adds.
fn known_labels() -> BTreeSet<String> {
    let mut labels: BTreeSet<String> = [
        metrics::LISTENER,
        metrics::CONNECTOR,
        metrics::ACK_CODE,
        metrics::CAUSE,
        metrics::OUTCOME,
        metrics::CAP,
    ]
    .iter()
    .map(|key| key.replace('.', "_"))
    .collect();
    // service.namespace/service.name, service.instance.id, histogram bucket bounds.
    labels.extend(["job", "instance", "le"].map(str::to_owned));
    // Resource attributes the deployments set, on `target_info`.
    labels.extend(RESOURCE_LABELS.iter().map(|(_, label)| (*label).to_owned()));
    labels
}

/// The series Prometheus (its OTLP receiver, a collector's exporter, or a scrape of
/// METRICS_ADDR) makes of the resource: one per pod, its attributes as labels.
const TARGET_INFO: &str = "target_info";

/// Resource attributes the dashboard's variables read from `target_info`, and their labels.
const RESOURCE_LABELS: &[(&str, &str)] = &[
    ("k8s.namespace.name", "k8s_namespace_name"),
    ("deployment.environment.name", "deployment_environment_name"),
];

#[test]
fn every_deployment_that_exports_metrics_names_its_namespace_and_environment() {
    let dashboard = dashboard();
    let variables: Vec<&str> = variables(&dashboard)
        .iter()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    for wanted in ["environment", "namespace", "job", "instance"] {
        assert!(
            variables.contains(&wanted),
            "no {wanted} variable: {variables:?}"
        );
    }
    for deployment in rendered() {
        let Some(attributes) = deployment.setting("OTEL_RESOURCE_ATTRIBUTES") else {
            continue;
        };
        let keys: Vec<&str> = attributes
            .split(',')
            .filter_map(|pair| pair.split_once('=').map(|(key, _)| key.trim()))
            .collect();
        // service.namespace makes Prometheus' job `<namespace>/mfoundry`: staging's and
        // prod's series never share a job and instance.
        assert!(
            keys.contains(&"service.namespace") && keys.contains(&"service.instance.id"),
            "{}: OTEL_RESOURCE_ATTRIBUTES={attributes}",
            deployment.name
        );
        let exports = deployment.setting("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            && matches!(deployment.source, Source::Kustomize);
        for (attribute, _) in RESOURCE_LABELS {
            assert!(
                !exports || keys.contains(attribute),
                "{}: the dashboard filters on {attribute}, OTEL_RESOURCE_ATTRIBUTES={attributes}",
                deployment.name
            );
        }
    }
}

#[test]
fn every_metric_and_label_in_the_dashboard_comes_from_the_telemetry_module() {
    let names = dashboard_names(&dashboard());
    assert!(names.metrics.len() >= 10, "{names:?}");
    let unknown: Vec<&String> = names
        .metrics
        .iter()
        .filter(|series| *series != TARGET_INFO && metric_for_series(series).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries series no metric of mfoundry::telemetry::metrics::ALL exports: {unknown:?}"
    );
    let known = known_labels();
    let unknown_labels: Vec<&String> = names
        .labels
        .iter()
        .filter(|label| !known.contains(*label))
        .collect();
    assert!(
        unknown_labels.is_empty(),
        "the dashboard uses labels no metric carries: {unknown_labels:?}"
    );
    // The panels: intake per listener, queues per connector (the key alert),
    // delivery, the dead-letter queue, connections, the store, TLS.
    let used: BTreeSet<&str> = names
        .metrics
        .iter()
        .filter_map(|series| metric_for_series(series.as_str()))
        .collect();
    for wanted in [
        metrics::CONSUMED_MESSAGES,
        metrics::ACKS_SENT,
        metrics::QUEUE_DEPTH,
        metrics::QUEUE_OLDEST_AGE,
        metrics::OPERATION_DURATION,
        metrics::DELIVERY_FAILURES,
        metrics::DLQ_SIZE,
        metrics::CONNECTIONS_ACTIVE,
        metrics::STORE_SIZE,
        "mfoundry.tls.certificate.expiry",
        "mfoundry.tls.reloads",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

// What a collector receives, and the names Prometheus gives it.

/// An instrument as OTLP carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    UpDownCounter,
    Gauge,
    Histogram,
    Other,
}

/// Name → (unit, kind) of every metric in the export requests.
fn exported(bodies: &[Vec<u8>]) -> BTreeMap<String, (String, Kind)> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message as _;
    let mut seen = BTreeMap::new();
    for body in bodies {
        let request = ExportMetricsServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in &request.resource_metrics {
            for scope in &resource.scope_metrics {
                for metric in &scope.metrics {
                    let kind = match &metric.data {
                        Some(Data::Sum(sum)) if sum.is_monotonic => Kind::Counter,
                        Some(Data::Sum(_)) => Kind::UpDownCounter,
                        Some(Data::Gauge(_)) => Kind::Gauge,
                        Some(Data::Histogram(_)) => Kind::Histogram,
                        _ => Kind::Other,
                    };
                    seen.insert(metric.name.clone(), (metric.unit.clone(), kind));
                }
            }
        }
    }
    seen
}

/// The series names Prometheus (its OTLP receiver, or a collector's Prometheus exporter)
/// gives a metric: dots to underscores, the unit spelled out unless the name has it,
/// `_total` for counters, `_bucket`/`_sum`/`_count` for histograms; annotations such as
/// `{message}` add nothing.
fn prometheus_series(name: &str, unit: &str, kind: Kind) -> Vec<String> {
    let mut base = name.replace('.', "_");
    let word = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "1" if kind == Kind::Gauge => "ratio",
        _ => "",
    };
    if !word.is_empty() && !base.split('_').any(|part| part == word) {
        base = format!("{base}_{word}");
    }
    match kind {
        Kind::Counter => vec![format!("{base}_total")],
        Kind::Histogram => ["bucket", "sum", "count"]
            .iter()
            .map(|suffix| format!("{base}_{suffix}"))
            .collect(),
        Kind::UpDownCounter | Kind::Gauge | Kind::Other => vec![base],
    }
}

#[test]
fn the_dashboard_names_match_what_the_binary_exports() {
    // An OTLP/HTTP receiver on a runtime of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bodies: Bodies = Arc::default();
    let endpoint = runtime.block_on(http_receiver(Arc::clone(&bodies)));

    // A gateway with one file connector, one message through it.
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
    let gateway = common::Server::start(
        directory.path(),
        "gateway.yaml",
        "data",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    let message = root().join("examples/messages/adt-a01.hl7");
    let sent = Command::new(BINARY)
        .args(["send", "--addr", gateway.addr.as_str()])
        .arg(message)
        .env_clear()
        .output()
        .expect("send runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // Wait until the exports show the message received and delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let received = bodies.lock().expect("lock").clone();
        let seen = exported(&received);
        if [
            metrics::PROCESS_DURATION,
            metrics::OPERATION_DURATION,
            metrics::SENT_MESSAGES,
        ]
        .iter()
        .all(|name| seen.contains_key(*name))
        {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "no export showed the delivery: {:?}",
            seen.keys()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    gateway.stop();

    let names = dashboard_names(&dashboard());
    let mut checked = 0;
    let mut by_name_only = Vec::new();
    for series in &names.metrics {
        let Some(metric) = metric_for_series(series) else {
            continue; // reported by the test above
        };
        match seen.get(metric) {
            Some((unit, kind)) => {
                let expected = prometheus_series(metric, unit, *kind);
                assert!(
                    expected.contains(series),
                    "the dashboard queries {series}, but {metric} ({kind:?}, unit {unit:?}) arrives in Prometheus as {expected:?}"
                );
                checked += 1;
            }
            None => by_name_only.push(series.as_str()),
        }
    }
    assert!(
        checked >= 10,
        "only {checked} series checked against an export"
    );
    eprintln!(
        "checked {checked} series against a real export; by name only (not exported without HTTP, PostgreSQL or TLS traffic): {by_name_only:?}"
    );
}
