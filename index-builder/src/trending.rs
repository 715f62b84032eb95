//! Trending and popularity as of the cutoff: popularity is total interaction weight; trending is
//! time-decayed engagement (half-life configurable) normalised per day, boosted for fresh items.

use serde::{Deserialize, Serialize};

use funnel::catalog::Catalog;
use funnel::sources::trending::TrendingList;
use funnel::sources::ScoredItem;

use crate::dataset::Event;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrendingConfig {
    pub half_life_hours: f64,
    /// Items published within this many days count as fresh.
    pub fresh_days: f64,
    /// Extra weight for a brand-new item (decays with age over `fresh_days`).
    pub fresh_boost: f32,
    /// Length of the trending list kept in the bundle.
    pub keep: usize,
}
const fn d_half() -> f64 {
    72.0
}
const fn d_fresh() -> f64 {
    7.0
}
const fn d_boost() -> f32 {
    1.0
}
const fn d_keep() -> usize {
    2000
}
impl Default for TrendingConfig {
    fn default() -> Self {
        Self {
            half_life_hours: d_half(),
            fresh_days: d_fresh(),
            fresh_boost: d_boost(),
            keep: d_keep(),
        }
    }
}

pub struct Trending {
    /// Per item: decayed engagement velocity × freshness boost (0 when none recently).
    pub score: Vec<f32>,
    /// Per item: total interaction weight (popularity).
    pub popularity: Vec<f32>,
    pub list: TrendingList,
}

pub fn build(catalog: &Catalog, events: &[Event], cutoff: i64, cfg: &TrendingConfig) -> Trending {
    let n = catalog.len();
    let mut velocity = vec![0f64; n];
    let mut popularity = vec![0f32; n];
    let half = cfg.half_life_hours.max(0.01) * 3600.0;
    let horizon = half * 10.0;
    for e in events {
        popularity[e.item as usize] += e.weight;
        let age = (cutoff - e.ts) as f64;
        if (0.0..horizon).contains(&age) {
            velocity[e.item as usize] +=
                e.weight as f64 * (-(age / half) * std::f64::consts::LN_2).exp();
        }
    }
    let score: Vec<f32> = catalog
        .items
        .iter()
        .zip(&velocity)
        .map(|(item, &v)| {
            if item.flagged {
                return 0.0;
            }
            let age_days = ((cutoff - item.published_at) as f64 / 86_400.0).max(0.0);
            let fresh = (-age_days / cfg.fresh_days.max(0.01)).exp() as f32;
            // Per day of half-life so the scale does not depend on the configuration.
            (v / (half / 86_400.0)) as f32 * (1.0 + cfg.fresh_boost * fresh)
        })
        .collect();
    let mut items: Vec<ScoredItem> = score
        .iter()
        .enumerate()
        .filter(|(_, &s)| s > 0.0)
        .map(|(i, &s)| ScoredItem {
            item: i as u32,
            score: s,
        })
        .collect();
    items.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
    items.truncate(cfg.keep);
    Trending {
        score,
        popularity,
        list: TrendingList::new(items),
    }
}
