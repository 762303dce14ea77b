//! Outbox events: what a business event looks like on the wire, built once at commit time.
//!
//! Each event is stored as one line of compact JSON ([`encode_event`]) and expanded by its
//! readers ([`expand`]) into the body a webhook receiver gets and the line `orderly events`
//! prints:
//!
//! ```json
//! {"event_id":"<order-id>:<version>:<index>","type":"order_paid","order_id":"<order-id>",
//!  "order_version":3,"occurred_at":"2026-01-02T03:04:05.678Z","data":{"customer_id":"c-1",
//!  "status":"paid","amount":"39.98","currency":"USD","metadata":{}}}
//! ```
//!
//! `event_id` is deterministic (the order, the version the command produced, the event's
//! position among that command's events), so a batch rewritten after a crash or a retried
//! write never names an event anew. `data` carries what a CRM needs to act without reading the
//! order back: `customer_id`, `status`, `amount` and `currency` (the order total),
//! `metadata`, and, when they apply, `tracking_number`, `refund_amount` (refund events: the
//! refund's amount) and `reason` (`order_completed`: `delivered` or `auto_completed`; the
//! cancel or hold reason when one was given).
//!
//! The JSON is written straight into one reused buffer per command (no `serde_json::Value`,
//! no per-event allocation): the writes of a batch are then concatenated into one stream entry.

use smallvec::SmallVec;

use crate::domain::{Order, OrderEvent, OrderStatus};

/// The events one snapshot write carries: newline-terminated JSON lines, and their types in
/// the same order (for metrics and receiver filters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxEvents {
    /// One JSON event per line, each ending in `\n`.
    pub lines: Vec<u8>,
    /// The type of each line, in order.
    pub kinds: SmallVec<[OrderEvent; 2]>,
}

impl OutboxEvents {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Appends `event`, produced by the command that made `order` what it is now (its
    /// version and time). Its index is its position among the events of that command: call
    /// once per emitted event, in order, on a value holding only that command's events.
    pub fn push(&mut self, order: &Order, event: OrderEvent) {
        let index = self.kinds.len();
        if self.lines.capacity() == 0 {
            self.lines.reserve(160 + 64 * order.header.metadata.len());
        }
        encode_event(&mut self.lines, order, event, index);
        self.kinds.push(event);
    }

    /// Moves the events of `other` (a later command on the same order) after these.
    pub fn append(&mut self, other: &mut OutboxEvents) {
        self.lines.append(&mut other.lines);
        self.kinds.extend(other.kinds.drain(..));
    }

    /// Events from raw (expanded) lines (tests and tools); the types are read from the lines.
    pub fn from_lines(lines: &[u8]) -> OutboxEvents {
        let mut events = OutboxEvents::default();
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let kind = event_type(line)
                .and_then(|t| OrderEvent::ALL.iter().copied().find(|e| e.as_str() == t))
                .unwrap_or(OrderEvent::OrderPlaced);
            events.lines.extend_from_slice(line);
            events.lines.push(b'\n');
            events.kinds.push(kind);
        }
        events
    }
}

/// The `type` of an expanded event line (without parsing the JSON).
pub fn event_type(line: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"type\":\"";
    let start = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = start + line[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&line[start..end]).ok()
}

