//! Freshness floor: at least `min_fresh` items published within `window_days` among the first
//! `top_n`, when the list has them. The best fresh items from below the window replace the
//! lowest non-fresh ones in it, never breaking the category cap in force.

use std::collections::HashMap;

use super::{FreshnessConfig, Ranked, RerankContext, RerankRule};

/// Published within `window_days` before `now` (future-dated items are not fresh: not yet out).
pub fn is_fresh(published_at: i64, now: i64, window_days: f64) -> bool {
    let age = now.saturating_sub(published_at);
    age >= 0 && (age as f64) <= window_days * 86_400.0
}

pub struct FreshnessFloor(pub FreshnessConfig);

impl RerankRule for FreshnessFloor {
    fn name(&self) -> &'static str {
        "freshness"
    }

    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
        let cfg = self.0;
        let top = cfg.top_n.min(list.len());
        let fresh = |r: &Ranked| {
            ctx.items
                .facts(r.item)
                .is_some_and(|f| is_fresh(f.published_at, ctx.now, cfg.window_days))
        };
        let cats = |r: &Ranked| -> Vec<u32> {
            ctx.items
                .facts(r.item)
                .map(|f| {
                    f.categories
                        .iter()
                        .copied()
                        .filter(|&c| ctx.capped(c))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut have = list[..top].iter().filter(|r| fresh(r)).count();
        if have >= cfg.min_fresh {
            return;
        }
        // Category counts of the window, to keep the cap (when it applies to this window).
        let cap = ctx.category_cap.filter(|c| c.top_n >= top);
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for r in &list[..top] {
            for c in cats(r) {
                *counts.entry(c).or_default() += 1;
            }
        }
        let mut j = top;
        while have < cfg.min_fresh && j < list.len() {
            if !fresh(&list[j]) {
                j += 1;
                continue;
            }
            let newcomer = cats(&list[j]);
            // The lowest non-fresh window item whose replacement keeps the cap.
            let victim = (0..top).rev().find(|&v| {
                if fresh(&list[v]) {
                    return false;
                }
                let Some(cap) = cap else { return true };
                let out = cats(&list[v]);
                newcomer.iter().all(|c| {
                    let now_in = counts.get(c).copied().unwrap_or(0);
                    let after = now_in + 1 - usize::from(out.contains(c));
                    after <= cap.max_per_category
                })
            });
            let Some(v) = victim else {
                j += 1;
                continue;
            };
            for c in cats(&list[v]) {
                if let Some(n) = counts.get_mut(&c) {
                    *n = n.saturating_sub(1);
                }
            }
            for c in &newcomer {
                *counts.entry(*c).or_default() += 1;
            }
            let mut item = list.remove(j);
            item.reasons.push("freshness");
            let displaced = std::mem::replace(&mut list[v], item);
            // The displaced item leads what follows the window.
            list.insert(top, displaced);
            have += 1;
            j += 1;
        }
    }
}
