//! The one ranker-input encoder. The server scores rows from here and the index-builder trains
//! on rows from here, so a model never sees one encoding in training and another in serving.
//! What differs between the two callers is only where the numbers come from: the bundle plus
//! online overrides (server) or the build's in-memory stage (builder), both as an [`ItemTable`].

use std::collections::HashMap;

use crate::catalog::Catalog;
use crate::features::online::{ItemOverride, UserFeatures};
use crate::merge::Candidate;
use crate::ranking::input::{
    push_row, CandidateSignals, DeviceKind, ItemSignals, RecentItem, UserSignals,
    ENGAGEMENT_HALF_LIVES_DAYS, INPUT_DIM, SEQ_LEN,
};
use crate::ItemIdx;

/// Category preferences at or below this are not stored online (the builder drops them from
/// the `category_prefs` feature), so the encoder treats them as zero on both sides.
pub const MIN_PREF: f32 = 1e-4;

/// Per-item inputs of the encoder, indexed by dense item index.
#[derive(Clone, Copy)]
pub struct ItemTable<'a> {
    pub catalog: &'a Catalog,
    /// n_items × dim, row-major.
    pub embeddings: &'a [f32],
    pub dim: usize,
    /// Total interaction weight as of the cutoff.
    pub popularity: &'a [f32],
    pub trending: &'a [f32],
    /// Per [`ENGAGEMENT_HALF_LIVES_DAYS`]: each item's decayed engagement per day (empty =
    /// unknown, encoded as none).
    pub engagement: [&'a [f32]; ENGAGEMENT_HALF_LIVES_DAYS.len()],
}

impl<'a> ItemTable<'a> {
    pub fn embedding(&self, i: ItemIdx) -> Option<&'a [f32]> {
        let o = i as usize * self.dim;
        self.embeddings.get(o..o + self.dim)
    }
}

/// What the encoder needs about the user.
#[derive(Debug, Clone, Default)]
pub struct RankUser {
    pub embedding: Option<Vec<f32>>,
    /// Per category (catalog order): the user's preferences, or the prior when they have none.
    pub prefs: Vec<f32>,
    pub history_len: u32,
    pub device: DeviceKind,
    pub has_session: bool,
    /// Ages are measured from here (the request's time; the cutoff in training).
    pub now: i64,
    /// The user's most recent distinct items, most recent first: the session, then what events
    /// streamed since the build, then the stored history (the sources' `recent_items`).
    pub recent: Vec<ItemIdx>,
    /// When the user last interacted (None = unknown); `now` when they are active right now
    /// (a session, or events since the build).
    pub last_active: Option<i64>,
}

impl RankUser {
    /// Days since the user last interacted, as of `now` (None = unknown).
    pub fn gap_days(&self) -> Option<f32> {
        self.last_active
            .map(|t| (self.now - t).max(0) as f32 / 86_400.0)
    }

    /// The user as the server knows them: their online features (None = unknown user).
    pub fn from_features(
        catalog: &Catalog,
        prior: &[f32],
        f: Option<&UserFeatures>,
        device: DeviceKind,
        has_session: bool,
        now: i64,
        recent: &[ItemIdx],
    ) -> Self {
        let mut prefs = vec![0.0f32; catalog.categories.len()];
        if let Some(f) = f {
            for (name, &w) in &f.category_prefs {
                if let Some(c) = catalog.category_idx(name) {
                    prefs[c as usize] = w;
                }
            }
        }
        RankUser {
            embedding: f.and_then(|f| f.embedding.clone()),
            prefs: prefs_or_prior(prefs, prior),
            history_len: f.map_or(0, |f| f.history_len),
            device,
            has_session,
            now,
            recent: recent[..recent.len().min(SEQ_LEN)].to_vec(),
            last_active: if has_session || f.is_some_and(|f| !f.stream_recent.is_empty()) {
                Some(now)
            } else {
                f.and_then(|f| f.last_active_at)
            },
        }
    }
}

/// The user's preferences with what is not stored online zeroed, or the category prior when
/// nothing is left (a user only events have told us about, or a cold one).
pub fn prefs_or_prior(mut prefs: Vec<f32>, prior: &[f32]) -> Vec<f32> {
    for p in &mut prefs {
        if !(p.is_finite() && *p > MIN_PREF) {
            *p = 0.0;
        }
    }
    if prefs.iter().any(|&p| p > 0.0) {
        prefs
    } else {
        prior.to_vec()
    }
}

