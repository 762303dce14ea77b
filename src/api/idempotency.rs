//! Client idempotency keys: validating the `Idempotency-Key` header, and tracking the keys
//! whose first request is still in flight in this process (a concurrent duplicate gets 409
//! `idempotency_key_in_flight` instead of racing the first).
//!
//! Replays of finished requests need no state here: the key derives the order id and the
//! command id, so the order itself recognizes the replay (see `orders.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::HttpRequest;

use super::error::ApiError;
use crate::domain::CommandId;

/// The request header carrying the client's key.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking an answer to a replay.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest accepted key, bytes: a UUID or a hash fits easily, a document does not.
pub(crate) const MAX_KEY_BYTES: usize = 255;
/// Lock stripes: requests for different keys rarely contend on one mutex.
const STRIPES: usize = 16;

/// The client's idempotency key, if the request carries one; an empty, overlong or non-ASCII
/// key is refused rather than ignored, because ignoring it would silently drop the guarantee.
pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = ApiError::InvalidIdempotencyKey { max: MAX_KEY_BYTES };
    let text = value.to_str().map_err(|_| invalid)?;
    let text = text.trim();
    if text.is_empty()
        || text.len() > MAX_KEY_BYTES
        || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(ApiError::InvalidIdempotencyKey { max: MAX_KEY_BYTES });
    }
    Ok(Some(text.to_string()))
}

/// Command ids whose request is being processed right now, striped by id.
#[derive(Default)]
pub(crate) struct InFlight {
    stripes: [Mutex<HashSet<CommandId>>; STRIPES],
}

impl InFlight {
    fn stripe(&self, id: CommandId) -> &Mutex<HashSet<CommandId>> {
        &self.stripes[(id.fingerprint() % STRIPES as u64) as usize]
    }

    /// Marks `id` as in flight until the returned guard is dropped; None if it already is.
    pub(crate) fn begin(self: &Arc<Self>, id: CommandId) -> Option<InFlightGuard> {
        // A poisoned stripe only means another request panicked while holding it; the set is
        // still consistent (insert/remove are single operations), so keep using it.
        let inserted = self
            .stripe(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        inserted.then(|| InFlightGuard {
            set: Arc::clone(self),
            id,
        })
    }
}

/// Removes its id from the in-flight set when dropped, however the request ends (answer,
/// error, or a client that hung up and dropped the handler's future).
pub(crate) struct InFlightGuard {
    set: Arc<InFlight>,
    id: CommandId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set
            .stripe(self.id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderId;

    #[test]
    fn a_key_is_in_flight_until_its_guard_drops() {
        let set = Arc::new(InFlight::default());
        let id = CommandId::from_key(OrderId::new(), "k");
        let guard = set.begin(id).expect("first use");
        assert!(set.begin(id).is_none(), "concurrent duplicate is refused");
        drop(guard);
        assert!(
            set.begin(id).is_some(),
            "free again after the first finished"
        );
    }
}
