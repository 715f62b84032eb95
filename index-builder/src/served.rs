//! Evaluation of the *served* funnel on a bundle's holdout: every evaluated user is sent through
//! the engine exactly as a request would be (features → sources → merge → rank → re-rank), and
//! its top 20 is scored against the held-out items — next to a popularity list that knows what
//! the server knows (the same seen items removed). The funnel is served once with the
//! configured ensemble, once per combination strategy, and once per ranker alone, so every
//! ranker and strategy is compared on the same users. Needs a bundle built with `--holdout`.

use funnel::layout;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use funnel::api::{RankingOverride, RecommendRequest, RequestContext, Timestamp, UserId};
use funnel::bundle::Bundle;
use funnel::config::{Clock, EngineConfig};
use funnel::engine::Engine;
use funnel::features::online::UserFeatures;
use funnel::features::{Entity, FeatureRegistry};
use funnel::ranking::combine::Strategy;
use funnel::ranking::select::SelectionMode;
use funnel::table::Table;
use funnel::ItemIdx;

use crate::eval::{bootstrap_ci95, mean, metrics};
use funnel::ranking::ensemble::LIGHT_MAX_HISTORY;

#[derive(Debug, Clone, Serialize)]
pub struct ServedRow {
    pub name: String,
    pub recall_at_20: f64,
    pub ndcg_at_20: f64,
    /// 95 % bootstrap interval of `ndcg_at_20` over users.
    pub ndcg_ci95: [f64; 2],
    /// NDCG@20 over the users the training part does not know (cold) and over the others.
    pub ndcg_cold: f64,
    pub ndcg_known: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServedReport {
    pub holdout: String,
    pub users: usize,
    pub cold_users: usize,
    /// Median and p99 of the engine's own end-to-end time per request, in ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean number of rankers the configured ensemble ran per request.
    pub mean_models: f64,
    /// The same, over heavy users only (history longer than the light segment's).
    pub mean_models_heavy: f64,
    pub rows: Vec<ServedRow>,
}

impl ServedReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "Served funnel — holdout {}, {} users ({} cold); engine time p50 {:.2} ms, p99 {:.2} ms; {:.2} rankers per request ({:.2} for heavy users)\n{:<40} {:>10} {:>10} {:>17} {:>9} {:>9}\n",
            self.holdout, self.users, self.cold_users, self.p50_ms, self.p99_ms, self.mean_models, self.mean_models_heavy, "list", "Recall@20", "NDCG@20", "NDCG@20 95% CI", "cold", "known"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<40} {:>10.4} {:>10.4}  [{:.4}, {:.4}] {:>9.4} {:>9.4}\n",
                r.name,
                r.recall_at_20,
                r.ndcg_at_20,
                r.ndcg_ci95[0],
                r.ndcg_ci95[1],
                r.ndcg_cold,
                r.ndcg_known
            ));
        }
        s
    }
}

