//! mfoundry: an HL7 v2 integration gateway.
//!
//! It receives HL7 v2 over MLLP, checks each message, and answers with an HL7 ACK. (The
//! durable outbox, rules and outputs build on this; see `docs/ARCHITECTURE.md`.)
//!
//! # Layout
//! - [`hl7`] — byte parser, field paths, escapes, character sets, batch splitting, ACK builder.
//! - [`mllp`] — MLLP codec, listener (limits and timeouts), client.
//! - [`ingest`] — frame → parse → checks → ACK decision; the one place that picks ACK codes.
//! - [`config`] — settings from environment variables, Go-style values.
//! - [`app`] — wiring and lifecycle.
//! - [`cli`] — `serve` and `send`.
//! - [`shutdown`] — signals.
//! - [`telemetry`] — logging.

pub mod app;
pub mod cli;
pub mod config;
pub mod hl7;
pub mod ingest;
pub mod mllp;
pub mod outbox;
pub mod rules;
pub mod shutdown;
pub mod telemetry;
