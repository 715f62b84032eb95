//! The rank stage: the ensemble of candle rankers. It owns the model registry, the subset
//! selection (backtracking under the remaining budget), the latency controller that scales that
//! budget, the rank slots that bound concurrent model runs, and the combination of the members'
//! scores. What fails or overruns is left out; with no member left the caller serves retrieval
//! order.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::RequestCtx;
use super::item_features::Overrides;
use super::report::ms;
use crate::api::{EnsembleExplain, RankingOverride, SelectedModel, SkippedModel};
use crate::bundle::Bundle;
use crate::config::RankingConfig;
use crate::merge::Candidate;
use crate::observe::skew::SkewMonitor;
use crate::ranking::combine::{combine, Strategy};
use crate::ranking::controller::LatencyController;
use crate::ranking::encode::{encode_rows, RankUser};
use crate::ranking::ensemble::segment_for;
use crate::ranking::input::INPUT_DIM;
use crate::ranking::registry::{score_with, EnsemblePlan, PlanRequest, Registry};

type Scored = Result<(Vec<f32>, Duration), String>;

/// The stage's answer for one request.
#[derive(Debug, Default)]
pub struct Ranking {
    /// Per candidate (the caller keeps the retrieval score when no model answered).
    pub scores: Option<Vec<f32>>,
    pub confidence: Vec<f32>,
    /// Per member that answered, its raw scores (only with `explain`).
    pub model_scores: Vec<(String, Vec<f32>)>,
    pub ensemble: Option<EnsembleExplain>,
    /// The members that scored, joined by `+`, or why none did.
    pub ranker: String,
}

pub struct RankStage {
    registry: Registry,
    controller: LatencyController,
    /// Bounds concurrent ranking jobs. They run on tokio's blocking threads, not the sources'
    /// pool, so a hung model cannot starve retrieval (and, unlike a second rayon pool, idle
    /// blocking threads do not spin on the two cores).
    slots: Arc<tokio::sync::Semaphore>,
    workers: usize,
    cfg: RankingConfig,
    rank_ms: u64,
    /// Takes a sample of the encoded rows (training–serving skew).
    skew: Arc<SkewMonitor>,
}

