//! A "stage": every retrieval model built from one slice of events as of one cutoff (embeddings,
//! ANN graph, CF neighbours, category preferences and index, trending, popularity), plus the
//! offline retrieval runner that queries them through the engine's own candidate sources and merge.
//!
//! A build makes two stages when it trains rankers: one as of an earlier label cutoff (the
//! rankers learn from its candidates without seeing the labels), and the serving stage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use funnel::catalog::Catalog;
use funnel::features::online::usable_embedding;
use funnel::merge::Candidate;
use funnel::pipeline::merge::MergeStage;
use funnel::pipeline::retrieval::SourceSet;
use funnel::ranking::encode::{encode_rows, prefs_or_prior, ItemTable, RankUser};
use funnel::ranking::input::DeviceKind;
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
    pub ann_graph: Arc<FrozenHnsw>,
    pub cf: Arc<CfSource>,
    pub content: Arc<ContentSource>,
    pub trend: Arc<TrendingSource>,
    /// The server's retrieval and merge stages over this stage's sources.
    pub sources: SourceSet,
    pub merge: MergeStage,
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

        let cf = Arc::new(CfSource::new(cf_n));
        let content = Arc::new(ContentSource::new(cats));
        let trend = Arc::new(TrendingSource::new(trending.list.clone()));
        let sources: Vec<Arc<dyn CandidateSource>> = vec![
            Arc::new(AnnSource::new(graph.clone())),
            cf.clone(),
            content.clone(),
            trend.clone(),
        ];
        Ok(Stage {
            cutoff,
            n_categories: prior.len(),
            hist,
            emb,
            prefs,
            prior,
            ann_graph: graph,
            cf,
            content,
            trend,
            sources: SourceSet::offline(sources, &cfg.serving.quotas),
            merge: MergeStage::new(&cfg.serving.merge),
            trending,
        })
    }

    pub fn user_prefs(&self, u: UserIdx) -> &[f32] {
        let n = self.n_categories;
        self.prefs
            .get(u as usize * n..(u as usize + 1) * n)
            .unwrap_or(&[])
    }

    /// Runs the server's sources and merge for a known user, as the server would with the same
    /// data, excluding what the user has seen and flagged items.
    pub fn retrieve(&self, ds: &Dataset, u: UserIdx) -> Retrieved {
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
        let per_source = self.sources.retrieve_now(&q);
        let merged = self.merge.run(&per_source);
        Retrieved { per_source, merged }
    }

    /// The encoder's view of this stage's items (what the bundle's `item_table` serves).
    pub fn item_table<'a>(&'a self, catalog: &'a Catalog) -> ItemTable<'a> {
        ItemTable {
            catalog,
            embeddings: &self.emb.items,
            dim: self.emb.dim,
            popularity: &self.trending.popularity,
            trending: &self.trending.score,
        }
    }

    /// The user as the server will know them from the online features this stage writes
    /// (`online_features.rs`), with no device and no session.
    pub fn rank_user(&self, u: UserIdx) -> RankUser {
        let n = self.hist.len(u) as u32;
        let known = n > 0;
        RankUser {
            // As `UserFeatures::from_row` reads the embedding back.
            embedding: known
                .then(|| self.emb.user(u))
                .filter(|e| usable_embedding(e))
                .map(<[f32]>::to_vec),
            prefs: prefs_or_prior(
                if known {
                    self.user_prefs(u).to_vec()
                } else {
                    Vec::new()
                },
                &self.prior,
            ),
            history_len: n,
            device: DeviceKind::Unknown,
            has_session: false,
            now: self.cutoff,
        }
    }

    /// Ranker input rows for a user's candidates, through the engine's one encoder.
    pub fn encode(&self, ds: &Dataset, u: UserIdx, cands: &[Candidate], rows: &mut Vec<f32>) {
        let table = self.item_table(&ds.catalog);
        encode_rows(&table, &self.rank_user(u), cands, &HashMap::new(), rows);
    }
}

pub struct Retrieved {
    pub per_source: Vec<(SourceId, Vec<ScoredItem>)>,
    pub merged: Vec<Candidate>,
}
