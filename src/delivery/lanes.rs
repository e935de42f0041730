//! Keyed lanes (ADR 0015): a connector with `order_by` delivers messages of the same key in
//! the order they were received and messages of different keys in parallel, up to `lanes`
//! at once, each lane with its own output (its own connection).
//!
//! A scheduler looks at the head of the queue (the first [`SCAN_WINDOW`] entries, in queue
//! order). The first entry of each key is that key's head; later entries of a key are never
//! started while an earlier one is in the queue. A head is started on a free lane unless its
//! key is in hand on another lane, its retry time has not come, or (with `on_dead_letter:
//! hold_key`) its key has a dead letter. A failing head holds only its key; the others flow.
//! Every outcome is recorded by the writer before the lane takes another message, as for a
//! FIFO connector, so after a crash only the messages in hand are sent again, and per-key
//! order holds because a key's next entry is started only once the one before has left the
//! queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    DeliveryError, DeliveryStats, Envelope, OnDeadLetter, Random, STORE_ERROR_PAUSE,
    WorkerSettings, bump,
};
use crate::outbox::{Outbox, Pending, Seq, StoreError};

/// Queue entries the scheduler looks at from the head (it stops earlier once every free lane
/// has a head). A key with more entries than this waiting behind a failing head keeps later
/// keys from being seen until it moves.
pub const SCAN_WINDOW: usize = 4096;

/// How long a deadline is kept after it passed (its entry started, or left the queue).
const STALE_DEADLINE: Duration = Duration::from_secs(600);

/// One lane's delivery, finished: its output back, the entry, what happened.
type Finished<O> = (O, Random, Seq, Result<(), StoreError>);

/// What a laned worker shares with its lanes.
struct Shared {
    settings: WorkerSettings,
    outbox: Outbox,
    stats: Arc<DeliveryStats>,
}

