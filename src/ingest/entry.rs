//! One Redis Stream entry: reading it out of a Redis reply, and turning it into either a
//! placement for the engine or a reason to dead-letter it.
//!
//! Nothing here does IO, so the rules that decide "persisted exactly once" (how an entry's
//! order id and command id are derived) are unit-tested without Redis.

use redis::Value;

use crate::domain::{Command, CommandEnvelope, CommandId, NewOrder, NewOrderRequest, OrderId};

/// Stream field holding the order JSON (the shape of [`NewOrderRequest`]).
pub(crate) const ORDER_FIELD: &str = "order";
/// Optional stream field with the producer's idempotency key.
pub(crate) const IDEMPOTENCY_KEY_FIELD: &str = "idempotency_key";
/// Largest order JSON accepted from a stream entry; the same bound as the HTTP edge's default
/// `api.body_bytes_max`, so a producer can move between the two without surprises.
pub(crate) const ORDER_BYTES_MAX: usize = 64 * 1024;
/// Longest idempotency key accepted.
pub(crate) const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Longest message kept in a dead-letter entry; the reason code is the machine-readable part.
pub(crate) const DEAD_LETTER_MESSAGE_BYTES_MAX: usize = 512;

/// One entry as Redis returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamEntry {
    /// The stream entry id (`<ms>-<seq>`).
    pub(crate) id: String,
    /// Field/value pairs; `None` when the entry was deleted from the stream while it was still
    /// pending (Redis then returns the id with no body).
    pub(crate) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl StreamEntry {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(key, _)| key.as_slice() == name.as_bytes())
            .map(|(_, value)| value.as_slice())
    }

    /// The raw order text, for dead letters (lossy: it is for humans and replays).
    pub(crate) fn raw_order(&self) -> String {
        let raw = self.field(ORDER_FIELD).unwrap_or_default();
        let raw = &raw[..raw.len().min(ORDER_BYTES_MAX)];
        String::from_utf8_lossy(raw).into_owned()
    }
}

/// Why an entry cannot ever be placed as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    /// Stable machine-readable code (`invalid_json`, a validation code, a rejection code).
    pub(crate) reason: &'static str,
    /// Human-readable detail, at most [`DEAD_LETTER_MESSAGE_BYTES_MAX`] bytes.
    pub(crate) message: String,
}

impl DeadLetter {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> DeadLetter {
        let mut message = message.into();
        if message.len() > DEAD_LETTER_MESSAGE_BYTES_MAX {
            let mut cut = DEAD_LETTER_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        DeadLetter { reason, message }
    }
}

/// A valid entry, ready for the engine.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// Derived deterministically from the entry (see [`order_id_for`]).
    pub(crate) order_id: OrderId,
    /// Derived deterministically too, so a re-delivery is recognised as the same command.
    pub(crate) command_id: CommandId,
    /// The validated order.
    pub(crate) new_order: NewOrder,
}

impl Placement {
    /// The command to send.
    pub(crate) fn envelope(&self) -> CommandEnvelope {
        CommandEnvelope {
            id: self.command_id,
            command: Command::PlaceOrder(Box::new(self.new_order.clone())),
        }
    }
}

/// What one entry turned into.
#[derive(Debug, Clone)]
pub(crate) enum Decoded {
    /// Place this order.
    Place(Placement),
    /// Never placeable: dead-letter, then acknowledge.
    Invalid(DeadLetter),
    /// Deleted from the stream while pending: nothing to do but acknowledge.
    Gone,
}

/// The order id of an entry. Without an idempotency key it is derived from the stream name and
/// the entry id, which Redis never reuses within a stream: whichever consumer processes the
/// entry, however often, reaches the same order. With a key it is derived from the stream name
/// and the key (in a separate namespace, so a key can never collide with an entry id), so a
/// producer that re-adds the same order as a new entry also reaches the same order.
pub(crate) fn order_id_for(stream: &str, entry_id: &str, idempotency_key: Option<&str>) -> OrderId {
    match idempotency_key {
        None => OrderId::from_idempotency_key(&format!("stream:{stream}"), entry_id),
        Some(key) => OrderId::from_idempotency_key(&format!("stream-key:{stream}"), key),
    }
}

