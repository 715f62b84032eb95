//! Category cap: at most `max_per_category` items of any one category among the first `top_n`.
//! Greedy in score order: an item that would break the cap is deferred to just after the window.
//! When too few items fit under the cap, the window is completed from the deferred ones (the
//! candidates did not allow the cap; serving fewer items would be worse).

use std::collections::HashMap;

use super::{CategoryCapConfig, Ranked, RerankContext, RerankRule};

pub struct CategoryCap(pub CategoryCapConfig);

impl RerankRule for CategoryCap {
    fn name(&self) -> &'static str {
        "category_cap"
    }

    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
        let CategoryCapConfig {
            top_n,
            max_per_category: cap,
        } = self.0;
        let mut counts: HashMap<u32, usize> = HashMap::new();
        let mut window = Vec::with_capacity(top_n);
        let mut deferred = Vec::new();
        let mut rest = Vec::new();
        for mut r in list.drain(..) {
            if window.len() >= top_n {
                rest.push(r);
                continue;
            }
            let cats = ctx.items.facts(r.item).map(|f| f.categories).unwrap_or(&[]);
            if cats
                .iter()
                .all(|c| counts.get(c).copied().unwrap_or(0) < cap)
            {
                for c in cats {
                    *counts.entry(*c).or_default() += 1;
                }
                window.push(r);
            } else {
                r.reasons.push("category_cap");
                deferred.push(r);
            }
        }
        list.extend(window);
        list.extend(deferred);
        list.extend(rest);
    }
}
