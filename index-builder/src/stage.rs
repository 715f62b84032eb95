//! A "stage": every retrieval model built from one slice of events as of one cutoff (embeddings,
//! ANN graph, CF neighbours, category preferences and index, trending, popularity), plus the
//! offline retrieval runner that queries them through the engine's own candidate sources and merge.
//!
//! A build makes two stages when it trains rankers: one as of an earlier label cutoff (the
//! rankers learn from its candidates without seeing the labels), and the serving stage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;

use funnel::catalog::Catalog;
use funnel::features::online::usable_embedding;
use funnel::merge::Candidate;
use funnel::pipeline::merge::MergeStage;
use funnel::pipeline::retrieval::SourceSet;
use funnel::ranking::encode::{encode_rows, prefs_or_prior, ItemTable, RankUser};
use funnel::ranking::input::{DeviceKind, SEQ_LEN};
use funnel::sources::ann::hnsw::FrozenHnsw;
use funnel::sources::ann::AnnSource;
use funnel::sources::cf::CfSource;
use funnel::sources::content::ContentSource;
use funnel::sources::trending::TrendingSource;
use funnel::sources::{CandidateSource, RetrievalQuery, ScoredItem, SourceId};
use funnel::{ItemIdx, UserIdx};

use crate::config::BuildConfig;
use crate::dataset::{Dataset, Event, UserHistory};
use crate::embed::{fill_cold_items, train_als, Embeddings};
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
    /// Trending and popularity as of earlier moments, oldest first (see [`Snapshot`]).
    pub snapshots: Vec<Snapshot>,
}

/// The time-varying item signals as of one moment: the trending feature, popularity and the
/// trending source's list. A training row for a request at time t is encoded with the signals
/// of the latest snapshot at or before t — as the server, whose bundle is rebuilt nightly, would
/// have seen them — not with those of the stage's cutoff, which may lie months later.
pub struct Snapshot {
    pub at: i64,
    pub trending: Trending,
    pub sources: SourceSet,
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
        let mut emb = train_als(n_u, n_i, events, &cfg.als, |i, _| {
            bar.set_position(i as u64)
        });
        let cold = fill_cold_items(&mut emb, &ds.catalog, cfg.als.cold_start_strength);
        bar.finish();
        tracing::info!(
            "{label}: content vectors for {} unseen items, {} light items blended, {} left zero",
            cold.filled,
            cold.blended,
            cold.still_zero
        );

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
        let sources = source_set(&graph, &cf, &content, trend.clone(), cfg);
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
            sources,
            merge: MergeStage::new(&cfg.serving.merge),
            trending,
            snapshots: Vec::new(),
        })
    }

    /// Adds a snapshot for each of `times` (deduplicated, sorted), from the `events` before it.
    pub fn add_snapshots(
        &mut self,
        ds: &Dataset,
        events: &[Event],
        times: &[i64],
        cfg: &BuildConfig,
    ) {
        let mut times = times.to_vec();
        times.sort_unstable();
        times.dedup();
        let made: Vec<Snapshot> = times
            .par_iter()
            .map(|&at| {
                // Events are time-sorted: everything before `at` is a prefix.
                let end = events.partition_point(|e| e.ts < at);
                let trending = trending::build(&ds.catalog, &events[..end], at, &cfg.trending);
                let trend = Arc::new(TrendingSource::new(trending.list.clone()));
                Snapshot {
                    at,
                    sources: source_set(&self.ann_graph, &self.cf, &self.content, trend, cfg),
                    trending,
                }
            })
            .collect();
        self.snapshots = made;
    }

    /// The latest snapshot at or before `t`; None at or after the cutoff (the stage's own
    /// signals are the ones then) or before the first snapshot.
    fn snapshot_at(&self, t: i64) -> Option<&Snapshot> {
        if t >= self.cutoff {
            return None;
        }
        let k = self.snapshots.partition_point(|s| s.at <= t);
        k.checked_sub(1).map(|k| &self.snapshots[k])
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
        self.retrieve_at(ds, u, i64::MAX)
    }

    /// [`Stage::retrieve`] for a request at `t`, with the trending source of the snapshot then.
    pub fn retrieve_at(&self, ds: &Dataset, u: UserIdx, t: i64) -> Retrieved {
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
        let sources = self.snapshot_at(t).map_or(&self.sources, |s| &s.sources);
        let per_source = sources.retrieve_now(&q);
        let merged = self.merge.run(&per_source);
        Retrieved { per_source, merged }
    }

    /// The encoder's view of this stage's items (what the bundle's `item_table` serves).
    pub fn item_table<'a>(&'a self, catalog: &'a Catalog) -> ItemTable<'a> {
        self.item_table_at(catalog, i64::MAX)
    }

    /// [`Stage::item_table`] with the popularity and trending of the snapshot at `t`.
    pub fn item_table_at<'a>(&'a self, catalog: &'a Catalog, t: i64) -> ItemTable<'a> {
        let tr = self.snapshot_at(t).map_or(&self.trending, |s| &s.trending);
        ItemTable {
            catalog,
            embeddings: &self.emb.items,
            dim: self.emb.dim,
            popularity: &tr.popularity,
            trending: &tr.score,
            engagement: tr.engagement.each_ref().map(Vec::as_slice),
        }
    }

    /// The user as the server will know them from the online features this stage writes
    /// (`online_features.rs`), with no device and no session, asking at the stage's cutoff.
    pub fn rank_user(&self, u: UserIdx) -> RankUser {
        self.rank_user_at(u, self.cutoff)
    }

    /// [`Stage::rank_user`] for a request at `now` (offline, a user is served when they come
    /// back: at the time of their first label or held-out interaction).
    pub fn rank_user_at(&self, u: UserIdx, now: i64) -> RankUser {
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
            now,
            // As the server reads `recent_items` back (no session, nothing streamed yet).
            recent: self.hist.recent_distinct(u, SEQ_LEN),
            // As `UserFeatures` reads `last_active_at` back.
            last_active: known.then(|| self.hist.ts[self.hist.range(u).end - 1]),
        }
    }

    /// Ranker input rows for a user's candidates asked for at `now`, through the engine's one
    /// encoder.
    pub fn encode(
        &self,
        ds: &Dataset,
        u: UserIdx,
        now: i64,
        cands: &[Candidate],
        rows: &mut Vec<f32>,
    ) {
        let table = self.item_table_at(&ds.catalog, now);
        encode_rows(
            &table,
            &self.rank_user_at(u, now),
            cands,
            &HashMap::new(),
            rows,
        );
    }
}

/// The server's four sources over one stage's models, in `SourceId` order, under the serving
/// config's quotas.
fn source_set(
    graph: &Arc<FrozenHnsw>,
    cf: &Arc<CfSource>,
    content: &Arc<ContentSource>,
    trend: Arc<TrendingSource>,
    cfg: &BuildConfig,
) -> SourceSet {
    let sources: Vec<Arc<dyn CandidateSource>> = vec![
        Arc::new(AnnSource::new(graph.clone())),
        cf.clone(),
        content.clone(),
        trend,
    ];
    SourceSet::offline(sources, &cfg.serving.quotas)
}

pub struct Retrieved {
    pub per_source: Vec<(SourceId, Vec<ScoredItem>)>,
    pub merged: Vec<Candidate>,
}
