//! `POST /v1/events`: the request body, validated event by event so that a bad event is rejected
//! alone and never sinks the good ones in its batch, and the 202 response.

use serde::{Deserialize, Serialize};

use super::log::LoggedEvent;
use super::{type_weight, EVENT_TYPES};
#[cfg(test)]
use crate::api::ErrorKind;
use crate::api::{ApiError, Timestamp, UserId};

/// Largest accepted explicit `weight`.
pub const MAX_WEIGHT: f32 = 1000.0;
/// Longest accepted `event_id`.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// How far in the future (seconds, by the server's clock) an event's timestamp may lie.
pub const MAX_CLOCK_SKEW_S: i64 = 300;

/// The request body. Each event is parsed on its own (as [`Event`]), so that one bad event is
/// rejected alone instead of failing its batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// 1..=`events.max_batch` events (1000 by default). An event that breaks [`Event`]'s schema
    /// is listed in the response's `rejected`, not failed with the batch.
    #[schema(value_type = Vec<Event>, min_items = 1)]
    events: Vec<serde_json::Value>,
}

/// A user or item id as the recommend API takes it: a non-negative integer or its decimal string.
fn id_of(id: &UserId, field: &str) -> Result<u64, String> {
    id.as_u64()
        .ok_or_else(|| format!("{field}: {id:?} is not a non-negative integer id"))
}

/// One interaction event.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// A non-negative integer or its decimal string.
    user_id: UserId,
    /// A non-negative integer or its decimal string; an item the served catalog does not hold
    /// is rejected (`unknown_item`).
    item_id: UserId,
    /// The event type, case-insensitive (the list of known types is in the description the
    /// OpenAPI document adds from `events::EVENT_TYPES`).
    #[serde(rename = "type")]
    event_type: String,
    /// Defaults to the server's clock; at most 300 s ahead of it.
    #[serde(default)]
    timestamp: Option<Timestamp>,
    /// Overrides the type's weight.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1000.0)]
    weight: Option<f64>,
    /// Makes retries idempotent: an id already recorded is counted in `duplicates`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    event_id: Option<String>,
    /// The `request_id` of the recommendation this event answers (an impression or a click
    /// on what it showed): the event counts for the experiment arm that served it.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    request_id: Option<String>,
}

/// Why one event of a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// It breaks [`Event`]'s schema or a limit.
    InvalidEvent,
    /// Its item is not in the served catalog.
    UnknownItem,
}

/// One event the server refused, by its position in the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejected {
    pub index: usize,
    pub code: RejectCode,
    pub message: String,
}

/// A batch after validation: the good events (with their batch positions) and the rejected.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    pub events: Vec<LoggedEvent>,
    pub rejected: Vec<Rejected>,
}

/// The 202 body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsResponse {
    /// Events recorded in the durable log by this request.
    pub accepted: usize,
    /// Events whose `event_id` was already recorded (a retry): acknowledged, not counted again.
    pub duplicates: usize,
    pub rejected: Vec<Rejected>,
    /// Whether the streaming features (recent items, seen set, trending) took the accepted
    /// events. False when the online store could not be written: the events are still logged.
    pub features_updated: bool,
}

/// Parses and validates a `POST /v1/events` body. Errors of the batch as a whole (malformed
/// JSON, no `events` array, too many or none) fail the request; each event's own problems
/// reject that event alone. `now` stands in for a missing timestamp; `known_item` says whether
/// the served catalog holds an item (events on any other id are refused: they would only cost
/// counters and CPU).
pub fn parse_batch(
    body: &[u8],
    max_events: usize,
    now: i64,
    known_item: &dyn Fn(u64) -> bool,
) -> Result<ParsedBatch, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::malformed(format!("body: {e}")))?;
    let raw: EventsRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::invalid(format!(
            "body must be {{\"events\": [...]}} with no other fields: {e}"
        ))
    })?;
    if raw.events.is_empty() || raw.events.len() > max_events {
        return Err(ApiError::invalid(format!(
            "events: {} given; a batch holds 1..={max_events}",
            raw.events.len()
        )));
    }
    let mut out = ParsedBatch::default();
    for (index, v) in raw.events.into_iter().enumerate() {
        match validate(v, now) {
            Ok(e) if known_item(e.item_id) => out.events.push(e),
            Ok(e) => out.rejected.push(Rejected {
                index,
                code: RejectCode::UnknownItem,
                message: format!(
                    "item_id: {} is not in the served catalog; events take known items only",
                    e.item_id
                ),
            }),
            Err(message) => out.rejected.push(Rejected {
                index,
                code: RejectCode::InvalidEvent,
                message,
            }),
        }
    }
    Ok(out)
}