/// Run a connector with keyed lanes until `shutdown` (the deliveries in hand are finished).
pub(super) async fn run<O: super::Deliver>(
    settings: WorkerSettings,
    outputs: Vec<O>,
    on_dead_letter: OnDeadLetter,
    outbox: Outbox,
    shutdown: CancellationToken,
    mut paused: watch::Receiver<bool>,
    stats: Arc<DeliveryStats>,
) {
    let Some(waker) = outbox.waker(settings.connector) else {
        warn!(connector = %settings.name, "connector is not registered in the outbox; its worker does not start");
        return;
    };
    let lanes = outputs.len();
    let kind = outputs.first().map_or("none", |output| output.kind());
    info!(connector = %settings.name, output = kind, lanes, paused = *paused.borrow(), "delivery worker started (keyed lanes)");
    let seed = u64::from(settings.connector.0);
    let shared = Arc::new(Shared {
        settings,
        outbox,
        stats,
    });
    let mut free: Vec<(O, Random)> = outputs
        .into_iter()
        .enumerate()
        .map(|(lane, output)| (output, Random::new(seed.wrapping_add(lane as u64 * 7919))))
        .collect();
    let mut running: JoinSet<Finished<O>> = JoinSet::new();
    // Entries in hand, with their keys, and the task that has each.
    let mut in_hand: HashMap<Seq, Option<u64>> = HashMap::new();
    let mut tasks: HashMap<tokio::task::Id, Seq> = HashMap::new();
    // The scheduler's own deadlines, on the monotonic clock: for heads waiting for a retry
    // time (set once from the stored wall-clock time), and for a head whose lane failed.
    let mut not_before: HashMap<Seq, tokio::time::Instant> = HashMap::new();
    let mut replayed = Replayed::default();
    loop {
        let stopping = shutdown.is_cancelled();
        let hold = *paused.borrow_and_update() || stopping;
        let mut wake_at = None;
        if !hold && !free.is_empty() {
            match schedule(
                &shared,
                on_dead_letter,
                &in_hand,
                &not_before,
                &replayed,
                free.len(),
            )
            .await
            {
                Ok(plan) => {
                    replayed = plan.replayed;
                    let now = tokio::time::Instant::now();
                    for (seq, wait) in plan.waits {
                        not_before.insert(seq, now + wait);
                    }
                    for seq in plan.start {
                        let Some((output, random)) = free.pop() else {
                            break;
                        };
                        not_before.remove(&seq.0);
                        in_hand.insert(seq.0, seq.1);
                        let task = running.spawn(lane(Arc::clone(&shared), output, random, seq.0));
                        tasks.insert(task.id(), seq.0);
                    }
                }
                Err(error) => {
                    store_failed(&shared, &error);
                    wake_at = Some(tokio::time::Instant::now() + STORE_ERROR_PAUSE);
                }
            }
        }
        // The next deadline the scheduler holds; entries that left the queue (delivered by a
        // lane, purged, replayed) lose theirs at the next pass that does not see them.
        if wake_at.is_none() {
            let now = tokio::time::Instant::now();
            not_before.retain(|_, at| *at + STALE_DEADLINE > now);
            wake_at = not_before.values().copied().filter(|at| *at > now).min();
        }
        shared
            .stats
            .delivering
            .store(!in_hand.is_empty(), Ordering::Relaxed);
        shared
            .stats
            .backing_off
            .store(in_hand.is_empty() && wake_at.is_some(), Ordering::Relaxed);
        if stopping && running.is_empty() {
            break;
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                match joined {
                    Ok((id, (output, random, seq, result))) => {
                        tasks.remove(&id);
                        in_hand.remove(&seq);
                        free.push((output, random));
                        if let Err(error) = result {
                            store_failed(&shared, &error);
                            // Look at the queue again after a pause, not at once.
                            tokio::time::sleep(STORE_ERROR_PAUSE).await;
                        }
                    }
                    Err(error) => {
                        // A lane's output panicked (a bug): its entry stays queued and its
                        // key is free again; the connector goes on with one lane less.
                        if let Some(seq) = tasks.remove(&error.id()) {
                            in_hand.remove(&seq);
                            // Not at once on another lane: a message that makes its output
                            // panic would take every lane down in turn.
                            let back_off = shared.settings.retry.max_delay;
                            not_before.insert(seq, tokio::time::Instant::now() + back_off);
                        }
                        tracing::error!(connector = %shared.settings.name, lanes_left = free.len() + running.len(), "a delivery lane failed (a panic); its message stays queued");
                        if free.is_empty() && running.is_empty() {
                            tracing::error!(connector = %shared.settings.name, "no delivery lane is left; the connector delivers again after a restart");
                            break;
                        }
                    }
                }
            }
            () = waker.notified(), if !stopping => {}
            () = sleep, if !stopping => {}
            () = shutdown.cancelled(), if !stopping => {}
            changed = paused.changed(), if !stopping => {
                if changed.is_err() {
                    // Every control handle gone: nobody can resume or stop us.
                    shutdown.cancel();
                }
            }
        }
    }
    shared.stats.delivering.store(false, Ordering::Relaxed);
    info!(connector = %shared.settings.name, "delivery worker stopped");
}

fn store_failed(shared: &Shared, error: &StoreError) {
    bump(&shared.stats.store_errors);
    warn!(connector = %shared.settings.name, error = %crate::outbox::Chain(error), "could not read or update the queue; trying again shortly");
}

/// Entries put back from this connector's dead-letter queue (replays): queued at the tail
/// under a new seq, they keep their key's order by the place they first had (`origin`).
#[derive(Clone, Debug, Default)]
struct Replayed {
    /// `seq → (key, first seq)` of the replayed entries still queued.
    entries: HashMap<Seq, (Option<u64>, Seq)>,
    /// The last seq looked at for new replays (the queue is read from there on each pass,
    /// so each entry is looked at once; from the head after a start).
    seen_up_to: Option<Seq>,
}

/// What one scheduling pass found.
struct Plan {
    /// Heads to start now, with their keys.
    start: Vec<(Seq, Option<u64>)>,
    /// Heads waiting for their stored retry time that the scheduler has no deadline for
    /// yet, with how long to wait (at most the policy's ceiling: a time further away means
    /// the wall clock stepped back).
    waits: Vec<(Seq, Duration)>,
    /// The replayed entries, brought up to date.
    replayed: Replayed,
}

