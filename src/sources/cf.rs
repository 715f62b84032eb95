//! Collaborative-filtering source: item→item neighbours (built nightly from co-occurrence with
//! cosine weighting) of the user's recent items, accumulated with a recency decay.

use std::collections::HashMap;
use std::path::Path;

use super::{top_k, CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::table::{Column, DataError, Table};
use crate::ItemIdx;

/// How many recent items seed the lookup, and how fast older ones fade.
const MAX_SEEDS: usize = 30;
const RECENCY_DECAY: f32 = 0.92;

/// Item→item neighbour lists in CSR form, best neighbour first.
#[derive(Debug, Clone, Default)]
pub struct CfNeighbors {
    offsets: Vec<u32>,
    neighbors: Vec<u32>,
    scores: Vec<f32>,
}

impl CfNeighbors {
    /// `lists[i]` = neighbours of item i, best first.
    pub fn from_lists(lists: Vec<Vec<ScoredItem>>) -> Self {
        let mut s = CfNeighbors {
            offsets: Vec::with_capacity(lists.len() + 1),
            ..Default::default()
        };
        for l in lists {
            s.offsets.push(s.neighbors.len() as u32);
            for it in l {
                s.neighbors.push(it.item);
                s.scores.push(it.score);
            }
        }
        s.offsets.push(s.neighbors.len() as u32);
        s
    }

    pub fn n_items(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn n_edges(&self) -> usize {
        self.neighbors.len()
    }

    pub fn neighbors(&self, item: ItemIdx) -> impl Iterator<Item = ScoredItem> + '_ {
        let i = item as usize;
        let (a, b) = match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => (a as usize, b as usize),
            _ => (0, 0),
        };
        self.neighbors[a..b]
            .iter()
            .zip(&self.scores[a..b])
            .map(|(&item, &score)| ScoredItem { item, score })
    }

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let mut items = Vec::with_capacity(self.neighbors.len());
        for i in 0..self.n_items() {
            let n = (self.offsets[i + 1] - self.offsets[i]) as usize;
            items.extend(std::iter::repeat_n(i as u32, n));
        }
        Table::new()
            .with("item", Column::U32(items))
            .with("neighbor", Column::U32(self.neighbors.clone()))
            .with("score", Column::F32(self.scores.clone()))
            .meta("n_items", self.n_items())
            .write(path)
    }

    pub fn load(path: &Path) -> Result<Self, DataError> {
        let mut t = Table::read(path)?;
        let bad = |m: String| DataError::format(path, m);
        let n = t.meta_usize("n_items").map_err(bad)?;
        let items = t.take_u32("item").map_err(bad)?;
        let neighbors = t.take_u32("neighbor").map_err(bad)?;
        let scores = t.take_f32("score").map_err(bad)?;
        let mut offsets = vec![0u32; n + 1];
        let mut prev = 0u32;
        for (&i, &nb) in items.iter().zip(&neighbors) {
            if i as usize >= n || nb as usize >= n || i < prev {
                return Err(bad(format!("row ({i}, {nb}) out of range or out of order")));
            }
            prev = i;
            offsets[i as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        Ok(Self {
            offsets,
            neighbors,
            scores,
        })
    }
}

pub struct CfSource {
    neighbors: CfNeighbors,
}

impl CfSource {
    pub fn new(neighbors: CfNeighbors) -> Self {
        Self { neighbors }
    }

    pub fn neighbors(&self) -> &CfNeighbors {
        &self.neighbors
    }
}

impl CandidateSource for CfSource {
    fn id(&self) -> SourceId {
        SourceId::Cf
    }

    fn retrieve(
        &self,
        q: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError> {
        let mut acc: HashMap<ItemIdx, f32> = HashMap::new();
        let mut w = 1.0f32;
        for &seed in q.recent_items.iter().take(MAX_SEEDS) {
            for nb in self.neighbors.neighbors(seed) {
                if (q.allow)(nb.item) {
                    *acc.entry(nb.item).or_insert(0.0) += w * nb.score;
                }
            }
            w *= RECENCY_DECAY;
        }
        Ok(top_k(
            acc.into_iter()
                .map(|(item, score)| ScoredItem { item, score }),
            quota,
        ))
    }
}
