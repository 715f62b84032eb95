//! The nightly build reads the server's event log directory as interaction input.

use funnel::events::log::{EventLog, LogOptions, LoggedEvent};
use index_builder::ingest::read_interactions;

#[test]
fn the_builder_reads_the_event_log_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let events: Vec<LoggedEvent> = (0..500u64)
        .map(|i| LoggedEvent {
            user_id: i % 13,
            item_id: 100 + i % 41,
            event_type: if i.is_multiple_of(3) {
                "purchase"
            } else {
                "click"
            }
            .into(),
            timestamp: 1_700_000_000 + i as i64,
            weight: 1.0,
            event_id: Some(format!("evt-{i}")),
        })
        .collect();
    {
        let mut log = EventLog::open(
            dir.path(),
            LogOptions {
                segment_bytes: 4_096,
                ..LogOptions::default()
            },
        )
        .expect("open");
        for chunk in events.chunks(50) {
            log.append(chunk).expect("append");
        }
    }
    let rows = read_interactions(dir.path()).expect("builder reads the log");
    assert_eq!(rows.len(), events.len());
    let mut got: Vec<(u64, u64, i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r.user_id,
                r.item_id,
                r.timestamp,
                r.event_type.clone().unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(u64, u64, i64, String)> = events
        .iter()
        .map(|e| (e.user_id, e.item_id, e.timestamp, e.event_type.clone()))
        .collect();
    want.sort();
    assert_eq!(got, want);
}
