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

/// Recently accepted frames, newest last.
#[derive(Debug)]
pub(super) struct DedupIndex {
    window_micros: i64,
    max_entries: usize,
    /// Key prefix → (newest message id with that prefix, accepted at µs).
    by_prefix: HashMap<u64, (u64, i64)>,
    /// `(prefix, message id, accepted at µs)` in acceptance order, for eviction.
    order: VecDeque<(u64, u64, i64)>,
}

/// The first 8 bytes of a dedup key.
pub(super) fn prefix(key: &[u8; 32]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[..8]);
    u64::from_be_bytes(bytes)
}

impl DedupIndex {
    pub(super) fn new(window_micros: i64, max_entries: usize) -> Self {
        Self {
            window_micros,
            max_entries: max_entries.max(1),
            by_prefix: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Rebuild from the newest stored messages.
    pub(super) fn rebuild(
        &mut self,
        messages: &impl ReadableTable<u64, &'static [u8]>,
        now: i64,
    ) -> Result<(), StoreError> {
        let cutoff = now.saturating_sub(self.window_micros);
        let mut newest_first = Vec::new();
        for entry in messages.iter()?.rev() {
            let (id, value) = entry?;
            let (record, _) = schema::decode_message(value.value())?;
            if record.received_at_micros < cutoff || newest_first.len() >= self.max_entries {
                break;
            }
            if let Some(key) = record.dedup_key {
                newest_first.push((prefix(&key), id.value(), record.received_at_micros));
            }
        }
        self.by_prefix.clear();
        self.order.clear();
        for (key_prefix, id, accepted_at) in newest_first.into_iter().rev() {
            self.insert(key_prefix, id, accepted_at);
        }
        Ok(())
    }

    /// The message id a prefix was last accepted under, if within the window at `now`.
    pub(super) fn candidate(&self, key_prefix: u64, now: i64) -> Option<u64> {
        let (id, accepted_at) = *self.by_prefix.get(&key_prefix)?;
        (now.saturating_sub(accepted_at) < self.window_micros).then_some(id)
    }

    /// Record a committed acceptance.
    pub(super) fn insert(&mut self, key_prefix: u64, id: u64, accepted_at: i64) {
        self.by_prefix.insert(key_prefix, (id, accepted_at));
        self.order.push_back((key_prefix, id, accepted_at));
        while self.order.len() > self.max_entries {
            self.evict_front();
        }
    }

    /// Drop entries older than the window.
    pub(super) fn expire(&mut self, now: i64) {
        let cutoff = now.saturating_sub(self.window_micros);
        while self.order.front().is_some_and(|(_, _, at)| *at < cutoff) {
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        if let Some((key_prefix, id, _)) = self.order.pop_front()
            && self
                .by_prefix
                .get(&key_prefix)
                .is_some_and(|(newest, _)| *newest == id)
        {
            self.by_prefix.remove(&key_prefix);
        }
    }

    /// Number of remembered frames.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}
