//! The metrics in Prometheus' text exposition format (version 0.0.4), for `METRICS_ADDR`'s
//! `GET /metrics`: a pull reader on the same meter provider as the OTLP exporter, and the
//! encoder.
//!
//! **Reading.** [`PullReader`] is the SDK's `ManualReader`, shared between the provider (which
//! registers its pipeline with it) and the scrape, which collects on demand: the observable
//! instruments' callbacks run at the scrape, as they run at each OTLP export for the periodic
//! reader. Each reader keeps its own aggregation, so scrapes and exports do not disturb each
//! other. Temporality is cumulative, as Prometheus expects. `ManualReader` and the
//! `MetricReader` trait are behind opentelemetry_sdk's `experimental_metrics_custom_reader`
//! feature in 0.33 (the only way it offers to read on demand); a version bump that changes
//! them fails to compile here, not at run time.
//!
//! **Names** are what an OpenTelemetry Collector's `prometheus` exporter and Prometheus' own
//! OTLP receiver give the same metrics, so one dashboard (`deploy/grafana/mfoundry.json`)
//! works with either path: characters outside `[a-zA-Z0-9_:]` become `_`; the unit is spelled
//! out and appended unless a word of the name already is it (`s` → `seconds`, `By` →
//! `bytes`, `d` → `days`, `{message}` and other annotations → nothing, `By/s` →
//! `bytes_per_second`); `ratio` for a gauge of unit `1`; `_total` for monotonic counters;
//! histograms as cumulative `_bucket{le=...}` (ending with `+Inf`), `_sum` and `_count`;
//! up-down counters and gauges as gauges. Attribute keys become label names the same way
//! (`mfoundry.connector` → `mfoundry_connector`). The resource's attributes are the labels of
//! one `target_info` series (Prometheus sets `job` and `instance` itself, from the scrape).
//! Numbers are written as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes them (`5e-05`,
//! `0.0001`, `+Inf`), as the collector does, so `le` values match too.
//!
//! Exponential histograms have no text form and are left out; mfoundry records none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `ManualReader` the meter provider and the scrape share (clones read the same pipeline).
#[derive(Clone, Debug, Default)]
pub struct PullReader(Arc<ManualReader>);

impl PullReader {
    /// Collect every instrument now (running the observable callbacks, which read the
    /// store: call it off the async runtime) and render the result.
    pub fn scrape(&self) -> Result<String, String> {
        let mut collected = ResourceMetrics::default();
        self.0
            .collect(&mut collected)
            .map_err(|error| format!("cannot collect the metrics: {error}"))?;
        Ok(render(&collected))
    }
}

impl MetricReader for PullReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, collected: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(collected)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// What an instrument's data is, for its name and its `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A monotonic sum: `counter`, named `_total`.
    Counter,
    /// A sum that may go down: `gauge`.
    UpDownCounter,
    /// `gauge`; unit `1` adds `_ratio`.
    Gauge,
    /// `histogram`: `_bucket`, `_sum`, `_count`.
    Histogram,
}

impl Shape {
    fn type_name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::UpDownCounter | Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A number as it was recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Self::Unsigned(value)
    }
}

impl From<i64> for Number {
    fn from(value: i64) -> Self {
        Self::Signed(value)
    }
}

impl From<f64> for Number {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsigned(value) => write!(formatter, "{value}"),
            Self::Signed(value) => write!(formatter, "{value}"),
            Self::Float(value) => formatter.write_str(&go_float(*value)),
        }
    }
}

/// One series (or, for a histogram, one set of bucket, sum and count series).
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Number(Number),
    Histogram {
        /// Upper bounds, ascending.
        bounds: Vec<f64>,
        /// Per bucket, not cumulative: one more than `bounds` (the last is above them all).
        counts: Vec<u64>,
        sum: Number,
        count: u64,
    },
}

/// A label set and its value.
#[derive(Clone, Debug, PartialEq)]
struct Point {
    /// Sorted by name.
    labels: Vec<(String, String)>,
    value: Value,
}

