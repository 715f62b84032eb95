//! The rank stage: which model scores a request. Today it serves one model — the configured one,
//! else the bundle's best by [`selection_key`]. This is the seam where the ensemble with
//! per-request backtracking selection plugs in: it will return several models and a combination.

use std::sync::Arc;

use super::{RankError, Ranker, RankerMetrics, RankersManifest};
use crate::engine::breaker::{Breaker, BreakerConfig};

/// How single models are compared when none is configured: validation AUC first, NDCG@20 to break
/// ties. AUC is computed over every positive–negative pair of the validation set; NDCG@20 over the
/// few hundred label groups is far noisier (on ML-100K the NDCG@20 winner had the worst log-loss
/// and lost to popularity on the holdout, while the AUC winner beat it). The builder's batch
/// recommendations use the same rule, so batch and online agree on the model.
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

/// The models a request is scored with.
pub struct RankPlan {
    pub model: Arc<dyn Ranker>,
    index: usize,
}

pub struct RankStage {
    models: Vec<Arc<dyn Ranker>>,
    breakers: Vec<Breaker>,
    /// Model indices in preference order: the configured one first, then by [`selection_key`].
    order: Vec<usize>,
}

impl RankStage {
    /// `preferred` must name a loaded model when given.
    pub fn new(
        rankers: Vec<(String, Box<dyn Ranker>)>,
        manifest: Option<&RankersManifest>,
        preferred: Option<&str>,
        breaker: BreakerConfig,
    ) -> Result<Self, String> {
        let models: Vec<Arc<dyn Ranker>> = rankers.into_iter().map(|(_, r)| Arc::from(r)).collect();
        let key = |id: &str| {
            manifest
                .and_then(|m| m.rankers.iter().find(|s| s.id == id))
                .map(|s| selection_key(&s.metrics))
                .unwrap_or((f64::NEG_INFINITY, f64::NEG_INFINITY))
        };
        let mut order: Vec<usize> = (0..models.len()).collect();
        order.sort_by(|&a, &b| key_cmp(key(models[b].id()), key(models[a].id())));
        if let Some(id) = preferred {
            let at = models.iter().position(|m| m.id() == id).ok_or_else(|| {
                let have: Vec<&str> = models.iter().map(|m| m.id()).collect();
                format!("ranking.model {id:?} is not in the bundle (it has {have:?})")
            })?;
            order.retain(|&i| i != at);
            order.insert(0, at);
        }
        let breakers = models
            .iter()
            .map(|m| Breaker::new(format!("ranker.{}", m.id()), breaker))
            .collect();
        Ok(Self {
            models,
            breakers,
            order,
        })
    }

    /// The plan for a request: the most preferred model whose breaker lets it run. None when no
    /// model is loaded or all are open (the caller serves retrieval order).
    pub fn plan(&self) -> Option<RankPlan> {
        self.order.iter().find_map(|&i| {
            let b = self.breakers.get(i)?;
            b.allow().then(|| RankPlan {
                model: self.models[i].clone(),
                index: i,
            })
        })
    }

    /// The model a request would get when every breaker is closed.
    pub fn preferred(&self) -> Option<&Arc<dyn Ranker>> {
        self.order.first().and_then(|&i| self.models.get(i))
    }

    /// Reports how a plan's model did (errors, panics and overruns count as failures).
    pub fn record(&self, plan: &RankPlan, ok: bool) {
        if let Some(b) = self.breakers.get(plan.index) {
            b.record(ok);
        }
    }

    pub fn breakers(&self) -> &[Breaker] {
        &self.breakers
    }

    pub fn models(&self) -> &[Arc<dyn Ranker>] {
        &self.models
    }
}

impl RankPlan {
    /// Scores `n` encoded rows with the plan's model (see [`score_with`]).
    pub fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
        score_with(&*self.model, rows, n)
    }

    pub fn model_id(&self) -> &str {
        self.model.id()
    }
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
