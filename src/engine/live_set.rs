//! The bounded set of live order actors of one shard, in least-recently-used order.
//!
//! Entries live in a slab linked into two intrusive lists (active, settled) by `u32` indices,
//! so an entry costs about 70 bytes with no allocation of its own; the id index is a hash map
//! from order id to slab slot. Eviction takes the least recently used settled order first, then
//! the least recently used active one, and never an order with commands in flight.

use std::collections::HashMap;

use actix::Addr;

use super::order_actor::OrderActor;
use crate::domain::OrderId;

const NIL: u32 = u32::MAX;

/// One live order actor.
pub(crate) struct LiveOrder {
    pub(crate) id: OrderId,
    pub(crate) addr: Addr<OrderActor>,
    /// Commands sent to the actor and not yet answered.
    pub(crate) in_flight: u32,
    /// Bumped whenever the actor must reload from the store; entries it produced under an
    /// older incarnation are refused at commit.
    pub(crate) incarnation: u32,
    /// Shard-clock second of the last command, for idle passivation.
    pub(crate) last_used_s: u32,
    settled: bool,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// Bounded LRU set of live orders.
pub(crate) struct LiveSet {
    slots: Vec<Option<LiveOrder>>,
    free: Vec<u32>,
    index: HashMap<OrderId, u32, ahash::RandomState>,
    active: List,
    settled: List,
}

impl LiveSet {
    pub(crate) fn new() -> LiveSet {
        LiveSet {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            active: List::EMPTY,
            settled: List::EMPTY,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&self, i: u32) -> &LiveOrder {
        self.slots[i as usize]
            .as_ref()
            .expect("linked slot is occupied")
    }

    fn slot_mut(&mut self, i: u32) -> &mut LiveOrder {
        self.slots[i as usize]
            .as_mut()
            .expect("linked slot is occupied")
    }

    fn list_mut(&mut self, settled: bool) -> &mut List {
        if settled {
            &mut self.settled
        } else {
            &mut self.active
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, settled) = {
            let e = self.slot(i);
            (e.prev, e.next, e.settled)
        };
        if prev != NIL {
            self.slot_mut(prev).next = next;
        } else {
            self.list_mut(settled).head = next;
        }
        if next != NIL {
            self.slot_mut(next).prev = prev;
        } else {
            self.list_mut(settled).tail = prev;
        }
    }

    fn push_back(&mut self, i: u32, settled: bool) {
        let tail = self.list_mut(settled).tail;
        {
            let e = self.slot_mut(i);
            e.settled = settled;
            e.prev = tail;
            e.next = NIL;
        }
        if tail != NIL {
            self.slot_mut(tail).next = i;
        } else {
            self.list_mut(settled).head = i;
        }
        self.list_mut(settled).tail = i;
    }

    /// Looks up a live order and marks it most recently used.
    pub(crate) fn touch(&mut self, id: &OrderId, now_s: u32) -> Option<&mut LiveOrder> {
        let i = *self.index.get(id)?;
        let settled = self.slot(i).settled;
        self.unlink(i);
        self.push_back(i, settled);
        let entry = self.slot_mut(i);
        entry.last_used_s = now_s;
        Some(entry)
    }

    /// Looks up a live order without changing its recency.
    pub(crate) fn get_mut(&mut self, id: &OrderId) -> Option<&mut LiveOrder> {
        let i = *self.index.get(id)?;
        Some(self.slot_mut(i))
    }

    /// Inserts a new live order as most recently used. The caller keeps the bound.
    pub(crate) fn insert(
        &mut self,
        id: OrderId,
        addr: Addr<OrderActor>,
        incarnation: u32,
        now_s: u32,
    ) -> &mut LiveOrder {
        let entry = LiveOrder {
            id,
            addr,
            in_flight: 0,
            incarnation,
            last_used_s: now_s,
            settled: false,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id, i);
        self.push_back(i, false);
        self.slot_mut(i)
    }

    /// Moves an order between the active and settled lists.
    pub(crate) fn set_settled(&mut self, id: &OrderId, settled: bool) {
        if let Some(&i) = self.index.get(id) {
            if self.slot(i).settled != settled {
                self.unlink(i);
                self.push_back(i, settled);
            }
        }
    }

    /// Removes an order; dropping its address lets the actor stop.
    pub(crate) fn remove(&mut self, id: &OrderId) -> Option<LiveOrder> {
        let i = self.index.remove(id)?;
        self.unlink(i);
        self.free.push(i);
        self.slots[i as usize].take()
    }

    /// Picks the order to passivate to make room: settled first, then least recently used,
    /// skipping orders with commands in flight. Looks at no more than `scan_max` entries per
    /// list so a shard full of busy orders costs a bounded amount of work.
    pub(crate) fn eviction_candidate(&self, scan_max: usize) -> Option<OrderId> {
        for list in [self.settled, self.active] {
            let mut i = list.head;
            let mut seen = 0;
            while i != NIL && seen < scan_max {
                let e = self.slot(i);
                if e.in_flight == 0 {
                    return Some(e.id);
                }
                i = e.next;
                seen += 1;
            }
        }
        None
    }

    /// Orders idle since before `cutoff_s` with nothing in flight, oldest first, at most `max`.
    pub(crate) fn idle(&self, cutoff_s: u32, max: usize) -> Vec<OrderId> {
        let mut out = Vec::new();
        for list in [self.settled, self.active] {
            let mut i = list.head;
            while i != NIL && out.len() < max {
                let e = self.slot(i);
                if e.last_used_s >= cutoff_s {
                    break;
                }
                if e.in_flight == 0 {
                    out.push(e.id);
                }
                i = e.next;
            }
        }
        out
    }
}
