//! `mfoundry bench --dicom`: objects per second into a `type: dicom` listener, through
//! mfoundry's own C-STORE SCU (the `type: dicom` output), one association per connection,
//! and with `--drain` what the connectors delivered of them.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use super::bench::{BenchArgs, BenchReport, Percentiles, drain_watch, run_tag};
use crate::delivery::Envelope;
use crate::dicom::dataset::{self, Syntax, write::element};
use crate::outbox::MessageRecord;
use crate::outputs::dicom::{DicomOutput, DicomSpec};

/// CT Image Storage.
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// A synthetic CT object (no patient) with `uid` and `pixels` bytes of pixel data, as a
/// Part 10 file.
fn object(uid: &str, pixels: &[u8]) -> Vec<u8> {
    let syntax = Syntax::ExplicitLittle;
    // One study and series per run (archives require both).
    let run = uid.get(5..17).unwrap_or("1");
    let study = format!("2.25.{run}1");
    let series = format!("2.25.{run}2");
    // In ascending tag order, as a data set must be.
    let elements: [(dataset::Tag, &[u8; 2], &[u8]); 8] = [
        (dataset::SOP_CLASS_UID, b"UI", CT.as_bytes()),
        (dataset::SOP_INSTANCE_UID, b"UI", uid.as_bytes()),
        (dataset::MODALITY, b"CS", b"CT"),
        (dataset::PATIENT_NAME, b"PN", b"Bench^Synthetic"),
        (dataset::PATIENT_ID, b"LO", b"BENCH"),
        (dataset::STUDY_INSTANCE_UID, b"UI", study.as_bytes()),
        (dataset::SERIES_INSTANCE_UID, b"UI", series.as_bytes()),
        (dataset::PIXEL_DATA, b"OB", pixels),
    ];
    let mut data = Vec::with_capacity(pixels.len() + 512);
    for (tag, vr, value) in elements {
        element(&mut data, syntax, tag, vr, value);
    }
    crate::dicom::object::part10(CT, uid, dataset::EXPLICIT_VR_LITTLE_ENDIAN, "BENCH", &data)
}

/// A UID for object `index` of `connection` in this run: `2.25.` and a decimal number.
fn uid(run: u64, connection: usize, index: usize) -> String {
    format!("2.25.{run}{connection:04}{index:09}")
}

/// Send `share` objects over one association; each answer's latency in µs, and how many
/// were not stored.
async fn connection(
    spec: DicomSpec,
    run: u64,
    connection: usize,
    share: usize,
    pixels: Arc<Vec<u8>>,
) -> (Vec<u32>, usize) {
    let mut output = DicomOutput::new(spec);
    let mut latencies = Vec::with_capacity(share);
    let mut failed = 0;
    for index in 0..share {
        let uid = uid(run, connection, index);
        let envelope = Envelope {
            instance_id: 0,
            message_id: u64::try_from(index).unwrap_or(u64::MAX),
            seq: u64::try_from(index).unwrap_or(u64::MAX),
            connector: Arc::from("bench"),
            record: MessageRecord {
                received_at_micros: 0,
                peer: String::new(),
                listener: String::new(),
                header: crate::outbox::HeaderFields::default(),
                disposition: crate::outbox::Disposition::Routed,
                reason: None,
                routes: Vec::new(),
                ack_code: String::new(),
                body_len: 0,
                ack: None,
                dedup_key: None,
                body_inline: false,
                config: None,
            },
            body: Bytes::from(object(&uid, &pixels)),
            attempt: 1,
            default_charset: crate::hl7::Charset::UTF_8,
        };
        let started = Instant::now();
        match output.deliver(&envelope).await {
            Ok(()) => {
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX))
            }
            Err(error) => {
                failed += 1;
                if failed == 1 {
                    tracing::warn!(error = %error, "a bench object was not stored");
                }
            }
        }
    }
    (latencies, failed)
}

