//! Candidate sources: the four retrievers that propose items for a request (ANN over item
//! embeddings, collaborative filtering, content, trending). Each is a pure, synchronous function of
//! bundle data and a [`RetrievalQuery`]; the server runs them concurrently off the reactor, and the
//! index-builder runs the very same code to draw ranker training negatives, batch recommendations
//! and offline evaluation, so offline and online retrieval cannot drift apart.

pub mod ann;
pub mod cf;
pub mod content;
pub mod trending;

use serde::{Deserialize, Serialize};

use crate::ItemIdx;

/// Which source proposed a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceId {
    Ann,
    Cf,
    Content,
    Trending,
}

impl SourceId {
    pub const ALL: [SourceId; 4] = [
        SourceId::Ann,
        SourceId::Cf,
        SourceId::Content,
        SourceId::Trending,
    ];

    /// Position of this source in per-source arrays such as [`crate::merge::Candidate::source_scores`].
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            SourceId::Ann => "ann",
            SourceId::Cf => "cf",
            SourceId::Content => "content",
            SourceId::Trending => "trending",
        }
    }
}

/// How many sources there are: the width of per-source arrays.
pub const N_SOURCES: usize = SourceId::ALL.len();

/// How many candidates each source may propose per request (`[retrieval.quotas]`; `Default`
/// holds the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceQuotas {
    pub ann: usize,
    pub cf: usize,
    pub content: usize,
    pub trending: usize,
}

impl Default for SourceQuotas {
    fn default() -> Self {
        Self {
            ann: 200,
            cf: 150,
            content: 100,
            trending: 50,
        }
    }
}

impl SourceQuotas {
    pub fn get(&self, id: SourceId) -> usize {
        match id {
            SourceId::Ann => self.ann,
            SourceId::Cf => self.cf,
            SourceId::Content => self.content,
            SourceId::Trending => self.trending,
        }
    }
}

/// An item with a source-specific score (higher is better; scales differ between sources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredItem {
    pub item: ItemIdx,
    pub score: f32,
}

/// What a source needs to know about the request. Everything is already resolved to dense indices.
pub struct RetrievalQuery<'a> {
    /// The user's query vector (user embedding, possibly blended with session items); None for cold users.
    pub embedding: Option<&'a [f32]>,
    /// The user's most recent items, newest first (history and session).
    pub recent_items: &'a [ItemIdx],
    /// Per-category preference, indexed like `Catalog::categories`; empty when unknown.
    pub category_prefs: &'a [f32],
    /// Items a source must not return (seen, excluded, flagged, filtered out). Sources honour it
    /// while retrieving so that a narrow filter still fills the quota when enough items match.
    pub allow: &'a (dyn Fn(ItemIdx) -> bool + Sync),
}

/// Why a source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: {message}")]
    Failed {
        source_name: &'static str,
        message: String,
    },
}

/// One retriever. Implementations are cheap to call concurrently.
pub trait CandidateSource: Send + Sync {
    fn id(&self) -> SourceId;
    /// Whether the source reads the user's features. One that does not (trending) starts while
    /// the features are still being fetched.
    fn needs_user(&self) -> bool {
        true
    }
    /// Up to `quota` allowed items, best first.
    fn retrieve(
        &self,
        query: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError>;
}

/// Keeps the `k` best-scored items from an iterator (ties broken by lower index), best first.
pub(crate) fn top_k(items: impl Iterator<Item = ScoredItem>, k: usize) -> Vec<ScoredItem> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if k == 0 {
        return Vec::new();
    }
    // Min-heap on (score, Reverse(idx)) so the worst kept element is on top.
    let mut heap: BinaryHeap<Reverse<(OrdF32, Reverse<ItemIdx>)>> =
        BinaryHeap::with_capacity(k + 1);
    for it in items {
        let key = Reverse((OrdF32(it.score), Reverse(it.item)));
        if heap.len() < k {
            heap.push(key);
        } else if let Some(top) = heap.peek() {
            if key < *top {
                heap.pop();
                heap.push(key);
            }
        }
    }
    let mut out: Vec<ScoredItem> = heap
        .into_iter()
        .map(|Reverse((s, Reverse(i)))| ScoredItem {
            item: i,
            score: s.0,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
    out
}

/// Total order over f32 for heaps (NaN sorts lowest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OrdF32(pub f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let a = if self.0.is_nan() {
            f32::NEG_INFINITY
        } else {
            self.0
        };
        let b = if other.0.is_nan() {
            f32::NEG_INFINITY
        } else {
            other.0
        };
        a.total_cmp(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn top_k_matches_sort(scores in proptest::collection::vec(-10.0f32..10.0, 0..200), k in 0usize..50) {
            let items: Vec<ScoredItem> = scores.iter().enumerate().map(|(i, &s)| ScoredItem { item: i as u32, score: s }).collect();
            let got = top_k(items.iter().copied(), k);
            let mut want = items.clone();
            want.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
            want.truncate(k);
            prop_assert_eq!(got, want);
        }
    }
}
