//! Property tests of the gateway actor's pure parts: the retry schedule (full-jitter
//! exponential backoff stays within its ceiling, its cap, its attempt count and its elapsed
//! budget) and the circuit breaker's three-state machine (opens exactly after the configured
//! run of consecutive health failures, refuses everything while open, lets through at most
//! the configured probes while half-open, closes after that many successful probes, reopens on
//! a failed probe, and ignores reports of calls from an earlier state).

use std::time::Duration;

use orderly::gateway::breaker::{BreakerState, CircuitBreaker, Permit};
use orderly::gateway::retry::Backoff;
use proptest::prelude::*;

fn backoff() -> impl Strategy<Value = Backoff> {
    (
        1_u64..5_000,
        1.0_f64..8.0,
        1_u64..60_000,
        1_u32..30,
        0_u64..600_000,
    )
        .prop_map(
            |(initial_ms, multiplier, cap_ms, attempts_max, elapsed_max_ms)| Backoff {
                initial_ms,
                multiplier,
                cap_ms,
                attempts_max,
                elapsed_max_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Ceilings start at min(initial, cap), never decrease and never exceed the cap; every
    /// jittered delay lies in [0, ceiling], reaching both ends of the range.
    #[test]
    fn backoff_delays_stay_within_ceiling_and_cap(
        policy in backoff(),
        retry in 0_u32..200,
        unit in 0.0_f64..1.0,
    ) {
        let ceiling = policy.ceiling_ms(retry);
        prop_assert!(ceiling <= policy.cap_ms);
        prop_assert_eq!(policy.ceiling_ms(0), policy.initial_ms.min(policy.cap_ms));
        prop_assert!(policy.ceiling_ms(retry + 1) >= ceiling);
        let delay = policy.delay(retry, unit);
        prop_assert!(delay <= Duration::from_millis(ceiling));
        prop_assert_eq!(policy.delay(retry, 0.0), Duration::ZERO);
        prop_assert_eq!(policy.delay(retry, 1.0), Duration::from_millis(ceiling));
    }

    /// The exact exponential until the cap: initial * multiplier^n (within rounding).
    #[test]
    fn backoff_ceiling_is_exponential_until_the_cap(policy in backoff(), retry in 0_u32..20) {
        let exact = policy.initial_ms as f64 * policy.multiplier.powi(retry as i32);
        let ceiling = policy.ceiling_ms(retry) as f64;
        if exact < policy.cap_ms as f64 {
            prop_assert!((ceiling - exact).abs() <= 1.0, "{ceiling} vs {exact}");
        } else {
            prop_assert_eq!(ceiling, policy.cap_ms as f64);
        }
    }

    /// A whole schedule has fewer delays than tries, each within its ceiling, and its total
    /// stays within the elapsed budget.
    #[test]
    fn backoff_schedule_respects_attempts_and_elapsed_budget(
        policy in backoff(),
        draws in proptest::collection::vec(0.0_f64..1.0, 64),
    ) {
        let mut next = draws.into_iter().cycle();
        let schedule = policy.schedule(|| next.next().unwrap_or(0.5));
        prop_assert!(schedule.len() < policy.attempts_max as usize);
        let total: Duration = schedule.iter().sum();
        prop_assert!(total <= Duration::from_millis(policy.elapsed_max_ms));
        for (n, delay) in schedule.iter().enumerate() {
            prop_assert!(*delay <= Duration::from_millis(policy.ceiling_ms(n as u32)));
        }
    }
}

/// What the property test does to a breaker.
#[derive(Debug, Clone)]
enum Op {
    /// Let time pass.
    Advance(u64),
    /// Ask to make a call.
    Acquire,
    /// Report the outcome of an outstanding call (index modulo the outstanding ones).
    Report(usize, Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Neutral,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1_u64..400).prop_map(Op::Advance),
        Just(Op::Acquire),
        Just(Op::Acquire),
        (
            0_usize..64,
            prop_oneof![
                Just(Outcome::Success),
                Just(Outcome::Failure),
                Just(Outcome::Failure),
                Just(Outcome::Neutral),
            ]
        )
            .prop_map(|(i, o)| Op::Report(i, o)),
    ]
}

/// Total state changes so far: a permit is current while this has not moved since it was
/// issued (the breaker ignores reports of calls from an earlier state).
fn epoch(breaker: &CircuitBreaker) -> u64 {
    let t = breaker.transitions();
    t.opened + t.half_opened + t.closed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn breaker_follows_its_state_machine(
        failures_to_open in 1_u32..6,
        open_ms in 1_u64..1_000,
        probes in 1_u32..4,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let mut breaker = CircuitBreaker::new(failures_to_open, open_ms, probes);
        let mut now = 0_u64;
        // Outstanding permits with the epoch they were issued in.
        let mut outstanding: Vec<(Permit, u64)> = Vec::new();
        // Consecutive current failures while closed.
        let mut closed_failures = 0_u32;
        // Current successful probes while half-open.
        let mut probe_successes = 0_u32;
        let mut opened_at = 0_u64;
        for op in ops {
            let before = breaker.state(now);
            match op {
                Op::Advance(ms) => now += ms,
                Op::Acquire => {
                    let state = breaker.state(now);
                    let permit = breaker.try_acquire(now);
                    match state {
                        BreakerState::Closed => {
                            let permit = permit.expect("a closed breaker lets calls through");
                            prop_assert!(!permit.probe);
                            outstanding.push((permit, epoch(&breaker)));
                        }
                        BreakerState::Open => {
                            prop_assert!(permit.is_none(), "an open breaker refuses calls");
                            prop_assert!(now < opened_at + open_ms);
                        }
                        BreakerState::HalfOpen => {
                            let in_flight = outstanding
                                .iter()
                                .filter(|(p, e)| p.probe && *e == epoch(&breaker))
                                .count() as u32;
                            match permit {
                                Some(permit) => {
                                    prop_assert!(permit.probe);
                                    prop_assert!(in_flight < probes, "more probes than allowed");
                                    outstanding.push((permit, epoch(&breaker)));
                                }
                                None => prop_assert_eq!(in_flight, probes),
                            }
                        }
                    }
                }
                Op::Report(index, outcome) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let (permit, issued) = outstanding.remove(index % outstanding.len());
                    let state = breaker.state(now);
                    let current = issued == epoch(&breaker);
                    let t0 = breaker.transitions();
                    match outcome {
                        Outcome::Success => breaker.on_success(permit, now),
                        Outcome::Failure => breaker.on_failure(permit, now),
                        Outcome::Neutral => breaker.on_neutral(permit),
                    }
                    let t1 = breaker.transitions();
                    if !current {
                        prop_assert_eq!(t0, t1, "a stale report changed the breaker");
                        continue;
                    }
                    match (state, outcome) {
                        (BreakerState::Closed, Outcome::Success) => {
                            closed_failures = 0;
                            prop_assert_eq!(t0, t1);
                        }
                        (BreakerState::Closed, Outcome::Failure) => {
                            closed_failures += 1;
                            if closed_failures >= failures_to_open {
                                prop_assert_eq!(t1.opened, t0.opened + 1, "opens at the threshold");
                                closed_failures = 0;
                                opened_at = now;
                            } else {
                                prop_assert_eq!(t0, t1, "opened before the threshold");
                            }
                        }
                        (BreakerState::HalfOpen, Outcome::Success) => {
                            probe_successes += 1;
                            if probe_successes >= probes {
                                prop_assert_eq!(t1.closed, t0.closed + 1, "closes after the probes");
                                probe_successes = 0;
                                closed_failures = 0;
                            } else {
                                prop_assert_eq!(t0, t1);
                            }
                        }
                        (BreakerState::HalfOpen, Outcome::Failure) => {
                            prop_assert_eq!(t1.opened, t0.opened + 1, "a failed probe reopens");
                            probe_successes = 0;
                            opened_at = now;
                        }
                        (_, Outcome::Neutral) | (BreakerState::Open, _) => {
                            prop_assert_eq!(t0, t1, "neutral reports change no state");
                        }
                    }
                }
            }
            // A new half-open period starts counting probe successes afresh.
            let after = breaker.state(now);
            if before != BreakerState::HalfOpen && after == BreakerState::HalfOpen {
                probe_successes = 0;
                prop_assert!(now >= opened_at + open_ms, "half-open before the open period ended");
            }
            let t = breaker.transitions();
            prop_assert!(t.closed <= t.half_opened && t.half_opened <= t.opened);
            prop_assert!(t.opened <= t.half_opened + 1);
            prop_assert!(breaker.probes_in_flight() <= breaker.probes_max());
        }
    }
}
