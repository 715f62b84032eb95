//! Trending source: items ranked by time-decayed engagement velocity blended with freshness, as
//! computed by the nightly build at its cutoff, moved by the live streaming counters that event
//! ingestion keeps ([`TrendingSource::set_live`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::{CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::table::{Column, DataError, Table};

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

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
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

    pub fn load(path: &Path, n_items: usize) -> Result<Self, DataError> {
        let mut t = Table::read(path)?;
        let bad = |m: String| DataError::format(path, m);
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
    /// The build's score of each listed item, for blending a live item's two scores.
    build_score: HashMap<u32, f32>,
    build_max: f32,
    /// What requests read: the build's list under the live overlay.
    live: RwLock<Arc<LiveOverlay>>,
    /// The live list and weight the overlay was made from: an unchanged refresh is skipped.
    applied: std::sync::Mutex<(Vec<ScoredItem>, f32)>,
}

/// The live counters' items with their blended scores, over the build's list scaled by
/// `build_scale`. An item of `hot` is skipped where the build's list has it; every other item
/// keeps the build's order, so a request merges two sorted runs and a refresh costs only the
/// live items, never a walk of the build's list.
#[derive(Debug, Default)]
struct LiveOverlay {
    build_scale: f32,
    /// Best first.
    hot: Vec<ScoredItem>,
    in_hot: HashSet<u32>,
}

impl TrendingSource {
    pub fn new(list: TrendingList) -> Self {
        let build_max = list.items.iter().map(|s| s.score).fold(0.0f32, f32::max);
        let build_score = list.items.iter().map(|s| (s.item, s.score)).collect();
        Self {
            list,
            build_score,
            build_max,
            live: RwLock::new(Arc::new(LiveOverlay {
                build_scale: 1.0,
                ..LiveOverlay::default()
            })),
            applied: std::sync::Mutex::new((Vec::new(), 0.0)),
        }
    }

    /// The build's list.
    pub fn list(&self) -> &TrendingList {
        &self.list
    }

    fn overlay(&self) -> Arc<LiveOverlay> {
        match self.live.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Walks the list requests read now, best first, until `f` returns false.
    fn walk(&self, mut f: impl FnMut(ScoredItem) -> bool) {
        let o = self.overlay();
        let mut cold = self
            .list
            .items
            .iter()
            .filter(|s| !o.in_hot.contains(&s.item))
            .map(|s| ScoredItem {
                item: s.item,
                score: s.score * o.build_scale,
            })
            .peekable();
        let mut hot = o.hot.iter().copied().peekable();
        loop {
            let next = match (hot.peek(), cold.peek()) {
                (Some(a), Some(b)) if a.score >= b.score => hot.next(),
                (Some(_), None) => hot.next(),
                (_, Some(_)) => cold.next(),
                (None, None) => None,
            };
            match next {
                Some(s) if f(s) => {}
                _ => return,
            }
        }
    }

    /// The whole list requests read now (for inspection; requests walk it lazily).
    pub fn current(&self) -> TrendingList {
        let mut items = Vec::with_capacity(self.list.items.len());
        self.walk(|s| {
            items.push(s);
            true
        });
        TrendingList { items }
    }

    /// Blends live counter scores (`live`: item → score ≥ 0, any order) into the build's list:
    /// each side is scaled by its maximum, then `weight`·live + (1 − weight)·build. Items without
    /// live events keep the build's order (their blended score is a scaled copy), so only the
    /// live items are scored and sorted: O(live · log live).
    pub fn set_live(&self, live: &[ScoredItem], weight: f32) {
        let w = weight.clamp(0.0, 1.0);
        if let Ok(mut applied) = self.applied.lock() {
            if applied.0 == live && applied.1 == w {
                return;
            }
            *applied = (live.to_vec(), w);
        }
        let live_max = live.iter().map(|s| s.score).fold(0.0f32, f32::max);
        let scale = |x: f32, max: f32| if max > 0.0 { x / max } else { 0.0 };
        let overlay = if live_max <= 0.0 || w == 0.0 {
            LiveOverlay {
                build_scale: 1.0,
                ..LiveOverlay::default()
            }
        } else {
            let build_scale = scale(1.0 - w, self.build_max);
            let mut hot: Vec<ScoredItem> = Vec::with_capacity(live.len());
            let mut in_hot = HashSet::with_capacity(live.len());
            for s in live.iter().filter(|s| s.score.is_finite()) {
                if !in_hot.insert(s.item) {
                    continue;
                }
                let b = self.build_score.get(&s.item).map_or(0.0, |b| b.max(0.0));
                hot.push(ScoredItem {
                    item: s.item,
                    score: b * build_scale + w * scale(s.score.max(0.0), live_max),
                });
            }
            hot.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
            LiveOverlay {
                build_scale,
                hot,
                in_hot,
            }
        };
        match self.live.write() {
            Ok(mut g) => *g = Arc::new(overlay),
            Err(p) => *p.into_inner() = Arc::new(overlay),
        }
    }
}

impl CandidateSource for TrendingSource {
    fn needs_user(&self) -> bool {
        false
    }

    fn id(&self) -> SourceId {
        SourceId::Trending
    }

    fn retrieve(
        &self,
        q: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError> {
        let mut out = Vec::with_capacity(quota);
        if quota > 0 {
            self.walk(|s| {
                if (q.allow)(s.item) {
                    out.push(s);
                }
                out.len() < quota
            });
        }
        Ok(out)
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