fn validate(v: serde_json::Value, now: i64) -> Result<LoggedEvent, String> {
    let raw: Event = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let user_id = id_of(&raw.user_id, "user_id")?;
    let item_id = id_of(&raw.item_id, "item_id")?;
    let event_type = raw.event_type.trim().to_ascii_lowercase();
    let Some(default_weight) = type_weight(&event_type) else {
        let known: Vec<&str> = EVENT_TYPES.iter().map(|(t, _)| *t).collect();
        return Err(format!(
            "type: unknown event type {:?} (known: {})",
            raw.event_type,
            known.join(", ")
        ));
    };
    let timestamp = match &raw.timestamp {
        None => now,
        Some(t) => t.to_unix("timestamp").map_err(|e| e.message)?,
    };
    if timestamp < 0 || timestamp > now + MAX_CLOCK_SKEW_S {
        return Err(format!(
            "timestamp: {timestamp} is {} (the server's clock says {now})",
            if timestamp < 0 {
                "before 1970"
            } else {
                "in the future"
            }
        ));
    }
    let weight = match raw.weight {
        None => default_weight,
        Some(w) if w.is_finite() && (0.0..=f64::from(MAX_WEIGHT)).contains(&w) => w as f32,
        Some(w) => return Err(format!("weight: {w} is outside 0..={MAX_WEIGHT}")),
    };
    let event_id = match raw.event_id {
        None => None,
        Some(id) if !id.is_empty() && id.len() <= MAX_EVENT_ID_LEN => Some(id),
        Some(id) => {
            return Err(format!(
                "event_id: {} bytes; use 1..={MAX_EVENT_ID_LEN}",
                id.len()
            ))
        }
    };
    let request_id = match raw.request_id {
        None => None,
        Some(id) if !id.is_empty() && id.len() <= 128 => Some(id),
        Some(id) => return Err(format!("request_id: {} bytes; use 1..=128", id.len())),
    };
    Ok(LoggedEvent {
        user_id,
        item_id,
        event_type,
        timestamp,
        weight,
        event_id,
        request_id,
        arm: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_events_are_rejected_alone() {
        let body = serde_json::json!({"events": [
            {"user_id": 1, "item_id": 2, "type": "click"},
            {"user_id": "x", "item_id": 2, "type": "click"},
            {"user_id": 1, "item_id": 2, "type": "teleport"},
            {"user_id": 1, "item_id": 2, "type": "like", "weight": -1},
            {"user_id": 1, "item_id": 2, "type": "like", "colour": "red"},
            {"user_id": "7", "item_id": "9", "type": "Purchase", "timestamp": "2024-01-01T00:00:00Z",
             "event_id": "e1"},
            {"user_id": 1, "item_id": 2, "type": "click", "timestamp": 4_000_000_000_i64},
            {"user_id": 1, "item_id": 2, "type": "click", "event_id": ""},
            17,
            {"user_id": 1, "item_id": 404, "type": "click"}
        ]});
        let known = |i: u64| i != 404;
        let b = parse_batch(body.to_string().as_bytes(), 1000, 1_750_000_000, &known).unwrap();
        assert_eq!(b.events.len(), 2, "{:?}", b.rejected);
        assert_eq!(b.events[0].timestamp, 1_750_000_000);
        assert_eq!(b.events[0].weight, 1.0);
        let p = &b.events[1];
        assert_eq!((p.user_id, p.item_id, p.weight), (7, 9, 4.0));
        assert_eq!(p.event_type, "purchase");
        assert_eq!(p.timestamp, 1_704_067_200);
        assert_eq!(p.event_id.as_deref(), Some("e1"));
        let idx: Vec<usize> = b.rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![1, 2, 3, 4, 6, 7, 8, 9]);
        assert!(b
            .rejected
            .iter()
            .take(7)
            .all(|r| r.code == RejectCode::InvalidEvent));
        assert_eq!(b.rejected[7].code, RejectCode::UnknownItem);
        assert!(b.rejected[1].message.contains("known: impression"));
        assert!(b.rejected[4].message.contains("future"));
    }

    #[test]
    fn batch_level_errors_fail_the_request() {
        let any = |_: u64| true;
        let e = parse_batch(b"{", 10, 0, &any).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        let e = parse_batch(br#"{"events": []}"#, 10, 0, &any).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        let e = parse_batch(br#"{"evnts": []}"#, 10, 0, &any).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        let many: Vec<_> = (0..11)
            .map(|i| serde_json::json!({"user_id": i, "item_id": 1, "type": "click"}))
            .collect();
        let body = serde_json::json!({ "events": many }).to_string();
        assert_eq!(
            parse_batch(body.as_bytes(), 10, 0, &any).unwrap_err().kind,
            ErrorKind::Invalid
        );
    }
}
