//! Recovery: after the lease is acquired (a start, a restart, a takeover), the orders that the
//! shard's index lists with live gateway work are resumed: attempts are queried, never charged
//! again blindly, and pending refunds re-sent under their keys.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::ShardCore;
use crate::domain::OrderId;
use crate::engine::commit::{BatchCollector, PendingReply};
use crate::engine::messages::{CommandResult, Origin, Work};
use crate::telemetry;

/// Most pages one payment recovery scan reads (a page is `recovery_batch_size` orders).
const RECOVERY_PAGES_MAX: usize = 1_000_000;
/// Failed page reads after which a recovery scan gives up (the next start tries again).
const RECOVERY_FAILURES_MAX: u32 = 10;
/// Longest wait for one recovery page to be resumed before reading the next.
const RECOVERY_PAGE_TIMEOUT: Duration = Duration::from_secs(60);

impl ShardCore {
    /// Resumes the gateway work of every order in this shard's index of live payments: each
    /// page of ids is activated with a `Resume` (query the live attempt, re-send the pending
    /// refund) and answered before the next page is read, so recovery never floods the live
    /// set. Bounded in pages and failures.
    pub(super) async fn recover_payments(self: Rc<Self>) {
        let page = self.limits.recovery_batch_size;
        let mut cursor = 0_u128;
        let mut resumed = 0_u64;
        let mut failures = 0;
        for _ in 0..RECOVERY_PAGES_MAX {
            match self
                .store
                .scan_live_payments(self.shard, cursor, page)
                .await
            {
                Ok((next, ids)) => {
                    failures = 0;
                    if !ids.is_empty() {
                        resumed += ids.len() as u64;
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        self.resume_page(ids, tx);
                        let _ = tokio::time::timeout(RECOVERY_PAGE_TIMEOUT, rx).await;
                    }
                    cursor = next;
                    if next == 0 {
                        break;
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(shard = self.shard, %error, "payment recovery scan failed");
                    if failures >= RECOVERY_FAILURES_MAX {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if resumed > 0 {
            tracing::info!(
                shard = self.shard,
                resumed,
                "resumed orders with live payments"
            );
            telemetry::record_payments_resumed(resumed);
        }
    }

    pub(super) fn resume_page(
        self: &Rc<Self>,
        ids: Vec<OrderId>,
        reply: tokio::sync::oneshot::Sender<Vec<(u32, CommandResult)>>,
    ) {
        self.group.tick();
        let collector = Rc::new(RefCell::new(BatchCollector {
            results: Vec::with_capacity(ids.len()),
            remaining: ids.len(),
            reply: Some(reply),
        }));
        for (index, order_id) in ids.into_iter().enumerate() {
            let token = self.replies.borrow_mut().insert(PendingReply::Many {
                collector: Rc::clone(&collector),
                index: index as u32,
            });
            self.route(order_id, Work::Resume, false, token, Origin::Client);
        }
    }
}
