//! Loading a published bundle version into the engine's components. Each component loads on its
//! own: one that is missing or corrupt is reported in [`Bundle::problems`] and left out, so the
//! server can start degraded instead of not at all.

use crate::layout;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{resolve_version_dir, BundleError, Manifest, MANIFEST};
use crate::catalog::Catalog;
use crate::features::streaming::StreamDefs;
use crate::features::{EmbeddedStore, FeatureRegistry};
use crate::ranking::input::ENGAGEMENT_FEATURES;
use crate::ranking::{load_rankers, Ranker, RankersManifest};
use crate::sources::ann::hnsw::FrozenHnsw;
use crate::sources::cf::CfNeighbors;
use crate::sources::content::CategoryIndex;
use crate::sources::trending::TrendingList;
use crate::table::Table;
use crate::{ItemIdx, UserIdx};

/// Everything a server needs from one bundle version.
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub catalog: Catalog,
    pub user_ids: Vec<u64>,
    pub user_index: HashMap<u64, UserIdx>,
    /// n_items × dim item embeddings (raw ALS factors, for ranking and session blending).
    pub item_embeddings: Vec<f32>,
    pub dim: usize,
    /// Per item: total interaction weight and trending score as of the build's cutoff.
    pub popularity: Vec<f32>,
    pub trending_score: Vec<f32>,
    /// Per item and [`ENGAGEMENT_FEATURES`] horizon: decayed engagement per day (empty in a
    /// bundle from before these columns: encoded as none).
    pub engagement: [Vec<f32>; ENGAGEMENT_FEATURES.len()],
    pub category_prior: Vec<f32>,
    pub ann: Option<Arc<FrozenHnsw>>,
    pub cf: Option<CfNeighbors>,
    pub content: Option<CategoryIndex>,
    pub trending: Option<TrendingList>,
    pub rankers: Vec<(String, Box<dyn Ranker>)>,
    pub rankers_manifest: Option<RankersManifest>,
    /// Precomputed top-k per user id (item ids), the fallback of last resort before popularity.
    pub batch_recs: HashMap<u64, Vec<u64>>,
    pub features: Option<EmbeddedStore>,
    /// The streaming features event ingestion maintains, from the defs the bundle was opened
    /// with.
    pub stream_defs: StreamDefs,
    /// Components that failed to load, with the reason.
    pub problems: Vec<(String, String)>,
}

impl Bundle {
    /// Loads the version `path` resolves to (a bundle root with CURRENT, or a version directory).
    /// The catalog, users and embeddings are required; every other component may fail alone.
    pub fn open(path: &Path, registry: &FeatureRegistry) -> Result<Self, BundleError> {
        let dir = resolve_version_dir(path)?;
        let manifest = Manifest::read(&dir.join(MANIFEST))?;
        let catalog = Catalog::load(&dir.join(layout::CATALOG))?;
        let upath = dir.join(layout::USERS);
        let mut users = Table::read(&upath)?;
        let user_ids = users
            .take_u64("user_id")
            .map_err(|m| BundleError::format(&upath, m))?;
        let user_index = user_ids
            .iter()
            .enumerate()
            .map(|(i, &u)| (u, i as UserIdx))
            .collect();
        let epath = dir.join(layout::ITEM_EMBEDDINGS);
        let (dim, item_embeddings) = Table::read(&epath)?
            .take_f32vec("vector")
            .map_err(|m| BundleError::format(&epath, m))?;
        if item_embeddings.len() != catalog.len() * dim {
            return Err(BundleError::format(
                &epath,
                "one embedding per catalog item expected",
            ));
        }
        let ppath = dir.join(layout::POPULARITY);
        let mut pop = Table::read(&ppath)?;
        let popularity = pop
            .take_f32("popularity")
            .map_err(|m| BundleError::format(&ppath, m))?;
        let trending_score = pop
            .take_f32("trending")
            .map_err(|m| BundleError::format(&ppath, m))?;
        let mut engagement: [Vec<f32>; ENGAGEMENT_FEATURES.len()] = Default::default();
        for (name, dst) in ENGAGEMENT_FEATURES.iter().zip(&mut engagement) {
            if pop.columns.iter().any(|(n, _)| n == name) {
                *dst = pop
                    .take_f32(name)
                    .map_err(|m| BundleError::format(&ppath, m))?;
            }
        }
        if popularity.len() != catalog.len()
            || trending_score.len() != catalog.len()
            || engagement
                .iter()
                .any(|e| !e.is_empty() && e.len() != catalog.len())
        {
            return Err(BundleError::format(
                &ppath,
                "one row per catalog item expected",
            ));
        }

        let mut problems = Vec::new();
        let n = catalog.len();
        let mut note = |name: &str, e: String| {
            tracing::warn!(component = name, error = %e, "bundle component unavailable");
            problems.push((name.to_string(), e));
        };
        let ann = match FrozenHnsw::load(&dir.join(layout::ANN_DIR)) {
            Ok(g) if crate::sources::ann::AnnIndex::len(&g) == n => Some(Arc::new(g)),
            Ok(_) => {
                note("ann", "index size does not match the catalog".into());
                None
            }
            Err(e) => {
                note("ann", e.to_string());
                None
            }
        };
        let cf = CfNeighbors::load(&dir.join(layout::CF_NEIGHBORS))
            .map_err(|e| note("cf", e.to_string()))
            .ok();
        let content = CategoryIndex::load(&dir.join(layout::CONTENT_CATEGORY_ITEMS), n)
            .map_err(|e| note("content", e.to_string()))
            .ok();
        let trending = TrendingList::load(&dir.join(layout::TRENDING), n)
            .map_err(|e| note("trending", e.to_string()))
            .ok();
        let category_prior = Table::read(&dir.join(layout::CONTENT_CATEGORY_PRIOR))
            .and_then(|mut t| {
                t.take_f32("prior")
                    .map_err(|m| crate::table::DataError::format(&dir, m))
            })
            .map_err(|e| note("category_prior", e.to_string()))
            .unwrap_or_default();
        let (rankers, rankers_manifest) = match load_rankers(&dir) {
            Ok((m, r)) => (
                m.rankers.iter().map(|s| s.id.clone()).zip(r).collect(),
                Some(m),
            ),
            Err(e) => {
                note("rankers", e.to_string());
                (Vec::new(), None)
            }
        };
        let batch_recs = load_batch(&dir.join(layout::BATCH_RECS))
            .map_err(|e| note("batch_recs", e.to_string()))
            .unwrap_or_default();
        let features = EmbeddedStore::load(dir.join(layout::ONLINE_FEATURES), registry)
            .map_err(|e| note("features", e.to_string()))
            .ok();
        Ok(Self {
            dir,
            manifest,
            catalog,
            user_ids,
            user_index,
            item_embeddings,
            dim,
            popularity,
            trending_score,
            engagement,
            category_prior,
            ann,
            cf,
            content,
            trending,
            rankers,
            rankers_manifest,
            batch_recs,
            features,
            stream_defs: StreamDefs::from_registry(registry),
            problems,
        })
    }