/// Up to `free` heads to start now, and the heads waiting for their retry time.
///
/// A key's head is its queued entry that came first: a replayed entry (at the tail, under a
/// new seq) goes before the entries of its key queued after its first place. `not_before`
/// holds the scheduler's own deadlines (on the monotonic clock): a head in it waits until its
/// deadline and then starts, whatever the wall clock says. The scan from the head of the
/// queue stops as soon as `free` heads are found (a lane that finishes starts the next scan).
async fn schedule(
    shared: &Arc<Shared>,
    on_dead_letter: OnDeadLetter,
    in_hand: &HashMap<Seq, Option<u64>>,
    not_before: &HashMap<Seq, tokio::time::Instant>,
    replayed: &Replayed,
    free: usize,
) -> Result<Plan, StoreError> {
    let connector = shared.settings.connector;
    let hold_key = on_dead_letter == OnDeadLetter::HoldKey;
    let in_hand = in_hand.clone();
    let not_before = not_before.clone();
    let mut replayed = replayed.clone();
    let max_delay = shared.settings.retry.max_delay;
    shared
        .outbox
        .read(move |snapshot| {
            // New replays since the last pass: only the part of the queue not looked at yet.
            let from = replayed
                .seen_up_to
                .map_or(Seq(0), |seen| Seq(seen.0.saturating_add(1)));
            snapshot.visit_queue(connector, from, usize::MAX, |seq, entry| {
                replayed.seen_up_to = Some(seq);
                if let Some(origin) = entry.origin.filter(|origin| origin.connector == connector)
                    && origin.seq < seq
                {
                    replayed.entries.insert(seq, (entry.order_key, origin.seq));
                }
                true
            })?;
            // The replayed entries still queued, with their retry times (read once).
            let mut still = HashMap::new();
            let mut next_attempts = HashMap::new();
            for (seq, found) in &replayed.entries {
                if let Some(entry) = snapshot.queue_entry(connector, *seq)? {
                    still.insert(*seq, *found);
                    next_attempts.insert(*seq, entry.next_attempt_micros);
                }
            }
            replayed.entries = still;

            let mut busy: HashSet<Option<u64>> = in_hand.values().copied().collect();
            if hold_key {
                busy.extend(snapshot.dead_letter_keys(connector)?.into_iter().map(Some));
            }
            let now = crate::outbox::now_micros();
            let now_instant = tokio::time::Instant::now();
            let mut plan = Plan {
                start: Vec::new(),
                waits: Vec::new(),
                replayed: Replayed::default(),
            };
            // Whether `seq` may start now (else it waits, and says for how long).
            let due = |seq: Seq, next_attempt: i64, plan: &mut Plan| match not_before.get(&seq) {
                Some(at) => *at <= now_instant,
                None if next_attempt > now => {
                    let wait =
                        Duration::from_micros(u64::try_from(next_attempt - now).unwrap_or(0))
                            .min(max_delay);
                    plan.waits.push((seq, wait));
                    false
                }
                None => true,
            };
            // Each key's earliest replayed entry is that key's head if it came before every
            // queued entry of the key (it did: they were held, or came after it).
            let mut firsts: Vec<(Seq, Seq, Option<u64>)> = replayed
                .entries
                .iter()
                .map(|(seq, (key, first))| (*first, *seq, *key))
                .collect();
            firsts.sort();
            for (_, seq, key) in firsts {
                if in_hand.contains_key(&seq) || !busy.insert(key) {
                    continue;
                }
                let next_attempt = next_attempts.get(&seq).copied().unwrap_or(0);
                if plan.start.len() < free && due(seq, next_attempt, &mut plan) {
                    plan.start.push((seq, key));
                }
            }
            snapshot.visit_queue(connector, Seq(0), SCAN_WINDOW, |seq, entry| {
                // Only a key's first entry may go; whatever happens to it, its later ones
                // wait.
                if in_hand.contains_key(&seq) || !busy.insert(entry.order_key) {
                    return true;
                }
                if due(seq, entry.next_attempt_micros, &mut plan) {
                    plan.start.push((seq, entry.order_key));
                }
                plan.start.len() < free
            })?;
            plan.replayed = replayed;
            Ok(plan)
        })
        .await
}