/// Appends one ranker input row per candidate to `rows`; `overrides` are the online item
/// features that replace the table's (empty in training).
pub fn encode_rows(
    items: &ItemTable,
    user: &RankUser,
    cands: &[Candidate],
    overrides: &HashMap<ItemIdx, ItemOverride>,
    rows: &mut Vec<f32>,
) {
    let zero = vec![0.0f32; items.dim];
    let recent: Vec<RecentItem> = user
        .recent
        .iter()
        .take(SEQ_LEN)
        .map(|&i| {
            RecentItem::new(
                items.embedding(i).unwrap_or(&zero),
                items.catalog.get(i).map_or(&[][..], |it| &it.categories),
            )
        })
        .collect();
    let u = UserSignals {
        embedding: user.embedding.as_deref(),
        category_prefs: &user.prefs,
        history_len: user.history_len,
        device: user.device,
        has_session: user.has_session,
        recent: &recent,
        gap_days: user.gap_days(),
    };
    rows.reserve(cands.len() * INPUT_DIM);
    for c in cands {
        let Some(item) = items.catalog.get(c.item) else {
            rows.resize(rows.len() + INPUT_DIM, 0.0);
            continue;
        };
        let o = overrides.get(&c.item).copied().unwrap_or_default();
        let at = c.item as usize;
        let pop = o
            .popularity
            .unwrap_or_else(|| items.popularity.get(at).copied().unwrap_or(0.0));
        let published = o.published_at.unwrap_or(item.published_at);
        let i = ItemSignals {
            embedding: items.embedding(c.item).unwrap_or(&zero),
            categories: &item.categories,
            log_popularity: pop.max(0.0).ln_1p(),
            trending: o
                .trending
                .unwrap_or_else(|| items.trending.get(at).copied().unwrap_or(0.0)),
            age_days: ((user.now - published) as f32 / 86_400.0).max(0.0),
            promoted: o.promoted.unwrap_or(item.promoted),
            engagement: std::array::from_fn(|k| {
                o.engagement[k]
                    .unwrap_or_else(|| items.engagement[k].get(at).copied().unwrap_or(0.0))
            }),
        };
        let cs = CandidateSignals {
            source_scores: c.source_scores,
            source_mask: c.source_mask,
            source_ranks: c.source_ranks,
            merged_score: c.score,
        };
        push_row(rows, &u, &i, &cs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefs_fall_back_to_the_prior_only_when_nothing_is_stored() {
        let prior = [0.5, 0.5];
        assert_eq!(prefs_or_prior(vec![0.0, 0.0], &prior), prior.to_vec());
        // Values the online feature would not keep count as absent.
        assert_eq!(
            prefs_or_prior(vec![MIN_PREF, f32::NAN], &prior),
            prior.to_vec()
        );
        assert_eq!(prefs_or_prior(vec![0.3, 5e-5], &prior), vec![0.3, 0.0]);
    }

    #[test]
    fn negative_popularity_encodes_like_zero() {
        let catalog = Catalog::new(
            vec![crate::catalog::Item {
                id: 7,
                title: String::new(),
                categories: vec![0],
                creator_id: 0,
                published_at: 0,
                flagged: false,
                promoted: false,
            }],
            vec!["a".into()],
        );
        let cand = Candidate {
            item: 0,
            source_scores: [0.0; crate::sources::N_SOURCES],
            source_mask: 1,
            source_ranks: [0; crate::sources::N_SOURCES],
            score: 1.0,
        };
        let encode = |pop: f32| {
            let table = ItemTable {
                catalog: &catalog,
                embeddings: &[],
                dim: 0,
                popularity: &[pop],
                trending: &[0.0],
                engagement: [&[], &[]],
            };
            let mut rows = Vec::new();
            encode_rows(
                &table,
                &RankUser::default(),
                std::slice::from_ref(&cand),
                &HashMap::new(),
                &mut rows,
            );
            rows
        };
        assert_eq!(encode(-3.0), encode(0.0));
        assert_eq!(encode(-3.0).len(), INPUT_DIM);
    }
}
