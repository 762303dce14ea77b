//! The commit loop: it owns the shard's writer, and with it the shard's lease. It acquires the
//! lease, renews it every `lease_renew_interval_ms`, and group-commits: one fenced batch in
//! flight at a time; entries that arrive meanwhile form the next batch. A refused write or
//! renewal means another owner holds the shard: the shard stops at once (drops its live
//! actors, refuses what waits with `shard_unavailable`, acknowledges nothing) and then asks for
//! the lease again; once it has it, orders reload lazily from the store.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{outcome_label, Ownership, ShardCore};
use crate::domain::{CommandEnvelope, OrderId};
use crate::engine::commit::{coalesce, settle, CommitEntry};
use crate::engine::live_set::LiveSet;
use crate::engine::messages::EngineError;
use crate::gateway::GatewayJob;
use crate::store::{Lease, ShardWriter, StoreError};
use crate::telemetry::{self, CommandTally, LeaseEvent};

/// Pause before asking again for a lease that could not be asked for (store unreachable).
const ACQUIRE_ERROR_PAUSE: Duration = Duration::from_millis(500);

impl ShardCore {
    pub(super) async fn run_commits(self: Rc<Self>, mut writer: Box<dyn ShardWriter>) {
        let renew_every = self.limits.lease_renew_interval;
        let mut next_renewal = Instant::now() + renew_every;
        loop {
            if self.take_release(&mut writer).await {
                return;
            }
            if self.ownership.get() != Ownership::Owned {
                match writer.acquire().await {
                    Ok(Some(lease)) => {
                        *self.acquire_error.borrow_mut() = None;
                        self.gain(lease);
                        next_renewal = Instant::now() + renew_every;
                    }
                    Ok(None) => {
                        *self.acquire_error.borrow_mut() = None;
                        self.refuse_acquiring();
                        self.pause_or_release(renew_every).await;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(shard = self.shard, %error, "lease acquisition failed");
                        *self.acquire_error.borrow_mut() = Some(error);
                        self.refuse_acquiring();
                        self.pause_or_release(ACQUIRE_ERROR_PAUSE.min(renew_every))
                            .await;
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep_until(next_renewal.into()) => {}
            }
            loop {
                if self.release_request.borrow().is_some() {
                    break;
                }
                if Instant::now() >= next_renewal {
                    next_renewal = Instant::now() + renew_every;
                    if !self.renew(&mut writer).await {
                        break;
                    }
                }
                let queued = self.queue.borrow().len();
                if queued == 0 {
                    break;
                }
                if queued < self.limits.batch_size_max {
                    if self.limits.flush_interval.is_zero() {
                        // Let the order actors that are ready run first, so their snapshots
                        // join this batch.
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(self.limits.flush_interval).await;
                    }
                }
                self.commit_once(&mut writer).await;
                if self.ownership.get() != Ownership::Owned {
                    break;
                }
            }
        }
    }

    /// Renews the lease; false if it was lost.
    async fn renew(self: &Rc<Self>, writer: &mut Box<dyn ShardWriter>) -> bool {
        match writer.renew().await {
            Ok(()) => {
                telemetry::record_lease(LeaseEvent::Renewed);
                true
            }
            Err(StoreError::Fenced { detail, .. }) => {
                tracing::warn!(shard = self.shard, %detail, "lease renewal refused");
                self.lose(LeaseEvent::RenewalRefused);
                false
            }
            Err(error) => {
                // The store is unreachable: the lease may still be ours. Writes stay fenced by
                // the store itself, so keep trying; a write or renewal that finds the lease
                // gone stops the shard.
                tracing::warn!(shard = self.shard, %error, "lease renewal failed");
                telemetry::record_lease(LeaseEvent::RenewalFailed);
                true
            }
        }
    }

    fn gain(self: &Rc<Self>, lease: Lease) {
        self.ownership.set(Ownership::Owned);
        self.update_stats(|s| s.lease_token = lease.token);
        telemetry::record_lease(LeaseEvent::Acquired);
        tracing::debug!(
            shard = self.shard,
            token = lease.token,
            "shard lease acquired"
        );
        // Requests that waited for the first acquisition go now.
        self.drain_waiting();
        // Resume the payments the index lists: after a start, and after a takeover back.
        actix_rt::spawn(Rc::clone(self).recover_payments());
    }

    /// The first acquisition found the lease held by another node: refuse what waited for it.
    fn refuse_acquiring(&self) {
        if self.ownership.get() == Ownership::Acquiring {
            self.ownership.set(Ownership::Lost);
            self.refuse_waiting();
        }
    }

    fn refuse_waiting(&self) {
        let waiting: Vec<_> = self.waiting.borrow_mut().drain(..).collect();
        for parked in waiting {
            self.resolve(parked.token, Err(self.not_owned()));
        }
    }

    /// The lease is gone: stop serving at once. Live actors are dropped (their state may be
    /// behind the new owner's), queued and parked requests are refused, nothing is
    /// acknowledged. Gateway verdicts still in flight are refused when they arrive; the
    /// payments index resumes them after the next acquisition.
    fn lose(&self, reason: LeaseEvent) {
        self.ownership.set(Ownership::Lost);
        telemetry::record_lease(reason);
        let dropped = std::mem::replace(&mut *self.live.borrow_mut(), LiveSet::new());
        telemetry::record_lease_lost_actors(dropped.len());
        drop(dropped);
        let queued: Vec<CommitEntry> = self.queue.borrow_mut().drain(..).collect();
        for entry in queued {
            self.resolve(entry.token, Err(EngineError::ShardUnavailable(self.shard)));
        }
        self.refuse_waiting();
        self.update_stats(|s| {
            s.live = 0;
            s.lease_losses += 1;
        });
    }

    /// Sleeps `pause`, unless a graceful stop asks for the lease first.
    async fn pause_or_release(&self, pause: Duration) {
        tokio::select! {
            _ = self.wakeup.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }

    /// Serves a graceful stop: releases the lease (the in-flight batch is done, since the loop
    /// only gets here between batches) and refuses whatever comes after. True if stopped.
    async fn take_release(self: &Rc<Self>, writer: &mut Box<dyn ShardWriter>) -> bool {
        let Some(reply) = self.release_request.borrow_mut().take() else {
            return false;
        };
        // Commit what is queued first: it was accepted before the stop.
        if self.ownership.get() == Ownership::Owned {
            while !self.queue.borrow().is_empty() && self.ownership.get() == Ownership::Owned {
                self.commit_once(writer).await;
            }
        }
        if self.ownership.get() == Ownership::Owned {
            if let Err(error) = writer.release().await {
                tracing::warn!(shard = self.shard, %error, "lease release failed");
            } else {
                telemetry::record_lease(LeaseEvent::Released);
            }
        }
        self.ownership.set(Ownership::Released);
        self.refuse_waiting();
        let _ = reply.send(());
        true
    }

    pub(super) async fn commit_once(self: &Rc<Self>, writer: &mut Box<dyn ShardWriter>) {
        let mut entries: Vec<CommitEntry> = {
            let mut queue = self.queue.borrow_mut();
            let n = queue.len().min(self.limits.batch_size_max);
            queue.drain(..n).collect()
        };
        // Entries an actor produced before it was told to reload (or before the shard lost its
        // lease) are built on state that was never made durable: refuse them.
        let stale: Vec<bool> = {
            let mut live = self.live.borrow_mut();
            entries
                .iter()
                .map(|e| {
                    live.get_mut(&e.order_id)
                        .is_none_or(|l| l.incarnation != e.incarnation)
                })
                .collect()
        };
        let batch = coalesce(&mut entries, &stale);
        let snapshots = batch.writes.len();
        let events: usize = batch.writes.iter().map(|w| w.events.len()).sum();
        let started = Instant::now();
        let outcome = if batch.writes.is_empty() {
            Ok(())
        } else {
            writer.write(batch.writes).await
        };
        if snapshots > 0 {
            telemetry::record_commit(
                self.store.kind(),
                snapshots,
                events,
                started.elapsed().as_secs_f64(),
                outcome.is_ok(),
            );
        }
        let fenced = matches!(outcome, Err(StoreError::Fenced { .. }));
        let outcome = outcome.map_err(|error| match error {
            StoreError::Fenced { .. } => EngineError::ShardUnavailable(self.shard),
            other => EngineError::Store(other),
        });
        let mut tally = CommandTally::default();
        let mut jobs: Vec<GatewayJob> = Vec::new();
        let mut reloads: Vec<(OrderId, &'static str)> = Vec::new();
        let mut redeliveries: Vec<(OrderId, CommandEnvelope, u8)> = Vec::new();
        for ((mut entry, write), stale) in entries.into_iter().zip(batch.write_of_entry).zip(stale)
        {
            let (result, failed) = if stale {
                (Err(EngineError::Conflict(entry.order_id)), false)
            } else {
                settle(entry.result, write, &outcome)
            };
            if failed && !fenced {
                reloads.push((entry.order_id, "store_error"));
            } else if entry.reload && !fenced {
                reloads.push((entry.order_id, "panic_or_load_error"));
            }
            if (failed || stale) && !fenced {
                // A gateway verdict that did not become durable: no client will retry it.
                if let Some((envelope, n)) = entry.redeliver.take() {
                    redeliveries.push((entry.order_id, envelope, n));
                }
            }
            tally.add(entry.verb, outcome_label(&result));
            if result.is_ok() && !entry.jobs.is_empty() {
                // Durable (e.g. in PaymentProcessing with a Sending attempt): only now may the
                // gateway be asked. The answer to `pay` waits for the charge's verdict; any
                // other answer goes now. Each job keeps an in-flight slot of the order until
                // its final verdict takes it over, so the order stays live meanwhile.
                let mut entry_jobs = std::mem::take(&mut entry.jobs);
                if entry.forwarded || entry.resend {
                    entry_jobs[0].token = entry.token;
                } else {
                    self.resolve(entry.token, result);
                }
                self.hold(entry.order_id, entry_jobs.len() - 1);
                jobs.extend(entry_jobs);
                continue;
            }
            self.finish(
                entry.order_id,
                entry.token,
                result,
                entry.exists,
                entry.settled,
            );
        }
        tally.emit();
        if fenced {
            tracing::warn!(
                shard = self.shard,
                "batch write refused: the shard's lease moved; stopping the shard"
            );
            self.lose(LeaseEvent::WriteRefused);
            return;
        }
        for (order_id, reason) in reloads {
            self.reload(order_id, reason);
        }
        for (order_id, envelope, n) in redeliveries {
            self.redeliver_later(order_id, envelope, n);
        }
        self.send_jobs(jobs);
        self.drain_waiting();
    }
}
