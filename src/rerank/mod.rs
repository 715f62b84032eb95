//! Re-rank: the last stage, owning the business rules applied to the ranked list — policy, seen
//! items, the request's filters, promotion, the per-category cap and the freshness floor. Each
//! rule is one [`RerankRule`] in its own file; the config orders them. The hard rules (policy, seen,
//! filters) are mandatory so that no configuration can serve a flagged, seen or filtered-out item.

pub mod category_cap;
pub mod filters;
pub mod freshness;
pub mod policy;
pub mod promoted;
pub mod seen;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub use self::filters::ItemFilter;
use crate::ItemIdx;

/// Where a listed item came from, beyond the candidate sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// Proposed by the candidate sources (see `source_mask`).
    #[default]
    Retrieval,
    /// The user's nightly batch list (fallback).
    Batch,
    /// Global popularity (cold start fill or fallback).
    Popularity,
}

/// One entry of the list being re-ranked.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub item: ItemIdx,
    pub score: f32,
    pub source_mask: u8,
    pub origin: Origin,
    /// Why the item is where it is (for `explain`).
    pub reasons: Vec<&'static str>,
}

impl Ranked {
    pub fn new(item: ItemIdx, score: f32, source_mask: u8, origin: Origin) -> Self {
        Self {
            item,
            score,
            source_mask,
            origin,
            reasons: Vec::new(),
        }
    }
}

/// What the rules need to know about an item, after online overrides (a flag set in the
/// feature store wins over the bundle's).
#[derive(Debug, Clone, Copy)]
pub struct ItemFacts<'a> {
    pub flagged: bool,
    pub promoted: bool,
    pub published_at: i64,
    pub categories: &'a [u32],
    pub creator_id: u64,
}

/// Item facts by index; `None` for an index the bundle does not know (never served).
pub trait ItemFactsSource: Sync {
    fn facts(&self, item: ItemIdx) -> Option<ItemFacts<'_>>;
}

/// Per-request inputs of the rules.
pub struct RerankContext<'a> {
    pub items: &'a dyn ItemFactsSource,
    /// Items the user has seen or asked to exclude.
    pub seen: &'a HashSet<ItemIdx>,
    pub filter: &'a ItemFilter,
    /// Unix seconds "now" for freshness.
    pub now: i64,
    /// The category cap in force, so that later rules (freshness) can keep it.
    pub category_cap: Option<CategoryCapConfig>,
}

impl RerankContext<'_> {
    /// Whether the category cap counts category `c`: not when the request asked for it
    /// (`categories_any`), since "only comedies" cannot also mean "at most 3 comedies".
    pub fn capped(&self, c: u32) -> bool {
        self.filter
            .categories_any
            .as_ref()
            .is_none_or(|only| !only.contains(&c))
    }

    /// True when the hard rules (policy, seen, filters) let `item` be served.
    pub fn servable(&self, item: ItemIdx) -> bool {
        match self.items.facts(item) {
            Some(f) => !f.flagged && !self.seen.contains(&item) && self.filter.allows(&f),
            None => false,
        }
    }
}

