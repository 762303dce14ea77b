//! Passivation: the live set stays within its bound (least recently used idle orders first,
//! settled ones before active ones) and idle orders are dropped by a periodic sweep. A
//! passivated order reactivates from its snapshot on its next request.

use super::ShardCore;
use crate::engine::live_set::LiveSet;
use crate::telemetry;

/// How many entries eviction looks at before giving up (bounded work per activation).
const EVICTION_SCAN_MAX: usize = 64;
/// How many idle orders one idle sweep passivates at most.
const IDLE_SWEEP_MAX: usize = 4096;

impl ShardCore {
    /// Frees a slot in the live set if the set is at its bound; false if every candidate is
    /// busy.
    pub(super) fn make_room(&self, live: &mut LiveSet) -> bool {
        while live.len() >= self.limits.max_live_orders {
            match live.eviction_candidate(EVICTION_SCAN_MAX) {
                Some(victim) => {
                    live.remove(&victim);
                    telemetry::record_passivation("capacity");
                    self.update_stats(|s| s.passivations += 1);
                }
                None => return false,
            }
        }
        true
    }

    /// Passivates orders idle for longer than the idle timeout (bounded per sweep).
    pub(super) fn passivate_idle(&self) {
        self.group.tick();
        let now_s = self.now_s();
        let idle_s = self.limits.idle_timeout.as_secs() as u32;
        if now_s < idle_s {
            return;
        }
        let mut live = self.live.borrow_mut();
        let victims = live.idle(now_s - idle_s, IDLE_SWEEP_MAX);
        for id in &victims {
            live.remove(id);
            telemetry::record_passivation("idle");
        }
        let len = live.len();
        drop(live);
        let n = victims.len() as u64;
        self.update_stats(|s| {
            s.passivations += n;
            s.live = len;
        });
    }
}
