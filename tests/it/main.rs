//! mfoundry's integration tests, as one test binary (one link instead of one per file): each
//! module is a former `tests/<name>.rs`, run with `cargo test --test it <name>::`. The power-cut
//! harness (`tests/power_cut`) stays its own binary.

mod common;

mod ack_golden;
mod admin;
mod batch_crash;
mod batches;
mod charset;
mod chunking;
mod cli;
mod config;
mod console;
mod crash;
mod delivery;
mod deploy;
mod dicom;
mod directory;
mod dlq;
mod docs;
mod drain;
mod egress;
mod encryption;
mod end_to_end;
mod fhir;
mod framing;
mod http_intake;
mod intake;
mod interfaces;
mod lanes;
mod listeners;
mod metrics;
mod outbox;
mod outputs;
mod phi;
mod prometheus;
mod reload;
mod rules;
mod send;
mod store;
mod tidy;
mod tls;
mod transform;
