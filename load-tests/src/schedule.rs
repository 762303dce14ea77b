//! The fixed-rate schedule of an open-model run: arrival `i` is intended at exactly
//! `i × period` after the start (computed as `i × 1 s / rate` in integer nanoseconds, so there
//! is no drift however long the run). The schedule never waits for answers: if the sender
//! falls behind, the arrivals it missed are all still due, each with its own intended time,
//! and their latencies are measured from those times.

use std::ops::Range;
use std::time::Duration;

use anyhow::bail;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Highest accepted arrival rate.
pub const RATE_MAX_PER_SEC: u64 = 1_000_000;
/// Longest accepted run.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);

/// A fixed-rate schedule of `total` arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate_per_sec: u64,
    total: u64,
}

impl Schedule {
    /// `rate_per_sec` arrivals per second for `duration`: arrivals whose intended time falls
    /// inside `[0, duration)`.
    pub fn new(rate_per_sec: u64, duration: Duration) -> anyhow::Result<Schedule> {
        if rate_per_sec == 0 || rate_per_sec > RATE_MAX_PER_SEC {
            bail!("--rate must be 1..={RATE_MAX_PER_SEC} per second");
        }
        if duration.is_zero() || duration > DURATION_MAX {
            bail!("--duration must be more than 0 and at most {DURATION_MAX:?}");
        }
        // Number of i with i × 1e9 / rate < duration_ns, i.e. ceil(duration_ns × rate / 1e9).
        let total = (duration.as_nanos() * u128::from(rate_per_sec)).div_ceil(NANOS_PER_SEC);
        Ok(Schedule {
            rate_per_sec,
            total: total as u64,
        })
    }

    /// Arrivals in the whole run.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Arrivals per second.
    pub fn rate_per_sec(&self) -> u64 {
        self.rate_per_sec
    }

    /// The nominal period between arrivals (rounded down to whole nanoseconds).
    pub fn period(&self) -> Duration {
        Duration::from_nanos((NANOS_PER_SEC / u128::from(self.rate_per_sec)) as u64)
    }

    /// Intended time of arrival `i`, from the start of the run.
    pub fn offset(&self, i: u64) -> Duration {
        let nanos = u128::from(i) * NANOS_PER_SEC / u128::from(self.rate_per_sec);
        Duration::from_nanos(nanos as u64)
    }

    /// The arrivals from `next` on whose intended time is at or before `elapsed`: everything
    /// that must be sent now. After a stall this is every missed arrival, none skipped.
    pub fn due(&self, next: u64, elapsed: Duration) -> Range<u64> {
        // offset(i) <= e  ⇔  ⌊i·1e9/rate⌋ <= e  ⇔  i·1e9 < (e+1)·rate  ⇔  i < ⌈(e+1)·rate/1e9⌉
        let bound = ((elapsed.as_nanos() + 1) * u128::from(self.rate_per_sec))
            .div_ceil(NANOS_PER_SEC)
            .min(u128::from(self.total)) as u64;
        next.min(bound)..bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_exact_multiples_of_the_period() {
        let schedule = Schedule::new(5000, Duration::from_secs(30)).unwrap();
        assert_eq!(schedule.total(), 150_000);
        assert_eq!(schedule.period(), Duration::from_micros(200));
        for i in [0, 1, 2, 7, 4_999, 5_000, 149_999] {
            assert_eq!(schedule.offset(i), schedule.period() * i as u32);
        }
    }

    #[test]
    fn rates_that_do_not_divide_a_second_do_not_drift() {
        let schedule = Schedule::new(3, Duration::from_secs(10)).unwrap();
        assert_eq!(schedule.total(), 30);
        assert_eq!(schedule.offset(3), Duration::from_secs(1));
        assert_eq!(schedule.offset(29), Duration::from_nanos(9_666_666_666));
        // A run whose duration is not a multiple of the period still has whole arrivals.
        assert_eq!(
            Schedule::new(3, Duration::from_millis(500))
                .unwrap()
                .total(),
            2
        );
    }

    #[test]
    fn due_matches_the_definition() {
        let schedule = Schedule::new(7, Duration::from_secs(3)).unwrap();
        for elapsed_ms in 0..3500 {
            let elapsed = Duration::from_millis(elapsed_ms);
            let expected = (0..schedule.total())
                .filter(|&i| schedule.offset(i) <= elapsed)
                .count() as u64;
            assert_eq!(schedule.due(0, elapsed), 0..expected, "at {elapsed:?}");
        }
        assert_eq!(schedule.due(0, Duration::ZERO), 0..1);
    }

    /// Coordinated omission: a sender that stalls must not skip arrivals; each missed one keeps
    /// its own intended time, so its latency includes the stall.
    #[test]
    fn a_stalled_sender_finds_every_missed_arrival_still_due() {
        let schedule = Schedule::new(1000, Duration::from_secs(1)).unwrap();
        let first = schedule.due(0, Duration::from_millis(10));
        assert_eq!(first, 0..11);
        // The sender stalls for 200 ms after arrival 10.
        let after_stall = schedule.due(first.end, Duration::from_millis(210));
        assert_eq!(after_stall, 11..211);
        let sent_at = Duration::from_millis(210);
        let latencies: Vec<Duration> = after_stall
            .clone()
            .map(|i| sent_at - schedule.offset(i))
            .collect();
        // The oldest missed arrival has waited 199 ms before it was even sent; a closed-loop
        // measurement from the send time would have reported 0 for it.
        assert_eq!(latencies[0], Duration::from_millis(199));
        assert_eq!(*latencies.last().unwrap(), Duration::ZERO);
        // Past the end nothing more is due.
        assert_eq!(schedule.due(1000, Duration::from_secs(5)), 1000..1000);
    }

    #[test]
    fn out_of_bounds_runs_are_refused() {
        assert!(Schedule::new(0, Duration::from_secs(1)).is_err());
        assert!(Schedule::new(RATE_MAX_PER_SEC + 1, Duration::from_secs(1)).is_err());
        assert!(Schedule::new(10, Duration::ZERO).is_err());
        assert!(Schedule::new(10, DURATION_MAX + Duration::from_secs(1)).is_err());
    }
}