/// Run the DICOM load and print its figures.
pub(super) async fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        args.http.is_none() && args.file.is_none(),
        "--dicom sends synthetic objects by C-STORE: --http and --file are for HL7"
    );
    // MLLP's default port means "not given": the DICOM port then.
    let addr = if args.addr == "127.0.0.1:2575" {
        "127.0.0.1:11112"
    } else {
        args.addr.as_str()
    };
    let (host, port) = addr
        .rsplit_once(':')
        .context("--addr is host:port (the dicom listener)")?;
    let port: u16 = port.parse().context("--addr's port")?;
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let spec = DicomSpec {
        addr: format!("{host}:{port}"),
        called_ae: args.called_ae.clone(),
        calling_ae: args.calling_ae.clone(),
        connect_timeout: Duration::from_secs(10),
        response_timeout: args.timeout,
        tls: args.tls.client(addr)?.map(Arc::new),
        egress: None,
    };
    let size = usize::try_from(args.object_size).context("--object-size")?;
    let pixels: Arc<Vec<u8>> = Arc::new((0..size).map(|n| (n % 251) as u8).collect());
    let bytes = object(&uid(0, 0, 0), &pixels).len();
    let watch = drain_watch(args).await?;
    // A run-specific number in every UID: a second run's objects are new objects.
    let run: u64 = run_tag()
        .bytes()
        .filter(u8::is_ascii_digit)
        .fold(0u64, |number, digit| {
            number
                .wrapping_mul(10)
                .wrapping_add(u64::from(digit - b'0'))
                % 1_000_000_000_000
        })
        .max(1);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let share = args.messages / args.connections
            + usize::from(index < args.messages % args.connections);
        tasks.push(tokio::spawn(connection(
            spec.clone(),
            run,
            index,
            share,
            Arc::clone(&pixels),
        )));
    }
    let mut report = BenchReport::default();
    let mut latencies = Vec::with_capacity(args.messages);
    for task in tasks {
        let (answered, failed) = task.await.context("a bench association panicked")?;
        latencies.extend(answered);
        report.failed += failed;
    }
    report.elapsed = started.elapsed();
    report.answered = latencies.len();
    report.latency = Percentiles::of(&mut latencies);
    anyhow::ensure!(
        report.answered > 0,
        "no object was stored: is a dicom listener at {} with ae_title {} (and {} allowed)?",
        addr,
        args.called_ae,
        args.calling_ae
    );
    // With `--json` the text lines go nowhere and one object is printed at the end.
    let mut sink = std::io::sink();
    let (out, json_out): (&mut dyn Write, Option<&mut dyn Write>) = if args.json {
        (&mut sink, Some(out))
    } else {
        (out, None)
    };
    writeln!(
        out,
        "DICOM C-STORE, associations {}, objects {} ({bytes} bytes each): {:.0} objects/s ({:.1} MB/s) in {:.2} s",
        args.connections,
        args.messages,
        report.throughput(),
        report.throughput() * bytes as f64 / 1e6,
        report.elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "C-STORE response latency: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
        report.latency.p50, report.latency.p99, report.latency.p999
    )?;
    writeln!(out, "objects not stored: {}", report.failed)?;
    if let Some(watch) = watch {
        report.drain = watch.finish(report.throughput(), args.timeout).await?;
        for drained in &report.drain {
            writeln!(
                out,
                "drain {}: {} of {} delivered in {:.2} s: {:.0} objects/s ({:.2}x intake); delivery latency p50 {:.1} ms, p99 {:.1} ms",
                drained.connector,
                drained.delivered,
                drained.queued,
                drained.elapsed_secs,
                drained.per_second,
                drained.ratio_to_intake,
                drained.latency_ms.p50,
                drained.latency_ms.p99,
            )?;
        }
    }
    if let Some(json_out) = json_out {
        let object = serde_json::json!({
            "addr": addr,
            "transport": "dicom",
            "connections": args.connections,
            "messages": args.messages,
            "message_bytes": bytes,
            "answered": report.answered,
            "no_answer": report.failed,
            "elapsed_secs": report.elapsed.as_secs_f64(),
            "throughput_per_sec": report.throughput(),
            "ack_latency_us": report.latency,
            "drain": report.drain,
        });
        serde_json::to_writer(&mut *json_out, &object)?;
        writeln!(json_out)?;
    }
    Ok(report)
}
