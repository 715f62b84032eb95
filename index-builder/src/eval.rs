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

use crate::dataset::{Dataset, Event};
use crate::stage::Stage;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub name: String,
    pub kind: String,
    pub recall_at_20: f64,
    pub ndcg_at_20: f64,
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
        ])
        .collect();
    let sums: Vec<[f64; 3]> = users
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
            stage.encode(ds, u, &r.merged, &mut rows);
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
            out
        })
        .reduce(
            || vec![[0.0; 3]; names.len()],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    for k in 0..3 {
                        x[k] += y[k];
                    }
                }
                a
            },
        );
    let n = users.len().max(1) as f64;
    let rows = names
        .into_iter()
        .zip(sums)
        .map(|((name, kind), s)| EvalRow {
            name,
            kind,
            recall_at_20: s[0] / n,
            ndcg_at_20: s[1] / n,
            recall_at_500: s[2] / n,
        })
        .collect();
    EvalReport {
        holdout: holdout.to_string(),
        users: users.len(),
        cold_users,
        rows,
    }
}

/// The holdout's relevant (user id, item id) pairs: held-out items the user had not interacted
/// with in `stage`'s history. Written into the bundle so the served funnel can be evaluated later.
pub fn relevant_pairs(ds: &Dataset, stage: &Stage, test: &[Event]) -> (Vec<u64>, Vec<u64>) {
    let mut pairs: Vec<(u64, u64)> = test
        .iter()
        .filter(|e| !stage.hist.items(e.user).contains(&e.item))
        .map(|e| {
            (
                ds.user_ids[e.user as usize],
                ds.catalog.items[e.item as usize].id,
            )
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs.into_iter().unzip()
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
            "Offline evaluation — holdout {}, {} users ({} cold)\n{:<28} {:>10} {:>10} {:>11}\n",
            self.holdout, self.users, self.cold_users, "model", "Recall@20", "NDCG@20", "Recall@500"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<28} {:>10.4} {:>10.4} {:>11.4}\n",
                r.name, r.recall_at_20, r.ndcg_at_20, r.recall_at_500
            ));
        }
        s
    }
}
