//! The online funnel as stages, in the order data flows: request context → user features ∥
//! retrieval → merge → fallback fill → item features → rank → re-rank → response. Each stage is
//! one struct that owns its state and its slice of the config; [`Pipeline::run`] is that list.
//!
//! Sources that need no user (trending) start at once, concurrently with the feature fetch; the
//! others start the moment the features land (they are the query). Sources and ranking run off
//! the async reactor, bounded, each under its own time slice of the request budget. What fails or
//! is late is left out, and the response's `degradation` says how far down the fallback chain
//! the answer came from.

pub mod context;
pub mod fallback;
pub mod features;
pub mod item_features;
pub mod merge;
pub mod query;
pub mod rank;
pub mod report;
pub mod rerank;
pub mod response;
pub mod retrieval;

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::api::{ApiError, Degradation, Explain, RecommendResponse, Timings, ValidRequest};
use crate::bundle::Bundle;
use crate::features::online::UserFeatures;
use crate::observe::metrics::{Metrics, RunSummary};
use crate::ranking::encode::RankUser;

use self::context::{RequestCtx, RequestStage};
use self::fallback::FallbackStage;
use self::features::FeatureStage;
use self::item_features::ItemFeatureStage;
use self::merge::MergeStage;
use self::query::{query_state, QueryState};
use self::rank::RankStage;
use self::report::Reports;
use self::rerank::RerankStage;
use self::retrieval::{Phase, SourceSet};

/// What an experiment arm changes in the stages for its requests: the sources' quotas and the
/// re-rank rules (its ensemble override travels in the request's `ranking`).
#[derive(Default)]
pub struct ArmPlan {
    pub quotas: Option<crate::sources::SourceQuotas>,
    pub rerank: Option<RerankStage>,
}

/// The stages, wired to one bundle.
pub struct Pipeline {
    pub bundle: Arc<Bundle>,
    pub context: RequestStage,
    pub features: FeatureStage,
    pub retrieval: SourceSet,
    /// Weight of the session's mean embedding in the ANN query.
    pub session_blend: f32,
    pub merge: MergeStage,
    pub fallback: FallbackStage,
    pub items: ItemFeatureStage,
    pub rank: RankStage,
    pub rerank: RerankStage,
    /// Each run's stages, sources, degradation and ensemble are recorded here.
    pub metrics: Arc<Metrics>,
}

impl Pipeline {
    /// Runs the funnel for one request.
    pub async fn run(
        &self,
        req: ValidRequest,
        request_id: String,
    ) -> Result<RecommendResponse, ApiError> {
        self.run_since(req, request_id, Instant::now()).await
    }

    /// [`Self::run`] for a request that arrived at `t0` (before waiting for admission): its
    /// deadline and total time count from then.
    pub async fn run_since(
        &self,
        req: ValidRequest,
        request_id: String,
        t0: Instant,
    ) -> Result<RecommendResponse, ApiError> {
        self.run_recorded(req, request_id, t0, true, None).await
    }

    /// [`Self::run_since`] with an experiment arm's changes to the stages.
    pub async fn run_arm(
        &self,
        req: ValidRequest,
        request_id: String,
        t0: Instant,
        plan: Option<&ArmPlan>,
    ) -> Result<RecommendResponse, ApiError> {
        self.run_recorded(req, request_id, t0, true, plan).await
    }

    /// A shadow run (an experiment's shadow arm): the same funnel, but neither the metrics nor
    /// the latency controller see it — it must not move what the served traffic is judged by.
    pub async fn run_shadow(
        &self,
        req: ValidRequest,
        request_id: String,
        plan: Option<&ArmPlan>,
    ) -> Result<RecommendResponse, ApiError> {
        self.run_recorded(req, request_id, Instant::now(), false, plan)
            .await
    }

