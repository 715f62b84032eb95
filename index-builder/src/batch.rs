//! Batch recommendations: the top `k` items per active user, computed nightly with the offline
//! pipeline (sources → merge → best ranker). The server falls back to them when online ranking
//! cannot run.

use rayon::prelude::*;

use funnel::ranking::input::INPUT_DIM;
use funnel::ranking::Ranker;
use funnel::{ItemIdx, UserIdx};

use crate::config::BuildConfig;
use crate::dataset::Dataset;
use crate::stage::Stage;

pub struct BatchRecs {
    pub users: Vec<UserIdx>,
    /// Per user, best first.
    pub lists: Vec<Vec<(ItemIdx, f32)>>,
}

/// Users with an interaction within `active_days` before the cutoff.
pub fn active_users(stage: &Stage, cfg: &BuildConfig) -> Vec<UserIdx> {
    let since = stage.cutoff - cfg.batch.active_days * 86_400;
    (0..stage.hist.n_users() as u32)
        .filter(|&u| {
            let r = stage.hist.range(u);
            !r.is_empty() && stage.hist.ts[r.end - 1] >= since
        })
        .collect()
}

pub fn build(
    ds: &Dataset,
    stage: &Stage,
    ranker: Option<&dyn Ranker>,
    users: Vec<UserIdx>,
    cfg: &BuildConfig,
    tick: &(dyn Fn(u64) + Sync),
) -> BatchRecs {
    let lists: Vec<Vec<(ItemIdx, f32)>> = users
        .par_chunks(256)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len());
            let mut rows = Vec::new();
            for &u in chunk {
                let r = stage.retrieve(ds, u);
                let scores = match ranker {
                    Some(m) => {
                        rows.clear();
                        rows.reserve(r.merged.len() * INPUT_DIM);
                        stage.encode(ds, u, stage.cutoff, &r.merged, &mut rows);
                        m.score(&rows, r.merged.len()).ok()
                    }
                    None => None,
                };
                let mut scored: Vec<(ItemIdx, f32)> = match scores {
                    Some(s) => r.merged.iter().zip(s).map(|(c, s)| (c.item, s)).collect(),
                    None => r.merged.iter().map(|c| (c.item, c.score)).collect(),
                };
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                scored.truncate(cfg.batch.k);
                out.push(scored);
            }
            tick(chunk.len() as u64);
            out
        })
        .flatten()
        .collect();
    BatchRecs { users, lists }
}
