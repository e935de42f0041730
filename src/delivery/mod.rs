//! Delivery: one worker per connector takes the head of its queue, hands it to the output,
//! and records the outcome in the outbox before it looks at the next entry (FIFO, also across
//! retries and restarts). Transient failures wait with exponential backoff and full jitter;
//! permanent failures and exhausted attempts move the entry to the connector's dead-letter
//! queue, and the queue moves on. The worker, not the output, owns ordering, retry and the
//! dead-letter queue.
//!
//! A worker sleeps on its connector's waker (notified by every commit that queues for it), so
//! an idle gateway does no polling. Attempt counts, next-attempt times and last errors live in
//! the queue entry, so a restart resumes with the same schedule.

mod batch;
mod lanes;
mod marks;
mod retry;
pub mod upkeep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use retry::{Random, RetryPolicy};

use crate::outbox::{MessageRecord, Outbox, Pending, StoreError};
use marks::hand_over;

/// Entries read from the queue at a time.
const READ_AHEAD: usize = 64;
/// Body bytes read from the queue at a time (the first entry is always read).
const READ_AHEAD_BYTES: usize = 4 << 20;
/// Most delivered entries whose marks wait for the one being committed; then the worker
/// waits for that commit before it sends again. Bounds what a crash resends (ADR 0003).
const MARK_GROUP: usize = 16;
/// A delivery faster than this, with the next entry ready to go, keeps its mark in hand for
/// the next ones (the commit per message would cost more than the send).
const LINGER_BELOW: Duration = Duration::from_millis(2);
/// Pause after the outbox failed, before reading the queue again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One message as an output sees it.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The data file's instance id (see [`Outbox::instance_id`]).
    pub instance_id: u64,
    /// The message id in the outbox.
    pub message_id: u64,
    /// The entry's position in the connector's queue.
    pub seq: u64,
    /// The connector's name.
    pub connector: Arc<str>,
    /// Header fields, receive time, peer.
    pub record: MessageRecord,
    /// The bytes as received.
    pub body: Bytes,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The character set of a body whose MSH-18 is empty (`DEFAULT_CHARACTER_SET`).
    pub default_charset: crate::hl7::Charset,
}

/// Why an output could not deliver. Reasons name the cause, never message content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying (the peer is down, busy, or answered AE).
    #[error("{reason}")]
    Transient {
        /// What happened (mfoundry's words: logged, stored, shown to every role).
        reason: String,
        /// The peer asked to wait this long (HTTP `Retry-After`).
        retry_after: Option<Duration>,
        /// What the downstream system answered in its own words (an ACK's MSA and ERR
        /// segments, the first 1 KiB of an HTTP body): it can hold patient data, so it is
        /// never logged, and a dead letter keeps it where only body readers see it.
        downstream: Option<String>,
    },
    /// Retrying cannot help (the peer refused this message).
    #[error("{reason}")]
    Permanent {
        /// What happened.
        reason: String,
        /// What the downstream system answered (see `Transient`).
        downstream: Option<String>,
    },
}

/// Most bytes of a downstream system's answer kept with a dead letter.
pub const DOWNSTREAM_MAX: usize = 1024;

impl DeliveryError {
    /// A transient failure.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
            downstream: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
            downstream: None,
        }
    }

    /// The same failure, with the downstream system's own words (cut to
    /// [`DOWNSTREAM_MAX`] bytes, at a character boundary).
    pub fn with_downstream(mut self, text: Option<String>) -> Self {
        let text = text.map(|mut text| {
            if text.len() > DOWNSTREAM_MAX {
                let mut end = DOWNSTREAM_MAX;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            text
        });
        match &mut self {
            Self::Transient { downstream, .. } | Self::Permanent { downstream, .. } => {
                *downstream = text
            }
        }
        self
    }
}

