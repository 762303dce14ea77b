//! The rate limit of one gateway: a token bucket refilled continuously at `rate_per_s` up to
//! `burst` tokens. (Its concurrency limit is a semaphore in the actor.) A call that finds the
//! bucket empty is told how long to wait for its token, so callers shape their traffic
//! instead of failing.

use std::time::Duration;

/// A token bucket; time is passed in (ms), so it is pure.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per millisecond; 0 = unlimited.
    rate_per_ms: f64,
    burst: f64,
    tokens: f64,
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket; `rate_per_s == 0` means no limit.
    pub fn new(rate_per_s: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate_per_ms: f64::from(rate_per_s) / 1000.0,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            updated_ms: 0,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.updated_ms {
            let elapsed = (now_ms - self.updated_ms) as f64;
            self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
            self.updated_ms = now_ms;
        }
    }

    /// Takes a token at `now_ms`, or says how long until one is available.
    pub fn try_take(&mut self, now_ms: u64) -> Result<(), Duration> {
        if self.rate_per_ms <= 0.0 {
            return Ok(());
        }
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_millis(
            (missing / self.rate_per_ms).ceil().max(1.0) as u64,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_grants() {
        let mut bucket = TokenBucket::new(0, 0);
        for _ in 0..10_000 {
            assert!(bucket.try_take(0).is_ok());
        }
    }

    #[test]
    fn burst_then_rate() {
        let mut bucket = TokenBucket::new(100, 5);
        for _ in 0..5 {
            assert!(bucket.try_take(0).is_ok());
        }
        let wait = bucket.try_take(0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(10));
        assert!(bucket.try_take(10).is_ok());
        assert!(bucket.try_take(10).is_err());
        // A long pause refills only up to the burst.
        for _ in 0..5 {
            assert!(bucket.try_take(100_000).is_ok());
        }
        assert!(bucket.try_take(100_000).is_err());
    }
}
