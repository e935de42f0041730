//! The machine's floor for `mfoundry bench`: a raw 4 KiB write + fsync, a bare redb commit
//! and a loopback round trip on the probed disk, and what sealing a message costs with a
//! store key, so a run's figures can be compared with the disk they ran on.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The machine's floor, medians in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Probe {
    /// 4 KiB write + fdatasync.
    pub fsync: f64,
    /// One redb transaction with one insert, `Durability::Immediate`.
    pub redb_commit: f64,
    /// One loopback TCP round trip of a small message.
    pub loopback_rtt: f64,
    /// Sealing what intake stores for one message of the bench's size, with a store key
    /// (ADR 0011): its record and body, a queue entry, an audit record.
    pub seal_per_message: f64,
    /// Opening the same.
    pub open_per_message: f64,
}

pub(super) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// A scratch redb file on the probed disk, for bare commits of one 4 KiB value (removed when
/// dropped).
#[derive(Debug)]
pub struct ProbeStore {
    database: redb::Database,
    next_key: u64,
    // Dropped last: removes the directory and the files in it.
    scratch: tempfile::TempDir,
}

const PROBE_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("probe");

impl ProbeStore {
    /// Create the scratch file in a new directory under `directory`.
    pub fn open(directory: &Path) -> anyhow::Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix(".mfoundry-probe")
            .tempdir_in(directory)
            .with_context(|| format!("cannot write a probe file in {}", directory.display()))?;
        let database = redb::Database::builder()
            .set_cache_size(4 << 20)
            .create(scratch.path().join("probe.redb"))?;
        Ok(Self {
            database,
            next_key: 0,
            scratch,
        })
    }

    /// `count` commits of one insert each, `Durability::Immediate`: their durations in µs.
    pub fn commits(&mut self, count: usize) -> anyhow::Result<Vec<f64>> {
        let block = vec![0x5Au8; 4096];
        let mut commits = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let mut transaction = self.database.begin_write()?;
            transaction.set_durability(redb::Durability::Immediate)?;
            transaction
                .open_table(PROBE_TABLE)?
                .insert(self.next_key, block.as_slice())?;
            transaction.commit()?;
            commits.push(started.elapsed().as_secs_f64() * 1e6);
            self.next_key += 1;
        }
        Ok(commits)
    }
}

/// Measure fsync, a bare redb commit and a loopback round trip.
pub async fn probe(directory: &Path) -> anyhow::Result<Probe> {
    let directory = directory.to_path_buf();
    let (fsync, redb_commit) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
            let mut store = ProbeStore::open(&directory)?;
            let mut file = std::fs::File::create(store.scratch.path().join("fsync"))?;
            let block = vec![0x5Au8; 4096];
            let mut fsyncs = Vec::with_capacity(100);
            for _ in 0..100 {
                let started = Instant::now();
                file.write_all(&block)?;
                file.sync_data()?;
                fsyncs.push(started.elapsed().as_secs_f64() * 1e6);
            }
            let commits = store.commits(100)?;
            Ok((median(fsyncs), median(commits)))
        })
        .await
        .context("probe task failed")??;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let mut buffer = [0u8; 256];
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let ping = [0x42u8; 100];
    let mut pong = [0u8; 100];
    let mut round_trips = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
        round_trips.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(stream);
    echo.abort();
    Ok(Probe {
        fsync,
        redb_commit,
        loopback_rtt: median(round_trips),
        seal_per_message: 0.0,
        open_per_message: 0.0,
    })
}

/// Median µs to seal, and to open, what intake stores for one message of `message_len`
/// bytes under a store key: the record with its body (about 200 bytes more), a queue entry
/// and an audit record (about 60 and 150 bytes).
pub(super) fn encryption_cost(message_len: usize) -> (f64, f64) {
    use crate::outbox::crypt::{Keys, Place, StoreKey};
    let mut key = [0u8; 32];
    if getrandom::fill(&mut key).is_err() {
        return (f64::NAN, f64::NAN);
    }
    let keys = Keys::new(StoreKey::from_bytes(&key), Vec::new());
    let values = [
        (Place::Message(1), vec![0x42u8; message_len + 200]),
        (Place::Queue(1, 1), vec![0x42u8; 60]),
        (Place::Audit(1), vec![0x42u8; 150]),
    ];
    let mut seals = Vec::with_capacity(1000);
    let mut opens = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        let sealed: Vec<(Place, Vec<u8>)> = values
            .iter()
            .map(|(place, plain)| (*place, keys.seal(*place, plain.clone())))
            .collect();
        seals.push(started.elapsed().as_secs_f64() * 1e6);
        let started = Instant::now();
        for (place, value) in &sealed {
            let opened = keys.open(*place, value).map(|plain| plain.len());
            std::hint::black_box(opened.ok());
        }
        opens.push(started.elapsed().as_secs_f64() * 1e6);
    }
    (median(seals), median(opens))
}
