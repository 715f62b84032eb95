//! Reference recommenders computed on the same split as every other evaluation row, so a bundle
//! says where it stands against algorithms people know: BPR-MF (Rendle et al. 2009) and
//! ItemKNN (cosine item–item neighbours over the whole history, Deshpande & Karypis 2004).
//! Popularity and trending rows come from the stage itself; ALS is the `ann` source row.

use rand::{rngs::StdRng, Rng, SeedableRng};

use funnel::sources::cf::CfNeighbors;
use funnel::{ItemIdx, UserIdx};

use crate::cf::{self, CfConfig};
use crate::dataset::UserHistory;

/// BPR-MF hyperparameters (the common defaults of public BPR implementations).
#[derive(Debug, Clone, Copy)]
pub struct BprConfig {
    pub dim: usize,
    pub epochs: usize,
    pub lr: f32,
    pub reg: f32,
    pub seed: u64,
}

impl Default for BprConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            epochs: 40,
            lr: 0.05,
            reg: 0.0025,
            seed: 7,
        }
    }
}

/// User and item factors trained by SGD on (user, seen item, unseen item) triples.
pub struct Bpr {
    dim: usize,
    users: Vec<f32>,
    items: Vec<f32>,
}

impl Bpr {
    pub fn train(n_items: usize, hist: &UserHistory, cfg: &BprConfig) -> Bpr {
        let (n_u, d) = (hist.n_users(), cfg.dim);
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut init =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-0.05..0.05)).collect() };
        let mut users = init(n_u * d);
        let mut items = init(n_items * d);
        let mut pairs: Vec<(UserIdx, ItemIdx)> = Vec::new();
        let mut seen: Vec<Vec<ItemIdx>> = Vec::with_capacity(n_u);
        for u in 0..n_u as u32 {
            let mut s = hist.items(u).to_vec();
            s.sort_unstable();
            s.dedup();
            pairs.extend(s.iter().map(|&i| (u, i)));
            seen.push(s);
        }
        if pairs.is_empty() || n_items < 2 {
            return Bpr {
                dim: d,
                users,
                items,
            };
        }
        // Bounded work on big logs: at most ~20M updates (40 epochs of ML-100K, 13 of 1.5M).
        let epochs = cfg.epochs.min((20_000_000 / pairs.len()).max(1));
        for _ in 0..epochs {
            for _ in 0..pairs.len() {
                let (u, i) = pairs[rng.gen_range(0..pairs.len())];
                let j = loop {
                    let j = rng.gen_range(0..n_items as u32);
                    if seen[u as usize].binary_search(&j).is_err()
                        || seen[u as usize].len() >= n_items
                    {
                        break j;
                    }
                };
                let (pu, pi, pj) = (u as usize * d, i as usize * d, j as usize * d);
                let x: f32 = (0..d)
                    .map(|k| users[pu + k] * (items[pi + k] - items[pj + k]))
                    .sum();
                // d/dθ ln σ(x) = σ(−x) ∂x/∂θ.
                let g = 1.0 / (1.0 + x.exp());
                for k in 0..d {
                    let (wu, hi, hj) = (users[pu + k], items[pi + k], items[pj + k]);
                    users[pu + k] += cfg.lr * (g * (hi - hj) - cfg.reg * wu);
                    items[pi + k] += cfg.lr * (g * wu - cfg.reg * hi);
                    items[pj + k] += cfg.lr * (-g * wu - cfg.reg * hj);
                }
            }
        }
        Bpr {
            dim: d,
            users,
            items,
        }
    }

    /// The user's top `k` items by predicted preference, among those `allow` passes.
    pub fn recommend(&self, u: UserIdx, k: usize, allow: &dyn Fn(ItemIdx) -> bool) -> Vec<ItemIdx> {
        let d = self.dim;
        let Some(pu) = self.users.get(u as usize * d..(u as usize + 1) * d) else {
            return Vec::new();
        };
        let scores = self
            .items
            .chunks_exact(d)
            .enumerate()
            .filter(|(i, _)| allow(*i as ItemIdx))
            .map(|(i, v)| {
                (
                    i as ItemIdx,
                    pu.iter().zip(v).map(|(a, b)| a * b).sum::<f32>(),
                )
            });
        top(scores, k)
    }
}

/// Classic ItemKNN: cosine neighbours (no shrinkage), every item of the history a seed.
pub struct ItemKnn {
    neighbours: CfNeighbors,
}

impl ItemKnn {
    pub fn build(n_items: usize, hist: &UserHistory) -> ItemKnn {
        let cfg = CfConfig {
            neighbors: 100,
            max_history: usize::MAX,
            shrink: 0.0,
        };
        ItemKnn {
            neighbours: cf::build(n_items, hist, &cfg),
        }
    }

    /// Σ over the user's distinct items of the candidate's similarity to them; top `k`.
    pub fn recommend(
        &self,
        hist: &UserHistory,
        u: UserIdx,
        k: usize,
        allow: &dyn Fn(ItemIdx) -> bool,
    ) -> Vec<ItemIdx> {
        let mut acc: std::collections::HashMap<ItemIdx, f32> = std::collections::HashMap::new();
        for &j in &hist.recent_distinct(u, usize::MAX) {
            for s in self.neighbours.neighbors(j) {
                if allow(s.item) {
                    *acc.entry(s.item).or_insert(0.0) += s.score;
                }
            }
        }
        top(acc.into_iter(), k)
    }
}

fn top(scores: impl Iterator<Item = (ItemIdx, f32)>, k: usize) -> Vec<ItemIdx> {
    let mut v: Vec<(ItemIdx, f32)> = scores.filter(|(_, s)| s.is_finite()).collect();
    let by = |a: &(ItemIdx, f32), b: &(ItemIdx, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if v.len() > k {
        v.select_nth_unstable_by(k, by);
        v.truncate(k);
    }
    v.sort_by(by);
    v.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Event;

    /// Two taste groups: users 0..10 like items 0..5, users 10..20 like items 5..10. Each user
    /// is missing one item of their group; BPR and ItemKNN must rank it above the other group.
    fn two_groups() -> (UserHistory, Vec<(UserIdx, ItemIdx)>) {
        let mut ev = Vec::new();
        let mut held = Vec::new();
        let mut ts = 0;
        for u in 0..20u32 {
            let base = if u < 10 { 0 } else { 5 };
            for k in 0..5u32 {
                let i = base + k;
                if k == u % 5 {
                    held.push((u, i));
                    continue;
                }
                ts += 1;
                ev.push(Event {
                    user: u,
                    item: i,
                    ts,
                    weight: 1.0,
                });
            }
        }
        (UserHistory::new(20, &ev), held)
    }

    #[test]
    fn bpr_and_itemknn_recover_the_held_out_group_item() {
        let (hist, held) = two_groups();
        let bpr = Bpr::train(
            10,
            &hist,
            &BprConfig {
                epochs: 200,
                ..BprConfig::default()
            },
        );
        let knn = ItemKnn::build(10, &hist);
        let (mut bpr_hits, mut knn_hits) = (0, 0);
        for &(u, i) in &held {
            let seen = hist.items(u).to_vec();
            let allow = |j: ItemIdx| !seen.contains(&j);
            bpr_hits += usize::from(bpr.recommend(u, 1, &allow) == vec![i]);
            knn_hits += usize::from(knn.recommend(&hist, u, 1, &allow) == vec![i]);
        }
        assert!(bpr_hits >= 18, "bpr {bpr_hits}/20");
        assert_eq!(knn_hits, 20);
    }
}
