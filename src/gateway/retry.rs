//! Exponential backoff with full jitter (the AWS "full jitter" scheme): the n-th retry waits a
//! uniformly random time in `[0, min(cap, initial * multiplier^n)]`, and retrying stops after
//! `attempts_max` tries or once `elapsed_max` has passed. Full jitter spreads the retries of
//! many orders that failed together (an outage) instead of sending them back in waves.

use std::time::Duration;

use crate::config::{RetrySettings, SyncSettings};

/// A backoff policy. Pure: the random draw is passed in, so schedules are testable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first delay, ms.
    pub initial_ms: u64,
    /// Growth of the ceiling per retry (at least 1).
    pub multiplier: f64,
    /// Largest ceiling, ms.
    pub cap_ms: u64,
    /// Most tries, the first included.
    pub attempts_max: u32,
    /// No retry starts after this long since the first try, ms.
    pub elapsed_max_ms: u64,
}

impl Backoff {
    /// The policy for calls that were not sent.
    pub fn from_retry(settings: &RetrySettings) -> Backoff {
        Backoff {
            initial_ms: settings.initial_ms,
            multiplier: settings.multiplier,
            cap_ms: settings.cap_ms,
            attempts_max: settings.attempts_max,
            elapsed_max_ms: settings.elapsed_max_ms,
        }
    }

    /// The policy between status queries of an unknown outcome.
    pub fn from_sync(settings: &SyncSettings) -> Backoff {
        Backoff {
            initial_ms: settings.initial_ms,
            multiplier: settings.multiplier,
            cap_ms: settings.cap_ms,
            attempts_max: settings.queries_max,
            elapsed_max_ms: settings.window_ms,
        }
    }

    /// The delay ceiling before retry `retry` (0-based: the wait after the first try is retry
    /// 0): `min(cap, initial * multiplier^retry)`, never decreasing in `retry`.
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        let multiplier = self.multiplier.max(1.0);
        // Exponentiation in f64 saturates to infinity instead of overflowing; the cap then
        // bounds it.
        let ceiling = self.initial_ms as f64 * multiplier.powi(retry.min(1_000) as i32);
        if ceiling.is_finite() && ceiling < self.cap_ms as f64 {
            ceiling as u64
        } else {
            self.cap_ms
        }
    }

    /// The delay before retry `retry`, given a uniform random draw `unit` in `[0, 1)`:
    /// full jitter over `[0, ceiling]`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let ceiling = self.ceiling_ms(retry);
        Duration::from_millis(((ceiling as f64) * unit).round() as u64)
            .min(Duration::from_millis(ceiling))
    }

    /// Whether try number `tries_done + 1` may start after `elapsed` since the first try,
    /// waiting `next_delay` first.
    pub fn allows(&self, tries_done: u32, elapsed: Duration, next_delay: Duration) -> bool {
        tries_done < self.attempts_max
            && elapsed.saturating_add(next_delay) <= Duration::from_millis(self.elapsed_max_ms)
    }

    /// The whole schedule of delays for a call that keeps failing, drawing jitter from
    /// `draw`: at most `attempts_max - 1` delays whose sum stays within `elapsed_max`
    /// (ignoring the time the tries themselves take).
    pub fn schedule(&self, mut draw: impl FnMut() -> f64) -> Vec<Duration> {
        let mut delays = Vec::new();
        let mut elapsed = Duration::ZERO;
        let mut tries = 1;
        loop {
            let delay = self.delay(tries - 1, draw());
            if !self.allows(tries, elapsed, delay) {
                break;
            }
            elapsed += delay;
            delays.push(delay);
            tries += 1;
        }
        delays
    }
}

/// A uniform draw in `[0, 1)` for jitter.
pub(crate) fn jitter_unit() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            initial_ms: 100,
            multiplier: 2.0,
            cap_ms: 1000,
            attempts_max: 6,
            elapsed_max_ms: 10_000,
        }
    }

    #[test]
    fn ceilings_grow_then_cap() {
        let b = policy();
        let ceilings: Vec<u64> = (0..6).map(|n| b.ceiling_ms(n)).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling_ms(u32::MAX), 1000);
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = policy();
        assert_eq!(b.delay(2, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(2, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn schedule_respects_attempts() {
        let b = policy();
        assert_eq!(b.schedule(|| 1.0).len(), 5);
    }
}
