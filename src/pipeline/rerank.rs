//! The re-rank stage: the business rules (category cap, freshness, policy, promotion) over the
//! scored list, in configured order, then the cut to k.

use super::item_features::{ItemView, Overrides};
use super::query::QueryState;
use crate::bundle::Bundle;
use crate::merge::Candidate;
use crate::rerank::{
    apply_all, sort_by_score, CategoryCapConfig, Origin, Ranked, RerankConfig, RerankContext,
    RerankRule,
};

pub struct RerankStage {
    rules: Vec<Box<dyn RerankRule>>,
    category_cap: Option<CategoryCapConfig>,
}

impl RerankStage {
    pub fn new(cfg: &RerankConfig) -> Self {
        RerankStage {
            rules: cfg.build(),
            category_cap: cfg.active_cap(),
        }
    }

    /// The top `k` of the candidates by `scores`, after every rule.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        bundle: &Bundle,
        cands: &[Candidate],
        origins: &[Origin],
        scores: &[f32],
        overrides: &Overrides,
        q: &QueryState,
        now: i64,
        k: usize,
    ) -> Vec<Ranked> {
        let mut list: Vec<Ranked> = cands
            .iter()
            .zip(origins)
            .zip(scores)
            .map(|((c, &o), &s)| Ranked::new(c.item, s, c.source_mask, o))
            .collect();
        sort_by_score(&mut list);
        let view = ItemView { bundle, overrides };
        let ctx = RerankContext {
            items: &view,
            seen: &q.seen,
            filter: &q.filter,
            now,
            category_cap: self.category_cap,
        };
        apply_all(&self.rules, &ctx, &mut list);
        list.truncate(k);
        list
    }
}
