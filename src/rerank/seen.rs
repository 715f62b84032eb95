//! Seen: items the user interacted with (recent history, session) or asked to exclude are dropped.

use super::{Ranked, RerankContext, RerankRule};

pub struct DropSeen;

impl RerankRule for DropSeen {
    fn name(&self) -> &'static str {
        "seen"
    }

    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
        list.retain(|r| !ctx.seen.contains(&r.item));
    }
}
