//! Category cap: at most `max_per_category` items of any one category among the first `top_n`.
//! Greedy in score order: an item that would break the cap is deferred to just after the window.
//! When too few items fit under the cap, the window is completed from the deferred ones (the
//! candidates did not allow the cap; serving fewer items would be worse). Categories the request
//! filtered to are not capped.

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
            let cats: Vec<u32> = ctx
                .items
                .facts(r.item)
                .map(|f| f.categories)
                .unwrap_or(&[])
                .iter()
                .copied()
                .filter(|&c| ctx.capped(c))
                .collect();
            if cats
                .iter()
                .all(|c| counts.get(c).copied().unwrap_or(0) < cap)
            {
                for c in cats {
                    *counts.entry(c).or_default() += 1;
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::rerank::testutil::Facts;
    use crate::rerank::{ItemFilter, Origin};

    fn run(filter: &ItemFilter) -> Vec<Ranked> {
        // Items 0..6 all in category 0; item 3 also in category 1.
        let facts = Facts(
            (0..6)
                .map(|i| {
                    (
                        false,
                        false,
                        0,
                        if i == 3 { vec![0, 1] } else { vec![0] },
                        0,
                    )
                })
                .collect(),
        );
        let seen = HashSet::new();
        let ctx = RerankContext {
            items: &facts,
            seen: &seen,
            filter,
            now: 0,
            category_cap: None,
        };
        let mut list: Vec<Ranked> = (0..6)
            .map(|i| Ranked::new(i, 10.0 - i as f32, 1, Origin::Retrieval))
            .collect();
        CategoryCap(CategoryCapConfig {
            top_n: 5,
            max_per_category: 2,
        })
        .apply(&ctx, &mut list);
        list
    }

    #[test]
    fn defers_over_the_cap_but_not_for_the_requested_category() {
        let plain = run(&ItemFilter::default());
        assert!(plain[2].reasons.contains(&"category_cap"));
        let only_0 = run(&ItemFilter {
            categories_any: Some(vec![0]),
            ..ItemFilter::default()
        });
        let order: Vec<u32> = only_0.iter().map(|r| r.item).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
        assert!(only_0.iter().all(|r| r.reasons.is_empty()));
    }
}
