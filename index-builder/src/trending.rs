//! Trending and popularity as of the cutoff: popularity is total interaction weight; trending is
//! time-decayed engagement (half-life configurable) normalised per day, boosted for fresh items.

use serde::{Deserialize, Serialize};

use funnel::catalog::Catalog;
use funnel::sources::trending::TrendingList;
use funnel::sources::ScoredItem;

use crate::dataset::Event;
use funnel::ranking::input::ENGAGEMENT_HALF_LIVES_DAYS;

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
    /// Per [`ENGAGEMENT_HALF_LIVES_DAYS`] horizon and item: interaction weight per day, decayed
    /// with that half-life (flagged items included: they are filtered, not unpopular).
    pub engagement: [Vec<f32>; ENGAGEMENT_HALF_LIVES_DAYS.len()],
    pub list: TrendingList,
}

pub fn build(catalog: &Catalog, events: &[Event], cutoff: i64, cfg: &TrendingConfig) -> Trending {
    let n = catalog.len();
    let mut velocity = vec![0f64; n];
    let mut popularity = vec![0f32; n];
    let half = cfg.half_life_hours.max(0.01) * 3600.0;
    let horizon = half * 10.0;
    let halves = ENGAGEMENT_HALF_LIVES_DAYS.map(|d| d as f64 * 86_400.0);
    let mut engaged: [Vec<f64>; ENGAGEMENT_HALF_LIVES_DAYS.len()] =
        std::array::from_fn(|_| vec![0f64; n]);
    for e in events {
        popularity[e.item as usize] += e.weight;
        let age = (cutoff - e.ts).max(0) as f64;
        for (h, acc) in halves.iter().zip(&mut engaged) {
            acc[e.item as usize] += e.weight as f64 * (-(age / h) * std::f64::consts::LN_2).exp();
        }
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
    // Per day, like trending, so the scale does not depend on the half-life.
    let engagement = std::array::from_fn(|k| {
        let days = halves[k] / 86_400.0;
        engaged[k].iter().map(|&v| (v / days) as f32).collect()
    });
    Trending {
        score,
        popularity,
        engagement,
        list: TrendingList::new(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::tests::item;

    #[test]
    fn engagement_is_a_decayed_rate_per_day_for_each_horizon() {
        let catalog = Catalog::new(
            vec![item(1, vec![0], 0), item(2, vec![0], 0)],
            vec!["a".into()],
        );
        let day = 86_400;
        let cutoff = 100 * day;
        let ev = |item, ago: i64, weight| Event {
            user: 0,
            item,
            ts: cutoff - ago * day,
            weight,
        };
        // Item 0: weight 2 now and weight 1 a week ago; item 1: weight 4 four weeks ago.
        let events = [ev(1, 28, 4.0), ev(0, 7, 1.0), ev(0, 0, 2.0)];
        let t = build(&catalog, &events, cutoff, &TrendingConfig::default());
        let [week, month] = &t.engagement;
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        assert!(close(week[0], (2.0 + 0.5) / 7.0), "{}", week[0]);
        assert!(close(month[0], (2.0 + 0.5f32.powf(0.25)) / 28.0));
        assert!(close(week[1], 4.0 * 0.0625 / 7.0));
        assert!(close(month[1], 2.0 / 28.0));
        // The month horizon remembers item 1 better than the week does.
        assert!(month[1] / month[0] > week[1] / week[0]);
        assert_eq!(t.popularity, vec![3.0, 4.0]);
    }
}
