//! Retry policy: exponential backoff with full jitter, bounded attempts.

use std::time::Duration;

/// When to try again after a transient failure.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay ceiling after the first failure.
    pub initial_delay: Duration,
    /// Factor applied to the ceiling after each further failure.
    pub multiplier: f64,
    /// Largest delay.
    pub max_delay: Duration,
    /// Attempts before the message goes to the dead-letter queue; 0 is forever.
    pub max_attempts: u32,
    /// Full jitter: each delay is drawn uniformly between zero and the ceiling, so many
    /// queues failing at once do not retry in lockstep. Off only in tests.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            max_attempts: 0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay ceiling after `attempts` failed attempts (1 = after the first failure).
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(1024) as i32;
        let seconds = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = seconds.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    /// The delay before the next attempt after `attempts` failed attempts.
    pub fn delay(&self, attempts: u32, random: &mut Random) -> Duration {
        let ceiling = self.ceiling(attempts);
        if self.jitter {
            ceiling.mul_f64(random.unit())
        } else {
            ceiling
        }
    }

    /// True when `attempts` failed attempts use up the policy.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts != 0 && attempts >= self.max_attempts
    }
}

/// A small pseudo-random source for jitter (splitmix64); not for anything secret.
#[derive(Clone, Debug)]
pub struct Random(u64);

impl Random {
    /// Seeded from the clock and `salt` (a connector id), so workers differ.
    pub fn new(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        Self(nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_grow_by_the_multiplier_up_to_the_cap() {
        let policy = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            multiplier: 3.0,
            max_delay: Duration::from_secs(2),
            max_attempts: 5,
            jitter: false,
        };
        let ceilings: Vec<u128> = (1..=6).map(|n| policy.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 300, 900, 2000, 2000, 2000]);
        assert!(!policy.exhausted(4));
        assert!(policy.exhausted(5));
        assert!(
            !RetryPolicy::default().exhausted(u32::MAX),
            "0 retries forever"
        );
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn full_jitter_stays_between_zero_and_the_ceiling_and_varies() {
        let policy = RetryPolicy::default();
        let mut random = Random::new(7);
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay(3, &mut random)).collect();
        assert!(delays.iter().all(|delay| *delay <= policy.ceiling(3)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "jitter spreads the delays");
        let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / 200.0;
        assert!(
            (1.4..2.6).contains(&mean),
            "about half the 4 s ceiling: {mean}"
        );
    }
}
