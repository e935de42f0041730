//! The writer thread: takes requests in batches (group commit), commits each batch in one
//! transaction (see [`txn`]), answers after the commit, and reopens the database after an
//! error.

mod append;
mod delivery;
mod retain;
mod txn;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::Database;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::audit::Head;
use super::dedup::DedupIndex;
use super::depth::DepthChanges;
use super::error::Chain;
use super::open::{load_dedup_index, open_database};
use super::request::Request;
use super::{OpenError, OutboxOptions, Shared, StoreError};

/// Most body bytes written in one transaction (one body may exceed it on its own).
const MAX_BATCH_BYTES: usize = 32 << 20;

pub(super) fn spawn(
    options: OutboxOptions,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Request>,
    dedup: Option<DedupIndex>,
) -> Result<std::thread::JoinHandle<()>, std::io::Error> {
    let writer = Writer {
        options,
        shared,
        next_id: None,
        audit_head: None,
        dedup,
        last_open_error: None,
    };
    let failed = writer.shared.writer_failed.clone();
    std::thread::Builder::new()
        .name("outbox-writer".to_owned())
        .spawn(move || {
            // A panic (a bug, or one in redb) must not leave a gateway that answers AE
            // forever while its probes say it is fine: the callers of the batch in hand get
            // errors (their reply channels are dropped), and `writer_failed` tells the app.
            let run = std::panic::AssertUnwindSafe(move || writer.run(receiver));
            if std::panic::catch_unwind(run).is_err() {
                error!("the outbox writer failed (a panic); nothing can be stored until the process restarts");
                failed.cancel();
            }
        })
}