    async fn run_recorded(
        &self,
        req: ValidRequest,
        request_id: String,
        t0: Instant,
        record: bool,
        plan: Option<&ArmPlan>,
    ) -> Result<RecommendResponse, ApiError> {
        let b = &self.bundle;
        let quotas = plan.and_then(|p| p.quotas.as_ref());
        let rerank = plan.and_then(|p| p.rerank.as_ref()).unwrap_or(&self.rerank);
        let mut rep = Reports::default();
        let ctx = self.context.resolve(b, &req, t0)?;

        // User features ∥ retrieval: what needs no user is launched before the fetch.
        let t_sources = Instant::now();
        let mut jobs =
            self.retrieval
                .launch_with(Phase::WithoutUser, b, &self.query(&ctx, None), quotas);
        let t = Instant::now();
        let user = self
            .features
            .fetch(b, ctx.user_id)
            .instrument(tracing::info_span!("features"))
            .await;
        let found = usize::from(user.features.is_some());
        let features_ms = rep.stage("features", t, usize::from(ctx.user_id.is_some()), found);
        let q = self.query(&ctx, user.features.as_ref());
        jobs.extend(self.retrieval.launch_with(Phase::WithUser, b, &q, quotas));
        let launched = jobs.len();
        let got = self
            .retrieval
            .collect(jobs, ctx.deadline)
            .instrument(tracing::info_span!("retrieval", launched))
            .await;
        let retrieved = got.items();
        rep.stage("retrieval", t_sources, launched, retrieved);
        let mut explain = Explain {
            user_known: user.features.as_ref().is_some_and(UserFeatures::from_build),
            history_len: user.features.as_ref().map_or(0, |f| f.history_len),
            now: ctx.now,
            per_source: got.counts,
            source_problems: got.problems,
            ..Explain::default()
        };

        let t = Instant::now();
        let merged = self.merge.run(&got.per_source);
        let merge_ms = rep.stage("merge", t, retrieved, merged.len());
        let (t, n_merged) = (Instant::now(), merged.len());
        let cands = self
            .fallback
            .fill(b, merged, user.features.as_ref(), &q, ctx.k);
        let fill_ms = rep.stage("fallback", t, n_merged, cands.list.len());
        explain.candidates = cands.list.len();

        let t = Instant::now();
        let (overrides, items_stale) = self
            .items
            .fetch(b, &cands.list, ctx.deadline)
            .instrument(tracing::info_span!("item_features"))
            .await;
        let items_ms = rep.stage("item_features", t, cands.list.len(), overrides.len());
        let mut level = if user.stale || items_stale {
            Degradation::StaleFeatures
        } else {
            Degradation::Full
        };
        if let Some(backup) = cands.backup {
            level = level.max(backup.degradation());
        }

        // Retrieval candidates go through the ensemble; backup lists keep their own order.
        let t = Instant::now();
        let overrides = Arc::new(overrides);
        let (f, over) = (user.features.as_ref(), &req.ranking);
        let ranked = if level <= Degradation::StaleFeatures {
            // The encoder's view of the user: features, device, session, recent items.
            let has_session = !ctx.session.is_empty();
            let who = RankUser::from_features(
                &b.catalog,
                &b.category_prior,
                f,
                ctx.device,
                has_session,
                ctx.now,
                &q.recent,
            );
            let span = tracing::info_span!("rank", candidates = cands.list.len());
            Some(
                self.rank
                    .run(b, &ctx, who, &cands.list, &overrides, over)
                    .instrument(span)
                    .await,
            )
        } else {
            None
        };
        let (mut scores, mut confidence, mut model_scores) = (None, Vec::new(), Vec::new());
        if let Some(r) = ranked {
            if r.scores.is_none() {
                level = level.max(Degradation::SimpleRanking);
            }
            (scores, confidence, model_scores) = (r.scores, r.confidence, r.model_scores);
            (explain.ranker, explain.ensemble) = (Some(r.ranker), r.ensemble);
        }
        let scored = scores.as_ref().map_or(0, Vec::len);
        let scores = scores.unwrap_or_else(|| cands.list.iter().map(|c| c.score).collect());
        let rank_ms = rep.stage("rank", t, cands.list.len(), scored);

        let t = Instant::now();
        let (c, o) = (&cands.list, &cands.origins);
        let list = rerank.run(b, c, o, &scores, &overrides, &q, ctx.now, ctx.k);
        let rerank_ms = rep.stage("rerank", t, c.len(), list.len());
        let (t, n_list) = (Instant::now(), list.len());
        let items = response::items(&b.catalog, list, c, &confidence, &model_scores, ctx.explain);
        rep.stage("response", t, n_list, items.len());

        let timings = Timings {
            features: features_ms,
            item_features: items_ms,
            sources: got.ms,
            merge: merge_ms + fill_ms,
            rank: rank_ms,
            rerank: rerank_ms,
            total: report::ms(t0.elapsed()),
        };
        if record {
            self.rank.observe_total(timings.total);
            self.metrics.observe_run(&RunSummary {
                stages: &rep.stages,
                total_ms: timings.total,
                source_ms: &timings.sources,
                per_source: &explain.per_source,
                degradation: level,
                ensemble: explain.ensemble.as_ref(),
            });
        }
        // Info, not warn: under overload every request would say it.
        if Instant::now() > ctx.deadline {
            tracing::info!(
                total_ms = timings.total,
                stages = ?rep.stages.iter().map(|s| (s.stage.as_str(), s.ms)).collect::<Vec<_>>(),
                "request over its budget"
            );
        }
        explain.stages = rep.stages;
        Ok(RecommendResponse {
            request_id,
            bundle_version: b.manifest.version.clone(),
            degradation: level,
            items,
            timings_ms: timings,
            explain: ctx.explain.then_some(explain),
            experiment: None,
        })
    }

    /// The sources' query for this request (`features` None: before they land, or cold).
    fn query(&self, ctx: &RequestCtx, features: Option<&UserFeatures>) -> Arc<QueryState> {
        let (b, filter) = (&self.bundle, ctx.filter.clone());
        Arc::new(query_state(
            b,
            features,
            &ctx.session,
            &ctx.exclude,
            filter,
            self.session_blend,
        ))
    }
}

#[cfg(test)]
mod tests;
