//! The retrieval stage: a [`SourceSet`], one slot per candidate source with its quota, time
//! slice and circuit breaker. The server launches the slots concurrently on a bounded CPU pool
//! (sources that need no user before the features arrive); the index-builder runs the same set
//! synchronously for training negatives, batch lists and evaluation. A fifth source is one more
//! slot.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::query::QueryState;
use super::report::ms;
use crate::api::SourceTimings;
use crate::breaker::{Breaker, BreakerConfig};
use crate::bundle::Bundle;
use crate::sources::{
    CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId, SourceQuotas,
};

/// One source as the pipeline runs it.
pub struct SourceSlot {
    pub id: SourceId,
    /// None when the bundle has no such component.
    source: Option<Arc<dyn CandidateSource>>,
    quota: usize,
    timeout: Duration,
    breaker: Breaker,
}

impl SourceSlot {
    pub fn available(&self) -> bool {
        self.source.is_some()
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn needs_user(&self) -> bool {
        self.source.as_ref().is_none_or(|s| s.needs_user())
    }
}

/// Which slots to launch: those that need the user's features wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    WithoutUser,
    WithUser,
}

type Job = oneshot::Receiver<std::thread::Result<(Result<Vec<ScoredItem>, SourceError>, Instant)>>;

/// A slot's job in flight.
pub struct Launched {
    slot: usize,
    start: Instant,
    /// Err: why the source was not called.
    rx: Result<Job, &'static str>,
}

/// What the sources gave, in slot order.
#[derive(Debug, Default)]
pub struct Retrieved {
    /// The sources that answered, with their items (merge's input).
    pub per_source: Vec<(SourceId, Vec<ScoredItem>)>,
    /// Every launched source: wall time from launch to its answer (or to giving up on it).
    pub ms: SourceTimings,
    /// Source name → items, for those that answered.
    pub counts: BTreeMap<String, usize>,
    /// Source name → why it gave nothing ("timeout", "unavailable", "circuit open", an error).
    pub problems: BTreeMap<String, String>,
}

impl Retrieved {
    fn push(&mut self, id: SourceId, ms: f64, items: Result<Vec<ScoredItem>, String>) {
        self.ms.insert(id.name().into(), ms);
        match items {
            Ok(v) => {
                self.counts.insert(id.name().into(), v.len());
                self.per_source.push((id, v));
            }
            Err(e) => {
                self.problems.insert(id.name().into(), e);
            }
        }
    }

    /// Items over all sources, before de-duplication.
    pub fn items(&self) -> usize {
        self.per_source.iter().map(|(_, v)| v.len()).sum()
    }
}

pub struct SourceSet {
    slots: Vec<SourceSlot>,
    /// Runs the server's source jobs; None for the builder's synchronous use.
    pool: Option<rayon::ThreadPool>,
}

impl SourceSet {
    /// One slot per [`SourceId`], in that order; `sources` are the ones the bundle has.
    pub fn new(
        sources: Vec<Arc<dyn CandidateSource>>,
        quotas: &SourceQuotas,
        source_ms: u64,
        breaker: BreakerConfig,
        pool: Option<rayon::ThreadPool>,
    ) -> Self {
        let slots = SourceId::ALL
            .iter()
            .map(|&id| SourceSlot {
                id,
                source: sources.iter().find(|s| s.id() == id).cloned(),
                quota: quotas.get(id),
                timeout: Duration::from_millis(source_ms),
                breaker: Breaker::new(format!("source.{}", id.name()), breaker),
            })
            .collect();
        SourceSet { slots, pool }
    }

    /// The builder's set: no pool, no time slices.
    pub fn offline(sources: Vec<Arc<dyn CandidateSource>>, quotas: &SourceQuotas) -> Self {
        Self::new(sources, quotas, u64::MAX, BreakerConfig::default(), None)
    }

    pub fn slots(&self) -> &[SourceSlot] {
        &self.slots
    }

