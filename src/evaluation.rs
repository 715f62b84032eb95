//! Relevance metrics, defined once for every evaluation: the builder's offline tables, the served
//! evaluation, ranker validation, the ensemble's subset fits and the ANN benchmark all score
//! with these functions, so their numbers mean the same thing.
//!
//! Relevance is binary. NDCG ties are pessimistic (a positive tied with a negative ranks below
//! it), so a constant model earns no credit.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::ItemIdx;

/// DCG discount of a 0-based rank.
#[inline]
pub fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 2) as f64).log2()
}

/// DCG of a perfect list with `positives` relevant items, cut at `k`.
pub fn ideal_dcg(positives: usize, k: usize) -> f64 {
    (0..positives.min(k)).map(discount).sum()
}

/// Share of the relevant items found in the first `k` of `list` (0 when none is relevant).
pub fn recall_at(list: &[ItemIdx], rel: &HashSet<ItemIdx>, k: usize) -> f64 {
    if rel.is_empty() {
        return 0.0;
    }
    list.iter().take(k).filter(|i| rel.contains(i)).count() as f64 / rel.len() as f64
}

/// NDCG@k of a ranked list against a relevant set (0 when none is relevant).
pub fn ndcg_at(list: &[ItemIdx], rel: &HashSet<ItemIdx>, k: usize) -> f64 {
    let ideal = ideal_dcg(rel.len(), k);
    if ideal <= 0.0 {
        return 0.0;
    }
    let dcg: f64 = list
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, i)| rel.contains(i))
        .map(|(r, _)| discount(r))
        .sum();
    dcg / ideal
}

/// Up to this many positives a request's ranks are counted directly (O(n) each); beyond it the
/// top k are selected and sorted.
const COUNT_MAX_POSITIVES: usize = 8;

/// NDCG@k of one request's scored rows with at least one positive: `positive[j]` says whether
/// row j is relevant, `pos` lists the positive rows ascending. `scratch` is reused between calls.
pub fn request_ndcg(
    scores: &[f32],
    positive: &[bool],
    pos: &[u32],
    k: usize,
    scratch: &mut Vec<u32>,
) -> f64 {
    let dcg = if pos.len() <= COUNT_MAX_POSITIVES {
        // A positive's rank is the rows ahead of it: higher scores, tied negatives (ties are
        // pessimistic), and tied positives before it (they share the same set of positions).
        let mut dcg = 0.0;
        for &p in pos {
            let p = p as usize;
            let sp = scores[p];
            let mut rank = 0usize;
            for (j, (&sj, &pj)) in scores.iter().zip(positive).enumerate() {
                rank += match sj.total_cmp(&sp) {
                    Ordering::Greater => 1,
                    Ordering::Equal => usize::from(!pj || j < p),
                    Ordering::Less => 0,
                };
            }
            if rank < k {
                dcg += discount(rank);
            }
        }
        dcg
    } else {
        scratch.clear();
        scratch.extend(0..scores.len() as u32);
        let order = |a: &u32, b: &u32| {
            let (a, b) = (*a as usize, *b as usize);
            scores[b]
                .total_cmp(&scores[a])
                .then(positive[a].cmp(&positive[b]))
        };
        // Only the top k matter: select them, then sort just those. Rows equal under `order`
        // share score and label, so how they land among themselves does not change the DCG.
        let top = k.min(scratch.len());
        if top > 0 && top < scratch.len() {
            scratch.select_nth_unstable_by(top - 1, order);
        }
        scratch[..top].sort_unstable_by(order);
        scratch[..top]
            .iter()
            .enumerate()
            .filter(|&(_, &i)| positive[i as usize])
            .map(|(r, _)| discount(r))
            .sum()
    };
    let ideal = ideal_dcg(pos.len(), k);
    if ideal > 0.0 {
        dcg / ideal
    } else {
        0.0
    }
}