/// One metric family: `# HELP`, `# TYPE` and its points.
#[derive(Clone, Debug, PartialEq)]
struct Family {
    help: String,
    shape: Shape,
    points: Vec<Point>,
}

/// The text exposition of everything collected: `target_info`, then each family by name.
pub fn render(collected: &ResourceMetrics) -> String {
    let target: Vec<KeyValue> = collected
        .resource()
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            let Some((shape, points)) = points_of(metric.data()) else {
                continue;
            };
            let name = metric_name(metric.name(), metric.unit(), shape);
            match families.get_mut(&name) {
                // The same name from another scope: one family, if it is the same kind.
                Some(family) if family.shape == shape => family.points.extend(points),
                Some(_) => tracing::debug!(
                    metric = %name,
                    "two instruments of different kinds share a Prometheus name; the second is left out"
                ),
                None => {
                    families.insert(
                        name,
                        Family {
                            help: metric.description().to_owned(),
                            shape,
                            points,
                        },
                    );
                }
            }
        }
    }
    let mut out = String::new();
    if !target.is_empty() {
        write_family(
            &mut out,
            "target_info",
            &Family {
                help: "Target metadata".to_owned(),
                shape: Shape::Gauge,
                points: vec![Point {
                    labels: labels(target.iter()),
                    value: Value::Number(Number::Unsigned(1)),
                }],
            },
        );
    }
    for (name, family) in &mut families {
        family.points.sort_by(|a, b| a.labels.cmp(&b.labels));
        write_family(&mut out, name, family);
    }
    out
}

/// The shape and points of one instrument's data; `None` for what has no text form.
fn points_of(data: &AggregatedMetrics) -> Option<(Shape, Vec<Point>)> {
    match data {
        AggregatedMetrics::F64(data) => points_of_typed(data),
        AggregatedMetrics::U64(data) => points_of_typed(data),
        AggregatedMetrics::I64(data) => points_of_typed(data),
    }
}

fn points_of_typed<T: Copy + Into<Number>>(data: &MetricData<T>) -> Option<(Shape, Vec<Point>)> {
    match data {
        MetricData::Gauge(gauge) => Some((
            Shape::Gauge,
            gauge
                .data_points()
                .map(|point| Point {
                    labels: labels(point.attributes()),
                    value: Value::Number(point.value().into()),
                })
                .collect(),
        )),
        MetricData::Sum(sum) => Some((
            if sum.is_monotonic() {
                Shape::Counter
            } else {
                Shape::UpDownCounter
            },
            sum.data_points()
                .map(|point| Point {
                    labels: labels(point.attributes()),
                    value: Value::Number(point.value().into()),
                })
                .collect(),
        )),
        MetricData::Histogram(histogram) => Some((
            Shape::Histogram,
            histogram
                .data_points()
                .map(|point| Point {
                    labels: labels(point.attributes()),
                    value: Value::Histogram {
                        bounds: point.bounds().collect(),
                        counts: point.bucket_counts().collect(),
                        sum: point.sum().into(),
                        count: point.count(),
                    },
                })
                .collect(),
        )),
        MetricData::ExponentialHistogram(_) => None,
    }
}

/// Attributes as labels, sorted by name; keys that become the same name have their values
/// joined with `;` (as the collector does).
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    let mut sorted: Vec<(&str, String)> = attributes
        .map(|pair| (pair.key.as_str(), pair.value.as_str().into_owned()))
        .collect();
    sorted.sort();
    let mut out: Vec<(String, String)> = Vec::with_capacity(sorted.len());
    for (key, value) in sorted {
        let name = label_name(key);
        match out.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, joined)) => {
                joined.push(';');
                joined.push_str(&value);
            }
            None => out.push((name, value)),
        }
    }
    out.sort();
    out
}

