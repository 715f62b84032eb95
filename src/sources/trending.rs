//! Trending source: items ranked by time-decayed engagement velocity blended with freshness, as
//! computed by the nightly build at its cutoff, moved by the live streaming counters that event
//! ingestion keeps ([`TrendingSource::set_live`]).

use std::path::Path;
use std::sync::{Arc, RwLock};

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
    /// The build's list.
    list: TrendingList,
    /// What requests read: the build's list, or its blend with the live counters.
    current: RwLock<Arc<TrendingList>>,
    /// The live list and weight `current` was blended from: an unchanged refresh is skipped
    /// (the blend walks the whole build list).
    applied: std::sync::Mutex<(Vec<ScoredItem>, f32)>,
}

impl TrendingSource {
    pub fn new(list: TrendingList) -> Self {
        let current = RwLock::new(Arc::new(list.clone()));
        Self {
            list,
            current,
            applied: std::sync::Mutex::new((Vec::new(), 0.0)),
        }
    }

    /// The build's list.
    pub fn list(&self) -> &TrendingList {
        &self.list
    }

    /// The list requests read now.
    pub fn current(&self) -> Arc<TrendingList> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Blends live counter scores (`live`: item → score ≥ 0, any order) into the build's list:
    /// each side is scaled by its maximum, then `weight`·live + (1 − weight)·build. Items without
    /// live events keep the build's order (their blended score is a scaled copy), so the merge
    /// is linear apart from sorting the live items.
    pub fn set_live(&self, live: &[ScoredItem], weight: f32) {
        let w = weight.clamp(0.0, 1.0);
        if let Ok(mut applied) = self.applied.lock() {
            if applied.0 == live && applied.1 == w {
                return;
            }
            *applied = (live.to_vec(), w);
        }
        let build_max = self
            .list
            .items
            .iter()
            .map(|s| s.score)
            .fold(0.0f32, f32::max);
        let live_max = live.iter().map(|s| s.score).fold(0.0f32, f32::max);
        let scale = |x: f32, max: f32| if max > 0.0 { x / max } else { 0.0 };
        let blended = if live_max <= 0.0 || w == 0.0 {
            self.list.clone()
        } else {
            // Live items the build's list does not hold are what remains after the walk.
            let mut live_of: std::collections::HashMap<u32, f32> =
                live.iter().map(|s| (s.item, s.score)).collect();
            let mut hot: Vec<ScoredItem> = Vec::with_capacity(live.len());
            let mut cold: Vec<ScoredItem> = Vec::with_capacity(self.list.items.len());
            for s in &self.list.items {
                let b = (1.0 - w) * scale(s.score.max(0.0), build_max);
                match live_of.remove(&s.item) {
                    Some(l) => hot.push(ScoredItem {
                        item: s.item,
                        score: b + w * scale(l, live_max),
                    }),
                    None => cold.push(ScoredItem {
                        item: s.item,
                        score: b,
                    }),
                }
            }
            hot.extend(live_of.into_iter().map(|(item, l)| ScoredItem {
                item,
                score: w * scale(l, live_max),
            }));
            hot.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
            // Both runs are sorted: merge them.
            let mut items = Vec::with_capacity(hot.len() + cold.len());
            let (mut h, mut c) = (hot.into_iter().peekable(), cold.into_iter().peekable());
            loop {
                let take_hot = match (h.peek(), c.peek()) {
                    (Some(a), Some(b)) => a.score >= b.score,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let next = if take_hot { h.next() } else { c.next() };
                items.extend(next);
            }
            TrendingList { items }
        };
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(blended),
            Err(p) => *p.into_inner() = Arc::new(blended),
        }
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
            .current()
            .items
            .iter()
            .filter(|s| (q.allow)(s.item))
            .take(quota)
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn si(item: u32, score: f32) -> ScoredItem {
        ScoredItem { item, score }
    }

    #[test]
    fn live_counters_move_the_list_and_keep_it_sorted() {
        let src = TrendingSource::new(TrendingList::new(vec![
            si(1, 10.0),
            si(2, 8.0),
            si(3, 6.0),
            si(4, 1.0),
        ]));
        assert_eq!(src.current().items()[0].item, 1);
        // A burst on item 4 and on item 9 (unknown to the build).
        src.set_live(&[si(4, 50.0), si(9, 40.0)], 0.5);
        let cur = src.current();
        let order: Vec<u32> = cur.items().iter().map(|s| s.item).collect();
        assert_eq!(order, vec![4, 1, 9, 2, 3]);
        assert!(cur.items().windows(2).all(|w| w[0].score >= w[1].score));
        // No live events: the build's list again.
        src.set_live(&[], 0.5);
        assert_eq!(src.current().items(), src.list().items());
    }
}
