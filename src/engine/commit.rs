//! Group commit: the entries order actors hand to their shard, and how a batch of them becomes
//! one store write and then the answers.

use std::cell::RefCell;
use std::rc::Rc;

use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::messages::{CommandResult, EngineError};
use crate::domain::{CommandEnvelope, Currency, Order, OrderId, OrderStatus};
use crate::gateway::GatewayJob;
use crate::store::outbox::OutboxEvents;
use crate::store::{SnapshotWrite, StatusCounts, TimerChange};

/// A snapshot waiting to be written.
pub(crate) struct PendingWrite {
    pub(crate) expected_version: u64,
    pub(crate) version: u64,
    pub(crate) bytes: Vec<u8>,
    /// How the shard's timer index follows this write.
    pub(crate) timer: TimerChange,
    /// What the write changes of the shard's status counts and the business figures.
    pub(crate) change: OrderChange,
}

/// What one write changes of the numbers operators watch: the order's status (the shard's
/// durable per-status counts) and the business figures O, P, paid and refunded value, which
/// count only once the write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrderChange {
    /// The status before (None: the write creates the order).
    pub(crate) from: Option<OrderStatus>,
    pub(crate) to: OrderStatus,
    pub(crate) currency: Currency,
    /// Items placed (Σ quantities; non-zero only when the order is created).
    pub(crate) items: u64,
    /// Value placed, minor units (the order's total, when it is created).
    pub(crate) placed_minor: i64,
    /// Change of the paid value, minor units.
    pub(crate) paid_minor: i64,
    /// Change of the refunded value, minor units.
    pub(crate) refunded_minor: i64,
}

impl OrderChange {
    /// The change from `before` (None: no order yet) to `after`.
    pub(crate) fn between(before: Option<&Order>, after: &Order) -> OrderChange {
        let (items, placed_minor) = match before {
            None => (after.header.item_count, after.header.total_minor),
            Some(_) => (0, 0),
        };
        OrderChange {
            from: before.map(|o| o.status),
            to: after.status,
            currency: after.currency(),
            items,
            placed_minor,
            paid_minor: after.paid_minor - before.map_or(0, |o| o.paid_minor),
            refunded_minor: after.refunded_minor - before.map_or(0, |o| o.refunded_minor),
        }
    }

    fn moves_figures(&self) -> bool {
        self.items != 0
            || self.placed_minor != 0
            || self.paid_minor != 0
            || self.refunded_minor != 0
    }
}

/// The business figures of one batch, per currency (money never adds across currencies).
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) items: u64,
    /// (currency, placed, paid, refunded), minor units.
    pub(crate) by_currency: SmallVec<[(Currency, i64, i64, i64); 2]>,
}

impl Figures {
    fn add(&mut self, change: &OrderChange) {
        if !change.moves_figures() {
            return;
        }
        self.items += change.items;
        let slot = match self
            .by_currency
            .iter()
            .position(|(c, ..)| *c == change.currency)
        {
            Some(i) => i,
            None => {
                self.by_currency.push((change.currency, 0, 0, 0));
                self.by_currency.len() - 1
            }
        };
        let (_, placed, paid, refunded) = &mut self.by_currency[slot];
        *placed += change.placed_minor;
        *paid += change.paid_minor;
        *refunded += change.refunded_minor;
    }
}

/// What an order actor produced for one request: the answer to give once the write (if any)
/// is durable, and the effects to carry out after that.
pub(crate) struct CommitEntry {
    pub(crate) order_id: OrderId,
    pub(crate) incarnation: u32,
    pub(crate) token: usize,
    /// The request's answer waits for the gateway's verdict on the charge this entry starts.
    pub(crate) forwarded: bool,
    pub(crate) verb: &'static str,
    pub(crate) write: Option<PendingWrite>,
    pub(crate) events: OutboxEvents,
    /// Gateway work to hand over once this entry is durable (a charge, a query, a refund).
    pub(crate) jobs: SmallVec<[GatewayJob; 1]>,
    pub(crate) result: CommandResult,
    /// Whether the order exists after this entry.
    pub(crate) exists: bool,
    /// Whether the order is settled (terminal, nothing in flight) after this entry.
    pub(crate) settled: bool,
    /// The actor must reload from the store (its load failed or it panicked).
    pub(crate) reload: bool,
    /// `jobs` re-sends a live attempt's charge for a replayed `pay` (no write of its own).
    pub(crate) resend: bool,
    /// A gateway verdict's command, kept to deliver it again if its write fails (no client
    /// would retry it), with how often it was delivered again already.
    pub(crate) redeliver: Option<(CommandEnvelope, u8)>,
}