    /// Starts the phase's slots on the pool. A slot without a source, or whose breaker is open,
    /// is not called.
    pub fn launch(&self, phase: Phase, bundle: &Arc<Bundle>, q: &Arc<QueryState>) -> Vec<Launched> {
        self.launch_with(phase, bundle, q, None)
    }

    /// [`Self::launch`] with other quotas than the configured ones (an experiment arm's).
    pub fn launch_with(
        &self,
        phase: Phase,
        bundle: &Arc<Bundle>,
        q: &Arc<QueryState>,
        quotas: Option<&crate::sources::SourceQuotas>,
    ) -> Vec<Launched> {
        let mut out = Vec::new();
        for (at, slot) in self.slots.iter().enumerate() {
            if slot.needs_user() != (phase == Phase::WithUser) {
                continue;
            }
            let start = Instant::now();
            let rx = match (&slot.source, &self.pool) {
                (None, _) | (_, None) => Err("unavailable"),
                (Some(_), _) if !slot.breaker.allow() => Err("circuit open"),
                (Some(src), Some(pool)) => {
                    let quota = quotas.map_or(slot.quota, |qs| qs.get(slot.id));
                    let (src, q, bundle) = (src.clone(), q.clone(), bundle.clone());
                    Ok(run_cpu(pool, move || {
                        let allow = |i| q.allows(&bundle, i);
                        let got = src.retrieve(&q.retrieval(&allow), quota);
                        (got, Instant::now())
                    }))
                }
            };
            out.push(Launched {
                slot: at,
                start,
                rx,
            });
        }
        out
    }

    /// Waits for the launched jobs, each until its own slice or the request's deadline,
    /// records each outcome on its breaker, and returns them in slot order.
    pub async fn collect(&self, mut jobs: Vec<Launched>, deadline: Instant) -> Retrieved {
        jobs.sort_by_key(|l| l.slot);
        let mut out = Retrieved::default();
        // One at a time is as good as concurrently: the jobs already run, and each wait ends at
        // an absolute time; the job stamps its own finish for the timing.
        for l in jobs {
            let slot = &self.slots[l.slot];
            let rx = match l.rx {
                Ok(rx) => rx,
                Err(why) => {
                    out.push(slot.id, 0.0, Err(why.into()));
                    continue;
                }
            };
            let limit = l
                .start
                .checked_add(slot.timeout)
                .map_or(deadline, |t| t.min(deadline));
            let (items, done) = match tokio::time::timeout_at(limit.into(), rx).await {
                Ok(Ok(Ok((Ok(v), done)))) => (Ok(v), done),
                Ok(Ok(Ok((Err(e), done)))) => (Err(e.to_string()), done),
                Ok(Ok(Err(_))) => (Err("panicked".into()), Instant::now()),
                Ok(Err(_)) => (Err("dropped".into()), Instant::now()),
                Err(_) => (Err("timeout".into()), Instant::now()),
            };
            slot.breaker.record(items.is_ok());
            out.push(slot.id, ms(done.saturating_duration_since(l.start)), items);
        }
        out
    }

    /// Runs every slot now, on this thread (the builder): a failing source gives nothing.
    pub fn retrieve_now(&self, q: &RetrievalQuery) -> Vec<(SourceId, Vec<ScoredItem>)> {
        self.slots
            .iter()
            .map(|s| {
                let items = s
                    .source
                    .as_ref()
                    .and_then(|src| src.retrieve(q, s.quota).ok())
                    .unwrap_or_default();
                (s.id, items)
            })
            .collect()
    }
}

/// Runs `f` on the pool; a panic is contained to this request's stage and reported, never
/// unwinding the pool.
fn run_cpu<T: Send + 'static>(
    pool: &rayon::ThreadPool,
    f: impl FnOnce() -> T + Send + 'static,
) -> oneshot::Receiver<std::thread::Result<T>> {
    let (tx, rx) = oneshot::channel();
    pool.spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    rx
}
