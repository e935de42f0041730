//! Retransmit detection: an in-memory index of recently accepted frames.
//!
//! The durable truth is the message record, which carries its dedup key; this index only
//! finds candidates fast. Keeping it out of redb matters: dedup keys are hashes, so a B-tree
//! keyed by them dirties one random page per message and roughly halves commit throughput.
//! The index holds 8-byte key prefixes (a hit is confirmed against the full key in the stored
//! record), is bounded by a window and an entry count, is updated only after a commit, and is
//! rebuilt from the newest message records when the outbox opens, so a sender retrying after
//! a crash still gets its original ACK.

use std::collections::{HashMap, VecDeque};

use redb::ReadableTable;

use super::StoreError;
use super::schema;

/// Recently accepted frames.
///
/// About 17 bytes per frame (a hash map from key prefix to message id), against 50–77 for a
/// map plus a per-frame expiry queue: at `DEDUP_MAX_ENTRIES` (100,000) that is the difference
/// between about 2 MiB and 7 MiB of a gateway's memory. Expiry needs no per-frame queue
/// because message ids grow with time: frames are grouped by acceptance time, and the first
/// id of the oldest group still in the window separates live entries from stale ones.
#[derive(Debug)]
pub(super) struct DedupIndex {
    window_micros: i64,
    max_entries: usize,
    /// Key prefix → the newest message id accepted with it. May hold stale entries (older
    /// than the oldest group) until the next sweep; lookups ignore them.
    by_prefix: HashMap<u64, u64>,
    /// Acceptances grouped by time, oldest first.
    groups: VecDeque<Group>,
    /// Acceptances counted in `groups`.
    live: usize,
    /// Acceptances in groups dropped since the last sweep of `by_prefix`.
    stale: usize,
    /// A group covers at most this long ...
    group_span: i64,
    /// ... and at most this many acceptances, so dropping one forgets little at a time.
    group_max: usize,
}

/// Acceptances within one short span of time.
#[derive(Debug)]
struct Group {
    /// The smallest message id in the group (ids only grow).
    first_id: u64,
    /// When the group started, µs.
    started_at: i64,
    /// The latest acceptance in the group, µs: the group leaves the window after it.
    last_at: i64,
    /// Acceptances in the group.
    count: usize,
}

/// Groups per window and per `max_entries`: a frame is remembered for the window and at most
/// 1/64 of it longer, and hitting `max_entries` forgets at most 1/64 of them at once.
const GROUPS: usize = 64;

/// The first 8 bytes of a dedup key.
pub(super) fn prefix(key: &[u8; 32]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[..8]);
    u64::from_be_bytes(bytes)
}

impl DedupIndex {
    pub(super) fn new(window_micros: i64, max_entries: usize) -> Self {
        let max_entries = max_entries.max(1);
        Self {
            window_micros,
            max_entries,
            by_prefix: HashMap::new(),
            groups: VecDeque::new(),
            live: 0,
            stale: 0,
            group_span: (window_micros / GROUPS as i64).max(1),
            group_max: (max_entries / GROUPS).max(1),
        }
    }

    /// Rebuild from the newest stored messages.
    /// A damaged record (failing its checksum) is skipped: its retransmit would be stored
    /// again (a duplicate, never a loss); the count of such records is returned.
    pub(super) fn rebuild(
        &mut self,
        keys: &crate::outbox::crypt::Keys,
        messages: &impl ReadableTable<u64, &'static [u8]>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let cutoff = now.saturating_sub(self.window_micros);
        let mut newest_first = Vec::new();
        let mut damaged = 0;
        for entry in messages.iter()?.rev() {
            let (id, value) = entry?;
            let record = match schema::decode_message_record(keys, id.value(), value.value()) {
                Ok(record) => record,
                Err(StoreError::Damaged(what)) => {
                    tracing::error!(message_id = id.value(), damage = %what, "a stored message is damaged; skipped while rebuilding the retransmit index");
                    damaged += 1;
                    continue;
                }
                Err(other) => return Err(other),
            };
            if record.received_at_micros < cutoff || newest_first.len() >= self.max_entries {
                break;
            }
            if let Some(key) = record.dedup_key {
                newest_first.push((prefix(&key), id.value(), record.received_at_micros));
            }
        }
        *self = Self::new(self.window_micros, self.max_entries);
        self.by_prefix.reserve(newest_first.len());
        for (key_prefix, id, accepted_at) in newest_first.into_iter().rev() {
            self.insert(key_prefix, id, accepted_at);
        }
        Ok(damaged)
    }

    /// The message id a prefix was last accepted under, if within the window at `now`.
    pub(super) fn candidate(&self, key_prefix: u64, now: i64) -> Option<u64> {
        let id = *self.by_prefix.get(&key_prefix)?;
        let cutoff = now.saturating_sub(self.window_micros);
        let oldest_live = self.groups.iter().find(|group| group.last_at > cutoff)?;
        (id >= oldest_live.first_id).then_some(id)
    }

    /// Record a committed acceptance; `id` must be larger than every id recorded before.
    pub(super) fn insert(&mut self, key_prefix: u64, id: u64, accepted_at: i64) {
        match self.groups.back_mut() {
            Some(group)
                if accepted_at < group.started_at.saturating_add(self.group_span)
                    && group.count < self.group_max =>
            {
                group.count += 1;
                group.last_at = group.last_at.max(accepted_at);
            }
            _ => self.groups.push_back(Group {
                first_id: id,
                started_at: accepted_at,
                last_at: accepted_at,
                count: 1,
            }),
        }
        self.live += 1;
        while self.live > self.max_entries {
            self.drop_oldest();
        }
        // Sweep rather than let the map grow into stale entries.
        if self.stale > 0 && self.by_prefix.len() >= self.by_prefix.capacity() {
            self.sweep();
        }
        self.by_prefix.insert(key_prefix, id);
    }