/// The `event_id` of an expanded event line.
pub fn event_id(line: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"{\"event_id\":\"";
    let rest = line.strip_prefix(KEY)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Writes one event as stored in the outbox (with its `\n`): a compact JSON array,
/// `["<order-id>",<version>,<index>,"<type>",<occurred ms>,"<status>",<total minor>,
/// "<currency>","<customer-id>",{metadata},<tracking|null>,<refund minor|null>,<reason|null>]`,
/// about 110 bytes for a typical event instead of about 280 for the delivered form. Every
/// lifecycle appends several events, and Redis pays per byte to append and persist them; the
/// readers (webhook delivery, `orderly events`) expand each line with [`expand`], off the hot
/// path.
pub fn encode_event(out: &mut Vec<u8>, order: &Order, event: OrderEvent, index: usize) {
    let mut uuid = uuid::Uuid::encode_buffer();
    let id = order.id().as_uuid();
    let id = id.hyphenated().encode_lower(&mut uuid).as_bytes();
    let mut int = itoa::Buffer::new();
    out.extend_from_slice(b"[\"");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\",");
    out.extend_from_slice(int.format(order.version).as_bytes());
    out.push(b',');
    out.extend_from_slice(int.format(index).as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(event.as_str().as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(int.format(order.updated_at.0).as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(order.status.as_str().as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(int.format(order.header.total_minor).as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(order.currency().code().as_bytes());
    out.extend_from_slice(b"\",");
    push_json_str(out, &order.header.customer_id);
    out.extend_from_slice(b",{");
    for (i, (key, value)) in order.header.metadata.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(out, key);
        out.push(b':');
        push_json_str(out, value);
    }
    out.extend_from_slice(b"},");
    let notes = order.notes();
    match &notes.tracking_number {
        Some(tracking) => push_json_str(out, tracking),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    let refund = matches!(
        event,
        OrderEvent::RefundStarted | OrderEvent::OrderRefunded | OrderEvent::RefundFailed
    )
    .then(|| order.refunds.last())
    .flatten();
    match refund {
        Some(refund) => out.extend_from_slice(int.format(refund.amount_minor).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    let reason = match event.completion_reason() {
        Some(reason) => Some(reason),
        None if matches!(order.status, OrderStatus::Cancelled | OrderStatus::OnHold)
            && matches!(
                event,
                OrderEvent::OrderCancelled | OrderEvent::OrderHeld | OrderEvent::PaymentNeedsReview
            ) =>
        {
            notes.reason.as_deref()
        }
        None => None,
    };
    match reason {
        Some(reason) => push_json_str(out, reason),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"]\n");
}

/// The stored form, as [`encode_event`] writes it.
#[derive(serde::Deserialize)]
struct Stored<'a>(
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    u64,
    u32,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    i64,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    i64,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    String,
    serde_json::Map<String, serde_json::Value>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Expands one stored event line into the event as it is delivered and printed:
///
/// ```json
/// {"event_id":"<order-id>:<version>:<index>","type":"order_paid","order_id":"<order-id>",
///  "order_version":3,"occurred_at":"2026-01-02T03:04:05.678Z","data":{"customer_id":"c-1",
///  "status":"paid","amount":"39.98","currency":"USD","metadata":{}}}
/// ```
///
/// A line already in that form is returned as is; a line that is neither is `None`.
pub fn expand(line: &[u8]) -> Option<Vec<u8>> {
    if line.first() == Some(&b'{') {
        return Some(line.to_vec());
    }
    let stored: Stored<'_> = serde_json::from_slice(line).ok()?;
    let Stored(
        id,
        version,
        index,
        kind,
        occurred_ms,
        status,
        total_minor,
        currency,
        customer,
        metadata,
        tracking,
        refund_minor,
        reason,
    ) = stored;
    let exponent = crate::domain::Currency::parse(&currency)
        .map(|c| c.exponent())
        .unwrap_or(2);
    let mut out = Vec::with_capacity(line.len() * 2 + 64);
    let mut int = itoa::Buffer::new();
    out.extend_from_slice(b"{\"event_id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.push(b':');
    out.extend_from_slice(int.format(version).as_bytes());
    out.push(b':');
    out.extend_from_slice(int.format(index).as_bytes());
    out.extend_from_slice(b"\",\"type\":");
    push_json_str(&mut out, &kind);
    out.extend_from_slice(b",\"order_id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",\"order_version\":");
    out.extend_from_slice(int.format(version).as_bytes());
    out.extend_from_slice(b",\"occurred_at\":\"");
    push_rfc3339(&mut out, occurred_ms);
    out.extend_from_slice(b"\",\"data\":{\"customer_id\":");
    push_json_str(&mut out, &customer);
    out.extend_from_slice(b",\"status\":");
    push_json_str(&mut out, &status);
    out.extend_from_slice(b",\"amount\":\"");
    push_minor(&mut out, total_minor, exponent);
    out.extend_from_slice(b"\",\"currency\":");
    push_json_str(&mut out, &currency);
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&serde_json::to_vec(&metadata).ok()?);
    if let Some(tracking) = tracking {
        out.extend_from_slice(b",\"tracking_number\":");
        push_json_str(&mut out, &tracking);
    }
    if let Some(refund) = refund_minor {
        out.extend_from_slice(b",\"refund_amount\":\"");
        push_minor(&mut out, refund, exponent);
        out.push(b'"');
    }
    if let Some(reason) = reason {
        out.extend_from_slice(b",\"reason\":");
        push_json_str(&mut out, &reason);
    }
    out.extend_from_slice(b"}}");
    Some(out)
}

/// Writes `minor` units as a decimal string with `exponent` decimals (`1999`, 2 → `19.99`).
fn push_minor(out: &mut Vec<u8>, minor: i64, exponent: u32) {
    if minor < 0 {
        out.push(b'-');
    }
    let value = minor.unsigned_abs();
    if exponent == 0 {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        return;
    }
    let scale = 10_u64.pow(exponent);
    out.extend_from_slice(itoa::Buffer::new().format(value / scale).as_bytes());
    out.push(b'.');
    let mut buffer = itoa::Buffer::new();
    let fraction = buffer.format(value % scale).as_bytes();
    for _ in fraction.len()..exponent as usize {
        out.push(b'0');
    }
    out.extend_from_slice(fraction);
}

/// Writes a JSON string literal (quoted, escaped).
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes milliseconds since the Unix epoch as RFC 3339 UTC (`2026-01-02T03:04:05.678Z`).
pub fn push_rfc3339(out: &mut Vec<u8>, unix_ms: i64) {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400) as u32;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let two = |out: &mut Vec<u8>, n: u32| {
        out.push(b'0' + (n / 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    };
    let year = year.clamp(0, 9999) as u32;
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, second_of_day / 3600);
    out.push(b':');
    two(out, second_of_day / 60 % 60);
    out.push(b':');
    two(out, second_of_day % 60);
    out.push(b'.');
    out.push(b'0' + (ms / 100) as u8);
    two(out, ms % 100);
    out.extend_from_slice(b"Z");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(text(|o| push_rfc3339(o, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            text(|o| push_rfc3339(o, 1_709_210_096_789)),
            "2024-02-29T12:34:56.789Z"
        );
        assert_eq!(
            text(|o| push_rfc3339(o, 951_782_400_005)),
            "2000-02-29T00:00:00.005Z"
        );
    }

    #[test]
    fn amounts_and_strings_are_json() {
        assert_eq!(text(|o| push_minor(o, 1999, 2)), "19.99");
        assert_eq!(text(|o| push_minor(o, 5, 3)), "0.005");
        assert_eq!(text(|o| push_minor(o, 1500, 0)), "1500");
        assert_eq!(text(|o| push_minor(o, -105, 2)), "-1.05");
        let escaped = text(|o| push_json_str(o, "a\"b\\c\nd\u{1}é"));
        assert_eq!(escaped, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&escaped).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn stored_events_expand_to_the_delivered_form_and_are_smaller() {
        use crate::domain::{
            apply, Command, CommandEnvelope, LineItemRequest, NewOrder, NewOrderRequest, OrderId,
            OrderPolicy, Timestamp,
        };
        let request = NewOrderRequest {
            customer_id: "c-\"7\"".into(),
            currency: "JPY".into(),
            payment_method: "card".into(),
            items: vec![LineItemRequest {
                sku: "s".into(),
                quantity: 2,
                unit_price: "1500".into(),
            }],
            metadata: [("channel".to_string(), "web|app\\é\"".to_string())]
                .into_iter()
                .collect(),
        };
        let place = Command::PlaceOrder(Box::new(NewOrder::parse(&request).unwrap()));
        let policy = OrderPolicy::default();
        let id = OrderId::new();
        let placed = apply(
            None,
            id,
            &CommandEnvelope::new(place),
            Timestamp(1_767_323_045_678),
            &policy,
        )
        .unwrap()
        .order;
        let mut events = OutboxEvents::default();
        events.push(&placed, OrderEvent::OrderPlaced);
        let stored = &events.lines[..events.lines.len() - 1];
        let expanded = expand(stored).expect("expands");
        let json: serde_json::Value = serde_json::from_slice(&expanded).unwrap();
        assert_eq!(json["event_id"], format!("{id}:1:0"));
        assert_eq!(json["type"], "order_placed");
        assert_eq!(json["order_id"], id.to_string());
        assert_eq!(json["order_version"], 1);
        assert_eq!(json["occurred_at"], "2026-01-02T03:04:05.678Z");
        assert_eq!(json["data"]["customer_id"], "c-\"7\"");
        assert_eq!(json["data"]["status"], "pending_payment");
        assert_eq!(json["data"]["amount"], "3000");
        assert_eq!(json["data"]["currency"], "JPY");
        assert_eq!(json["data"]["metadata"]["channel"], "web|app\\é\"");
        assert!(json["data"].get("tracking_number").is_none());
        assert!(
            stored.len() * 2 < expanded.len() + 40,
            "{} vs {}",
            stored.len(),
            expanded.len()
        );
        assert_eq!(event_type(&expanded), Some("order_placed"));
        // An already expanded line passes through; garbage does not expand.
        assert_eq!(expand(&expanded).as_deref(), Some(&expanded[..]));
        assert!(expand(b"[1,2").is_none());
    }
}
