//! Content signals: per-user category preferences (weighted interaction share per category, shrunk
//! toward the global category prior) and per-category item lists ordered by quality for the
//! content source.

use serde::{Deserialize, Serialize};

use funnel::catalog::Catalog;
use funnel::sources::content::CategoryIndex;
use funnel::sources::ScoredItem;

use crate::dataset::UserHistory;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// Pseudo-count of the prior: a user with this much weighted history is half prior, half own.
    pub prior_strength: f32,
}
const fn d_shrink() -> f32 {
    5.0
}
impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            prior_strength: d_shrink(),
        }
    }
}

/// Global category prior: share of interaction weight per category.
pub fn category_prior(catalog: &Catalog, hist: &UserHistory) -> Vec<f32> {
    let n_c = catalog.categories.len();
    let mut w = vec![0f64; n_c];
    for (&i, &wt) in hist.items.iter().zip(&hist.weights) {
        if let Some(item) = catalog.get(i) {
            let k = item.categories.len().max(1) as f64;
            for &c in &item.categories {
                w[c as usize] += wt as f64 / k;
            }
        }
    }
    let total: f64 = w.iter().sum();
    w.into_iter()
        .map(|x| if total > 0.0 { (x / total) as f32 } else { 0.0 })
        .collect()
}

/// Preferences of every user: n_users × n_categories, row-major.
pub fn user_preferences(
    catalog: &Catalog,
    hist: &UserHistory,
    prior: &[f32],
    cfg: &ContentConfig,
) -> Vec<f32> {
    let n_c = prior.len();
    let mut out = vec![0f32; hist.n_users() * n_c];
    for u in 0..hist.n_users() {
        let row = &mut out[u * n_c..(u + 1) * n_c];
        let mut total = 0f32;
        for (&i, &wt) in hist.items(u as u32).iter().zip(hist.weights(u as u32)) {
            if let Some(item) = catalog.get(i) {
                let k = item.categories.len().max(1) as f32;
                for &c in &item.categories {
                    row[c as usize] += wt / k;
                }
                total += wt;
            }
        }
        let s = cfg.prior_strength;
        for (r, p) in row.iter_mut().zip(prior) {
            *r = (*r + s * p) / (total + s);
        }
    }
    out
}

/// Category → items by quality (log popularity scaled to [0, 1]); flagged items are left out.
pub fn category_index(catalog: &Catalog, popularity: &[f32]) -> CategoryIndex {
    let max = popularity
        .iter()
        .copied()
        .fold(0f32, f32::max)
        .ln_1p()
        .max(1e-6);
    let mut lists: Vec<Vec<ScoredItem>> = vec![Vec::new(); catalog.categories.len()];
    for (idx, item) in catalog.items.iter().enumerate() {
        if item.flagged {
            continue;
        }
        let q = popularity.get(idx).copied().unwrap_or(0.0).ln_1p() / max;
        for &c in &item.categories {
            lists[c as usize].push(ScoredItem {
                item: idx as u32,
                score: q,
            });
        }
    }
    CategoryIndex::from_lists(lists)
}