/// Runs the served evaluation over at most `max_users` holdout users (deterministic subsample).
/// `cfg` is the serving config to evaluate; its clock is forced to the bundle's cutoff. With
/// `pairs`, every pair of rankers is also served as a fixed two-member ensemble.
pub fn evaluate_served(
    bundle_dir: &Path,
    registry: &FeatureRegistry,
    mut cfg: EngineConfig,
    max_users: usize,
    pairs: bool,
) -> Result<ServedReport, String> {
    let b = Bundle::open(bundle_dir, registry).map_err(|e| e.to_string())?;
    let hpath = b.dir.join(layout::HOLDOUT);
    let mut t = Table::read(&hpath).map_err(|e| {
        format!("{e} (only bundles built with --holdout can be evaluated as served)")
    })?;
    let holdout = t.metadata.get("holdout").cloned().unwrap_or_default();
    let bad = |m: String| format!("{}: {m}", hpath.display());
    let users = t.take_u64("user_id").map_err(bad)?;
    let items = t.take_u64("item_id").map_err(bad)?;
    // Each user is asked at their first held-out time (bundles from before the column: the
    // bundle's cutoff, the clock below).
    let times = t.take_i64("ts").ok();
    let mut rel: HashMap<u64, HashSet<ItemIdx>> = HashMap::new();
    let mut asked_at: HashMap<u64, i64> = HashMap::new();
    for (k, (u, i)) in users.into_iter().zip(items).enumerate() {
        if let Some(idx) = b.catalog.idx(i) {
            rel.entry(u).or_default().insert(idx);
        }
        if let Some(ts) = times.as_ref().and_then(|t| t.get(k)) {
            let at = asked_at.entry(u).or_insert(*ts);
            *at = (*at).min(*ts);
        }
    }
    let mut users: Vec<u64> = rel.keys().copied().collect();
    users.sort_unstable();
    if users.len() > max_users {
        let step = users.len() as f64 / max_users as f64;
        users = (0..max_users)
            .map(|k| users[(k as f64 * step) as usize])
            .collect();
    }
    let mut by_pop: Vec<ItemIdx> = (0..b.catalog.len() as ItemIdx)
        .filter(|&i| b.catalog.get(i).is_some_and(|it| !it.flagged))
        .collect();
    by_pop.sort_by(|&x, &y| {
        b.popularity[y as usize]
            .total_cmp(&b.popularity[x as usize])
            .then(x.cmp(&y))
    });
    by_pop.truncate(200);
    let seen_of = |u: u64| -> HashSet<ItemIdx> {
        b.features
            .as_ref()
            .and_then(|f| f.get(Entity::User, u))
            .map(|row| {
                UserFeatures::from_row(row)
                    .recent_items
                    .iter()
                    .filter_map(|&id| b.catalog.idx(id))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Mean NDCG over the cold users and over the known ones.
    let split_means = |ndcg: &[f64], is_cold: &[bool]| -> (f64, f64) {
        let mean_of = |cold: bool| {
            let v: Vec<f64> = ndcg
                .iter()
                .zip(is_cold)
                .filter(|(_, &c)| c == cold)
                .map(|(n, _)| *n)
                .collect();
            mean(&v)
        };
        (mean_of(true), mean_of(false))
    };
    // Baselines first (they need the bundle, which the engine takes over).
    let mut pop_sum = [0.0f64; 3];
    let mut pop_ndcg = Vec::with_capacity(users.len());
    let mut is_cold = Vec::with_capacity(users.len());
    for &u in &users {
        let seen = seen_of(u);
        is_cold.push(seen.is_empty());
        let list: Vec<ItemIdx> = by_pop
            .iter()
            .copied()
            .filter(|i| !seen.contains(i))
            .take(20)
            .collect();
        let m = metrics(&list, &rel[&u]);
        (0..3).for_each(|k| pop_sum[k] += m[k]);
        pop_ndcg.push(m[1]);
    }
    let cold_users = is_cold.iter().filter(|&&c| c).count();
    cfg.features.clock = Clock::Bundle;
    // Offline evaluation ingests nothing.
    cfg.events.enabled = false;
    let engine = Engine::new(b, cfg, None).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // (name, per-request override): the configured ensemble, each strategy, each ranker alone.
    let mut variants: Vec<(String, RankingOverride)> = vec![(
        format!(
            "served top 20 (full funnel, {})",
            engine.config().ranking.strategy
        ),
        RankingOverride::default(),
    )];
    for st in Strategy::ALL {
        variants.push((
            format!("  ensemble strategy {st}"),
            RankingOverride {
                strategy: Some(st),
                ..RankingOverride::default()
            },
        ));
    }
    let mut ids: Vec<String> = engine
        .bundle()
        .rankers_manifest
        .as_ref()
        .map(|m| m.rankers.iter().map(|r| r.id.clone()).collect())
        .unwrap_or_default();
    ids.sort();
    if pairs {
        for a in 0..ids.len() {
            for b in a + 1..ids.len() {
                for st in [Strategy::Mean, Strategy::RankAvg, Strategy::Weighted] {
                    variants.push((
                        format!("  pair {} + {} {st}", ids[a], ids[b]),
                        RankingOverride {
                            models: Some(vec![ids[a].clone(), ids[b].clone()]),
                            max_models: Some(2),
                            strategy: Some(st),
                            selection: Some(SelectionMode::All),
                        },
                    ));
                }
            }
        }
    }
    for id in ids {
        variants.push((
            format!("  ranker {id} alone"),
            RankingOverride {
                models: Some(vec![id]),
                max_models: Some(1),
                ..RankingOverride::default()
            },
        ));
    }
    let mut rows = Vec::new();
    let mut times = Vec::with_capacity(users.len());
    let mut models_used = 0usize;
    let (mut heavy_models, mut heavy_users) = (0usize, 0usize);
    for (v, (name, ranking)) in variants.into_iter().enumerate() {
        let mut sum = [0.0f64; 3];
        let mut ndcg = Vec::with_capacity(users.len());
        for &u in &users {
            let req = RecommendRequest {
                user_id: UserId::Num(u),
                k: 20,
                context: RequestContext {
                    timestamp: asked_at.get(&u).map(|&t| Timestamp::Unix(t)),
                    ..RequestContext::default()
                },
                exclude_items: Vec::new(),
                filters: Default::default(),
                explain: v == 0,
                ranking: ranking.clone(),
                deadline_ms: None,
                arm: None,
            }
            .validate(&engine.config().server)
            .map_err(|e| e.message)?;
            let resp = rt
                .block_on(engine.recommend(req, format!("eval-{u}")))
                .map_err(|e| e.to_string())?;
            if v == 0 {
                times.push(resp.timings_ms.total);
                let explain = resp.explain.as_ref();
                let used = explain
                    .and_then(|e| e.ensemble.as_ref())
                    .map_or(0, |e| e.selected.len());
                models_used += used;
                if explain.is_some_and(|e| e.history_len > LIGHT_MAX_HISTORY) {
                    heavy_models += used;
                    heavy_users += 1;
                }
            }
            let list: Vec<ItemIdx> = resp
                .items
                .iter()
                .filter_map(|i| engine.bundle().catalog.idx(i.item_id))
                .collect();
            let m = metrics(&list, &rel[&u]);
            (0..3).for_each(|k| sum[k] += m[k]);
            ndcg.push(m[1]);
        }
        let n = users.len().max(1) as f64;
        let (ndcg_cold, ndcg_known) = split_means(&ndcg, &is_cold);
        rows.push(ServedRow {
            name,
            recall_at_20: sum[0] / n,
            ndcg_at_20: sum[1] / n,
            ndcg_ci95: bootstrap_ci95(&ndcg, 0xC1),
            ndcg_cold,
            ndcg_known,
        });
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let n = users.len().max(1) as f64;
    let (ndcg_cold, ndcg_known) = split_means(&pop_ndcg, &is_cold);
    rows.push(ServedRow {
        name: "baseline:popularity (same seen set)".into(),
        recall_at_20: pop_sum[0] / n,
        ndcg_at_20: pop_sum[1] / n,
        ndcg_ci95: bootstrap_ci95(&pop_ndcg, 0xC1),
        ndcg_cold,
        ndcg_known,
    });
    Ok(ServedReport {
        holdout,
        users: users.len(),
        cold_users,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        mean_models: models_used as f64 / n,
        mean_models_heavy: heavy_models as f64 / heavy_users.max(1) as f64,
        rows,
    })
}
