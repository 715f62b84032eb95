//! Promoted: promoted items get a configured score multiplier, then the list is re-sorted.

use super::{sort_by_score, PromotedConfig, Ranked, RerankContext, RerankRule};

pub struct PromotedBoost(pub PromotedConfig);

impl RerankRule for PromotedBoost {
    fn name(&self) -> &'static str {
        "promoted"
    }

    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
        let mut any = false;
        for r in list.iter_mut() {
            if ctx.items.facts(r.item).is_some_and(|f| f.promoted) {
                // Scores may be negative logits: dividing moves those up too, as a boost should.
                r.score = if r.score >= 0.0 {
                    r.score * self.0.boost
                } else {
                    r.score / self.0.boost
                };
                r.reasons.push("promoted");
                any = true;
            }
        }
        if any {
            sort_by_score(list);
        }
    }
}
