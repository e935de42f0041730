//! Each connector's settings: the delivery settings every connector has (`retry`,
//! `min_interval`, `paused`), then its output's own keys, read by the output
//! ([`crate::outputs::read_spec`]). Keys that belong to another type, and keys nobody reads,
//! are reported with their place.

use std::time::Duration;

use super::file::{CONNECTOR_KEYS, ConnectorEntry, ConnectorKind};
use crate::delivery::{OnDeadLetter, RetryPolicy};
use crate::outputs::settings::Reader;
use crate::outputs::{self, OutputSpec};
use crate::yaml::{Map, Problem, Problems};

/// How a connector delivers, as configured.
#[derive(Clone, Debug)]
pub struct OutputSettings {
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Least time between two sends.
    pub min_interval: Option<Duration>,
    /// Start paused.
    pub paused: bool,
    /// Whether the connector has `order_by` (keyed lanes, ADR 0015).
    pub keyed: bool,
    /// `lanes`: deliveries at once, each with its own connection (with `order_by`); `None`
    /// when not written (1).
    pub lanes: Option<usize>,
    /// `on_dead_letter`: whether a dead letter holds its key's later messages; `None` when
    /// not written (`continue`).
    pub on_dead_letter: Option<OnDeadLetter>,
    /// The output itself.
    pub output: OutputSpec,
}

/// The delivery keys every connector takes.
pub const DELIVERY_KEYS: [&str; 5] = ["retry", "min_interval", "paused", "lanes", "on_dead_letter"];

/// Most `lanes` a connector may have.
pub const MAX_LANES: usize = 256;
/// The keys of `retry`.
pub(crate) const RETRY_KEYS: [&str; 4] =
    ["initial_delay", "multiplier", "max_delay", "max_attempts"];

/// Every key a connector of `kind` takes.
pub fn keys(kind: ConnectorKind) -> Vec<&'static str> {
    CONNECTOR_KEYS
        .into_iter()
        .chain(DELIVERY_KEYS)
        .chain(outputs::keys(kind).iter().copied())
        .collect()
}

/// Read and check a connector's settings. Every problem is recorded with its place; `None`
/// when there was one.
pub fn build(
    connector: &ConnectorEntry,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<OutputSettings> {
    let before = problems.len();
    let kind = connector.kind;
    let mut map = Map::new(&connector.node, "a connector", problems)?;
    let first = problems.len();
    for key in CONNECTOR_KEYS {
        // Read with the connector's name and type (super::file).
        map.skip(key);
    }
    let mut reader = Reader {
        map: &mut map,
        lookup,
        problems,
    };
    let min_interval = reader
        .optional_duration("min_interval")
        .filter(|interval| !interval.is_zero());
    let paused = reader.bool("paused").unwrap_or(false);
    let lanes = match reader.map.text("lanes", reader.problems) {
        None => None,
        Some(value) => Some(match value.value.trim().parse::<usize>() {
            Ok(lanes) if (1..=MAX_LANES).contains(&lanes) => lanes,
            _ => {
                reader.problems.push(Problem {
                    at: value.at,
                    message: format!(
                        "`lanes` is how many deliveries run at once: a whole number from 1 to {MAX_LANES}"
                    ),
                });
                1
            }
        }),
    };
    let on_dead_letter = match reader.map.text("on_dead_letter", reader.problems) {
        None => None,
        Some(value) => Some(match value.value.trim() {
            "continue" => OnDeadLetter::Continue,
            "hold_key" => OnDeadLetter::HoldKey,
            _ => {
                reader.problems.push(Problem {
                    at: value.at,
                    message: "`on_dead_letter` is continue (a dead letter releases its key) or hold_key (its key's later messages wait until it is replayed or purged)".to_owned(),
                });
                OnDeadLetter::Continue
            }
        }),
    };
    let retry = retry(&mut reader);
    let output = outputs::read_spec(kind, &mut reader);
    // A key of another type is a mistake worth its own sentence (a `port` on a file
    // connector does nothing).
    for key in map.unread() {
        let owners: Vec<&str> = ConnectorKind::ALL
            .into_iter()
            .filter(|other| outputs::keys(*other).contains(&key.value.as_str()))
            .map(|other| other.as_str())
            .collect();
        if !owners.is_empty() {
            problems.push(Problem {
                at: key.at,
                message: format!(
                    "`{}` does not apply to type {}; remove it (it is a key of {} connectors)",
                    key.value,
                    kind.as_str(),
                    owners.join(", ")
                ),
            });
            map.skip(&key.value);
        }
    }
    map.finish(
        &format!("a connector of type {}", kind.as_str()),
        &keys(kind),
        problems,
    );
    // In the order they appear in the file.
    problems[first..].sort_by_key(|problem| problem.at);
    let output = output?;
    (problems.len() == before).then_some(OutputSettings {
        retry,
        min_interval,
        paused,
        keyed: connector.order_by.is_some(),
        lanes,
        on_dead_letter,
        output,
    })
}

/// `retry`, over the defaults.
fn retry(reader: &mut Reader<'_, '_>) -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    let Some(mut map) = reader.map.map("retry", reader.problems) else {
        return retry;
    };
    let mut nested = Reader {
        map: &mut map,
        lookup: reader.lookup,
        problems: reader.problems,
    };
    retry.initial_delay = nested.duration("initial_delay", retry.initial_delay);
    retry.max_delay = nested.duration("max_delay", retry.max_delay);
    if let Some(multiplier) = nested.map.number("multiplier", nested.problems) {
        if multiplier.is_finite() && (1.0..=100.0).contains(&multiplier) {
            retry.multiplier = multiplier;
        } else {
            nested.problem(
                "multiplier",
                format!("`retry.multiplier` is {multiplier}; use a number from 1 to 100"),
            );
        }
    }
    if let Some(max_attempts) = nested.map.whole::<u32>("max_attempts", nested.problems) {
        retry.max_attempts = max_attempts;
    }
    if retry.initial_delay > retry.max_delay {
        nested.problem(
            "initial_delay",
            "`retry.initial_delay` is longer than `retry.max_delay`",
        );
    }
    map.finish("`retry`", &RETRY_KEYS, reader.problems);
    retry
}
