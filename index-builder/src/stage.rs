//! A "stage": every retrieval model built from one slice of events as of one cutoff (embeddings,
//! ANN graph, CF neighbours, category preferences and index, trending, popularity), plus the
//! offline retrieval runner that queries them through the engine's own candidate sources and merge.
//!
//! A build makes two stages when it trains rankers: one as of an earlier label cutoff (the
//! rankers learn from its candidates without seeing the labels), and the serving stage.

use std::collections::HashSet;
use std::sync::Arc;

use funnel::merge::{merge, Candidate};
use funnel::ranking::input::{
    encode_row, CandidateSignals, DeviceKind, ItemSignals, UserSignals, INPUT_DIM,
};
use funnel::sources::ann::hnsw::FrozenHnsw;
use funnel::sources::ann::AnnSource;
use funnel::sources::cf::CfSource;
use funnel::sources::content::ContentSource;
use funnel::sources::trending::TrendingSource;
use funnel::sources::{CandidateSource, RetrievalQuery, ScoredItem, SourceId};
use funnel::{ItemIdx, UserIdx};

use crate::config::BuildConfig;
use crate::dataset::{Dataset, Event, UserHistory};
use crate::embed::{train_als, Embeddings};
use crate::progress::Progress;
use crate::trending::Trending;
use crate::{cf, content, trending};

/// How many recent items make up a user's query (CF seeds, ranker history).
pub const RECENT_ITEMS: usize = 50;

pub struct Stage {
    pub cutoff: i64,
    pub hist: UserHistory,
    pub emb: Embeddings,
    pub n_categories: usize,
    /// n_users × n_categories.
    pub prefs: Vec<f32>,
    pub prior: Vec<f32>,
    pub trending: Trending,
    pub ann: AnnSource,
    pub ann_graph: Arc<FrozenHnsw>,
    pub cf: CfSource,
    pub content: ContentSource,
    pub trend: TrendingSource,
}

impl Stage {
    pub fn build(
        ds: &Dataset,
        events: &[Event],
        cutoff: i64,
        cfg: &BuildConfig,
        label: &str,
        progress: &Progress,
    ) -> Result<Self, String> {
        let (n_u, n_i) = (ds.n_users(), ds.n_items());
        let hist = UserHistory::new(n_u, events);

        let bar = progress.bar(
            &format!("{label}: embeddings (ALS)"),
            cfg.als.iterations as u64,
        );
        let emb = train_als(n_u, n_i, events, &cfg.als, |i, _| {
            bar.set_position(i as u64)
        });
        bar.finish();

        let bar = progress.spinner(&format!("{label}: ANN index (hnsw_rs)"));
        let graph = Arc::new(FrozenHnsw::build(emb.items.clone(), emb.dim, cfg.hnsw)?);
        bar.finish();

        let bar = progress.spinner(&format!("{label}: CF neighbours"));
        let cf_n = cf::build(n_i, &hist, &cfg.cf);
        bar.finish();

        let bar = progress.spinner(&format!("{label}: content, trending, popularity"));
        let trending = trending::build(&ds.catalog, events, cutoff, &cfg.trending);
        let prior = content::category_prior(&ds.catalog, &hist);
        let prefs = content::user_preferences(&ds.catalog, &hist, &prior, &cfg.content);
        let cats = content::category_index(&ds.catalog, &trending.popularity);
        bar.finish();

        Ok(Stage {
            cutoff,
            n_categories: prior.len(),
            hist,
            emb,
            prefs,
            prior,
            ann: AnnSource::new(graph.clone()),
            ann_graph: graph,
            cf: CfSource::new(cf_n),
            content: ContentSource::new(cats),
            trend: TrendingSource::new(trending.list.clone()),
            trending,
        })
    }

    pub fn user_prefs(&self, u: UserIdx) -> &[f32] {
        let n = self.n_categories;
        self.prefs
            .get(u as usize * n..(u as usize + 1) * n)
            .unwrap_or(&[])
    }

    /// Runs the four sources and the merge for a known user, exactly as the server would with the
    /// same data, excluding what the user has seen and flagged items.
    pub fn retrieve(&self, ds: &Dataset, u: UserIdx, cfg: &BuildConfig) -> Retrieved {
        let seen: HashSet<ItemIdx> = self.hist.items(u).iter().copied().collect();
        let recent = self.hist.recent_distinct(u, RECENT_ITEMS);
        let has_history = !recent.is_empty();
        let allow =
            |i: ItemIdx| !seen.contains(&i) && ds.catalog.get(i).is_some_and(|it| !it.flagged);
        let q = RetrievalQuery {
            embedding: has_history.then(|| self.emb.user(u)),
            recent_items: &recent,
            category_prefs: if has_history { self.user_prefs(u) } else { &[] },
            allow: &allow,
        };
        let quotas = &cfg.quotas;
        let sources: [(&dyn CandidateSource, usize); 4] = [
            (&self.ann, quotas.ann),
            (&self.cf, quotas.cf),
            (&self.content, quotas.content),
            (&self.trend, quotas.trending),
        ];
        let per_source: Vec<(SourceId, Vec<ScoredItem>)> = sources
            .iter()
            .map(|(s, quota)| (s.id(), s.retrieve(&q, *quota).unwrap_or_default()))
            .collect();
        let merged = merge(&per_source, &cfg.merge);
        Retrieved { per_source, merged }
    }

    /// Ranker input rows for a user's candidates, through the engine's shared encoder.
    pub fn encode(&self, ds: &Dataset, u: UserIdx, cands: &[Candidate], rows: &mut Vec<f32>) {
        let recent_len = self.hist.len(u) as u32;
        let user = UserSignals {
            embedding: (recent_len > 0).then(|| self.emb.user(u)),
            category_prefs: if recent_len > 0 {
                self.user_prefs(u)
            } else {
                &self.prior
            },
            history_len: recent_len,
            device: DeviceKind::Unknown,
            has_session: false,
        };
        let start = rows.len();
        rows.resize(start + cands.len() * INPUT_DIM, 0.0);
        for (c, out) in cands.iter().zip(rows[start..].chunks_mut(INPUT_DIM)) {
            let Some(item) = ds.catalog.get(c.item) else {
                continue;
            };
            let pop = self
                .trending
                .popularity
                .get(c.item as usize)
                .copied()
                .unwrap_or(0.0);
            let item_s = ItemSignals {
                embedding: self.emb.item(c.item),
                categories: &item.categories,
                log_popularity: pop.ln_1p(),
                trending: self
                    .trending
                    .score
                    .get(c.item as usize)
                    .copied()
                    .unwrap_or(0.0),
                age_days: ((self.cutoff - item.published_at) as f32 / 86_400.0).max(0.0),
                promoted: item.promoted,
            };
            let cand = CandidateSignals {
                source_scores: c.source_scores,
                source_mask: c.source_mask,
                merged_score: c.score,
            };
            encode_row(&user, &item_s, &cand, out);
        }
    }
}

pub struct Retrieved {
    pub per_source: Vec<(SourceId, Vec<ScoredItem>)>,
    pub merged: Vec<Candidate>,
}