pub(super) struct Writer {
    options: OutboxOptions,
    shared: Arc<Shared>,
    /// Next message id, read from `meta` after each (re)open.
    next_id: Option<u64>,
    /// The audit chain's head, read from the table after each (re)open.
    audit_head: Option<Head>,
    /// Recently accepted frames; only committed ones are in it.
    dedup: Option<DedupIndex>,
    /// Why the last reopen failed, while the database is closed.
    last_open_error: Option<Arc<OpenError>>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let max_batch = self.options.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        // Only to wait for a request with a deadline (see `hold_for_intake`).
        let clock = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(clock) => Some(clock),
            Err(error) => {
                warn!(error = %error, "outbox writer without a timer: delivery updates are not held for intake");
                None
            }
        };
        // Whether the last committed batch stored a received message.
        let mut intake_streaming = false;
        let mut stop = None;
        while let Some(first) = receiver.blocking_recv() {
            if let Request::Stop { .. } = first {
                stop = Some(first);
                break;
            }
            let mut bytes = first.body_len();
            batch.push(first);
            // Bounded by count and by bytes, so a few large bodies do not hold many small
            // messages' ACKs behind one huge transaction.
            while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(Request::Stop { reply }) => {
                        stop = Some(Request::Stop { reply });
                        break;
                    }
                    Ok(request) => {
                        bytes += request.body_len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let has_append = |batch: &[Request]| batch.iter().any(Request::is_append);
            if stop.is_none()
                && intake_streaming
                && !has_append(&batch)
                && !self.options.intake_hold.is_zero()
                && let Some(clock) = &clock
            {
                let hold = self.options.intake_hold;
                stop = hold_for_intake(
                    clock,
                    hold,
                    &mut receiver,
                    &mut batch,
                    &mut bytes,
                    max_batch,
                );
            }
            intake_streaming = has_append(&batch);
            self.commit(&mut batch);
            if stop.is_some() {
                break;
            }
        }
        // Stopping: what was sent after the stop is answered "gone", then the database is
        // closed (a clean close), and only then is the stop answered.
        receiver.close();
        while let Ok(request) = receiver.try_recv() {
            request.gone();
        }
        if let Ok(mut slot) = self.shared.database.write() {
            slot.take();
        }
        info!("outbox writer stopped");
        if let Some(mut stop) = stop {
            if let Request::Stop { reply } = &mut stop {
                reply.set(());
            }
            stop.committed(&self.shared.stats);
        }
    }

    /// Commit a batch and answer it; after a failure, reopen and try its requests one by one.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let result = self.write(batch);
        match result {
            Ok((woken, depths)) => self.answer(batch.drain(..), woken, &depths),
            Err(failure) => {
                self.shared
                    .stats
                    .failed_batches
                    .fetch_add(1, Ordering::Relaxed);
                self.reopen_after(&failure);
                if batch.len() == 1 {
                    error!(error = %Chain(&failure), "outbox commit failed; the request gets an error");
                    let failure = Arc::new(failure);
                    for request in batch.drain(..) {
                        request.failed(&failure);
                    }
                } else {
                    // One bad operation (a record that will not decode, say) must not fail
                    // the others: try each on its own. A disk that fails every commit
                    // fails the first two too, and then the rest are answered at once.
                    error!(error = %Chain(&failure), records = batch.len(), "outbox commit failed; trying the batch's requests one by one");
                    self.one_by_one(batch);
                }
            }
        }
    }

    /// Write `batch` in one transaction on the open database (reopening it first if an
    /// earlier error closed it).
    fn write(
        &mut self,
        batch: &mut [Request],
    ) -> Result<(BTreeSet<super::ConnectorId>, DepthChanges), StoreError> {
        match self.database() {
            Some(database) => self.write_batch(&database, batch),
            None => Err(StoreError::NotOpen {
                source: self.last_open_error.clone(),
            }),
        }
    }

    /// Count what a committed batch changed, answer it, and wake the connectors whose
    /// queues grew.
    fn answer(
        &self,
        requests: impl Iterator<Item = Request>,
        woken: BTreeSet<super::ConnectorId>,
        depths: &DepthChanges,
    ) {
        self.shared.depths.apply(depths);
        let stats = &self.shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        for request in requests {
            request.committed(stats);
        }
        let wakers = crate::locks::read(&self.shared.wakers);
        for connector in woken {
            if let Some(waker) = wakers.get(&connector) {
                waker.notify_one();
            }
        }
    }

    /// After a failed batch: commit each request in its own transaction, so only the ones
    /// that fail on their own get an error. Two failures in a row mean the store itself is
    /// failing: the rest get the error without more attempts.
    fn one_by_one(&mut self, batch: &mut Vec<Request>) {
        let mut failures_in_a_row = 0;
        let mut last_error: Option<Arc<StoreError>> = None;
        for mut request in batch.drain(..) {
            if failures_in_a_row >= 2
                && let Some(error) = &last_error
            {
                request.failed(error);
                continue;
            }
            match self.write(std::slice::from_mut(&mut request)) {
                Ok((woken, depths)) => {
                    failures_in_a_row = 0;
                    self.answer(std::iter::once(request), woken, &depths);
                }
                Err(failure) => {
                    failures_in_a_row += 1;
                    warn!(error = %Chain(&failure), "an outbox request failed on its own");
                    self.shared
                        .stats
                        .failed_batches
                        .fetch_add(1, Ordering::Relaxed);
                    self.reopen_after(&failure);
                    let failure = Arc::new(failure);
                    request.failed(&failure);
                    last_error = Some(failure);
                }
            }
        }
    }

    /// After a failed transaction: reopen, unless the failure was a record that would not
    /// encode or decode (the transaction was dropped; the handle and the file are fine, and a
    /// reopen would only make readers wait).
    fn reopen_after(&mut self, failure: &StoreError) {
        if !matches!(failure, StoreError::Encoding(_) | StoreError::Damaged(_)) {
            self.reopen();
        }
    }

    /// The open database, reopening it if an earlier error closed it.
    fn database(&mut self) -> Option<Arc<Database>> {
        let current = self.shared.database.read().ok()?.clone();
        if current.is_some() {
            return current;
        }
        self.reopen();
        self.shared.database.read().ok()?.clone()
    }

    /// Drop the current handle and open the database again. After an I/O error redb refuses
    /// further use of a handle, and a retried fsync cannot be trusted: start from what is on
    /// disk (the open drops the files' cached pages first, see `Storage::drop_cache`).
    fn reopen(&mut self) {
        self.next_id = None;
        self.audit_head = None;
        if let Ok(mut slot) = self.shared.database.write() {
            slot.take();
        }
        // A commit that reported an error may still have reached the disk: learn its
        // messages so a resend is recognised.
        match load_dedup_index(&self.options) {
            Ok(index) => self.dedup = index,
            Err(error) => error!(error = %Chain(&error), "retransmit index could not be rebuilt"),
        }
        match open_database(&self.options) {
            Ok(database) => {
                self.last_open_error = None;
                self.shared.stats.reopens.fetch_add(1, Ordering::Relaxed);
                warn!("outbox database reopened after an error");
                // A commit that reported an error may still have landed: count again.
                if let Err(error) = self.shared.depths.recount(&database) {
                    warn!(error = %Chain(&error), "queue sizes could not be counted after the reopen; /stats may be off until the next restart");
                }
                if let Ok(mut slot) = self.shared.database.write() {
                    *slot = Some(Arc::new(database));
                }
            }
            Err(error) => {
                error!(error = %Chain(&error), "outbox database could not be reopened; will retry with the next message");
                self.last_open_error = Some(Arc::new(error));
                // Do not spin: the next attempt comes with the next batch.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Wait up to `hold` for a request that stores a received message, adding whatever arrives
/// meanwhile to `batch`; once one arrives, take everything else already waiting. Returns a
/// stop request if one arrived (the batch then ends before it).
///
/// Why (`OutboxOptions::intake_hold`): a single ordered sender sends its next frame about one
/// round trip after its ACK. If the writer meanwhile starts a commit for delivery updates alone
/// (a connector marking a message delivered), that frame waits for that whole commit and then
/// for its own: two fsyncs per ACK where the sender should pay one. Held, the delivery updates
/// share the next frame's commit instead. They are delayed by at most `hold`, and only right
/// after a commit that stored a received message.
fn hold_for_intake(
    clock: &tokio::runtime::Runtime,
    hold: Duration,
    receiver: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
    bytes: &mut usize,
    max_batch: usize,
) -> Option<Request> {
    let deadline = std::time::Instant::now() + hold;
    let mut appended = false;
    while batch.len() < max_batch && *bytes < MAX_BATCH_BYTES {
        let next = if appended {
            receiver.try_recv().ok()
        } else {
            // The timer is created inside `block_on`: outside a runtime it would panic.
            clock
                .block_on(async { tokio::time::timeout_at(deadline.into(), receiver.recv()).await })
                .ok()
                .flatten()
        };
        let Some(request) = next else { break };
        if let Request::Stop { .. } = request {
            return Some(request);
        }
        appended |= request.is_append();
        *bytes += request.body_len();
        batch.push(request);
    }
    None
}
