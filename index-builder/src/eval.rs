//! Offline evaluation on a holdout: Recall@20, NDCG@20 and Recall@500 of each candidate source, of
//! the merged candidates, of each ranker's ordering of them, and of the popularity and trending
//! baselines. Relevant items are the user's held-out items they had not interacted with before
//! (a recommender never re-serves seen items).

use std::collections::HashSet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use funnel::evaluation::{ndcg_at, recall_at};
use funnel::ranking::input::INPUT_DIM;
use funnel::ranking::Ranker;
use funnel::sources::SourceId;
use funnel::{ItemIdx, UserIdx};

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::baselines::{Bpr, BprConfig, ItemKnn};
use crate::dataset::{Dataset, Event};
use crate::stage::Stage;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub name: String,
    pub kind: String,
    pub recall_at_20: f64,
    pub ndcg_at_20: f64,
    /// 95 % bootstrap confidence interval of `ndcg_at_20` over users (percentile method).
    #[serde(default)]
    pub ndcg_ci95: [f64; 2],
    /// NDCG@20 over the users without history in the training part (cold) and the others.
    #[serde(default)]
    pub ndcg_cold: f64,
    #[serde(default)]
    pub ndcg_known: f64,
    pub recall_at_500: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub holdout: String,
    pub users: usize,
    pub cold_users: usize,
    pub rows: Vec<EvalRow>,
}

/// Binary-relevance metrics of one ranked list: Recall@20, NDCG@20, Recall@500.
pub(crate) fn metrics(list: &[ItemIdx], rel: &HashSet<ItemIdx>) -> [f64; 3] {
    [
        recall_at(list, rel, 20),
        ndcg_at(list, rel, 20),
        recall_at(list, rel, 500),
    ]
}

/// Evaluates `stage` (built on the training part) against `test` events. `max_users` bounds cost.
pub fn evaluate(
    ds: &Dataset,
    stage: &Stage,
    rankers: &[(String, Box<dyn Ranker>)],
    test: &[Event],
    holdout: &str,
    max_users: usize,
) -> EvalReport {
    let mut rel: Vec<HashSet<ItemIdx>> = vec![HashSet::new(); ds.n_users()];
    for e in test {
        rel[e.user as usize].insert(e.item);
    }
    // Each user is served when they come back: at their first held-out interaction.
    let asked_at = crate::examples::request_times(test, ds.n_users());
    let mut users: Vec<UserIdx> = Vec::new();
    for u in 0..ds.n_users() as u32 {
        let seen: HashSet<ItemIdx> = stage.hist.items(u).iter().copied().collect();
        rel[u as usize].retain(|i| !seen.contains(i));
        if !rel[u as usize].is_empty() {
            users.push(u);
        }
    }
    // Deterministic subsample, spread over the id range.
    if users.len() > max_users {
        let step = users.len() as f64 / max_users as f64;
        users = (0..max_users)
            .map(|k| users[(k as f64 * step) as usize])
            .collect();
    }
    let cold_users = users.iter().filter(|&&u| stage.hist.len(u) == 0).count();
    let by_pop = ranked_by(&stage.trending.popularity, ds);
    let by_trend = ranked_by(&stage.trending.score, ds);
    let names: Vec<(String, String)> = SourceId::ALL
        .iter()
        .map(|s| (format!("source:{}", s.name()), "source".to_string()))
        .chain([("merged".to_string(), "candidates".to_string())])
        .chain(
            rankers
                .iter()
                .map(|(id, _)| (format!("ranker:{id}"), "ranker".to_string())),
        )
        .chain([
            ("baseline:popularity".to_string(), "baseline".to_string()),
            ("baseline:trending".to_string(), "baseline".to_string()),
            ("baseline:bpr-mf".to_string(), "baseline".to_string()),
            ("baseline:itemknn".to_string(), "baseline".to_string()),
        ])
        .collect();
    let bpr = Bpr::train(ds.n_items(), &stage.hist, &BprConfig::default());
    let knn = ItemKnn::build(ds.n_items(), &stage.hist);
    let per_user: Vec<Vec<[f64; 3]>> = users
        .par_iter()
        .map(|&u| {
            let rel_u = &rel[u as usize];
            let seen: HashSet<ItemIdx> = stage.hist.items(u).iter().copied().collect();
            let r = stage.retrieve(ds, u);
            let mut out: Vec<[f64; 3]> = Vec::with_capacity(names.len());
            for (_, items) in &r.per_source {
                let list: Vec<ItemIdx> = items.iter().map(|s| s.item).collect();
                out.push(metrics(&list, rel_u));
            }
            let merged: Vec<ItemIdx> = r.merged.iter().map(|c| c.item).collect();
            out.push(metrics(&merged, rel_u));
            let mut rows = Vec::with_capacity(r.merged.len() * INPUT_DIM);
            stage.encode(ds, u, asked_at[u as usize], &r.merged, &mut rows);
            for (_, ranker) in rankers {
                let list = match ranker.score(&rows, r.merged.len()) {
                    Ok(scores) => {
                        let mut order: Vec<usize> = (0..r.merged.len()).collect();
                        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                        order
                            .into_iter()
                            .map(|k| r.merged[k].item)
                            .collect::<Vec<_>>()
                    }
                    Err(_) => merged.clone(),
                };
                out.push(metrics(&list, rel_u));
            }
            for base in [&by_pop, &by_trend] {
                let list: Vec<ItemIdx> = base
                    .iter()
                    .copied()
                    .filter(|i| !seen.contains(i))
                    .take(500)
                    .collect();
                out.push(metrics(&list, rel_u));
            }
            let allow =
                |i: ItemIdx| !seen.contains(&i) && ds.catalog.get(i).is_some_and(|it| !it.flagged);
            out.push(metrics(&bpr.recommend(u, 500, &allow), rel_u));
            out.push(metrics(&knn.recommend(&stage.hist, u, 500, &allow), rel_u));
            out
        })
        .collect();
    let rows = names
        .into_iter()
        .enumerate()
        .map(|(m, (name, kind))| {
            let col = |k: usize| -> Vec<f64> { per_user.iter().map(|r| r[m][k]).collect() };
            let ndcg = col(1);
            let part = |cold: bool| -> f64 {
                let v: Vec<f64> = users
                    .iter()
                    .zip(&ndcg)
                    .filter(|(&u, _)| (stage.hist.len(u) == 0) == cold)
                    .map(|(_, &x)| x)
                    .collect();
                mean(&v)
            };
            EvalRow {
                ndcg_cold: part(true),
                ndcg_known: part(false),
                name,
                kind,
                recall_at_20: mean(&col(0)),
                ndcg_at_20: mean(&ndcg),
                ndcg_ci95: bootstrap_ci95(&ndcg, 0xC1),
                recall_at_500: mean(&col(2)),
            }
        })
        .collect();
    EvalReport {
        holdout: holdout.to_string(),
        users: users.len(),
        cold_users,
        rows,
    }
}

