//! Collaborative filtering: item→item neighbours from co-occurrence in users' histories, scored by
//! shrunk cosine `co(i,j) / (sqrt(n_i·n_j) + shrink)`; the top `k` per item.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use funnel::sources::cf::CfNeighbors;
use funnel::sources::ScoredItem;

use crate::dataset::UserHistory;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CfConfig {
    pub neighbors: usize,
    /// Only a user's most recent items count, so one heavy user cannot dominate (and cost is bounded).
    pub max_history: usize,
    pub shrink: f32,
}
const fn d_k() -> usize {
    100
}
const fn d_hist() -> usize {
    200
}
const fn d_shrink() -> f32 {
    5.0
}
impl Default for CfConfig {
    fn default() -> Self {
        Self {
            neighbors: d_k(),
            max_history: d_hist(),
            shrink: d_shrink(),
        }
    }
}

pub fn build(n_items: usize, hist: &UserHistory, cfg: &CfConfig) -> CfNeighbors {
    // Distinct recent items per user.
    let user_items: Vec<Vec<u32>> = (0..hist.n_users() as u32)
        .into_par_iter()
        .map(|u| {
            let mut v = hist.recent_distinct(u, cfg.max_history);
            v.sort_unstable();
            v
        })
        .collect();
    // Inverted lists item → users, and item counts.
    let mut item_users: Vec<Vec<u32>> = vec![Vec::new(); n_items];
    for (u, items) in user_items.iter().enumerate() {
        for &i in items {
            item_users[i as usize].push(u as u32);
        }
    }
    let counts: Vec<f32> = item_users.iter().map(|u| u.len() as f32).collect();
    let lists: Vec<Vec<ScoredItem>> = (0..n_items)
        .into_par_iter()
        .map_init(
            || (vec![0f32; n_items], Vec::<u32>::new()),
            |(acc, touched), i| {
                for &u in &item_users[i] {
                    for &j in &user_items[u as usize] {
                        if j as usize == i {
                            continue;
                        }
                        if acc[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        acc[j as usize] += 1.0;
                    }
                }
                let ni = counts[i];
                let scored = touched.drain(..).map(|j| {
                    let co = std::mem::take(&mut acc[j as usize]);
                    ScoredItem {
                        item: j,
                        score: co / ((ni * counts[j as usize]).sqrt() + cfg.shrink),
                    }
                });
                top_k(scored, cfg.neighbors)
            },
        )
        .collect();
    CfNeighbors::from_lists(lists)
}

fn top_k(it: impl Iterator<Item = ScoredItem>, k: usize) -> Vec<ScoredItem> {
    let mut v: Vec<ScoredItem> = it.collect();
    if v.len() > k {
        v.select_nth_unstable_by(k, |a, b| {
            b.score.total_cmp(&a.score).then(a.item.cmp(&b.item))
        });
        v.truncate(k);
    }
    v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
    v
}