    /// Forget groups whose newest acceptance is older than the window.
    pub(super) fn expire(&mut self, now: i64) {
        let cutoff = now.saturating_sub(self.window_micros);
        while self
            .groups
            .front()
            .is_some_and(|group| group.last_at <= cutoff)
        {
            self.drop_oldest();
        }
        if self.stale > self.live / 2 + 1024 || (self.live == 0 && !self.by_prefix.is_empty()) {
            self.sweep();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(group) = self.groups.pop_front() {
            self.live -= group.count;
            self.stale += group.count;
        }
    }

    /// Remove the entries older than the oldest group; give back memory a burst left behind.
    fn sweep(&mut self) {
        match self.groups.front() {
            Some(oldest) => {
                let first_live = oldest.first_id;
                self.by_prefix.retain(|_, id| *id >= first_live);
            }
            None => self.by_prefix.clear(),
        }
        self.stale = 0;
        let len = self.by_prefix.len();
        if self.by_prefix.capacity() > 4 * len.max(1024) {
            self.by_prefix.shrink_to(2 * len);
        }
    }

    /// Number of remembered frames.
    pub(super) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        /// Advance the clock, then accept a frame with this prefix.
        Insert { prefix: u64, after: i64 },
        /// Advance the clock, then expire (as the writer does after each commit).
        Expire { after: i64 },
        /// Advance the clock, then look a prefix up.
        Check { prefix: u64, after: i64 },
    }

    const WINDOW: i64 = 64_000;
    const MAX: usize = 128;

    fn step() -> impl Strategy<Value = Step> {
        // Few prefixes, so they repeat; steps up to a tenth of the window, sometimes more.
        let after = prop_oneof![8 => 0..WINDOW / 10, 1 => 0..2 * WINDOW];
        prop_oneof![
            6 => (0..40u64, after.clone()).prop_map(|(prefix, after)| Step::Insert { prefix, after }),
            1 => after.clone().prop_map(|after| Step::Expire { after }),
            3 => (0..40u64, after).prop_map(|(prefix, after)| Step::Check { prefix, after }),
        ]
    }

    proptest! {
        /// Against a plain list of every acceptance: a candidate is always the newest id of
        /// its prefix and accepted less than the window (plus one group's span) ago; a frame
        /// accepted within the window is found unless more than `MAX` minus one group came
        /// after it; the count never exceeds `MAX`.
        #[test]
        fn the_index_agrees_with_a_list_of_every_acceptance(steps in proptest::collection::vec(step(), 1..600)) {
            let mut index = DedupIndex::new(WINDOW, MAX);
            let span = WINDOW / GROUPS as i64;
            let group_max = MAX / GROUPS;
            let mut accepted: Vec<(u64, u64, i64)> = Vec::new();
            let mut now = 1_000_000i64;
            for step in steps {
                match step {
                    Step::Insert { prefix, after } => {
                        now += after;
                        let id = accepted.len() as u64 + 1;
                        index.insert(prefix, id, now);
                        accepted.push((prefix, id, now));
                    }
                    Step::Expire { after } => {
                        now += after;
                        index.expire(now);
                    }
                    Step::Check { prefix, after } => {
                        now += after;
                        let newest = accepted.iter().rev().find(|(p, _, _)| *p == prefix);
                        match (index.candidate(prefix, now), newest) {
                            (Some(id), Some((_, newest_id, at))) => {
                                prop_assert_eq!(id, *newest_id);
                                prop_assert!(*at > now - WINDOW - span, "remembered too long");
                            }
                            (Some(id), None) => prop_assert!(false, "candidate {} never accepted", id),
                            (None, Some((_, newest_id, at))) if *at > now - WINDOW => {
                                let after_it = accepted.len() - (*newest_id as usize - 1);
                                prop_assert!(
                                    after_it > MAX - group_max,
                                    "forgotten within the window with only {} after it", after_it
                                );
                            }
                            (None, _) => {}
                        }
                    }
                }
                prop_assert!(index.len() <= MAX);
                prop_assert!(index.by_prefix.len() <= accepted.len());
            }
        }
    }

    #[test]
    fn a_full_window_costs_about_17_bytes_per_frame() {
        let mut index = DedupIndex::new(3_600_000_000, 100_000);
        for id in 1..=100_000u64 {
            index.insert(id.wrapping_mul(0x9E37_79B9_7F4A_7C15), id, id as i64 * 1000);
        }
        assert_eq!(index.len(), 100_000);
        // hashbrown: one control byte plus the 16-byte entry per bucket, buckets a power
        // of two with at most 7/8 in use.
        let bytes = index.by_prefix.capacity() * 8 / 7 * 17 + index.groups.capacity() * 40;
        assert!(bytes < 2_500_000, "{bytes} bytes");
        // A burst that expires leaves no large map behind.
        index.expire(100_000 * 1000 + 3_600_000_000 + 3_600_000_000 / 64 + 1);
        assert_eq!(index.len(), 0);
        assert!(
            index.by_prefix.capacity() < 10_000,
            "{}",
            index.by_prefix.capacity()
        );
    }
}