/// Mean of `v`; 0 when empty.
pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Resamples used by [`bootstrap_ci95`].
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// 95 % percentile-bootstrap interval of the mean of per-user values (users resampled with
/// replacement, seeded: the same values give the same interval).
pub fn bootstrap_ci95(values: &[f64], seed: u64) -> [f64; 2] {
    let n = values.len();
    if n == 0 {
        return [0.0, 0.0];
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (BOOTSTRAP_RESAMPLES - 1) as f64).round()) as usize];
    [at(0.025), at(0.975)]
}

/// The holdout's relevant (user id, item id, time) triples: held-out items the user had not
/// interacted with in `stage`'s history, at their first held-out time. Written into the bundle so
/// the served funnel can be evaluated later (each user asked at their first held-out time).
pub fn relevant_pairs(ds: &Dataset, stage: &Stage, test: &[Event]) -> Vec<(u64, u64, i64)> {
    let mut pairs: Vec<(u64, u64, i64)> = test
        .iter()
        .filter(|e| !stage.hist.items(e.user).contains(&e.item))
        .map(|e| {
            (
                ds.user_ids[e.user as usize],
                ds.catalog.items[e.item as usize].id,
                e.ts,
            )
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup_by_key(|p| (p.0, p.1));
    pairs
}

/// Unflagged items by decreasing `score` (ties by index), at most 600.
fn ranked_by(score: &[f32], ds: &Dataset) -> Vec<ItemIdx> {
    let mut v: Vec<ItemIdx> = (0..score.len() as u32)
        .filter(|&i| ds.catalog.get(i).is_some_and(|it| !it.flagged))
        .collect();
    v.sort_by(|&a, &b| {
        score[b as usize]
            .total_cmp(&score[a as usize])
            .then(a.cmp(&b))
    });
    v.truncate(600);
    v
}

impl EvalReport {
    pub fn table(&self) -> String {
        let mut s =
            format!(
            "Offline evaluation — holdout {}, {} users ({} cold)\n{:<28} {:>10} {:>10} {:>17} {:>11} {:>9} {:>9}\n",
            self.holdout, self.users, self.cold_users, "model", "Recall@20", "NDCG@20", "NDCG@20 95% CI", "Recall@500", "cold", "known"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<28} {:>10.4} {:>10.4}  [{:.4}, {:.4}] {:>11.4} {:>9.4} {:>9.4}\n",
                r.name,
                r.recall_at_20,
                r.ndcg_at_20,
                r.ndcg_ci95[0],
                r.ndcg_ci95[1],
                r.recall_at_500,
                r.ndcg_cold,
                r.ndcg_known
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_narrows_with_more_users() {
        let few: Vec<f64> = (0..50).map(|i| (i % 5) as f64 / 4.0).collect();
        let many: Vec<f64> = (0..5000).map(|i| (i % 5) as f64 / 4.0).collect();
        let [a, b] = bootstrap_ci95(&few, 1);
        assert!(a < mean(&few) && mean(&few) < b);
        let [c, d] = bootstrap_ci95(&many, 1);
        assert!(c < 0.5 && 0.5 < d && d - c < (b - a) / 5.0);
        assert_eq!(bootstrap_ci95(&few, 1), bootstrap_ci95(&few, 1));
        assert_eq!(bootstrap_ci95(&[], 1), [0.0, 0.0]);
    }
}
