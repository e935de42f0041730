//! `MAX_FRAME_MEMORY`: one budget for the bytes every connection holds in frames being
//! received. A connection's first [`FREE_PER_CONNECTION`] bytes are not counted, so small
//! messages never touch the budget. A connection whose frame grows beyond that reserves, at
//! once, what the largest frame can need (`2 × MAX_FRAME_SIZE`: a read buffer grows by
//! doubling) and keeps it until it is back between frames. Reserving the whole at once, and
//! never more afterwards, means a connection that holds part of the budget never waits for
//! more, so connections cannot wait on each other forever. When the budget is spent, a
//! connection waits before it reads on (TCP holds its sender back) until another gives its
//! reservation back, within its `FRAME_TIMEOUT`; each wait is counted (`mfoundry.caps`,
//! `cap=max_frame_memory`).
//!
//! So at most `MAX_FRAME_MEMORY / (2 × MAX_FRAME_SIZE)` frames larger than 64 KiB are
//! received at once, and frames take at most `MAX_FRAME_MEMORY` plus
//! `FREE_PER_CONNECTION` per connection. No segment index is kept beside a frame
//! ([`crate::hl7::Message`] walks its segments).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of each connection the budget does not count.
pub const FREE_PER_CONNECTION: usize = 64 * 1024;
/// The budget counts in units of this many bytes.
const UNIT: usize = 1024;

/// The shared budget.
#[derive(Debug)]
pub struct FrameBudget {
    units: Arc<Semaphore>,
    total_units: usize,
    /// Units one large frame reserves.
    reservation: usize,
    waits: AtomicU64,
}

impl FrameBudget {
    /// A budget of `bytes` for frames of at most `max_frame_size` bytes.
    pub fn new(bytes: usize, max_frame_size: usize) -> Arc<Self> {
        let total_units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        let reservation = max_frame_size
            .saturating_mul(2)
            .saturating_add(16 * 1024)
            .div_ceil(UNIT)
            .clamp(1, total_units);
        Arc::new(Self {
            units: Arc::new(Semaphore::new(total_units)),
            total_units,
            reservation,
            waits: AtomicU64::new(0),
        })
    }

    /// Times a connection had to wait for memory.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Bytes not reserved.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.total_units * UNIT
    }
}

/// What one connection holds of the budget.
#[derive(Debug)]
pub struct Share {
    budget: Arc<FrameBudget>,
    held: Option<OwnedSemaphorePermit>,
}

impl Share {
    /// An empty share of `budget`.
    pub fn new(budget: Arc<FrameBudget>) -> Self {
        Self { budget, held: None }
    }

    /// Before the connection holds `bytes` of frame data: beyond the free part, reserve a
    /// large frame's share unless it is held already, waiting while the budget is spent
    /// (`on_wait` is called as the wait begins). Cancel-safe: an interrupted wait holds
    /// nothing.
    pub async fn cover(&mut self, bytes: usize, on_wait: impl FnOnce()) {
        if bytes <= FREE_PER_CONNECTION || self.held.is_some() {
            return;
        }
        let units = u32::try_from(self.budget.reservation).unwrap_or(u32::MAX);
        let taken = match Arc::clone(&self.budget.units).try_acquire_many_owned(units) {
            Ok(taken) => taken,
            Err(_) => {
                self.budget.waits.fetch_add(1, Ordering::Relaxed);
                on_wait();
                match Arc::clone(&self.budget.units)
                    .acquire_many_owned(units)
                    .await
                {
                    Ok(taken) => taken,
                    // Never closed.
                    Err(_) => return,
                }
            }
        };
        self.held = Some(taken);
    }

    /// Whether a reservation is held.
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Give the reservation back (the connection is between frames again).
    pub fn release(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_frames_reserve_once_and_wait_for_a_reservation_given_back() {
        // Room for two frames of up to 256 KiB (each reserves 2 × 256 KiB + 16 KiB).
        let budget = FrameBudget::new(1100 * 1024, 256 * 1024);
        let mut first = Share::new(Arc::clone(&budget));
        first.cover(FREE_PER_CONNECTION, || {}).await;
        assert_eq!(
            budget.available(),
            1100 * 1024,
            "the free part costs nothing"
        );
        first.cover(FREE_PER_CONNECTION + 1, || {}).await;
        assert_eq!(budget.available(), (1100 - 528) * 1024);
        // Growing further takes nothing more (and never waits).
        first.cover(500 * 1024, || {}).await;
        assert_eq!(budget.available(), (1100 - 528) * 1024);
        let mut second = Share::new(Arc::clone(&budget));
        second.cover(100 * 1024, || {}).await;
        let mut third = Share::new(Arc::clone(&budget));
        let mut waited = false;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            third.cover(100 * 1024, || waited = true),
        )
        .await;
        assert!(
            waiting.is_err() && waited,
            "waits while the budget is spent"
        );
        assert_eq!(budget.waits(), 1);
        first.release();
        third.cover(100 * 1024, || {}).await;
        assert_eq!(budget.available(), (1100 - 2 * 528) * 1024);
        // A frame larger than the whole budget takes the whole budget, never waits forever.
        let small = FrameBudget::new(1024 * 1024, 4 * 1024 * 1024);
        let mut share = Share::new(Arc::clone(&small));
        share.cover(2 * 1024 * 1024, || {}).await;
        assert_eq!(small.available(), 0);
    }
}
