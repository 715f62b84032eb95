//! Interaction events after serving: what `POST /v1/events` accepts ([`api`]), the durable log
//! the nightly build reads ([`log`]), and the group-committing, deduplicating writer in front of
//! it ([`ingest`]). The streaming features the events move live in
//! [`crate::features::streaming`].

pub mod api;
pub mod ingest;
pub mod log;

/// Known event types and their default confidence weight: the one table the server (for
/// events without an explicit `weight`) and the index-builder (for logs without a weight
/// column) share. Zero = not a positive signal (an impression marks an item seen, nothing more).
pub const EVENT_TYPES: &[(&str, f32)] = &[
    ("impression", 0.0),
    ("view_impression", 0.0),
    ("skip", 0.0),
    ("view", 1.0),
    ("click", 1.0),
    ("open", 1.0),
    ("play", 1.5),
    ("watch", 1.5),
    ("read", 1.5),
    ("like", 2.0),
    ("save", 2.0),
    ("add_to_cart", 2.0),
    ("favorite", 2.0),
    ("share", 2.5),
    ("comment", 2.5),
    ("purchase", 4.0),
    ("buy", 4.0),
    ("subscribe", 4.0),
];

/// The default weight of a known event type (case-insensitive); None for an unknown type.
pub fn type_weight(event_type: &str) -> Option<f32> {
    EVENT_TYPES
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(event_type))
        .map(|&(_, w)| w)
}
