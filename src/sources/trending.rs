//! Trending source: items ranked by time-decayed engagement velocity blended with freshness, as
//! computed by the nightly build at its cutoff (and, later, moved by streaming counters).

use std::path::Path;

use super::{CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::bundle::{BundleError, Column, Table};

/// Items by decreasing trending score.
#[derive(Debug, Clone, Default)]
pub struct TrendingList {
    items: Vec<ScoredItem>,
}

impl TrendingList {
    pub fn new(mut items: Vec<ScoredItem>) -> Self {
        items.retain(|s| s.score.is_finite());
        items.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        Self { items }
    }

    pub fn items(&self) -> &[ScoredItem] {
        &self.items
    }

    pub fn save(&self, path: &Path) -> Result<(), BundleError> {
        Table::new()
            .with(
                "item",
                Column::U32(self.items.iter().map(|s| s.item).collect()),
            )
            .with(
                "score",
                Column::F32(self.items.iter().map(|s| s.score).collect()),
            )
            .write(path)
    }

    pub fn load(path: &Path, n_items: usize) -> Result<Self, BundleError> {
        let mut t = Table::read(path)?;
        let bad = |m: String| BundleError::format(path, m);
        let items = t.take_u32("item").map_err(bad)?;
        let scores = t.take_f32("score").map_err(bad)?;
        if let Some(&i) = items.iter().find(|&&i| i as usize >= n_items) {
            return Err(bad(format!("item {i} out of range")));
        }
        Ok(Self::new(
            items
                .into_iter()
                .zip(scores)
                .map(|(item, score)| ScoredItem { item, score })
                .collect(),
        ))
    }
}

pub struct TrendingSource {
    list: TrendingList,
}

impl TrendingSource {
    pub fn new(list: TrendingList) -> Self {
        Self { list }
    }

    pub fn list(&self) -> &TrendingList {
        &self.list
    }
}

impl CandidateSource for TrendingSource {
    fn id(&self) -> SourceId {
        SourceId::Trending
    }

    fn retrieve(
        &self,
        q: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError> {
        Ok(self
            .list
            .items
            .iter()
            .filter(|s| (q.allow)(s.item))
            .take(quota)
            .copied()
            .collect())
    }
}