    pub fn item_embedding(&self, i: ItemIdx) -> Option<&[f32]> {
        self.item_table().embedding(i)
    }

    /// A bundle of just a catalog and item data, without retrieval components, rankers or
    /// features: for stage tests and for embedding the pipeline without files.
    pub fn in_memory(
        catalog: Catalog,
        item_embeddings: Vec<f32>,
        dim: usize,
        popularity: Vec<f32>,
    ) -> Self {
        let n_cat = catalog.categories.len();
        Bundle {
            dir: PathBuf::new(),
            manifest: Manifest {
                format_version: super::manifest::FORMAT_VERSION,
                version: "in-memory".into(),
                created_at: chrono::Utc::now(),
                builder: String::new(),
                inputs: Vec::new(),
                files: Default::default(),
                feature_defs_hash: String::new(),
                info: Default::default(),
            },
            trending_score: vec![0.0; catalog.len()],
            engagement: Default::default(),
            catalog,
            user_ids: Vec::new(),
            user_index: HashMap::new(),
            item_embeddings,
            dim,
            popularity,
            category_prior: vec![1.0 / n_cat.max(1) as f32; n_cat],
            ann: None,
            cf: None,
            content: None,
            trending: None,
            rankers: Vec::new(),
            rankers_manifest: None,
            batch_recs: HashMap::new(),
            features: None,
            stream_defs: StreamDefs::default(),
            problems: Vec::new(),
        }
    }

    /// The ranker encoder's per-item inputs (the builder encodes its stage the same way).
    pub fn item_table(&self) -> crate::ranking::encode::ItemTable<'_> {
        crate::ranking::encode::ItemTable {
            catalog: &self.catalog,
            embeddings: &self.item_embeddings,
            dim: self.dim,
            popularity: &self.popularity,
            trending: &self.trending_score,
            engagement: self.engagement.each_ref().map(Vec::as_slice),
        }
    }
}

fn load_batch(path: &Path) -> Result<HashMap<u64, Vec<u64>>, BundleError> {
    let mut t = Table::read(path)?;
    let bad = |m: String| BundleError::format(path, m);
    let users = t.take_u64("user_id").map_err(bad)?;
    let ranks = t.take_u32("rank").map_err(bad)?;
    let items = t.take_u64("item_id").map_err(bad)?;
    let mut out: HashMap<u64, Vec<(u32, u64)>> = HashMap::new();
    for ((u, r), i) in users.into_iter().zip(ranks).zip(items) {
        out.entry(u).or_default().push((r, i));
    }
    Ok(out
        .into_iter()
        .map(|(u, mut v)| {
            v.sort_unstable();
            (u, v.into_iter().map(|(_, i)| i).collect())
        })
        .collect())
}
