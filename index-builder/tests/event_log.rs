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
            request_id: None,
            arm: None,
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

/// The nightly job end to end from a log directory the server was still appending to when it
/// died: a torn tail in the newest segment, and a build that uses everything before it.
#[test]
fn a_bundle_builds_from_a_log_with_a_torn_tail() {
    use funnel::features::FeatureRegistry;
    use index_builder::build::{run, BuildArgs};
    use index_builder::config::BuildConfig;
    use index_builder::synth::{self, SynthConfig};

    let dir = tempfile::tempdir().expect("tmp");
    let data = synth::generate(&SynthConfig::new(300, 800, 12_000, 11));
    let files = synth::write(&data, &dir.path().join("data")).expect("synth");
    let log_dir = dir.path().join("events");
    let events: Vec<LoggedEvent> = data
        .interactions
        .iter()
        .enumerate()
        .map(|(i, r)| LoggedEvent {
            user_id: r.user_id,
            item_id: r.item_id,
            event_type: "click".into(),
            timestamp: r.timestamp,
            weight: r.weight.unwrap_or(1.0),
            event_id: Some(format!("e{i}")),
            request_id: None,
            arm: None,
        })
        .collect();
    {
        let mut log = EventLog::open(
            &log_dir,
            LogOptions {
                segment_bytes: 64 << 10,
                ..LogOptions::default()
            },
        )
        .expect("open");
        for chunk in events.chunks(500) {
            log.append(chunk).expect("append");
        }
        // As a killed process leaves it: the newest segment has no end-of-stream marker.
        log.abandon();
    }
    // Tear the newest segment's last message.
    let segs = funnel::events::log::segments(&log_dir).expect("segments");
    let last = segs.last().expect("a segment");
    let len = std::fs::metadata(last).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .and_then(|f| f.set_len(len - 7))
        .expect("tear");
    let complete = funnel::events::log::read_all(&log_dir).expect("read");
    assert_eq!(
        complete.len(),
        events.len() - 500,
        "the torn batch is not read"
    );
    assert_eq!(
        read_interactions(&log_dir).expect("builder reads").len(),
        complete.len()
    );

    let mut cfg = BuildConfig::default();
    cfg.rankers.epochs = 2;
    cfg.als.iterations = 3;
    let out = run(BuildArgs {
        interactions: log_dir.clone(),
        items: Some(files.items),
        out: dir.path().join("bundle"),
        holdout: None,
        redis: None,
        config: cfg,
        registry: FeatureRegistry::bundled().expect("defs"),
        quiet: true,
        seed: 3,
    })
    .expect("build from the event log");
    // Every complete event is used: as an interaction, or dropped for its zero weight (the
    // synthetic log's impressions).
    let c = |k: &str| out.counts.get(k).copied().unwrap_or(0);
    assert_eq!(
        c("interactions") + c("dropped_zero_weight"),
        complete.len() as u64,
        "{:?}",
        out.counts
    );
    assert!(c("interactions") > 5_000, "{:?}", out.counts);
}
