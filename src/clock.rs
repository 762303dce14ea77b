//! The clock port: where the engine, the timers, the webhook worker and the gateways' backoff
//! read the time and sleep. [`SystemClock`] is the real one; [`ManualClock`] is the tests'
//! clock, moved only by [`ManualClock::advance`], which wakes every sleeper that came due, so
//! each time rule is tested without real sleeping. The domain never reads a clock: it takes
//! `now` as an argument.
//!
//! Latency measurements (histograms) keep using [`std::time::Instant`]: they measure the
//! machine, not business time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;

use crate::domain::Timestamp;

/// A source of wall-clock time that can also sleep.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Completes once this clock reads `at` or later.
    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let wait = at.0.saturating_sub(self.now().0).max(0) as u64;
        self.sleep(Duration::from_millis(wait))
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock: wall time from the OS, sleeps on the tokio timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(duration).boxed()
    }
}

/// A clock for tests: it stands still until [`ManualClock::advance`] or
/// [`ManualClock::set`] moves it, and then wakes every sleeper whose deadline passed, in
/// deadline order.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
    sleepers: Mutex<Sleepers>,
}

#[derive(Debug, Default)]
struct Sleepers {
    next_id: u64,
    by_deadline: BTreeMap<(i64, u64), oneshot::Sender<()>>,
}

impl ManualClock {
    /// A manual clock reading `start`.
    pub fn new(start: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_ms: AtomicI64::new(start.0),
            sleepers: Mutex::new(Sleepers::default()),
        })
    }

    /// A manual clock reading the current system time (so ids and logs look ordinary).
    pub fn starting_now() -> Arc<ManualClock> {
        ManualClock::new(Timestamp::now())
    }

    /// Moves the clock forward by `by` and wakes the sleepers that came due.
    pub fn advance(&self, by: Duration) {
        let to = self.now().plus_ms(by.as_millis() as i64);
        self.set(to);
    }

    /// Moves the clock to `to` (never backwards) and wakes the sleepers that came due.
    pub fn set(&self, to: Timestamp) {
        self.now_ms.fetch_max(to.0, Ordering::SeqCst);
        let now = self.now_ms.load(Ordering::SeqCst);
        let due = {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
            let later = sleepers.by_deadline.split_off(&(now + 1, 0));
            std::mem::replace(&mut sleepers.by_deadline, later)
        };
        for (_, wake) in due {
            let _ = wake.send(());
        }
    }

    /// How many sleepers wait (for tests that need a task to be parked before advancing).
    pub fn sleepers(&self) -> usize {
        let sleepers = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        sleepers.by_deadline.len()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(Ordering::SeqCst))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let deadline = self.now().plus_ms(duration.as_millis() as i64).0;
        if deadline <= self.now().0 {
            return futures_util::future::ready(()).boxed();
        }
        let (wake, woken) = oneshot::channel();
        {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
            let id = sleepers.next_id;
            sleepers.next_id += 1;
            sleepers.by_deadline.insert((deadline, id), wake);
        }
        // The clock may have moved between reading it and registering: re-check.
        if deadline <= self.now().0 {
            self.set(self.now());
        }
        async move {
            // A dropped clock never wakes its sleepers; they simply stay parked.
            if woken.await.is_err() {
                futures_util::future::pending::<()>().await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_only_when_advanced_past_deadline() {
        let clock = ManualClock::new(Timestamp(1_000));
        let sleeping = clock.sleep(Duration::from_millis(500));
        tokio::pin!(sleeping);
        clock.advance(Duration::from_millis(499));
        assert!(futures_util::poll!(&mut sleeping).is_pending());
        clock.advance(Duration::from_millis(1));
        assert!(futures_util::poll!(&mut sleeping).is_ready());
        assert_eq!(clock.now(), Timestamp(1_500));
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn zero_sleep_is_ready_and_clock_never_goes_back() {
        let clock = ManualClock::new(Timestamp(10));
        clock.sleep(Duration::ZERO).await;
        clock.set(Timestamp(5));
        assert_eq!(clock.now(), Timestamp(10));
        clock.sleep_until(Timestamp(9)).await;
    }

    #[tokio::test]
    async fn system_clock_reads_wall_time() {
        let before = Timestamp::now();
        let now = SystemClock.now();
        assert!(now >= before);
    }
}
