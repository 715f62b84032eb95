//! The ranker registry: every loaded model with its id, architecture, version, validation
//! quality per user segment, prediction correlations, circuit breaker and cost model — and the
//! per-request plan of which of them score the candidates (selection by backtracking, see
//! [`super::select`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::combine::Stacker;
use super::cost::CostModel;
use super::ensemble::{segment_name, EnsembleManifest, SEGMENTS};
use super::input::INPUT_DIM;
use super::select::{self, ModelOption, Problem, SkipReason};
use super::{Arch, RankError, Ranker, RankerMetrics, RankersManifest};
use crate::breaker::{Breaker, BreakerConfig};

/// How single models are compared when one must be picked (pinned fallback, batch
/// recommendations): validation AUC first, NDCG@20 to break ties. AUC is computed over every
/// positive–negative pair of the validation set; NDCG@20 over the few hundred label groups is
/// far noisier (on ML-100K the NDCG@20 winner had the worst log-loss and lost to popularity on
/// the holdout, while the AUC winner beat it).
pub fn selection_key(m: &RankerMetrics) -> (f64, f64) {
    (
        m.valid_auc.unwrap_or(f64::NEG_INFINITY),
        m.valid_ndcg_at_20.unwrap_or(f64::NEG_INFINITY),
    )
}

fn key_cmp(a: (f64, f64), b: (f64, f64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1))
}

/// Index of the best spec by [`selection_key`].
pub fn best_by_validation<'a>(metrics: impl Iterator<Item = &'a RankerMetrics>) -> Option<usize> {
    metrics
        .enumerate()
        .max_by(|a, b| key_cmp(selection_key(a.1), selection_key(b.1)))
        .map(|(i, _)| i)
}

/// Scores `n` encoded rows; non-finite scores become the lowest finite score seen.
pub fn score_with(model: &dyn Ranker, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
    let mut s = model.score(rows, n)?;
    let floor = s
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::INFINITY, f32::min);
    let floor = if floor.is_finite() { floor } else { 0.0 };
    s.iter_mut()
        .filter(|x| !x.is_finite())
        .for_each(|x| *x = floor);
    Ok(s)
}

/// Warm-up batch sizes: two points give the cost line's fixed and per-candidate terms.
const WARMUP_SMALL: usize = 32;
const WARMUP_LARGE: usize = 512;

/// One served model.
pub struct ModelEntry {
    pub ranker: Arc<dyn Ranker>,
    pub arch: Arch,
    pub version: u32,
    pub metrics: RankerMetrics,
    pub breaker: Breaker,
    pub cost: CostModel,
    /// Why the model failed its warm-up (its breaker is then open).
    pub warmup_error: Option<String>,
}

impl ModelEntry {
    pub fn id(&self) -> &str {
        self.ranker.id()
    }
}

/// Knobs of one selection (config, possibly overridden per request).
#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    pub candidates: usize,
    pub segment: u8,
    /// Time the models may take, in ms (after the controller's factor).
    pub budget_ms: f64,
    pub workers: usize,
    pub max_models: usize,
    pub min_diversity: f64,
    /// Restrict to these model ids (per-request experiments).
    pub only: Option<&'a [String]>,
    pub max_nodes: u64,
    pub mode: select::SelectionMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub index: usize,
    /// Combination weight (the model's validation quality on the segment).
    pub weight: f64,
    pub cost_ms: f64,
}

/// The models a request is scored with, and why the others are not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnsemblePlan {
    pub members: Vec<Member>,
    pub skipped: Vec<(usize, SkipReason)>,
    pub budget_ms: f64,
    pub segment: u8,
    pub estimate: f64,
    pub predicted_ms: f64,
    pub nodes: u64,
    pub exhaustive: bool,
}

/// Per segment: quality per model and the dissimilarity matrix (1 − correlation), row-major.
#[derive(Debug, Clone)]
struct SegmentTable {
    quality: Vec<f64>,
    dissim: Vec<f64>,
}

pub struct Registry {
    entries: Vec<ModelEntry>,
    /// Index 0 = all users, 1 + s = segment s.
    tables: Vec<SegmentTable>,
    lambda: f64,
    ensemble: Option<EnsembleManifest>,
    /// The configured model, served alone while healthy.
    pinned: Option<usize>,
    /// Encoding the candidates' rows (shared by all members), per candidate.
    pub encode_cost: CostModel,
}

/// Default diversity weight when the bundle carries no fitted one.
const DEFAULT_LAMBDA: f64 = 0.05;