/// Decodes and validates one entry.
pub(crate) fn decode(stream: &str, entry: &StreamEntry) -> Decoded {
    if entry.fields.is_none() {
        return Decoded::Gone;
    }
    let Some(raw) = entry.field(ORDER_FIELD) else {
        return Decoded::Invalid(DeadLetter::new(
            "missing_field",
            format!("entry has no `{ORDER_FIELD}` field"),
        ));
    };
    if raw.len() > ORDER_BYTES_MAX {
        return Decoded::Invalid(DeadLetter::new(
            "entry_too_large",
            format!(
                "order is {} bytes; at most {ORDER_BYTES_MAX} are accepted",
                raw.len()
            ),
        ));
    }
    let key = match entry.field(IDEMPOTENCY_KEY_FIELD) {
        None => None,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(key) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX => Some(key),
            _ => {
                return Decoded::Invalid(DeadLetter::new(
                    "invalid_idempotency_key",
                    format!(
                        "idempotency_key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes of UTF-8"
                    ),
                ))
            }
        },
    };
    let request: NewOrderRequest = match serde_json::from_slice(raw) {
        Ok(crate::domain::order::Object(request)) => request,
        Err(error) => return Decoded::Invalid(DeadLetter::new("invalid_json", error.to_string())),
    };
    let new_order = match NewOrder::parse(&request) {
        Ok(order) => order,
        Err(error) => return Decoded::Invalid(DeadLetter::new(error.code, error.to_string())),
    };
    let order_id = order_id_for(stream, &entry.id, key);
    Decoded::Place(Placement {
        order_id,
        // The entry id (or the key) names the command: a second delivery of this entry carries
        // the same command id, which the order answers as a duplicate.
        command_id: CommandId::from_key(order_id, key.unwrap_or(&entry.id)),
        new_order,
    })
}

/// Why a Redis reply did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct ReplyShapeError(pub(crate) String);

fn shape(what: &str) -> ReplyShapeError {
    ReplyShapeError(what.to_string())
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// Parses a list of `[id, [field, value, ...]]` entries (the body of an XREADGROUP stream, or
/// the second element of an XAUTOCLAIM reply). A nil body marks an entry deleted while pending.
pub(crate) fn parse_entries(value: &Value) -> Result<Vec<StreamEntry>, ReplyShapeError> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => items,
        _ => return Err(shape("stream entries are not a list")),
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        // Redis 6.2's XAUTOCLAIM reports an entry deleted from the stream as a bare nil.
        let Value::Array(parts) = item else {
            if *item == Value::Nil {
                continue;
            }
            return Err(shape("stream entry is not a list"));
        };
        let id = parts
            .first()
            .and_then(text)
            .ok_or_else(|| shape("stream entry has no id"))?;
        let fields = match parts.get(1) {
            None | Some(Value::Nil) => None,
            Some(Value::Array(flat)) => {
                if flat.len() % 2 != 0 {
                    return Err(shape("stream entry has an odd number of field values"));
                }
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                for pair in flat.chunks_exact(2) {
                    let key = bytes(&pair[0]).ok_or_else(|| shape("field name is not a string"))?;
                    let value =
                        bytes(&pair[1]).ok_or_else(|| shape("field value is not a string"))?;
                    pairs.push((key, value));
                }
                Some(pairs)
            }
            Some(Value::Map(map)) => {
                let mut pairs = Vec::with_capacity(map.len());
                for (key, value) in map {
                    let key = bytes(key).ok_or_else(|| shape("field name is not a string"))?;
                    let value = bytes(value).ok_or_else(|| shape("field value is not a string"))?;
                    pairs.push((key, value));
                }
                Some(pairs)
            }
            Some(_) => return Err(shape("stream entry body is not a list")),
        };
        entries.push(StreamEntry { id, fields });
    }
    Ok(entries)
}

/// Parses an XREADGROUP reply for one stream: nil on timeout, else `[[stream, entries]]`
/// (RESP2) or `{stream: entries}` (RESP3).
pub(crate) fn parse_read_reply(value: &Value) -> Result<Vec<StreamEntry>, ReplyShapeError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut entries = Vec::new();
            for stream in streams {
                let Value::Array(parts) = stream else {
                    return Err(shape("XREADGROUP stream is not a [name, entries] pair"));
                };
                let body = parts
                    .get(1)
                    .ok_or_else(|| shape("XREADGROUP stream has no entries"))?;
                entries.extend(parse_entries(body)?);
            }
            Ok(entries)
        }
        Value::Map(streams) => {
            let mut entries = Vec::new();
            for (_, body) in streams {
                entries.extend(parse_entries(body)?);
            }
            Ok(entries)
        }
        _ => Err(shape("XREADGROUP reply is neither nil nor a list")),
    }
}

