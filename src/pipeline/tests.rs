//! Stage tests on small in-memory inputs: a catalog of a few items, sources defined here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::RequestStage;
use super::fallback::{Backup, FallbackStage};
use super::query::{query_state, QueryState};
use super::retrieval::{Phase, SourceSet};
use crate::api::{Degradation, ErrorKind, RecommendRequest};
use crate::breaker::BreakerConfig;
use crate::bundle::Bundle;
use crate::catalog::{Catalog, Item};
use crate::config::{BudgetConfig, Clock, ServerConfig};
use crate::features::online::UserFeatures;
use crate::merge::Candidate;
use crate::rerank::{ItemFilter, Origin};
use crate::sources::{
    CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId, SourceQuotas, N_SOURCES,
};

/// Ten items in two categories; item i has popularity 10 - i (item 0 most popular).
fn bundle() -> Arc<Bundle> {
    let items = (0..10)
        .map(|i| Item {
            id: 100 + i,
            title: format!("item {i}"),
            categories: vec![(i % 2) as u32],
            creator_id: i % 3,
            published_at: 1_000 + i as i64,
            flagged: i == 9,
            promoted: false,
        })
        .collect();
    let catalog = Catalog::new(items, vec!["even".into(), "odd".into()]);
    let pop = (0..10).map(|i| 10.0 - i as f32).collect();
    Arc::new(Bundle::in_memory(catalog, vec![0.0; 20], 2, pop))
}

fn query(b: &Bundle, seen: &[u32]) -> Arc<QueryState> {
    Arc::new(query_state(b, None, &[], seen, ItemFilter::default(), 0.0))
}

/// A source that answers with fixed items, after an optional delay, or fails or panics.
struct Fixed {
    id: SourceId,
    items: Vec<u32>,
    delay: Duration,
    fail: bool,
    panic: bool,
    needs_user: bool,
    calls: AtomicUsize,
}

impl Fixed {
    fn new(id: SourceId, items: &[u32]) -> Self {
        Fixed {
            id,
            items: items.to_vec(),
            delay: Duration::ZERO,
            fail: false,
            panic: false,
            needs_user: true,
            calls: AtomicUsize::new(0),
        }
    }
}

impl CandidateSource for Fixed {
    fn id(&self) -> SourceId {
        self.id
    }
    fn needs_user(&self) -> bool {
        self.needs_user
    }
    fn retrieve(
        &self,
        q: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.panic {
            panic!("source bug");
        }
        if self.fail {
            return Err(SourceError::Failed {
                source_name: "fixed",
                message: "broken".into(),
            });
        }
        Ok(self
            .items
            .iter()
            .filter(|&&i| (q.allow)(i))
            .take(quota)
            .enumerate()
            .map(|(r, &item)| ScoredItem {
                item,
                score: 1.0 / (r + 1) as f32,
            })
            .collect())
    }
}

fn pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().ok()
}

#[tokio::test]
async fn source_set_runs_phases_and_reports_each_slot() {
    let b = bundle();
    let mut trending = Fixed::new(SourceId::Trending, &[0, 1, 2]);
    trending.needs_user = false;
    let mut slow = Fixed::new(SourceId::Cf, &[3]);
    slow.delay = Duration::from_millis(300);
    let mut broken = Fixed::new(SourceId::Content, &[4]);
    broken.fail = true;
    let sources: Vec<Arc<dyn CandidateSource>> = vec![
        Arc::new(trending),
        Arc::new(Fixed::new(SourceId::Ann, &[5, 6, 7, 8, 9])),
        Arc::new(slow),
        Arc::new(broken),
    ];
    let quotas = SourceQuotas {
        ann: 2,
        ..SourceQuotas::default()
    };
    let set = SourceSet::new(sources, &quotas, 50, BreakerConfig::default(), pool());
    let q = query(&b, &[5]);
    let early = set.launch(Phase::WithoutUser, &b, &q);
    assert_eq!(early.len(), 1, "only trending starts before the features");
    let mut jobs = early;
    jobs.extend(set.launch(Phase::WithUser, &b, &q));
    assert_eq!(jobs.len(), 4);
    let got = set
        .collect(jobs, Instant::now() + Duration::from_secs(5))
        .await;
    // Slot order, the quota and the seen item honoured.
    let ids: Vec<SourceId> = got.per_source.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![SourceId::Ann, SourceId::Trending]);
    let ann: Vec<u32> = got.per_source[0].1.iter().map(|s| s.item).collect();
    assert_eq!(ann, vec![6, 7]);
    assert_eq!(got.problems["cf"], "timeout");
    assert_eq!(got.problems["content"], "fixed: broken");
    assert_eq!(got.items(), 5);
    assert_eq!(got.ms.len(), 4, "every launched slot is timed");
    assert!(got.ms["cf"] >= 45.0, "{:?}", got.ms);
}

#[tokio::test]
async fn a_panicking_source_is_reported_not_propagated() {
    let b = bundle();
    let mut bug = Fixed::new(SourceId::Cf, &[1]);
    bug.panic = true;
    // A generous slice: the panic hook may spend a while printing a backtrace.
    let set = SourceSet::new(
        vec![Arc::new(bug), Arc::new(Fixed::new(SourceId::Ann, &[2]))],
        &SourceQuotas::default(),
        30_000,
        BreakerConfig::default(),
        pool(),
    );
    let q = query(&b, &[]);
    let jobs = set.launch(Phase::WithUser, &b, &q);
    let got = set
        .collect(jobs, Instant::now() + Duration::from_secs(30))
        .await;
    assert_eq!(got.problems["cf"], "panicked");
    assert_eq!(got.counts["ann"], 1);
}