impl Registry {
    /// Takes the bundle's models into service: looks up their metrics, builds the per-segment
    /// tables, and warms each model up (timing it; a model that errors or panics on the warm-up
    /// starts with its breaker open). `pinned` must name a loaded model when given.
    pub fn new(
        rankers: Vec<(String, Box<dyn Ranker>)>,
        manifest: Option<&RankersManifest>,
        pinned: Option<&str>,
        breaker: BreakerConfig,
    ) -> Result<Self, String> {
        let spec_of = |id: &str| manifest.and_then(|m| m.rankers.iter().find(|s| s.id == id));
        let mut entries: Vec<ModelEntry> = rankers
            .into_iter()
            .map(|(_, r)| {
                let r: Arc<dyn Ranker> = Arc::from(r);
                let spec = spec_of(r.id());
                let (cost, warmup_error) = warm_up(&*r);
                let b = Breaker::new(format!("ranker.{}", r.id()), breaker);
                if let Some(e) = &warmup_error {
                    tracing::warn!(ranker = r.id(), error = %e, "ranker failed its warm-up; circuit open");
                    b.trip();
                }
                ModelEntry {
                    arch: spec.map_or(r.arch(), |s| s.arch),
                    version: spec.map_or(0, |s| s.version),
                    metrics: spec.map(|s| s.metrics.clone()).unwrap_or_default(),
                    breaker: b,
                    cost,
                    warmup_error,
                    ranker: r,
                }
            })
            .collect();
        // Deterministic order: the best single model first, so ties favour it everywhere.
        entries.sort_by(|a, b| key_cmp(selection_key(&b.metrics), selection_key(&a.metrics)));
        let pinned = match pinned {
            None => None,
            Some(id) => Some(entries.iter().position(|e| e.id() == id).ok_or_else(|| {
                let have: Vec<&str> = entries.iter().map(|e| e.id()).collect();
                format!("ranking.model {id:?} is not in the bundle (it has {have:?})")
            })?),
        };
        let ensemble = manifest.and_then(|m| m.ensemble.clone());
        // All users, then each segment.
        let tables = (0..=SEGMENTS.len())
            .map(|t| table(&entries, manifest, ensemble.as_ref(), t))
            .collect();
        let lambda = ensemble
            .as_ref()
            .map(|e| e.lambda)
            .filter(|l| l.is_finite() && *l >= 0.0)
            .unwrap_or(DEFAULT_LAMBDA);
        Ok(Self {
            entries,
            tables,
            lambda,
            ensemble,
            pinned,
            encode_cost: CostModel::new(0.05, 0.0005),
        })
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn breakers(&self) -> impl Iterator<Item = &Breaker> {
        self.entries.iter().map(|e| &e.breaker)
    }

    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The model a request would lead with when everything is healthy.
    pub fn preferred(&self) -> Option<&ModelEntry> {
        self.entries.get(self.pinned.unwrap_or(0))
    }

    /// Quality of model `m` on `segment` (the builder's validation NDCG@20).
    pub fn quality(&self, m: usize, segment: u8) -> f64 {
        self.tables
            .get(1 + segment as usize)
            .unwrap_or(&self.tables[0])
            .quality
            .get(m)
            .copied()
            .unwrap_or(0.0)
    }

    /// The stacking meta-learner for exactly these members, weights in `members` order.
    pub fn stacker(&self, members: &[usize]) -> Option<(Vec<f64>, f64)> {
        let ids: Vec<&str> = members.iter().map(|&m| self.entries[m].id()).collect();
        let s: &Stacker = self.ensemble.as_ref()?.stacker(&ids)?;
        let w = ids
            .iter()
            .map(|id| {
                s.models
                    .iter()
                    .position(|x| x == id)
                    .map(|k| s.weights.get(k).copied().unwrap_or(0.0))
            })
            .collect::<Option<Vec<f64>>>()?;
        Some((w, s.bias))
    }

    /// Chooses the models for one request. Only models whose breaker would let a call through
    /// are considered; the members' breakers are then asked (a half-open breaker admits one
    /// probe), so call [`Registry::record`] for every member.
    pub fn plan(&self, req: &PlanRequest) -> EnsemblePlan {
        let n = self.entries.len();
        let seg_table = self
            .tables
            .get(1 + req.segment as usize)
            .unwrap_or(&self.tables[0]);
        let mut skipped: Vec<(usize, SkipReason)> = Vec::new();
        let mut pool: Vec<usize> = Vec::with_capacity(n);
        for (m, e) in self.entries.iter().enumerate() {
            if req
                .only
                .is_some_and(|ids| !ids.iter().any(|id| id == e.id()))
            {
                continue;
            }
            if e.breaker.would_allow() {
                pool.push(m);
            } else {
                skipped.push((m, SkipReason::Unhealthy));
            }
        }
        let mut max_models = req.max_models.max(1);
        // A pinned model serves alone; while it is unhealthy the best other model stands in.
        if let Some(p) = self.pinned {
            if pool.contains(&p) {
                for &m in &pool {
                    if m != p {
                        skipped.push((m, SkipReason::Size));
                    }
                }
                pool = vec![p];
            }
            max_models = 1;
        }
        let options: Vec<ModelOption> = pool
            .iter()
            .map(|&m| ModelOption {
                quality: seg_table.quality[m],
                cost_ms: self.entries[m].cost.predict_ms(req.candidates),
                arch: self.entries[m].arch as u16,
            })
            .collect();
        let k = pool.len();
        let mut dissim = vec![0.0; k * k];
        for (a, &i) in pool.iter().enumerate() {
            for (b, &j) in pool.iter().enumerate() {
                dissim[a * k + b] = seg_table.dissim[i * n + j];
            }
        }
        let problem = Problem {
            models: &options,
            dissim: &dissim,
            lambda: self.lambda,
            budget_ms: req.budget_ms,
            workers: req.workers.max(1),
            max_models,
            min_diversity: req.min_diversity,
            max_nodes: req.max_nodes,
        };
        let mut plan = EnsemblePlan {
            budget_ms: req.budget_ms,
            segment: req.segment,
            ..EnsemblePlan::default()
        };
        let chosen = match req.mode {
            select::SelectionMode::Optimize => select::select(&problem),
            select::SelectionMode::All => select::select_all(&problem),
        };
        let Some(sel) = chosen else {
            skipped.extend(pool.iter().map(|&m| (m, SkipReason::Budget)));
            skipped.sort_by_key(|s| s.0);
            plan.skipped = skipped;
            return plan;
        };
        for (a, &m) in pool.iter().enumerate() {
            if !sel.chosen.contains(&a) {
                skipped.push((m, select::skip_reason(&problem, &sel.chosen, a)));
            }
        }
        for &a in &sel.chosen {
            let m = pool[a];
            // The breaker's own gate: a half-open one admits exactly one probe at a time.
            if self.entries[m].breaker.allow() {
                plan.members.push(Member {
                    index: m,
                    weight: options[a].quality.max(1e-6),
                    cost_ms: options[a].cost_ms,
                });
            } else {
                skipped.push((m, SkipReason::Unhealthy));
            }
        }
        skipped.sort_by_key(|s| s.0);
        plan.skipped = skipped;
        plan.estimate = sel.estimate;
        plan.predicted_ms = sel.cost_ms;
        plan.nodes = sel.nodes;
        plan.exhaustive = sel.exhaustive;
        plan
    }

    /// Reports how a member did: `Ok(time)` folds the run into its cost model; errors, panics
    /// and overruns count against its breaker.
    pub fn record(&self, m: usize, candidates: usize, outcome: Result<Duration, ()>) {
        let Some(e) = self.entries.get(m) else { return };
        match outcome {
            Ok(took) => {
                e.breaker.record(true);
                e.cost.observe(candidates, took);
            }
            Err(()) => e.breaker.record(false),
        }
    }

    /// Segment name for explain output.
    pub fn segment_name(segment: u8) -> &'static str {
        segment_name(segment)
    }
}