/// Something that delivers one message: every output kind (see [`crate::outputs::Output`]),
/// or a scripted stand-in in tests. The worker is generic over it.
pub trait Deliver: Send + 'static {
    /// The output kind, for logs.
    fn kind(&self) -> &'static str;
    /// Deliver one message. Safe to call again for the same message after a transient error.
    fn deliver(
        &mut self,
        envelope: &Envelope,
    ) -> impl std::future::Future<Output = Result<(), DeliveryError>> + Send;

    /// Most messages [`Deliver::deliver_batch`] takes at once; 1 (the default): one at a
    /// time.
    fn batch_limit(&self) -> usize {
        1
    }

    /// Deliver several messages, in order, at once (one durable write for all of them where
    /// the output can). The answer holds one `Ok` per delivered message, from the first;
    /// an error ends it (that message and the ones after it were not delivered; the worker
    /// then sends them one at a time, to find the one at fault). The default delivers one
    /// after another.
    fn deliver_batch(
        &mut self,
        envelopes: &[Envelope],
    ) -> impl std::future::Future<Output = Vec<Result<(), DeliveryError>>> + Send {
        one_at_a_time(self, envelopes)
    }
}

/// [`Deliver::deliver_batch`] one message after another, stopping at the first error.
pub async fn one_at_a_time<D: Deliver + ?Sized>(
    output: &mut D,
    envelopes: &[Envelope],
) -> Vec<Result<(), DeliveryError>> {
    let mut outcomes = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let outcome = output.deliver(envelope).await;
        let failed = outcome.is_err();
        outcomes.push(outcome);
        if failed {
            break;
        }
    }
    outcomes
}

/// What a dead letter means for its key's later messages (keyed lanes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDeadLetter {
    /// The key is released: its later messages are delivered (as a FIFO connector moves on).
    #[default]
    Continue,
    /// The key's later messages wait until the dead letter is replayed or purged.
    HoldKey,
}

/// Counters of one connector's worker.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Messages delivered, counted once their delivery is recorded in the store.
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Times the outbox could not record an outcome.
    pub store_errors: AtomicU64,
    /// True while the worker waits for a retry time.
    pub backing_off: AtomicBool,
    /// True while a delivery is in hand (the output is sending).
    pub delivering: AtomicBool,
    /// When the last delivery was recorded (microseconds since the epoch; 0: none since
    /// start).
    pub last_delivered_micros: std::sync::atomic::AtomicI64,
}

impl DeliveryStats {
    /// Count `count` deliveries recorded in the store just now.
    pub(crate) fn count_delivered(&self, count: u64) {
        self.delivered.fetch_add(count, Ordering::Relaxed);
        self.last_delivered_micros
            .store(crate::outbox::now_micros(), Ordering::Relaxed);
    }
}

/// Controls one connector's worker from outside (pause, resume).
#[derive(Clone, Debug)]
pub struct WorkerControl {
    paused: watch::Sender<bool>,
    stats: Arc<DeliveryStats>,
}

impl WorkerControl {
    /// A control starting `paused` or not (or the one `continues`), and the worker's end
    /// of the pause signal.
    fn new(paused: bool, continues: Option<WorkerControl>) -> (Self, watch::Receiver<bool>) {
        if let Some(control) = continues {
            let receiver = control.paused.subscribe();
            return (control, receiver);
        }
        let (paused, receiver) = watch::channel(paused);
        let control = Self {
            paused,
            stats: Arc::new(DeliveryStats::default()),
        };
        (control, receiver)
    }

    /// Stop delivering after the message in hand; intake keeps queueing.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Deliver again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Whether delivery is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The worker's counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }
}

/// What a worker needs.
#[derive(Debug)]
pub struct WorkerSettings {
    /// Connector name.
    pub name: Arc<str>,
    /// Connector id in the outbox.
    pub connector: crate::outbox::ConnectorId,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Least time between two sends.
    pub min_interval: Option<Duration>,
    /// Start paused.
    pub paused: bool,
    /// The character set of messages whose MSH-18 is empty (`DEFAULT_CHARACTER_SET`), for
    /// outputs that decode (JSON, FHIR).
    pub default_charset: crate::hl7::Charset,
    /// The control of the worker this one replaces (a configuration reload changed the
    /// connector): its pause and counters carry on, and handles to it reach the new worker.
    /// `paused` is then ignored.
    pub continues: Option<WorkerControl>,
}

