//! Ranker training examples: candidates retrieved for a user by the early stage (built before the
//! label window) and labelled by what the user did inside the window. Negatives are drawn from the
//! user's own retrieval candidates, so rankers learn to order exactly what retrieval proposes.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use funnel::ranking::input::INPUT_DIM;
use funnel::UserIdx;

use crate::config::BuildConfig;
use crate::dataset::{Dataset, Event};
use crate::stage::Stage;
use crate::train::{segment_of_row, ExampleSet};

pub struct Examples {
    pub train: ExampleSet,
    pub valid: ExampleSet,
    pub users_with_labels: usize,
    pub users_with_positive_candidates: usize,
}

fn empty() -> ExampleSet {
    ExampleSet {
        x: Vec::new(),
        y: Vec::new(),
        group: Vec::new(),
        segment: Vec::new(),
    }
}

fn hash(u: u32, seed: u64) -> u64 {
    // SplitMix64: a cheap, well-mixed deterministic order over users.
    let mut z = (u as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// When each user's training request happens: when they come back, at their first label
/// interaction (`i64::MAX` for users without labels).
pub fn request_times(labels: &[Event], n_users: usize) -> Vec<i64> {
    let mut at = vec![i64::MAX; n_users];
    for e in labels {
        at[e.user as usize] = at[e.user as usize].min(e.ts);
    }
    at
}

/// Snapshot moments for the request times `asked`: a grid of `spacing` seconds from the first
/// request, at most `max` of them (the spacing widens to fit), only where a request falls before
/// `cutoff` (requests from the cutoff on use the stage's own signals).
pub fn snapshot_times(asked: &[i64], cutoff: i64, spacing: i64, max: usize) -> Vec<i64> {
    let before: Vec<i64> = asked.iter().copied().filter(|&t| t < cutoff).collect();
    let Some(&first) = before.iter().min() else {
        return Vec::new();
    };
    let span = cutoff - first;
    let step = spacing.max(1).max(span / max.max(1) as i64 + 1);
    let mut out: Vec<i64> = before
        .iter()
        .map(|&t| first + (t - first) / step * step)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub fn build(
    ds: &Dataset,
    early: &Stage,
    labels: &[Event],
    cfg: &BuildConfig,
    seed: u64,
) -> Examples {
    let mut positives: Vec<Vec<u32>> = vec![Vec::new(); ds.n_users()];
    for e in labels {
        positives[e.user as usize].push(e.item);
    }
    let asked_at = request_times(labels, ds.n_users());
    let mut users: Vec<UserIdx> = (0..ds.n_users() as u32)
        .filter(|&u| !positives[u as usize].is_empty())
        .collect();
    let users_with_labels = users.len();
    users.sort_by_key(|&u| hash(u, seed));
    users.truncate(cfg.rankers.max_users);
    let n_valid = ((users.len() as f64) * cfg.rankers.validation_fraction).ceil() as usize;
    let per_user: Vec<(bool, ExampleSet)> = users
        .par_iter()
        .enumerate()
        .map(|(k, &u)| {
            let is_valid = k < n_valid;
            let pos: HashSet<u32> = positives[u as usize].iter().copied().collect();
            let r = early.retrieve_at(ds, u, asked_at[u as usize]);
            let mut cands = r.merged;
            if !cands.iter().any(|c| pos.contains(&c.item)) {
                return (is_valid, empty());
            }
            if !is_valid {
                // Train: every positive candidate plus negatives: the hardest (the top of the
                // merged order the ranker must reorder) and a random sample of the rest.
                let (p, n): (Vec<_>, Vec<_>) =
                    cands.into_iter().partition(|c| pos.contains(&c.item));
                let want = cfg.rankers.negatives_per_user;
                let hard =
                    ((want as f64 * cfg.rankers.hard_negative_share).round() as usize).min(n.len());
                let mut rest = n;
                let mut picked: Vec<_> = rest.drain(..hard).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(hash(u, seed ^ 0x5eed));
                rest.shuffle(&mut rng);
                rest.truncate(want - hard.min(want));
                picked.extend(rest);
                cands = p;
                cands.extend(picked);
            }
            let mut set = empty();
            early.encode(ds, u, asked_at[u as usize], &cands, &mut set.x);
            // As the server will segment this request: history and the gap before it.
            let seg = set.x.get(..INPUT_DIM).map_or(0, segment_of_row);
            for c in &cands {
                set.y.push(if pos.contains(&c.item) { 1.0 } else { 0.0 });
                set.group.push(u);
                set.segment.push(seg);
            }
            (is_valid, set)
        })
        .collect();
    let mut train = empty();
    let mut valid = empty();
    let mut with_pos = 0;
    for (is_valid, s) in per_user {
        if s.y.is_empty() {
            continue;
        }
        with_pos += 1;
        let dst = if is_valid { &mut valid } else { &mut train };
        dst.x.extend(s.x);
        dst.y.extend(s.y);
        dst.group.extend(s.group);
        dst.segment.extend(s.segment);
    }
    debug_assert_eq!(train.x.len(), train.y.len() * INPUT_DIM);
    Examples {
        train,
        valid,
        users_with_labels,
        users_with_positive_candidates: with_pos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_cover_the_requests_before_the_cutoff_on_a_bounded_grid() {
        let asked = [i64::MAX, 1000, 1005, 1900, 3000, 50];
        // Spacing 100 from the first request (50); 3000 is at the cutoff: no snapshot.
        let t = snapshot_times(&asked, 3000, 100, 64);
        assert_eq!(t, vec![50, 950, 1850]);
        for &a in &asked[1..5] {
            if a < 3000 {
                let at = t.iter().rev().find(|&&s| s <= a).unwrap();
                assert!(a - at < 100, "{a} → {at}");
            }
        }
        // At most `max`: the grid widens.
        let many: Vec<i64> = (0..10_000).collect();
        assert!(snapshot_times(&many, 10_000, 1, 16).len() <= 16);
        assert!(snapshot_times(&[i64::MAX], 10, 1, 16).is_empty());
    }
}
