//! mfoundry: an HL7 v2 integration gateway.
//!
//! It receives HL7 v2 over MLLP, validates each message with CEL rules, routes it with each
//! connector's filter, stores it durably in a redb outbox, and only then answers with an HL7
//! ACK. See `docs/ARCHITECTURE.md` for the map and the invariants.
//!
//! # Layout
//! - [`hl7`] — byte parser, field paths, escapes, character sets, batch splitting, ACK builder.
//! - [`mllp`] — MLLP codec, listener (limits and timeouts), client.
//! - [`ingest`] — frame → parse → checks → rules → routes → outbox → ACK; the one place that
//!   picks ACK codes.
//! - [`rules`] — CEL validation rules and connector filters, compiled once.
//! - [`outbox`] — redb store: group-commit writer, FIFO queues per connector, dedup, DLQ,
//!   retention.
//! - [`delivery`] — one worker per connector: FIFO, retry with backoff, dead-letter queue.
//! - [`outputs`] — MLLP, file (more to come): deliver one message, say if a failure is
//!   worth retrying.
//! - [`config`] — defaults < YAML file < environment; Go-style values; the YAML schema.
//! - [`gateway`] — the gateway's shared state (what the admin API and the metrics read).
//! - [`app`] — wiring and lifecycle.
//! - [`cli`] — `serve`, `check`, `config schema`, `send`, `bench`.
//! - [`shutdown`] — signals.
//! - [`telemetry`] — logging.
//! - [`units`] — durations, sizes, CIDR ranges, listen addresses, one dual-stack bind.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dicom;
pub mod fhir;
pub mod file_intake;
pub mod gateway;
pub mod hl7;
pub mod http_intake;
pub mod ingest;
pub mod locks;
pub mod mllp;
pub mod outbox;
pub mod outputs;
pub mod rules;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod transform;
pub mod units;
pub mod yaml;
