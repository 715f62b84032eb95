//! Policy: policy-flagged items are never served (the flag may come from the online store, set
//! after the bundle was built).

use super::{Ranked, RerankContext, RerankRule};

pub struct DropFlagged;

impl RerankRule for DropFlagged {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
        list.retain(|r| ctx.items.facts(r.item).is_some_and(|f| !f.flagged));
    }
}