fn write_family(out: &mut String, name: &str, family: &Family) {
    if !family.help.is_empty() {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
    }
    let _ = writeln!(out, "# TYPE {name} {}", family.shape.type_name());
    for point in &family.points {
        match &point.value {
            Value::Number(number) => write_series(out, name, &point.labels, None, *number),
            Value::Histogram {
                bounds,
                counts,
                sum,
                count,
            } => {
                let bucket = format!("{name}_bucket");
                let mut cumulative = 0u64;
                for (bound, in_bucket) in bounds.iter().zip(counts) {
                    cumulative = cumulative.saturating_add(*in_bucket);
                    let le = go_float(*bound);
                    write_series(
                        out,
                        &bucket,
                        &point.labels,
                        Some(&le),
                        Number::Unsigned(cumulative),
                    );
                }
                write_series(
                    out,
                    &bucket,
                    &point.labels,
                    Some("+Inf"),
                    Number::Unsigned(*count),
                );
                write_series(out, &format!("{name}_sum"), &point.labels, None, *sum);
                write_series(
                    out,
                    &format!("{name}_count"),
                    &point.labels,
                    None,
                    Number::Unsigned(*count),
                );
            }
        }
    }
}

fn write_series(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: Number,
) {
    out.push_str(name);
    let le = le.map(|le| ("le", le));
    let all = labels
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(le);
    let mut first = true;
    for (label, text) in all {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{label}=\"{}\"", escape_label_value(text));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value in the text format: backslash, double quote and line feed escaped.
pub fn escape_label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}

/// `# HELP` text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A unit's word in a name: the collector's table (UCUM units OpenTelemetry uses).
fn unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "1" => "",
        _ => return None,
    })
}

/// The word after `per_` for a unit's denominator.
fn per_unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

/// A unit's own text, cleaned to name characters (for units the table does not know).
fn clean_unit(unit: &str) -> String {
    unit.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// The Prometheus name of an instrument (see the module documentation).
pub fn metric_name(name: &str, unit: &str, shape: Shape) -> String {
    let mut tokens: Vec<String> = name
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .collect();
    // Annotations (`{message}`) carry no unit.
    let mut bare = String::with_capacity(unit.len());
    let mut depth = 0usize;
    for character in unit.chars() {
        match character {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            other if depth == 0 => bare.push(other),
            _ => {}
        }
    }
    let bare = bare.trim();
    let (main, per) = bare.split_once('/').unwrap_or((bare, ""));
    let (main, per) = (main.trim(), per.trim());
    let main_word = unit_word(main).map_or_else(|| clean_unit(main), str::to_owned);
    if !main_word.is_empty() && !tokens.contains(&main_word) {
        tokens.push(main_word);
    }
    let per_word = per_unit_word(per).map_or_else(|| clean_unit(per), str::to_owned);
    if !per_word.is_empty() && !tokens.contains(&per_word) {
        tokens.push("per".to_owned());
        tokens.push(per_word);
    }
    if shape == Shape::Counter {
        tokens.retain(|token| token != "total");
        tokens.push("total".to_owned());
    }
    if shape == Shape::Gauge && unit == "1" && !tokens.iter().any(|token| token == "ratio") {
        tokens.push("ratio".to_owned());
    }
    let joined = tokens.join("_");
    if joined.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{joined}")
    } else {
        joined
    }
}

/// The Prometheus label name of an attribute key: characters outside `[a-zA-Z0-9_]` become
/// `_`; a leading digit gets `key_` and a single leading underscore `key` before it.
pub fn label_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{name}")
    } else if name.starts_with('_') && !name.starts_with("__") {
        format!("key{name}")
    } else {
        name
    }
}

/// A number as Go's `strconv.FormatFloat(value, 'g', -1, 64)` writes it: the shortest text
/// that reads back the same, in exponent form below 1e-4 and from 1e6 on.
pub fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    let scientific = format!("{value:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return value.to_string();
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return value.to_string();
    };
    if (-4..6).contains(&exponent) {
        value.to_string()
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

#[cfg(test)]
mod tests;
