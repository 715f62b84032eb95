//! Merge: turns the per-source candidate lists into one de-duplicated candidate set. Scores are
//! normalised per source (their scales differ), an item found by several sources gets a bonus,
//! provenance is kept, and the set is capped.

use serde::{Deserialize, Serialize};

use crate::sources::{ScoredItem, SourceId, N_SOURCES};
use crate::ItemIdx;

/// `[merge]`: the one place its defaults live is `Default` (a missing key takes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeConfig {
    /// Multiplier for items proposed by two or more sources.
    pub multi_source_bonus: f32,
    /// Cap on merged candidates handed to ranking.
    pub max_candidates: usize,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self {
            multi_source_bonus: 1.5,
            max_candidates: 500,
        }
    }
}

impl MergeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.multi_source_bonus.is_finite() && self.multi_source_bonus >= 1.0) {
            return Err(format!(
                "merge.multi_source_bonus must be >= 1, got {}",
                self.multi_source_bonus
            ));
        }
        if self.max_candidates == 0 {
            return Err("merge.max_candidates must be > 0".into());
        }
        Ok(())
    }
}

/// A merged candidate with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub item: ItemIdx,
    /// Per-source normalised score in [0, 1], 0 where the source did not propose the item.
    pub source_scores: [f32; N_SOURCES],
    /// Bit `SourceId::index()` set when that source proposed the item.
    pub source_mask: u8,
    /// Per-source 1-based position in that source's list, 0 where it did not propose the item
    /// (ranks survive where min–max scores flatten a long tail).
    pub source_ranks: [u32; N_SOURCES],
    /// The retrieval score used to cap the set and as the ranking fallback.
    pub score: f32,
}

impl Candidate {
    pub fn n_sources(&self) -> u32 {
        self.source_mask.count_ones()
    }

    pub fn sources(&self) -> impl Iterator<Item = SourceId> + '_ {
        SourceId::ALL
            .into_iter()
            .filter(|s| self.source_mask & (1 << s.index()) != 0)
    }
}

/// Normalises each source's scores to [0, 1] by rank-preserving min–max within the list (a list
/// whose scores are all equal maps to 1), then merges: the merged score is the best normalised
/// score, times the bonus when two or more sources agree. Sorted best first, ties by item index.
pub fn merge(results: &[(SourceId, Vec<ScoredItem>)], cfg: &MergeConfig) -> Vec<Candidate> {
    let mut by_item: std::collections::HashMap<ItemIdx, Candidate> =
        std::collections::HashMap::with_capacity(results.iter().map(|(_, v)| v.len()).sum());
    for (source, items) in results {
        let finite = items.iter().map(|s| s.score).filter(|s| s.is_finite());
        let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(s), hi.max(s))
        });
        let span = hi - lo;
        for (pos, it) in items.iter().enumerate() {
            let norm = if !it.score.is_finite() {
                0.0
            } else if span > f32::EPSILON {
                (it.score - lo) / span
            } else {
                1.0
            };
            // Keep a small floor so the weakest item of a list still counts as proposed.
            let norm = 0.05 + 0.95 * norm;
            let c = by_item.entry(it.item).or_insert_with(|| Candidate {
                item: it.item,
                source_scores: [0.0; N_SOURCES],
                source_mask: 0,
                source_ranks: [0; N_SOURCES],
                score: 0.0,
            });
            let i = source.index();
            if c.source_mask & (1 << i) == 0 || norm > c.source_scores[i] {
                c.source_scores[i] = norm;
            }
            if c.source_ranks[i] == 0 {
                c.source_ranks[i] = pos as u32 + 1;
            }
            c.source_mask |= 1 << i;
        }
    }
    let mut out: Vec<Candidate> = by_item
        .into_values()
        .map(|mut c| {
            let best = c.source_scores.iter().copied().fold(0.0f32, f32::max);
            c.score = if c.n_sources() >= 2 {
                best * cfg.multi_source_bonus
            } else {
                best
            };
            c
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
    out.truncate(cfg.max_candidates);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn si(item: u32, score: f32) -> ScoredItem {
        ScoredItem { item, score }
    }

    #[test]
    fn multi_source_items_keep_provenance_and_get_the_bonus() {
        let r = vec![
            (SourceId::Ann, vec![si(1, 0.9), si(2, 0.5), si(3, 0.1)]),
            (SourceId::Cf, vec![si(3, 10.0), si(4, 1.0)]),
        ];
        let m = merge(&r, &MergeConfig::default());
        assert_eq!(m.len(), 4);
        let three = m.iter().find(|c| c.item == 3).unwrap();
        assert_eq!(
            three.sources().collect::<Vec<_>>(),
            vec![SourceId::Ann, SourceId::Cf]
        );
        assert!((three.score - 1.5).abs() < 1e-6);
        assert_eq!(m[0].item, 3);
    }

    proptest! {
        #[test]
        fn merge_invariants(
            lists in proptest::collection::vec(proptest::collection::vec((0u32..300, -5.0f32..5.0), 0..120), 4),
            cap in 1usize..600,
        ) {
            let results: Vec<(SourceId, Vec<ScoredItem>)> = SourceId::ALL.iter().zip(lists.iter())
                .map(|(s, l)| (*s, l.iter().map(|&(i, sc)| si(i, sc)).collect())).collect();
            let cfg = MergeConfig { multi_source_bonus: 1.5, max_candidates: cap };
            let m = merge(&results, &cfg);
            let mut distinct: Vec<u32> = lists.iter().flatten().map(|p| p.0).collect();
            distinct.sort(); distinct.dedup();
            // capped, de-duplicated, sorted, and every input item accounted for up to the cap
            prop_assert_eq!(m.len(), distinct.len().min(cap));
            let mut seen = std::collections::HashSet::new();
            for w in m.windows(2) { prop_assert!(w[0].score >= w[1].score); }
            for c in &m {
                prop_assert!(seen.insert(c.item));
                prop_assert!(c.source_mask != 0);
                for s in SourceId::ALL {
                    let proposed = results[s.index()].1.iter().any(|x| x.item == c.item);
                    prop_assert_eq!(proposed, c.source_mask & (1 << s.index()) != 0);
                    let v = c.source_scores[s.index()];
                    prop_assert!((0.0..=1.0).contains(&v));
                    // The rank is the item's first position in that source's list (1-based).
                    let first = results[s.index()].1.iter().position(|x| x.item == c.item);
                    prop_assert_eq!(c.source_ranks[s.index()], first.map_or(0, |p| p as u32 + 1));
                }
            }
        }
    }
}