/// An XAUTOCLAIM reply: the cursor to continue from (`0-0`: the scan is complete) and the
/// entries now owned by this consumer. Redis 7 adds a third element, the ids that were deleted
/// from the stream (and dropped from the pending list by Redis itself); they need no work.
pub(crate) fn parse_autoclaim_reply(
    value: &Value,
) -> Result<(String, Vec<StreamEntry>), ReplyShapeError> {
    let Value::Array(parts) = value else {
        return Err(shape("XAUTOCLAIM reply is not a list"));
    };
    let cursor = parts
        .first()
        .and_then(text)
        .ok_or_else(|| shape("XAUTOCLAIM reply has no cursor"))?;
    let entries = match parts.get(1) {
        Some(body) => parse_entries(body)?,
        None => Vec::new(),
    };
    Ok((cursor, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"customer_id":"c-42","currency":"USD","payment_method":"card","items":[{"sku":"sku-1","quantity":2,"unit_price":"19.99"}],"metadata":{}}"#;

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            id: id.into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_valid_entry_derives_its_ids_from_the_stream_and_entry_id() {
        let decoded = decode("s", &entry("1-1", &[("order", ORDER)]));
        let Decoded::Place(placement) = decoded else {
            panic!("expected a placement, got {decoded:?}");
        };
        let expected = OrderId::from_idempotency_key("stream:s", "1-1");
        assert_eq!(placement.order_id, expected);
        assert_eq!(placement.command_id, CommandId::from_key(expected, "1-1"));
        // Decoding again (a re-delivery) gives the same ids.
        let Decoded::Place(again) = decode("s", &entry("1-1", &[("order", ORDER)])) else {
            panic!("expected a placement");
        };
        assert_eq!(again.order_id, placement.order_id);
        assert_eq!(again.command_id, placement.command_id);
        assert_eq!(
            again.new_order.fingerprint(),
            placement.new_order.fingerprint()
        );
    }

    #[test]
    fn an_idempotency_key_names_the_order_across_entries() {
        let a = decode(
            "s",
            &entry("1-1", &[("order", ORDER), ("idempotency_key", "k-1")]),
        );
        let b = decode(
            "s",
            &entry("9-9", &[("idempotency_key", "k-1"), ("order", ORDER)]),
        );
        let (Decoded::Place(a), Decoded::Place(b)) = (a, b) else {
            panic!("expected placements");
        };
        assert_eq!(a.order_id, b.order_id);
        assert_eq!(a.command_id, b.command_id);
        // A key that looks like an entry id does not collide with that entry's order.
        assert_ne!(
            order_id_for("s", "1-1", Some("1-1")),
            order_id_for("s", "1-1", None)
        );
    }

    #[test]
    fn invalid_entries_carry_stable_reasons() {
        let cases = [
            (entry("1-1", &[("other", "x")]), "missing_field"),
            (entry("1-2", &[("order", "{not json")]), "invalid_json"),
            (
                entry("1-3", &[("order", r#"{"customer_id":"c","bogus":1}"#)]),
                "invalid_json",
            ),
            (
                entry("1-4", &[("order", &ORDER.replace("USD", "XXX"))]),
                "unknown_currency",
            ),
            (
                entry(
                    "1-5",
                    &[("order", &ORDER.replace("\"quantity\":2", "\"quantity\":0"))],
                ),
                "invalid_quantity",
            ),
            (
                entry("1-6", &[("order", ORDER), ("idempotency_key", "")]),
                "invalid_idempotency_key",
            ),
        ];
        for (entry, reason) in cases {
            match decode("s", &entry) {
                Decoded::Invalid(dead) => assert_eq!(dead.reason, reason, "{entry:?}"),
                other => panic!("{entry:?}: expected {reason}, got {other:?}"),
            }
        }
        let huge = "x".repeat(ORDER_BYTES_MAX + 1);
        let Decoded::Invalid(dead) = decode("s", &entry("1-7", &[("order", &huge)])) else {
            panic!("expected a dead letter");
        };
        assert_eq!(dead.reason, "entry_too_large");
    }

    #[test]
    fn a_deleted_entry_is_gone() {
        let deleted = StreamEntry {
            id: "1-1".into(),
            fields: None,
        };
        assert!(matches!(decode("s", &deleted), Decoded::Gone));
    }

    #[test]
    fn dead_letter_messages_are_bounded_at_a_char_boundary() {
        let dead = DeadLetter::new("x", "é".repeat(DEAD_LETTER_MESSAGE_BYTES_MAX));
        assert!(dead.message.len() <= DEAD_LETTER_MESSAGE_BYTES_MAX);
        assert!(dead.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn read_replies_parse_in_resp2_and_resp3_shapes() {
        let body = Value::Array(vec![
            Value::Array(vec![
                bulk("1-1"),
                Value::Array(vec![bulk("order"), bulk("{}")]),
            ]),
            Value::Array(vec![bulk("1-2"), Value::Nil]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), body.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), body)]);
        for reply in [resp2, resp3] {
            let entries = parse_read_reply(&reply).unwrap();
            assert_eq!(entries.len(), 2);
            assert_eq!(entries[0], entry("1-1", &[("order", "{}")]));
            assert_eq!(entries[1].fields, None);
        }
        assert!(parse_read_reply(&Value::Nil).unwrap().is_empty());
        assert!(parse_read_reply(&Value::Int(3)).is_err());
    }

    #[test]
    fn autoclaim_replies_parse_with_and_without_deleted_ids() {
        let claimed = Value::Array(vec![
            Value::Array(vec![
                bulk("1-1"),
                Value::Array(vec![bulk("order"), bulk("{}")]),
            ]),
            Value::Nil,
        ]);
        let redis6 = Value::Array(vec![bulk("5-0"), claimed.clone()]);
        let redis7 = Value::Array(vec![bulk("0-0"), claimed, Value::Array(vec![bulk("2-2")])]);
        let (cursor, entries) = parse_autoclaim_reply(&redis6).unwrap();
        assert_eq!((cursor.as_str(), entries.len()), ("5-0", 1));
        let (cursor, entries) = parse_autoclaim_reply(&redis7).unwrap();
        assert_eq!((cursor.as_str(), entries.len()), ("0-0", 1));
    }
}
