//! Content source: items of the user's preferred categories, best-quality first within each
//! category, scored by preference × item quality.

use std::path::Path;

use super::{top_k, CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::table::{Column, DataError, Table};

/// How many of the user's top categories are searched.
const TOP_CATEGORIES: usize = 6;

/// Per-category item lists ordered by a quality score in [0, 1] (popularity-based, from the builder).
#[derive(Debug, Clone, Default)]
pub struct CategoryIndex {
    offsets: Vec<u32>,
    items: Vec<u32>,
    quality: Vec<f32>,
}

impl CategoryIndex {
    /// `lists[c]` = (item, quality) of category c; sorted here by quality descending.
    pub fn from_lists(mut lists: Vec<Vec<ScoredItem>>) -> Self {
        let mut s = CategoryIndex {
            offsets: Vec::with_capacity(lists.len() + 1),
            ..Default::default()
        };
        for l in lists.iter_mut() {
            l.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
            s.offsets.push(s.items.len() as u32);
            for it in l.iter() {
                s.items.push(it.item);
                s.quality.push(it.score);
            }
        }
        s.offsets.push(s.items.len() as u32);
        s
    }

    pub fn n_categories(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Items of category `c`, best first.
    pub fn items(&self, c: usize) -> impl Iterator<Item = ScoredItem> + '_ {
        let (a, b) = match (self.offsets.get(c), self.offsets.get(c + 1)) {
            (Some(&a), Some(&b)) => (a as usize, b as usize),
            _ => (0, 0),
        };
        self.items[a..b]
            .iter()
            .zip(&self.quality[a..b])
            .map(|(&item, &score)| ScoredItem { item, score })
    }

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let mut cats = Vec::with_capacity(self.items.len());
        for c in 0..self.n_categories() {
            let n = (self.offsets[c + 1] - self.offsets[c]) as usize;
            cats.extend(std::iter::repeat_n(c as u32, n));
        }
        Table::new()
            .with("category", Column::U32(cats))
            .with("item", Column::U32(self.items.clone()))
            .with("quality", Column::F32(self.quality.clone()))
            .meta("n_categories", self.n_categories())
            .write(path)
    }

    pub fn load(path: &Path, n_items: usize) -> Result<Self, DataError> {
        let mut t = Table::read(path)?;
        let bad = |m: String| DataError::format(path, m);
        let n = t.meta_usize("n_categories").map_err(bad)?;
        let cats = t.take_u32("category").map_err(bad)?;
        let items = t.take_u32("item").map_err(bad)?;
        let quality = t.take_f32("quality").map_err(bad)?;
        let mut lists: Vec<Vec<ScoredItem>> = vec![Vec::new(); n];
        for ((&c, &i), &q) in cats.iter().zip(&items).zip(&quality) {
            if c as usize >= n || i as usize >= n_items {
                return Err(bad(format!("row ({c}, {i}) out of range")));
            }
            lists[c as usize].push(ScoredItem { item: i, score: q });
        }
        Ok(Self::from_lists(lists))
    }
}

pub struct ContentSource {
    index: CategoryIndex,
}

impl ContentSource {
    pub fn new(index: CategoryIndex) -> Self {
        Self { index }
    }

    pub fn index(&self) -> &CategoryIndex {
        &self.index
    }
}

impl CandidateSource for ContentSource {
    fn id(&self) -> SourceId {
        SourceId::Content
    }

    fn retrieve(
        &self,
        q: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError> {
        let mut cats: Vec<(usize, f32)> = q
            .category_prefs
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, p)| *p > 0.0 && p.is_finite())
            .collect();
        cats.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cats.truncate(TOP_CATEGORIES);
        let mut found: Vec<ScoredItem> = Vec::new();
        for &(c, pref) in &cats {
            // Each category can contribute at most `quota` allowed items; scan past disallowed
            // ones so narrow filters still fill the quota.
            let mut taken = 0;
            for it in self.index.items(c) {
                if taken >= quota {
                    break;
                }
                if (q.allow)(it.item) {
                    found.push(ScoredItem {
                        item: it.item,
                        score: pref * (0.3 + 0.7 * it.score),
                    });
                    taken += 1;
                }
            }
        }
        // An item in several preferred categories keeps its best score.
        found.sort_by(|a, b| a.item.cmp(&b.item).then(b.score.total_cmp(&a.score)));
        found.dedup_by_key(|s| s.item);
        Ok(top_k(found.into_iter(), quota))
    }
}
