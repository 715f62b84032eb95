//! The fallback stage: when retrieval found nothing, the backups in [`CHAIN`] are tried in
//! order (the user's nightly batch list, then global popularity); and whatever the list, it is
//! topped up from popularity so that k servable items exist whenever the catalog has them (cold
//! users, narrow filters).

use std::collections::HashSet;

use super::query::QueryState;
use crate::api::Degradation;
use crate::bundle::Bundle;
use crate::features::online::UserFeatures;
use crate::merge::Candidate;
use crate::rerank::Origin;
use crate::sources::N_SOURCES;
use crate::ItemIdx;

/// A list served when retrieval gives nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backup {
    /// The user's precomputed list from the nightly build.
    Batch,
    /// Every item, most popular first.
    Popularity,
}

/// The order backups are tried in.
pub const CHAIN: [Backup; 2] = [Backup::Batch, Backup::Popularity];

impl Backup {
    pub fn degradation(self) -> Degradation {
        match self {
            Backup::Batch => Degradation::Batch,
            Backup::Popularity => Degradation::Popularity,
        }
    }

    fn origin(self) -> Origin {
        match self {
            Backup::Batch => Origin::Batch,
            Backup::Popularity => Origin::Popularity,
        }
    }
}

/// The candidates ranking will see, each with where it came from.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    pub list: Vec<Candidate>,
    pub origins: Vec<Origin>,
    /// Set when a backup replaced retrieval.
    pub backup: Option<Backup>,
}

pub struct FallbackStage {
    /// Every item, most popular first.
    popular: Vec<ItemIdx>,
}

impl FallbackStage {
    pub fn new(bundle: &Bundle) -> Self {
        let mut popular: Vec<ItemIdx> = (0..bundle.catalog.len() as ItemIdx).collect();
        let p = |i: ItemIdx| bundle.popularity.get(i as usize).copied().unwrap_or(0.0);
        popular.sort_by(|&a, &b| p(b).total_cmp(&p(a)).then(a.cmp(&b)));
        FallbackStage { popular }
    }

    pub fn fill(
        &self,
        bundle: &Bundle,
        merged: Vec<Candidate>,
        user: Option<&UserFeatures>,
        q: &QueryState,
        k: usize,
    ) -> Candidates {
        let mut out = if merged.is_empty() {
            CHAIN
                .iter()
                .map(|&b| (b, self.backup(b, bundle, user, q, k)))
                .find(|(_, list)| !list.is_empty())
                .map(|(b, list)| Candidates {
                    origins: vec![b.origin(); list.len()],
                    list,
                    backup: Some(b),
                })
                .unwrap_or(Candidates {
                    backup: Some(Backup::Popularity),
                    ..Candidates::default()
                })
        } else {
            Candidates {
                origins: vec![Origin::Retrieval; merged.len()],
                list: merged,
                backup: None,
            }
        };
        let top_up = self.popular_after(bundle, &out.list, q, k);
        out.origins
            .extend(std::iter::repeat_n(Origin::Popularity, top_up.len()));
        out.list.extend(top_up);
        out
    }

    fn backup(
        &self,
        b: Backup,
        bundle: &Bundle,
        user: Option<&UserFeatures>,
        q: &QueryState,
        k: usize,
    ) -> Vec<Candidate> {
        match b {
            Backup::Batch => {
                let items: Vec<ItemIdx> = user
                    .map(|f| {
                        f.batch_recs
                            .iter()
                            .filter_map(|&id| bundle.catalog.idx(id))
                            .filter(|&i| q.allows(bundle, i))
                            .collect()
                    })
                    .unwrap_or_default();
                let n = items.len() as f32;
                items
                    .into_iter()
                    .enumerate()
                    .map(|(r, item)| unsourced(item, 1.0 - r as f32 / (n + 1.0)))
                    .collect()
            }
            Backup::Popularity => self.popular_after(bundle, &[], q, k),
        }
    }

    /// Popular items beyond `list`, below its lowest score, until k servable items exist.
    /// Margin: online flags may still drop a few.
    fn popular_after(
        &self,
        bundle: &Bundle,
        list: &[Candidate],
        q: &QueryState,
        k: usize,
    ) -> Vec<Candidate> {
        let servable = list.iter().filter(|c| q.allows(bundle, c.item)).count();
        let want = k + k / 4 + 2;
        if servable >= want {
            return Vec::new();
        }
        let present: HashSet<ItemIdx> = list.iter().map(|c| c.item).collect();
        let floor = list.iter().map(|c| c.score).fold(0.0f32, f32::min);
        let fill: Vec<ItemIdx> = self
            .popular
            .iter()
            .copied()
            .filter(|i| !present.contains(i) && q.allows(bundle, *i))
            .take(want - servable)
            .collect();
        let n = fill.len() as f32;
        fill.into_iter()
            .enumerate()
            .map(|(r, item)| unsourced(item, floor - 1.0 - r as f32 / (n + 1.0)))
            .collect()
    }
}

fn unsourced(item: ItemIdx, score: f32) -> Candidate {
    Candidate {
        item,
        source_scores: [0.0; N_SOURCES],
        source_mask: 0,
        source_ranks: [0; N_SOURCES],
        score,
    }
}