/// Start a connector's worker on the current runtime. It stops, after the delivery in hand,
/// when `shutdown` is cancelled.
pub fn spawn_worker<O: Deliver>(
    mut settings: WorkerSettings,
    output: O,
    outbox: Outbox,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> WorkerControl {
    let (control, paused_rx) = WorkerControl::new(settings.paused, settings.continues.take());
    let stats = Arc::clone(&control.stats);
    let worker = Worker {
        random: Random::new(u64::from(settings.connector.0)),
        settings,
        output,
        outbox,
        shutdown,
        paused: paused_rx,
        stats: Arc::clone(&stats),
        last_send: None,
        retry_at: None,
        failing: None,
        marking: None,
        unmarked: Vec::new(),
        single_until: None,
    };
    tracker.spawn(worker.run());
    control
}

/// Start a connector with keyed lanes ([`lanes`], ADR 0015): one output per lane. It stops,
/// after the deliveries in hand, when `shutdown` is cancelled.
pub fn spawn_laned_worker<O: Deliver>(
    mut settings: WorkerSettings,
    outputs: Vec<O>,
    on_dead_letter: OnDeadLetter,
    outbox: Outbox,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> WorkerControl {
    let (control, paused_rx) = WorkerControl::new(settings.paused, settings.continues.take());
    let stats = Arc::clone(&control.stats);
    tracker.spawn(lanes::run(
        settings,
        outputs,
        on_dead_letter,
        outbox,
        shutdown,
        paused_rx,
        stats,
    ));
    control
}

struct Worker<O> {
    settings: WorkerSettings,
    output: O,
    outbox: Outbox,
    shutdown: CancellationToken,
    paused: watch::Receiver<bool>,
    stats: Arc<DeliveryStats>,
    random: Random,
    last_send: Option<tokio::time::Instant>,
    /// When the head (this seq) may be tried again, on the monotonic clock. Set by a failure
    /// in this process; after a restart the stored wall-clock time is used instead.
    retry_at: Option<(crate::outbox::Seq, tokio::time::Instant)>,
    /// Since when deliveries have been failing (the first failure of a run of them), and how
    /// many attempts failed: a recovery is logged once, with both.
    failing: Option<(tokio::time::Instant, u64)>,
    /// The mark of the last delivered entry (or batch), on its way to the writer while the
    /// next entry is sent (ADR 0003, amended): settled before any other outcome of this
    /// connector is recorded and before its queue is read again, so marks are committed in
    /// queue order.
    marking: Option<tokio::task::JoinHandle<Result<usize, StoreError>>>,
    /// Entries delivered one at a time while `marking` was being committed, in queue order
    /// (seq, attempts): their marks go to the writer together once it is, so a fast output
    /// is not held to one commit per message (at most [`MARK_GROUP`]).
    unmarked: Vec<(crate::outbox::Seq, u32)>,
    /// Entries up to this seq are sent one at a time: a batch holding them failed.
    single_until: Option<crate::outbox::Seq>,
}

/// Why a wait ended.
enum Woke {
    /// The time came (or, for a pause wait, delivery may go on).
    Ready,
    /// An operator paused or resumed: look at the state again before sending.
    Changed,
    Shutdown,
}

impl<O: Deliver> Worker<O> {
    async fn run(mut self) {
        let Some(waker) = self.outbox.waker(self.settings.connector) else {
            warn!(connector = %self.settings.name, "connector is not registered in the outbox; its worker does not start");
            return;
        };
        info!(connector = %self.settings.name, output = self.output.kind(), paused = *self.paused.borrow(), "delivery worker started");
        let mut batch: std::collections::VecDeque<Pending> = Default::default();
        loop {
            if *self.paused.borrow()
                && let Err(error) = self.settle_mark().await
            {
                // Paused with marks in hand: they are committed before the wait.
                self.store_failed(&error).await;
                batch.clear();
            }
            if let Woke::Shutdown = self.wait_while_paused().await {
                break;
            }
            if batch.is_empty() {
                // What was delivered leaves the queue before the queue is read again.
                if let Err(error) = self.settle_mark().await {
                    self.store_failed(&error).await;
                    continue;
                }
                let connector = self.settings.connector;
                match self
                    .outbox
                    .read(move |snapshot| {
                        snapshot.pending(connector, None, READ_AHEAD, READ_AHEAD_BYTES)
                    })
                    .await
                {
                    Ok(entries) => batch.extend(entries),
                    Err(error) => {
                        self.store_failed(&error).await;
                        continue;
                    }
                }
                if batch.is_empty() {
                    tokio::select! {
                        () = waker.notified() => continue,
                        () = self.shutdown.cancelled() => break,
                        changed = self.paused.changed() => {
                            // Every control handle gone: nobody can resume or stop us.
                            if changed.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                }
            }
            let ready = self.ready_for_batch(&batch);
            if ready > 1 {
                let entries: Vec<Pending> = batch.iter().take(ready).cloned().collect();
                match self.attempt_batch(&entries).await {
                    Ok(delivered) => {
                        batch.drain(..delivered);
                    }
                    Err(error) => {
                        self.store_failed(&error).await;
                        batch.clear();
                    }
                }
                continue;
            }
            // Another entry goes out right after this one: a fast output's mark may wait
            // for it (fewer commits for the same promise).
            let next_ready = self.settings.min_interval.is_none()
                && batch.get(1).is_some_and(|next| {
                    next.entry.next_attempt_micros <= crate::outbox::now_micros()
                });
            let Some(head) = batch.front_mut() else {
                continue;
            };
            match self.attempt(head, next_ready).await {
                Ok(Step::Done) => {
                    batch.pop_front();
                }
                Ok(Step::Again) => {}
                Ok(Step::Stop) => break,
                Err(error) => {
                    self.store_failed(&error).await;
                    // Start again from what the outbox holds.
                    batch.clear();
                }
            }
        }
        if let Err(error) = self.settle_mark().await {
            // Not recorded: delivered again after the restart (at least once).
            warn!(connector = %self.settings.name, error = %crate::outbox::Chain(&error), "the last delivery could not be recorded; it is delivered again after the restart");
        }
        info!(connector = %self.settings.name, "delivery worker stopped");
    }

    /// Deliver the head once (after waiting for its retry time) and record the outcome.
    async fn attempt(&mut self, head: &mut Pending, next_ready: bool) -> Result<Step, StoreError> {
        let connector = self.settings.connector;
        let seq = head.seq;
        if let Some(damage) = &head.damage {
            // Never deliver bytes that are not the message: they fail the checksum written
            // with them. Operators see it in the dead-letter queue and in the counter.
            error!(connector = %self.settings.name, seq = seq.0, damage = %damage, "stored data is damaged; moved to the dead-letter queue, not delivered");
            self.outbox.stats().damaged.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "{damage}; it was not delivered. Restore the store from a backup, or purge \
                 this entry"
            );
            self.settle_mark().await?;
            self.outbox
                .dead_letter(connector, seq, head.entry.attempts, reason)
                .await?;
            bump(&self.stats.dead_lettered);
            return Ok(Step::Done);
        }
        if let Some(failure) = &head.transform_failure {
            // The received bytes are not what this connector was meant to get: never send
            // them. Reprocessing the message runs the current transform (ADR 0009).
            let reason = format!(
                "{failure} (when the message was received); it was not delivered. Fix the \
                 transform, then reprocess the message"
            );
            self.settle_mark().await?;
            self.outbox
                .dead_letter(connector, seq, head.entry.attempts, reason)
                .await?;
            bump(&self.stats.dead_lettered);
            return Ok(Step::Done);
        }
        let (Some(record), Some(body)) = (head.record.clone(), head.body.clone()) else {
            let reason = "the message is missing from the outbox".to_owned();
            self.settle_mark().await?;
            self.outbox
                .dead_letter(connector, seq, head.entry.attempts, reason)
                .await?;
            bump(&self.stats.dead_lettered);
            return Ok(Step::Done);
        };
        let deadline = match self.retry_at {
            Some((retry_seq, at)) if retry_seq == seq => Some(at),
            _ => {
                let due = head.entry.next_attempt_micros;
                let now = crate::outbox::now_micros();
                // A retry time further away than the policy allows means the wall clock
                // stepped back since it was set: wait no longer than the policy's ceiling.
                (due > now).then(|| {
                    let wait = Duration::from_micros(u64::try_from(due - now).unwrap_or(0))
                        .min(self.settings.retry.max_delay);
                    let at = tokio::time::Instant::now() + wait;
                    self.retry_at = Some((seq, at));
                    at
                })
            }
        };
        if let Some(deadline) = deadline.filter(|at| *at > tokio::time::Instant::now()) {
            // Nothing delivered stays unrecorded through the wait.
            self.settle_mark().await?;
            self.stats.backing_off.store(true, Ordering::Relaxed);
            let woke = self.sleep_until(deadline).await;
            self.stats.backing_off.store(false, Ordering::Relaxed);
            match woke {
                Woke::Shutdown => return Ok(Step::Stop),
                // Paused or resumed during the wait: check the state and the time again.
                Woke::Changed => return Ok(Step::Again),
                Woke::Ready if *self.paused.borrow() => return Ok(Step::Again),
                Woke::Ready => {}
            }
        }
        if let (Some(interval), Some(last)) = (self.settings.min_interval, self.last_send) {
            let ready_at = last + interval;
            if ready_at > tokio::time::Instant::now() {
                self.settle_mark().await?;
                match self.sleep_until(ready_at).await {
                    Woke::Shutdown => return Ok(Step::Stop),
                    Woke::Changed => return Ok(Step::Again),
                    Woke::Ready if *self.paused.borrow() => return Ok(Step::Again),
                    Woke::Ready => {}
                }
            }
        }
        let attempt = head.entry.attempts.saturating_add(1);
        let envelope = Envelope {
            instance_id: self.outbox.instance_id(),
            message_id: head.entry.message_id.0,
            seq: seq.0,
            connector: Arc::clone(&self.settings.name),
            record,
            body,
            attempt,
            default_charset: self.settings.default_charset,
        };
        self.last_send = Some(tokio::time::Instant::now());
        // The delivery in hand is finished even during shutdown; outputs bound it with
        // their own timeouts.
        let started = tokio::time::Instant::now();
        self.stats.delivering.store(true, Ordering::Relaxed);
        let delivery = self.output.deliver(&envelope);
        let (outcome, handed) = if self.unmarked.is_empty() {
            (delivery.await, Ok(()))
        } else {
            // Marks in hand wait for this send only while it is quick: a send that takes
            // longer (a slow or hung peer) does not keep them from the store.
            tokio::pin!(delivery);
            tokio::select! {
                outcome = &mut delivery => (outcome, Ok(())),
                () = tokio::time::sleep(LINGER_BELOW) => {
                    // The send goes on while the marks are handed over.
                    tokio::join!(
                        delivery.as_mut(),
                        hand_over(
                            &mut self.marking,
                            &mut self.unmarked,
                            &self.outbox,
                            connector,
                            &self.stats,
                        )
                    )
                }
            }
        };
        self.stats.delivering.store(false, Ordering::Relaxed);
        // The send finished either way; a failed mark means reading the queue again (this
        // entry's outcome is not recorded: it is sent again, in order).
        handed?;
        if outcome.is_ok() {
            // Recorded while the next entry is sent: a crash before the commit sends the
            // entries not yet marked again, in order (at least once).
            // A send faster than a commit, with the next one ready: its mark waits with the
            // next ones (at most MARK_GROUP), so a fast output does not pay a commit per
            // message. A slower one gains nothing from waiting: its mark goes now.
            let linger = next_ready && started.elapsed() < LINGER_BELOW;
            self.mark_delivered(seq, attempt, linger).await?;
        } else {
            // Every earlier mark is committed before another outcome is recorded (marks
            // in queue order).
            self.settle_mark().await?;
        }
        let name = &self.settings.name;
        record_operation(name, started.elapsed(), &outcome);
        match outcome {
            Ok(()) => {
                // Counted in `delivered` once its mark is committed.
                if let Some((since, failures)) = self.failing.take() {
                    // Once per recovery, at info: how long it failed and what it now drains
                    // (counts only: no message content).
                    let backlog = self.outbox.depth(connector).queued;
                    info!(connector = %name, failing_for_secs = since.elapsed().as_secs(), failed_attempts = failures, backlog, "connector recovered: delivering again");
                }
                debug!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, "delivered");
                Ok(Step::Done)
            }
            Err(DeliveryError::Permanent { reason, downstream }) => {
                warn!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, reason = %reason, "delivery refused; moved to the dead-letter queue");
                self.outbox
                    .dead_letter_with(connector, seq, attempt, reason, downstream)
                    .await?;
                bump(&self.stats.dead_lettered);
                Ok(Step::Done)
            }
            Err(DeliveryError::Transient {
                reason, downstream, ..
            }) if self.settings.retry.exhausted(attempt) => {
                let reason = format!("gave up after {attempt} attempts; last error: {reason}");
                warn!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, reason = %reason, "moved to the dead-letter queue");
                self.outbox
                    .dead_letter_with(connector, seq, attempt, reason, downstream)
                    .await?;
                bump(&self.stats.dead_lettered);
                Ok(Step::Done)
            }
            Err(DeliveryError::Transient {
                reason,
                retry_after,
                ..
            }) => {
                self.failing
                    .get_or_insert((tokio::time::Instant::now(), 0))
                    .1 += 1;
                let mut delay = self.settings.retry.delay(attempt, &mut self.random);
                if let Some(asked) = retry_after {
                    // Honour the peer's wish, within the policy's ceiling.
                    delay = delay.max(asked.min(self.settings.retry.max_delay));
                }
                let next = crate::outbox::now_micros()
                    .saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
                self.retry_at = Some((seq, tokio::time::Instant::now() + delay));
                warn!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, retry_in_ms = delay.as_millis() as u64, reason = %reason, "delivery failed; will retry");
                self.outbox
                    .record_failure(connector, seq, attempt, next, reason.clone())
                    .await?;
                bump(&self.stats.retries);
                head.entry.attempts = attempt;
                head.entry.next_attempt_micros = next;
                head.entry.last_error = Some(reason);
                Ok(Step::Again)
            }
        }
    }

    async fn wait_while_paused(&mut self) -> Woke {
        while *self.paused.borrow_and_update() {
            tokio::select! {
                changed = self.paused.changed() => {
                    if changed.is_err() {
                        return Woke::Shutdown;
                    }
                }
                () = self.shutdown.cancelled() => return Woke::Shutdown,
            }
        }
        if self.shutdown.is_cancelled() {
            Woke::Shutdown
        } else {
            Woke::Ready
        }
    }

    /// Sleep, waking early on shutdown or a pause change.
    async fn sleep(&mut self, duration: Duration) -> Woke {
        self.sleep_until(tokio::time::Instant::now() + duration)
            .await
    }

    async fn sleep_until(&mut self, deadline: tokio::time::Instant) -> Woke {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => Woke::Ready,
            () = self.shutdown.cancelled() => Woke::Shutdown,
            changed = self.paused.changed() => match changed {
                Ok(()) => Woke::Changed,
                // Every control handle gone: stop rather than spin.
                Err(_) => Woke::Shutdown,
            },
        }
    }

    async fn store_failed(&mut self, error: &StoreError) {
        bump(&self.stats.store_errors);
        warn!(connector = %self.settings.name, error = %crate::outbox::Chain(error), "could not read or update the queue; trying again shortly");
        let _ = self.sleep(STORE_ERROR_PAUSE).await;
    }
}

enum Step {
    /// The head left the queue (delivered or dead-lettered).
    Done,
    /// The head stays; look again (after a failure or a pause).
    Again,
    /// Shutdown.
    Stop,
}

/// The delivery's duration, in the `operation` instrument with its connector and outcome.
fn record_operation(name: &Arc<str>, elapsed: Duration, outcome: &Result<(), DeliveryError>) {
    let result = match outcome {
        Ok(()) => "ok",
        Err(DeliveryError::Permanent { .. }) => "refused",
        Err(DeliveryError::Transient { .. }) => "failed",
    };
    crate::telemetry::metrics::record(
        &crate::telemetry::metrics::instruments().operation,
        elapsed,
        &[
            opentelemetry::KeyValue::new(
                crate::telemetry::metrics::CONNECTOR,
                opentelemetry::StringValue::from(Arc::clone(name)),
            ),
            opentelemetry::KeyValue::new(crate::telemetry::metrics::OUTCOME, result),
        ],
    );
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