impl RankStage {
    pub fn new(
        registry: Registry,
        cfg: RankingConfig,
        rank_ms: u64,
        workers: usize,
        skew: Arc<SkewMonitor>,
    ) -> Self {
        RankStage {
            registry,
            controller: LatencyController::new(cfg.controller.clone()),
            slots: Arc::new(tokio::sync::Semaphore::new(workers)),
            workers,
            cfg,
            rank_ms,
            skew,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn controller(&self) -> &LatencyController {
        &self.controller
    }

    /// The request's end-to-end time, for the controller that holds the configured p99.
    pub fn observe_total(&self, total_ms: f64) {
        self.controller.record(total_ms);
    }

    /// Plans the ensemble under what is left of the budget, runs it and combines the scores.
    pub async fn run(
        &self,
        bundle: &Arc<Bundle>,
        ctx: &RequestCtx,
        user: RankUser,
        cands: &[Candidate],
        overrides: &Arc<Overrides>,
        over: &RankingOverride,
    ) -> Ranking {
        let (deadline, explain) = (ctx.deadline, ctx.explain);
        let rc = &self.cfg;
        let rank = &self.registry;
        let remaining_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            * 1e3;
        let slice_ms = (remaining_ms - rc.reserve_ms as f64)
            .min(self.rank_ms as f64)
            .max(0.0);
        let factor = self.controller.factor();
        let encode_ms = rank.encode_cost.predict_ms(cands.len());
        let plan = rank.plan(&PlanRequest {
            candidates: cands.len(),
            segment: segment_for(user.history_len, user.gap_days()),
            budget_ms: ((slice_ms - encode_ms) * factor).max(0.0),
            workers: self.workers,
            max_models: over.max_models.map_or(rc.max_models, |n| n as usize),
            min_diversity: rc.min_diversity,
            only: over.models.as_deref(),
            max_nodes: rc.max_search_nodes,
            mode: over.selection.unwrap_or(rc.selection),
        });
        let strategy = over.strategy.unwrap_or(rc.strategy);
        let limit = (Instant::now() + Duration::from_secs_f64(slice_ms / 1e3)).min(deadline);
        let outcome = self
            .run_members(&plan, bundle, user, cands, overrides, limit)
            .await;
        let mut ens = EnsembleExplain {
            strategy: strategy.as_str().into(),
            budget_ms: (plan.budget_ms * 1e3).round() / 1e3,
            budget_factor: factor,
            segment: Registry::segment_name(plan.segment).into(),
            estimate: plan.estimate,
            predicted_ms: (plan.predicted_ms * 1e3).round() / 1e3,
            search_nodes: plan.nodes,
            exhaustive: plan.exhaustive,
            selected: Vec::new(),
            skipped: plan
                .skipped
                .iter()
                .map(|&(m, why)| SkippedModel {
                    model_id: rank.entries()[m].id().to_string(),
                    reason: why.as_str().into(),
                })
                .collect(),
        };
        let mut out = Ranking::default();
        let mut ok_members = Vec::new();
        let mut ok_scores = Vec::new();
        for (member, result) in plan.members.iter().zip(outcome) {
            let id = rank.entries()[member.index].id().to_string();
            let mut sel = SelectedModel {
                model_id: id.clone(),
                weight: member.weight,
                cost_ms: (member.cost_ms * 1e3).round() / 1e3,
                ..SelectedModel::default()
            };
            match result {
                Ok((s, took)) => {
                    sel.took_ms = Some(ms(took));
                    ok_members.push(member.clone());
                    // Per-item model scores only travel with `explain`.
                    if explain {
                        out.model_scores.push((id, s.clone()));
                    }
                    ok_scores.push(s);
                }
                Err(e) => sel.failed = Some(e),
            }
            ens.selected.push(sel);
        }
        if ok_scores.is_empty() {
            out.ranker = if plan.members.is_empty() {
                "none: no model fits the budget or all are unhealthy".into()
            } else {
                let why: Vec<String> = ens
                    .selected
                    .iter()
                    .map(|s| format!("{}: {}", s.model_id, s.failed.as_deref().unwrap_or("?")))
                    .collect();
                format!("failed: {}", why.join(", "))
            };
        } else {
            let idx: Vec<usize> = ok_members.iter().map(|m| m.index).collect();
            let weights: Vec<f64> = ok_members.iter().map(|m| m.weight).collect();
            let stacker = if strategy == Strategy::Stacking {
                rank.stacker(&idx)
            } else {
                None
            };
            let c = combine(
                strategy,
                &ok_scores,
                &weights,
                stacker.as_ref().map(|(w, _)| w.as_slice()),
                stacker.as_ref().map_or(0.0, |(_, b)| *b),
            );
            out.scores = Some(c.scores);
            out.confidence = c.confidence;
            ens.strategy = c.strategy.as_str().into();
            let ids: Vec<&str> = idx.iter().map(|&m| rank.entries()[m].id()).collect();
            out.ranker = ids.join("+");
        }
        out.ensemble = Some(ens);
        out
    }

    /// Encodes the candidates once, then runs the plan's members concurrently on the rank
    /// slots (each on a blocking thread, panics contained) until `limit`. Returns each member's
    /// scores and run time, or why it gave none; every outcome is recorded in the registry.
    async fn run_members(
        &self,
        plan: &EnsemblePlan,
        bundle: &Arc<Bundle>,
        user: RankUser,
        cands: &[Candidate],
        overrides: &Arc<Overrides>,
        limit: Instant,
    ) -> Vec<Scored> {
        let n = cands.len();
        if plan.members.is_empty() {
            return Vec::new();
        }
        let sample = self.skew.wants_sample().then(|| self.skew.clone());
        let encode = {
            let (bundle, cands, overrides, slots) = (
                bundle.clone(),
                cands.to_vec(),
                overrides.clone(),
                self.slots.clone(),
            );
            async move {
                // The permit travels with the job: work that overruns keeps its slot until it
                // returns, so hung jobs cannot pile up threads.
                let permit = slots.acquire_owned().await.ok()?;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let t = Instant::now();
                    let mut rows = Vec::new();
                    encode_rows(&bundle.item_table(), &user, &cands, &overrides, &mut rows);
                    let took = t.elapsed();
                    // After the timing: the encode cost model must not learn the sampling.
                    if let Some(skew) = sample {
                        skew.record(&rows, INPUT_DIM);
                    }
                    (rows, took)
                })
                .await
                .ok()
            }
        };
        let rows = match tokio::time::timeout_at(limit.into(), encode).await {
            Ok(Some((rows, took))) => {
                self.registry.encode_cost.observe(n, took);
                Arc::new(rows)
            }
            Ok(None) => return self.fail_all(plan, n, "encoding failed"),
            Err(_) => return self.fail_all(plan, n, "timeout"),
        };
        let mut set: tokio::task::JoinSet<(usize, Scored)> = tokio::task::JoinSet::new();
        for (pos, member) in plan.members.iter().enumerate() {
            let model = self.registry.entries()[member.index].ranker.clone();
            let (rows, slots) = (rows.clone(), self.slots.clone());
            set.spawn(async move {
                let Ok(permit) = slots.acquire_owned().await else {
                    return (pos, Err("rank slots closed".to_string()));
                };
                let job = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let t = Instant::now();
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        score_with(&*model, &rows, n)
                    }));
                    (r, t.elapsed())
                });
                let out = match job.await {
                    Ok((Ok(Ok(s)), took)) if s.len() == n => Ok((s, took)),
                    Ok((Ok(Ok(s)), _)) => Err(format!("{} scores for {n} candidates", s.len())),
                    Ok((Ok(Err(e)), _)) => Err(e.to_string()),
                    Ok((Err(_), _)) => Err("panicked".to_string()),
                    Err(_) => Err("cancelled".to_string()),
                };
                (pos, out)
            });
        }
        let mut out: Vec<Option<Scored>> = vec![None; plan.members.len()];
        // Dropping the set at the deadline abandons the stragglers (a blocking job cannot be
        // cancelled; it finishes in the background on its own slot).
        while let Ok(Some(joined)) = tokio::time::timeout_at(limit.into(), set.join_next()).await {
            if let Ok((pos, r)) = joined {
                out[pos] = Some(r);
            }
        }
        plan.members
            .iter()
            .zip(out)
            .map(|(m, r)| {
                let r = r.unwrap_or_else(|| Err("timeout".to_string()));
                self.registry.record(
                    m.index,
                    n,
                    r.as_ref().map(|(_, took)| *took).map_err(|_| ()),
                );
                r
            })
            .collect()
    }

    fn fail_all(&self, plan: &EnsemblePlan, n: usize, why: &str) -> Vec<Scored> {
        plan.members
            .iter()
            .map(|m| {
                self.registry.record(m.index, n, Err(()));
                Err(why.to_string())
            })
            .collect()
    }
}
