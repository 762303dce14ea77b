//! A three-state circuit breaker. Closed: calls flow, consecutive gateway-health failures are
//! counted and `failures_to_open` of them open it. Open: calls are refused without I/O for
//! `open_ms`. Half-open: up to `half_open_probes` probe calls run at once; that many successes
//! in a row close the breaker, any failure opens it again.
//!
//! Only health failures are reported as failures (not sent, timeouts, 5xx, resets): a decline
//! is a healthy gateway saying no. Time is passed in (ms on any monotonic clock), so the state
//! machine is pure and property-tested.

use crate::config::BreakerSettings;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A few probes may run to test the gateway.
    HalfOpen,
}

impl BreakerState {
    /// Metric gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Permission to make one call, to be reported back with [`CircuitBreaker::on_success`],
/// [`CircuitBreaker::on_failure`] or [`CircuitBreaker::on_neutral`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// The call is a half-open probe.
    pub probe: bool,
    /// The breaker generation the permit was issued in; reports from an older generation
    /// (e.g. a slow call that started before the breaker opened) change no counts.
    generation: u64,
}

/// Counts of state changes, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BreakerTransitions {
    /// Closed or half-open → open.
    pub opened: u64,
    /// Open → half-open.
    pub half_opened: u64,
    /// Half-open → closed.
    pub closed: u64,
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failures_to_open: u32,
    open_ms: u64,
    probes_max: u32,
    state: BreakerState,
    /// Consecutive health failures while closed.
    failures: u32,
    /// When the breaker last opened.
    opened_at_ms: u64,
    /// Probes in flight while half-open.
    probes_in_flight: u32,
    /// Successful probes in a row while half-open.
    probe_successes: u32,
    generation: u64,
    transitions: BreakerTransitions,
}

impl CircuitBreaker {
    /// A closed breaker. Zero thresholds are raised to 1.
    pub fn new(failures_to_open: u32, open_ms: u64, half_open_probes: u32) -> CircuitBreaker {
        CircuitBreaker {
            failures_to_open: failures_to_open.max(1),
            open_ms,
            probes_max: half_open_probes.max(1),
            state: BreakerState::Closed,
            failures: 0,
            opened_at_ms: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            generation: 0,
            transitions: BreakerTransitions::default(),
        }
    }

    /// A breaker configured by `settings`.
    pub fn from_settings(settings: &BreakerSettings) -> CircuitBreaker {
        CircuitBreaker::new(
            settings.failures_to_open,
            settings.open_ms,
            settings.half_open_probes,
        )
    }

    /// The state at `now_ms` (an open breaker whose period ended is half-open).
    pub fn state(&mut self, now_ms: u64) -> BreakerState {
        if self.state == BreakerState::Open
            && now_ms >= self.opened_at_ms.saturating_add(self.open_ms)
        {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
            self.generation += 1;
            self.transitions.half_opened += 1;
        }
        self.state
    }

    /// State changes so far.
    pub fn transitions(&self) -> BreakerTransitions {
        self.transitions
    }

    /// Probes in flight now (half-open only).
    pub fn probes_in_flight(&self) -> u32 {
        self.probes_in_flight
    }

    /// The most probes allowed in flight while half-open.
    pub fn probes_max(&self) -> u32 {
        self.probes_max
    }

    /// Asks to make a call at `now_ms`; None means refused (open, or every probe slot taken).
    pub fn try_acquire(&mut self, now_ms: u64) -> Option<Permit> {
        match self.state(now_ms) {
            BreakerState::Closed => Some(Permit {
                probe: false,
                generation: self.generation,
            }),
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if self.probes_in_flight >= self.probes_max {
                    return None;
                }
                self.probes_in_flight += 1;
                Some(Permit {
                    probe: true,
                    generation: self.generation,
                })
            }
        }
    }

    fn release_probe(&mut self, permit: Permit) -> bool {
        let current = permit.generation == self.generation;
        if permit.probe && current && self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
        current
    }

    /// The call made under `permit` got a definite answer (a decline included).
    pub fn on_success(&mut self, permit: Permit, _now_ms: u64) {
        if !self.release_probe(permit) {
            return;
        }
        match self.state {
            BreakerState::Closed => self.failures = 0,
            BreakerState::HalfOpen if permit.probe => {
                self.probe_successes += 1;
                if self.probe_successes >= self.probes_max {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    self.generation += 1;
                    self.transitions.closed += 1;
                }
            }
            _ => {}
        }
    }

    /// The call made under `permit` failed in a way that says the gateway is unhealthy.
    pub fn on_failure(&mut self, permit: Permit, now_ms: u64) {
        if !self.release_probe(permit) {
            return;
        }
        match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= self.failures_to_open {
                    self.open(now_ms);
                }
            }
            BreakerState::HalfOpen if permit.probe => self.open(now_ms),
            _ => {}
        }
    }

    /// The call made under `permit` ended without saying anything about the gateway's health
    /// (refused as invalid); only its probe slot is freed.
    pub fn on_neutral(&mut self, permit: Permit) {
        self.release_probe(permit);
    }

    fn open(&mut self, now_ms: u64) {
        self.state = BreakerState::Open;
        self.opened_at_ms = now_ms;
        self.failures = 0;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.generation += 1;
        self.transitions.opened += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_probes() {
        let mut b = CircuitBreaker::new(3, 100, 2);
        for _ in 0..2 {
            let p = b.try_acquire(0).unwrap();
            b.on_failure(p, 0);
        }
        let p = b.try_acquire(0).unwrap();
        b.on_success(p, 0);
        for _ in 0..3 {
            let p = b.try_acquire(1).unwrap();
            b.on_failure(p, 1);
        }
        assert_eq!(b.state(50), BreakerState::Open);
        assert!(b.try_acquire(100).is_none());
        assert_eq!(b.state(101), BreakerState::HalfOpen);
        let p1 = b.try_acquire(101).unwrap();
        let p2 = b.try_acquire(101).unwrap();
        assert!(b.try_acquire(101).is_none(), "only two probes at once");
        b.on_success(p1, 102);
        b.on_success(p2, 102);
        assert_eq!(b.state(102), BreakerState::Closed);
        assert_eq!(
            b.transitions(),
            BreakerTransitions {
                opened: 1,
                half_opened: 1,
                closed: 1
            }
        );
    }

    #[test]
    fn a_failed_probe_reopens() {
        let mut b = CircuitBreaker::new(1, 10, 1);
        let p = b.try_acquire(0).unwrap();
        b.on_failure(p, 0);
        let p = b.try_acquire(10).unwrap();
        assert!(p.probe);
        b.on_failure(p, 11);
        assert_eq!(b.state(12), BreakerState::Open);
        assert_eq!(b.state(21), BreakerState::HalfOpen);
    }
}