/// One re-rank rule. `list` arrives ordered best first and must leave ordered as served.
pub trait RerankRule: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    Policy,
    Seen,
    Filters,
    Promoted,
    CategoryCap,
    Freshness,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CategoryCapConfig {
    /// The window the cap applies to (the first `top_n` positions).
    pub top_n: usize,
    pub max_per_category: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreshnessConfig {
    pub top_n: usize,
    /// At least this many fresh items in the window, when that many exist.
    pub min_fresh: usize,
    /// An item is fresh when published within this many days of "now".
    pub window_days: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromotedConfig {
    /// Score multiplier of promoted items.
    pub boost: f32,
}

const fn d_top() -> usize {
    10
}
const fn d_cap() -> usize {
    3
}
const fn d_min_fresh() -> usize {
    2
}
const fn d_window() -> f64 {
    14.0
}
const fn d_boost() -> f32 {
    1.2
}
fn d_order() -> Vec<RuleName> {
    vec![
        RuleName::Policy,
        RuleName::Seen,
        RuleName::Filters,
        RuleName::Promoted,
        RuleName::CategoryCap,
        RuleName::Freshness,
    ]
}

impl Default for CategoryCapConfig {
    fn default() -> Self {
        Self {
            top_n: d_top(),
            max_per_category: d_cap(),
        }
    }
}
impl Default for FreshnessConfig {
    fn default() -> Self {
        Self {
            top_n: d_top(),
            min_fresh: d_min_fresh(),
            window_days: d_window(),
        }
    }
}
impl Default for PromotedConfig {
    fn default() -> Self {
        Self { boost: d_boost() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankConfig {
    /// Rules in the order they run. `policy`, `seen` and `filters` are mandatory.
    pub order: Vec<RuleName>,
    pub category_cap: CategoryCapConfig,
    pub freshness: FreshnessConfig,
    pub promoted: PromotedConfig,
}

impl Default for RerankConfig {
    fn default() -> Self {
        Self {
            order: d_order(),
            category_cap: CategoryCapConfig::default(),
            freshness: FreshnessConfig::default(),
            promoted: PromotedConfig::default(),
        }
    }
}

impl RerankConfig {
    pub fn validate(&self) -> Result<(), String> {
        for must in [RuleName::Policy, RuleName::Seen, RuleName::Filters] {
            if !self.order.contains(&must) {
                return Err(format!(
                    "rerank.order must contain {:?} (it keeps forbidden items out)",
                    serde_json::to_value(must)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ));
            }
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.order.iter().find(|r| !seen.insert(**r)) {
            return Err(format!("rerank.order lists {dup:?} twice"));
        }
        let c = &self.category_cap;
        if c.top_n == 0 || c.max_per_category == 0 {
            return Err("rerank.category_cap: top_n and max_per_category must be >= 1".into());
        }
        let f = &self.freshness;
        if f.top_n == 0 || f.min_fresh > f.top_n {
            return Err("rerank.freshness: need top_n >= 1 and min_fresh <= top_n".into());
        }
        if !(f.window_days.is_finite() && f.window_days > 0.0) {
            return Err("rerank.freshness.window_days must be > 0".into());
        }
        let b = self.promoted.boost;
        if !(b.is_finite() && b > 0.0) {
            return Err("rerank.promoted.boost must be a finite number > 0".into());
        }
        Ok(())
    }

    /// The configured rules, in order.
    pub fn build(&self) -> Vec<Box<dyn RerankRule>> {
        self.order
            .iter()
            .map(|r| -> Box<dyn RerankRule> {
                match r {
                    RuleName::Policy => Box::new(policy::DropFlagged),
                    RuleName::Seen => Box::new(seen::DropSeen),
                    RuleName::Filters => Box::new(filters::ApplyFilters),
                    RuleName::Promoted => Box::new(promoted::PromotedBoost(self.promoted)),
                    RuleName::CategoryCap => Box::new(category_cap::CategoryCap(self.category_cap)),
                    RuleName::Freshness => Box::new(freshness::FreshnessFloor(self.freshness)),
                }
            })
            .collect()
    }

    /// The cap later rules must keep, when the cap rule is configured.
    pub fn active_cap(&self) -> Option<CategoryCapConfig> {
        self.order
            .contains(&RuleName::CategoryCap)
            .then_some(self.category_cap)
    }
}

/// Runs `rules` in order.
pub fn apply_all(rules: &[Box<dyn RerankRule>], ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
    for r in rules {
        r.apply(ctx, list);
    }
}

/// Sorts best first; ties keep their order (stable).
pub(crate) fn sort_by_score(list: &mut [Ranked]) {
    list.sort_by(|a, b| b.score.total_cmp(&a.score));
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A catalog of facts for tests.
    pub struct Facts(pub Vec<(bool, bool, i64, Vec<u32>, u64)>);

    impl ItemFactsSource for Facts {
        fn facts(&self, item: ItemIdx) -> Option<ItemFacts<'_>> {
            self.0
                .get(item as usize)
                .map(
                    |(flagged, promoted, published_at, cats, creator)| ItemFacts {
                        flagged: *flagged,
                        promoted: *promoted,
                        published_at: *published_at,
                        categories: cats,
                        creator_id: *creator,
                    },
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::Facts;
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;

    /// (item facts, seen items, listed items, category filter).
    type Case = (
        Vec<(bool, bool, i64, Vec<u32>, u64)>,
        Vec<u32>,
        Vec<u32>,
        Option<u32>,
    );

    fn arb_case() -> impl Strategy<Value = Case> {
        let item = (
            proptest::bool::weighted(0.15),
            proptest::bool::weighted(0.1),
            0i64..60,
            proptest::collection::vec(0u32..6, 0..3),
            0u64..5,
        )
            .prop_map(|(f, p, age, cats, cr)| (f, p, NOW - age * DAY, cats, cr));
        (
            proptest::collection::vec(item, 1..80),
            proptest::collection::vec(0u32..80, 0..20),
            proptest::collection::vec(0u32..80, 0..80),
            proptest::option::of(0u32..6),
        )
    }

    proptest! {
        /// Whatever the order of the optional rules, no flagged, seen or filtered-out item survives,
        /// every surviving item is unique, and nothing servable is lost.
        #[test]
        fn hard_rules_always_hold((facts, seen, listed, only_cat) in arb_case(), shuffle in any::<u64>()) {
            let facts = Facts(facts);
            let seen: HashSet<u32> = seen.into_iter().collect();
            let mut uniq = HashSet::new();
            let mut list: Vec<Ranked> = listed.into_iter().filter(|i| (*i as usize) < facts.0.len() && uniq.insert(*i))
                .enumerate().map(|(r, i)| Ranked::new(i, 100.0 - r as f32, 1, Origin::Retrieval)).collect();
            let filter = ItemFilter { categories_any: only_cat.map(|c| vec![c]), ..ItemFilter::default() };
            let mut cfg = RerankConfig::default();
            // Rotate the order: rules must hold in any order.
            let n = cfg.order.len();
            cfg.order.rotate_left((shuffle as usize) % n);
            let ctx = RerankContext { items: &facts, seen: &seen, filter: &filter, now: NOW, category_cap: cfg.active_cap() };
            let servable: HashSet<u32> = list.iter().map(|r| r.item).filter(|&i| ctx.servable(i)).collect();
            apply_all(&cfg.build(), &ctx, &mut list);
            let mut out = HashSet::new();
            for r in &list {
                let f = facts.facts(r.item).unwrap();
                prop_assert!(!f.flagged);
                prop_assert!(!seen.contains(&r.item));
                if let Some(c) = only_cat { prop_assert!(f.categories.contains(&c)); }
                prop_assert!(out.insert(r.item));
            }
            prop_assert_eq!(out, servable);
        }

        /// With the default order, the category cap holds in the top window whenever greedy
        /// selection can fill it (always possible when items have one category and enough exist).
        #[test]
        fn category_cap_holds_when_candidates_allow((facts, _seen, listed, _c) in arb_case()) {
            let facts = Facts(facts.into_iter().map(|(_, p, t, c, cr)| (false, p, t, c.into_iter().take(1).collect(), cr)).collect());
            let seen = HashSet::new();
            let mut uniq = HashSet::new();
            let mut list: Vec<Ranked> = listed.into_iter().filter(|i| (*i as usize) < facts.0.len() && uniq.insert(*i))
                .enumerate().map(|(r, i)| Ranked::new(i, 100.0 - r as f32, 1, Origin::Retrieval)).collect();
            let cfg = RerankConfig::default();
            let cap = cfg.category_cap;
            // Feasible iff enough items fit under the cap: per category min(count, cap), plus uncategorised.
            let mut per_cat = std::collections::HashMap::<u32, usize>::new();
            let mut free = 0;
            for r in &list {
                match facts.facts(r.item).unwrap().categories.first() {
                    Some(c) => *per_cat.entry(*c).or_default() += 1,
                    None => free += 1,
                }
            }
            let fillable = free + per_cat.values().map(|&n| n.min(cap.max_per_category)).sum::<usize>();
            let ctx = RerankContext { items: &facts, seen: &seen, filter: &ItemFilter::default(), now: NOW, category_cap: cfg.active_cap() };
            apply_all(&cfg.build(), &ctx, &mut list);
            if fillable >= cap.top_n.min(list.len()) {
                let mut counts = std::collections::HashMap::<u32, usize>::new();
                for r in list.iter().take(cap.top_n) {
                    for c in facts.facts(r.item).unwrap().categories {
                        *counts.entry(*c).or_default() += 1;
                    }
                }
                prop_assert!(counts.values().all(|&n| n <= cap.max_per_category), "{counts:?}");
            }
        }

        /// The freshness floor holds when enough fresh items exist and the cap does not forbid it.
        #[test]
        fn freshness_floor_holds((facts, _s, listed, _c) in arb_case()) {
            let facts = Facts(facts.into_iter().map(|(_, p, t, _, cr)| (false, p, t, vec![], cr)).collect());
            let seen = HashSet::new();
            let mut uniq = HashSet::new();
            let mut list: Vec<Ranked> = listed.into_iter().filter(|i| (*i as usize) < facts.0.len() && uniq.insert(*i))
                .enumerate().map(|(r, i)| Ranked::new(i, 100.0 - r as f32, 1, Origin::Retrieval)).collect();
            let cfg = RerankConfig::default();
            let f = cfg.freshness;
            let is_fresh = |i: u32| freshness::is_fresh(facts.facts(i).unwrap().published_at, NOW, f.window_days);
            let total_fresh = list.iter().filter(|r| is_fresh(r.item)).count();
            let ctx = RerankContext { items: &facts, seen: &seen, filter: &ItemFilter::default(), now: NOW, category_cap: cfg.active_cap() };
            apply_all(&cfg.build(), &ctx, &mut list);
            let in_top = list.iter().take(f.top_n).filter(|r| is_fresh(r.item)).count();
            prop_assert!(in_top >= f.min_fresh.min(total_fresh).min(list.len().min(f.top_n)));
        }
    }

    #[test]
    fn config_refuses_dropping_a_hard_rule() {
        let cfg = RerankConfig {
            order: vec![RuleName::Seen, RuleName::Filters],
            ..RerankConfig::default()
        };
        assert!(cfg.validate().unwrap_err().contains("policy"));
    }
}