/// Deliver one entry on a lane and record the outcome.
async fn lane<O: super::Deliver>(
    shared: Arc<Shared>,
    mut output: O,
    mut random: Random,
    seq: Seq,
) -> Finished<O> {
    let result = deliver(&shared, &mut output, &mut random, seq).await;
    (output, random, seq, result)
}

async fn deliver<O: super::Deliver>(
    shared: &Shared,
    output: &mut O,
    random: &mut Random,
    seq: Seq,
) -> Result<(), StoreError> {
    let settings = &shared.settings;
    let connector = settings.connector;
    let outbox = &shared.outbox;
    let after = seq.0.checked_sub(1).map(Seq);
    let pending = outbox
        .read(move |snapshot| snapshot.pending(connector, after, 1, usize::MAX))
        .await?;
    let Some(head) = pending.into_iter().next().filter(|head| head.seq == seq) else {
        // Gone meanwhile (an operator purged or replayed it): nothing to do.
        return Ok(());
    };
    let Pending {
        entry,
        record,
        body,
        transform_failure,
        damage,
        ..
    } = head;
    let dead = |reason: String| outbox.dead_letter(connector, seq, entry.attempts, reason);
    if let Some(damage) = damage {
        tracing::error!(connector = %settings.name, seq = seq.0, damage = %damage, "stored data is damaged; moved to the dead-letter queue, not delivered");
        outbox.stats().damaged.fetch_add(1, Ordering::Relaxed);
        dead(format!(
            "{damage}; it was not delivered. Restore the store from a backup, or purge this entry"
        ))
        .await?;
        bump(&shared.stats.dead_lettered);
        return Ok(());
    }
    if let Some(failure) = transform_failure {
        dead(format!(
            "{failure} (when the message was received); it was not delivered. Fix the \
             transform, then reprocess the message"
        ))
        .await?;
        bump(&shared.stats.dead_lettered);
        return Ok(());
    }
    let (Some(record), Some(body)) = (record, body) else {
        dead("the message is missing from the outbox".to_owned()).await?;
        bump(&shared.stats.dead_lettered);
        return Ok(());
    };
    let attempt = entry.attempts.saturating_add(1);
    let envelope = Envelope {
        instance_id: outbox.instance_id(),
        message_id: entry.message_id.0,
        seq: seq.0,
        connector: Arc::clone(&settings.name),
        record,
        body,
        attempt,
        default_charset: settings.default_charset,
    };
    let started = tokio::time::Instant::now();
    let outcome = output.deliver(&envelope).await;
    let name = &settings.name;
    super::record_operation(name, started.elapsed(), &outcome);
    match outcome {
        Ok(()) => {
            outbox.mark_delivered(connector, seq, attempt).await?;
            shared.stats.count_delivered(1);
            debug!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, "delivered");
        }
        Err(DeliveryError::Permanent { reason, downstream }) => {
            warn!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, reason = %reason, "delivery refused; moved to the dead-letter queue");
            outbox
                .dead_letter_with(connector, seq, attempt, reason, downstream)
                .await?;
            bump(&shared.stats.dead_lettered);
        }
        Err(DeliveryError::Transient {
            reason, downstream, ..
        }) if settings.retry.exhausted(attempt) => {
            let reason = format!("gave up after {attempt} attempts; last error: {reason}");
            warn!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, reason = %reason, "moved to the dead-letter queue");
            outbox
                .dead_letter_with(connector, seq, attempt, reason, downstream)
                .await?;
            bump(&shared.stats.dead_lettered);
        }
        Err(DeliveryError::Transient {
            reason,
            retry_after,
            ..
        }) => {
            let mut delay = settings.retry.delay(attempt, random);
            if let Some(asked) = retry_after {
                delay = delay.max(asked.min(settings.retry.max_delay));
            }
            let next = crate::outbox::now_micros()
                .saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
            warn!(connector = %name, message_id = envelope.message_id, seq = seq.0, attempt, retry_in_ms = delay.as_millis() as u64, reason = %reason, "delivery failed; its key waits, the others go on");
            outbox
                .record_failure(connector, seq, attempt, next, reason)
                .await?;
            bump(&shared.stats.retries);
        }
    }
    Ok(())
}