/// Mean NDCG@k over the requests `groups` names (rows of a request need not be contiguous;
/// label > 0.5 is relevant), skipping requests without a positive. NaN when the lengths differ,
/// `k` is 0 or no request has a positive.
pub fn ndcg_grouped(scores: &[f32], labels: &[f32], groups: &[u32], k: usize) -> f64 {
    if scores.len() != labels.len() || scores.len() != groups.len() || k == 0 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by_key(|&i| groups[i]);
    let (mut sum, mut n) = (0.0f64, 0usize);
    let mut scratch = Vec::new();
    let (mut s, mut p, mut pos) = (Vec::new(), Vec::new(), Vec::new());
    for run in idx.chunk_by(|&a, &b| groups[a] == groups[b]) {
        s.clear();
        p.clear();
        pos.clear();
        for (j, &i) in run.iter().enumerate() {
            s.push(scores[i]);
            let is_pos = labels[i] > 0.5;
            p.push(is_pos);
            if is_pos {
                pos.push(j as u32);
            }
        }
        if pos.is_empty() {
            continue;
        }
        sum += request_ndcg(&s, &p, &pos, k, &mut scratch);
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Pearson correlation; 0 when undefined (lengths differ, fewer than two points, a constant side).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 2 {
        return 0.0;
    }
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    let r = sab / (saa.sqrt() * sbb.sqrt());
    if saa > 0.0 && sbb > 0.0 && r.is_finite() {
        r.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// [`pearson`] of f32 predictions.
pub fn pearson_f32(a: &[f32], b: &[f32]) -> f64 {
    let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    pearson(&wide(a), &wide(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn list_metrics_known_values() {
        let rel: HashSet<u32> = [2, 9].into_iter().collect();
        let list = [5, 2, 7, 9];
        assert_eq!(recall_at(&list, &rel, 2), 0.5);
        assert_eq!(recall_at(&list, &rel, 4), 1.0);
        let want = (discount(1) + discount(3)) / (discount(0) + discount(1));
        assert!((ndcg_at(&list, &rel, 20) - want).abs() < 1e-12);
        assert_eq!(ndcg_at(&list, &HashSet::new(), 20), 0.0);
    }

    #[test]
    fn grouped_ndcg_known_values() {
        // Group 1: positive at rank 2 of 3 → 1/log2(3). Group 2: perfect. Group 3: no positive.
        let scores = [0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.7];
        let labels = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let groups = [1, 1, 1, 2, 2, 3, 3];
        let expected = (1.0 / 3f64.log2() + 1.0) / 2.0;
        assert!((ndcg_grouped(&scores, &labels, &groups, 20) - expected).abs() < 1e-12);
        // Cut-off below the positive's rank.
        assert!((ndcg_grouped(&scores, &labels, &groups, 1) - 0.5).abs() < 1e-12);
        // Ties are pessimistic.
        assert!(ndcg_grouped(&[0.5, 0.5], &[1.0, 0.0], &[0, 0], 20) < 1.0);
        assert!(ndcg_grouped(&[0.5], &[0.0], &[0], 20).is_nan());
    }

    #[test]
    fn pearson_known_values() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson_f32(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(pearson(&[1.0], &[2.0]), 0.0);
    }

    proptest! {
        /// The counting path and the sorting path agree with a plain sort of the request.
        #[test]
        fn request_ndcg_matches_a_full_sort(
            rows in proptest::collection::vec((0u8..6, proptest::bool::ANY), 1..60),
            k in 1usize..25,
        ) {
            let scores: Vec<f32> = rows.iter().map(|r| f32::from(r.0)).collect();
            let positive: Vec<bool> = rows.iter().map(|r| r.1).collect();
            let pos: Vec<u32> = (0..rows.len() as u32).filter(|&i| positive[i as usize]).collect();
            prop_assume!(!pos.is_empty());
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(positive[a].cmp(&positive[b])));
            let dcg: f64 = order.iter().take(k).enumerate().filter(|(_, &i)| positive[i]).map(|(r, _)| discount(r)).sum();
            let want = dcg / ideal_dcg(pos.len(), k);
            let got = request_ndcg(&scores, &positive, &pos, k, &mut Vec::new());
            prop_assert!((got - want).abs() < 1e-9, "{} vs {}", got, want);
        }
    }
}