/// Collects the answers of a batch dispatch and sends them once all are in.
pub(crate) struct BatchCollector {
    pub(crate) results: Vec<(u32, CommandResult)>,
    pub(crate) remaining: usize,
    pub(crate) reply: Option<oneshot::Sender<Vec<(u32, CommandResult)>>>,
}

/// Where one request's answer goes.
pub(crate) enum PendingReply {
    One(oneshot::Sender<CommandResult>),
    Many {
        collector: Rc<RefCell<BatchCollector>>,
        index: u32,
    },
    /// A timer fire the shard itself started (`ShardCore::resolve` handles it).
    Timer {
        order_id: OrderId,
    },
}

impl PendingReply {
    pub(crate) fn send(self, result: CommandResult) {
        match self {
            PendingReply::One(tx) => {
                // The caller may have given up waiting; the command is durable either way.
                let _ = tx.send(result);
            }
            PendingReply::Timer { .. } => {}
            PendingReply::Many { collector, index } => {
                let mut collector = collector.borrow_mut();
                collector.results.push((index, result));
                collector.remaining -= 1;
                if collector.remaining == 0 {
                    if let Some(reply) = collector.reply.take() {
                        let results = std::mem::take(&mut collector.results);
                        let _ = reply.send(results);
                    }
                }
            }
        }
    }
}

/// The writes of one batch, coalesced per order: when one order has several snapshots in the
/// batch only the newest is written, checked against the version before the oldest, and the
/// events of all of them go with it.
pub(crate) struct CoalescedBatch {
    pub(crate) writes: Vec<SnapshotWrite>,
    /// How the batch moves the shard's per-status counts (changes compose, so each entry's
    /// change counts even when its order's writes coalesce).
    pub(crate) status: StatusCounts,
    /// The business figures the batch adds once durable.
    pub(crate) figures: Figures,
    /// For each entry, the index of the write that makes it durable.
    pub(crate) write_of_entry: Vec<Option<usize>>,
}

pub(crate) fn coalesce(entries: &mut [CommitEntry], stale: &[bool]) -> CoalescedBatch {
    let mut writes: Vec<SnapshotWrite> = Vec::with_capacity(entries.len());
    // Per order: its write's index.
    let mut by_order: std::collections::HashMap<OrderId, usize, ahash::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(entries.len(), Default::default());
    let mut write_of_entry = Vec::with_capacity(entries.len());
    let mut status = StatusCounts::default();
    let mut figures = Figures::default();
    for (entry, stale) in entries.iter_mut().zip(stale) {
        if *stale {
            write_of_entry.push(None);
            continue;
        }
        let Some(write) = entry.write.take() else {
            // Reads and rejections ride on the order's write in this batch, if any.
            write_of_entry.push(by_order.get(&entry.order_id).copied());
            continue;
        };
        status.record(write.change.from, write.change.to);
        figures.add(&write.change);
        match by_order.get(&entry.order_id) {
            Some(&i) => {
                // Versions grow by one per applied command, also within a batch (a rewrite
                // of the timer index entry keeps the version).
                debug_assert_eq!(write.expected_version, writes[i].version);
                writes[i].version = write.version;
                writes[i].bytes = write.bytes;
                if write.timer != TimerChange::Unchanged {
                    writes[i].timer = write.timer;
                }
                writes[i].events.append(&mut entry.events);
                write_of_entry.push(Some(i));
            }
            None => {
                by_order.insert(entry.order_id, writes.len());
                write_of_entry.push(Some(writes.len()));
                debug_assert!(write.version - write.expected_version <= 1);
                writes.push(SnapshotWrite {
                    order_id: entry.order_id,
                    version: write.version,
                    bytes: write.bytes,
                    events: std::mem::take(&mut entry.events),
                    timer: write.timer,
                });
            }
        }
    }
    CoalescedBatch {
        writes,
        status,
        figures,
        write_of_entry,
    }
}

/// The final answer of an entry given the batch's store outcome, and whether its order must
/// reload (its write, or the write it rode on, did not become durable).
pub(crate) fn settle(
    entry_result: CommandResult,
    write: Option<usize>,
    outcome: &Result<(), EngineError>,
) -> (CommandResult, bool) {
    match (write, outcome) {
        (None, _) | (Some(_), Ok(())) => (entry_result, false),
        (Some(_), Err(error)) => (Err(error.clone()), true),
    }
}
