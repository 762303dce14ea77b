//! Group commit: the entries order actors hand to their shard, and how a batch of them becomes
//! one store write and then the answers.

use std::cell::RefCell;
use std::rc::Rc;

use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::messages::{CommandResult, EngineError};
use crate::domain::{CommandEnvelope, OrderId};
use crate::gateway::GatewayJob;
use crate::store::outbox::OutboxEvents;
use crate::store::{SnapshotWrite, TimerChange};

/// A snapshot waiting to be written.
pub(crate) struct PendingWrite {
    pub(crate) expected_version: u64,
    pub(crate) version: u64,
    pub(crate) bytes: Vec<u8>,
    /// How the shard's timer index follows this write.
    pub(crate) timer: TimerChange,
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
    /// For each entry, the index of the write that makes it durable.
    pub(crate) write_of_entry: Vec<Option<usize>>,
}

pub(crate) fn coalesce(entries: &mut [CommitEntry], stale: &[bool]) -> CoalescedBatch {
    let mut writes: Vec<SnapshotWrite> = Vec::with_capacity(entries.len());
    // Per order: its write's index.
    let mut by_order: std::collections::HashMap<OrderId, usize, ahash::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(entries.len(), Default::default());
    let mut write_of_entry = Vec::with_capacity(entries.len());
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