/// Times two warm-up batches of zero rows (twice each, keeping the faster: the first call pays
/// for allocations). Errors and panics are reported, never propagated.
fn warm_up(r: &dyn Ranker) -> (CostModel, Option<String>) {
    let run = |n: usize| -> Result<Duration, String> {
        let rows = vec![0.0f32; n * INPUT_DIM];
        let mut best = Duration::MAX;
        for _ in 0..2 {
            let t = Instant::now();
            match std::panic::catch_unwind(AssertUnwindSafe(|| r.score(&rows, n))) {
                Ok(Ok(s)) if s.len() == n => best = best.min(t.elapsed()),
                Ok(Ok(s)) => return Err(format!("{} scores for {n} rows", s.len())),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("panicked".into()),
            }
        }
        Ok(best)
    };
    match (run(WARMUP_SMALL), run(WARMUP_LARGE)) {
        (Ok(a), Ok(b)) => (
            CostModel::from_warmup(WARMUP_SMALL, a, WARMUP_LARGE, b),
            None,
        ),
        (Err(e), _) | (_, Err(e)) => (CostModel::new(1e3, 1.0), Some(e)),
    }
}

/// Quality and dissimilarity for table `t` (0 = all, 1 + s = segment s), from the builder's
/// ensemble section when present, else from each model's own metrics.
fn table(
    entries: &[ModelEntry],
    manifest: Option<&RankersManifest>,
    ensemble: Option<&EnsembleManifest>,
    t: usize,
) -> SegmentTable {
    let n = entries.len();
    let segment = t.checked_sub(1).map(|s| s as u8);
    let stats = ensemble.and_then(|e| match segment {
        Some(s) => e.segment(s),
        None => e.segments.iter().find(|x| x.segment.is_none()),
    });
    let pos_in = |ids: &[String], id: &str| ids.iter().position(|x| x == id);
    // Quality: ensemble stats → the spec's segment NDCG → its overall NDCG → 0.
    let quality: Vec<f64> = entries
        .iter()
        .map(|e| {
            let from_ens = ensemble.zip(stats).and_then(|(ens, st)| {
                pos_in(&ens.models, e.id()).and_then(|k| st.quality.get(k).copied().flatten())
            });
            let from_spec = segment
                .and_then(|s| e.metrics.segments.iter().find(|x| x.segment == s))
                .and_then(|x| x.ndcg_at_20)
                .or(e.metrics.valid_ndcg_at_20);
            from_ens
                .or(from_spec)
                .filter(|q| q.is_finite())
                .unwrap_or(0.0)
        })
        .collect();
    let manifest_ids: Vec<String> = manifest
        .map(|m| m.rankers.iter().map(|s| s.id.clone()).collect())
        .unwrap_or_default();
    let mut dissim = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (a, b) = (entries[i].id(), entries[j].id());
            let from_ens = ensemble.zip(stats).and_then(|(ens, st)| {
                let (x, y) = (pos_in(&ens.models, a)?, pos_in(&ens.models, b)?);
                st.correlation.get(x)?.get(y).copied()
            });
            let from_manifest = manifest.and_then(|m| {
                let (x, y) = (pos_in(&manifest_ids, a)?, pos_in(&manifest_ids, b)?);
                m.correlation.get(x)?.get(y).map(|&c| c as f64)
            });
            // Unknown correlation: assume identical predictions (no diversity credit).
            let rho = from_ens
                .or(from_manifest)
                .filter(|c| c.is_finite())
                .unwrap_or(1.0);
            dissim[i * n + j] = (1.0 - rho).clamp(0.0, 2.0);
        }
    }
    SegmentTable { quality, dissim }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        id: String,
        arch: Arch,
        sleep: Duration,
        fail: bool,
    }

    impl Ranker for Fixed {
        fn id(&self) -> &str {
            &self.id
        }
        fn arch(&self) -> Arch {
            self.arch
        }
        fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
            if self.fail {
                panic!("warm-up panic");
            }
            std::thread::sleep(self.sleep);
            Ok((0..n).map(|i| rows.len() as f32 * 0.0 + i as f32).collect())
        }
    }

    fn model(id: &str, arch: Arch, sleep_ms: u64, fail: bool) -> (String, Box<dyn Ranker>) {
        (
            id.to_string(),
            Box::new(Fixed {
                id: id.to_string(),
                arch,
                sleep: Duration::from_millis(sleep_ms),
                fail,
            }),
        )
    }

    fn req(budget_ms: f64) -> PlanRequest<'static> {
        PlanRequest {
            candidates: 500,
            segment: 1,
            budget_ms,
            workers: 2,
            max_models: 3,
            min_diversity: 0.0,
            only: None,
            max_nodes: 100_000,
            mode: select::SelectionMode::Optimize,
        }
    }

    #[test]
    fn warm_up_failure_opens_the_breaker_and_budget_limits_members() {
        let r = Registry::new(
            vec![
                model("fast", Arch::Logistic, 0, false),
                model("slow", Arch::Mlp, 20, false),
                model("broken", Arch::Dcn, 0, true),
            ],
            None,
            None,
            BreakerConfig::default(),
        )
        .unwrap();
        let broken = r.entries().iter().position(|e| e.id() == "broken").unwrap();
        assert!(r.entries()[broken].warmup_error.is_some());
        let p = r.plan(&req(1000.0));
        assert!(
            p.skipped.contains(&(broken, SkipReason::Unhealthy)),
            "{p:?}"
        );
        assert!(!p.members.is_empty());
        // 5 ms: the 20 ms model cannot fit.
        let p = r.plan(&req(5.0));
        let slow = r.entries().iter().position(|e| e.id() == "slow").unwrap();
        assert!(p.members.iter().all(|m| m.index != slow), "{p:?}");
        assert!(p.skipped.contains(&(slow, SkipReason::Budget)), "{p:?}");
        // Nothing fits in no time.
        let p = r.plan(&req(0.0));
        assert!(p.members.is_empty());
    }

    #[test]
    fn pinned_model_serves_alone() {
        let r = Registry::new(
            vec![
                model("a", Arch::Logistic, 0, false),
                model("b", Arch::Mlp, 0, false),
            ],
            None,
            Some("b"),
            BreakerConfig::default(),
        )
        .unwrap();
        let p = r.plan(&req(1000.0));
        assert_eq!(p.members.len(), 1);
        assert_eq!(r.entries()[p.members[0].index].id(), "b");
        assert!(Registry::new(vec![], None, Some("zzz"), BreakerConfig::default()).is_err());
    }
}