#[tokio::test]
async fn an_open_breaker_skips_the_source() {
    let b = bundle();
    let mut bad = Fixed::new(SourceId::Ann, &[1]);
    bad.fail = true;
    let bad = Arc::new(bad);
    let breaker = BreakerConfig {
        failure_threshold: 2,
        ..BreakerConfig::default()
    };
    let set = SourceSet::new(
        vec![bad.clone()],
        &SourceQuotas::default(),
        100,
        breaker,
        pool(),
    );
    let q = query(&b, &[]);
    for _ in 0..2 {
        let jobs = set.launch(Phase::WithUser, &b, &q);
        let got = set
            .collect(jobs, Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(got.problems["ann"], "fixed: broken");
        assert_eq!(got.problems["cf"], "unavailable");
    }
    let jobs = set.launch(Phase::WithUser, &b, &q);
    let got = set
        .collect(jobs, Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(got.problems["ann"], "circuit open");
    assert_eq!(bad.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn the_offline_set_runs_every_slot_in_order() {
    let b = bundle();
    let set = SourceSet::offline(
        vec![
            Arc::new(Fixed::new(SourceId::Trending, &[0])),
            Arc::new(Fixed::new(SourceId::Ann, &[1, 2])),
        ],
        &SourceQuotas::default(),
    );
    let q = query(&b, &[]);
    let allow = |i| q.allows(&b, i);
    let got = set.retrieve_now(&q.retrieval(&allow));
    let shape: Vec<(SourceId, usize)> = got.iter().map(|(id, v)| (*id, v.len())).collect();
    assert_eq!(
        shape,
        vec![
            (SourceId::Ann, 2),
            (SourceId::Cf, 0),
            (SourceId::Content, 0),
            (SourceId::Trending, 1)
        ]
    );
}

fn cand(item: u32, score: f32) -> Candidate {
    Candidate {
        item,
        source_scores: [0.0; N_SOURCES],
        source_mask: 1,
        source_ranks: [0; N_SOURCES],
        score,
    }
}

#[test]
fn fallback_walks_the_chain_then_tops_up_from_popularity() {
    let b = bundle();
    let stage = FallbackStage::new(&b);
    let q = query(&b, &[0]);
    // Retrieval answered: kept, then popular unseen items below its lowest score.
    let c = stage.fill(&b, vec![cand(4, 0.5), cand(6, 0.2)], None, &q, 2);
    assert_eq!(c.backup, None);
    let items: Vec<u32> = c.list.iter().map(|c| c.item).collect();
    assert_eq!(items, vec![4, 6, 1, 2], "k=2 wants 4; item 0 is seen");
    assert_eq!(c.origins[..2], [Origin::Retrieval, Origin::Retrieval]);
    assert_eq!(c.origins[2..], [Origin::Popularity, Origin::Popularity]);
    assert!(c.list[2].score < 0.2 && c.list[3].score < c.list[2].score);

    // Nothing retrieved: the batch list first (unknown and seen ids dropped).
    let user = UserFeatures {
        batch_recs: vec![107, 100, 999, 103],
        ..UserFeatures::default()
    };
    let c = stage.fill(&b, Vec::new(), Some(&user), &q, 1);
    assert_eq!(c.backup, Some(Backup::Batch));
    assert_eq!(c.backup.map(Backup::degradation), Some(Degradation::Batch));
    let items: Vec<u32> = c.list.iter().map(|c| c.item).collect();
    assert_eq!(items, vec![7, 3, 1]);
    assert_eq!(
        c.origins,
        vec![Origin::Batch, Origin::Batch, Origin::Popularity]
    );

    // No batch list either: popularity, never a flagged item.
    let c = stage.fill(&b, Vec::new(), None, &q, 20);
    assert_eq!(c.backup, Some(Backup::Popularity));
    let items: Vec<u32> = c.list.iter().map(|c| c.item).collect();
    assert_eq!(items, vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn the_request_is_resolved_once_against_the_bundle() {
    let b = bundle();
    let limits = ServerConfig::default();
    let valid = |json: serde_json::Value| {
        serde_json::from_value::<RecommendRequest>(json)
            .expect("schema")
            .validate(&limits)
            .expect("valid")
    };
    let budget = BudgetConfig::default();
    let stage = RequestStage::new(&budget, Clock::Wall, &b);
    let t0 = Instant::now();
    let req = valid(serde_json::json!({
        "user_id": "7", "k": 3, "deadline_ms": 50,
        "context": {"timestamp": "2020-01-01T00:00:00Z", "session_items": [101, 555], "device": "TV"},
        "exclude_items": [102],
        "filters": {"categories_any": ["odd"], "published_after": 1003}
    }));
    let ctx = stage.resolve(&b, &req, t0).expect("resolves");
    assert_eq!(ctx.deadline, t0 + Duration::from_millis(50));
    assert_eq!((ctx.k, ctx.user_id, ctx.now), (3, Some(7), 1_577_836_800));
    assert_eq!((ctx.session, ctx.exclude), (vec![1], vec![2]));
    assert_eq!(ctx.device, crate::ranking::input::DeviceKind::Tv);
    assert_eq!(ctx.filter.categories_any, Some(vec![1]));
    assert_eq!(ctx.filter.published_after, Some(1003));
    // The configured budget caps a larger client deadline.
    let req = valid(serde_json::json!({"user_id": 1, "deadline_ms": 60000}));
    let ctx = stage.resolve(&b, &req, t0).expect("resolves");
    assert_eq!(ctx.deadline, t0 + Duration::from_millis(budget.total_ms));
    // A category the catalog does not have can only match nothing: a client error.
    let req = valid(serde_json::json!({"user_id": 1, "filters": {"categories_any": ["jazz"]}}));
    let e = stage.resolve(&b, &req, t0).expect_err("unknown category");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("jazz"), "{}", e.message);
}
