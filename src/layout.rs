//! The bundle's file layout: every artifact's path inside a version directory, named once for
//! the builder that writes it, the loader that reads it and `verify`.

pub const CATALOG: &str = "catalog.arrow";
pub const USERS: &str = "users.arrow";
pub const USER_EMBEDDINGS: &str = "embeddings/users.arrow";
pub const ITEM_EMBEDDINGS: &str = "embeddings/items.arrow";
/// Directory of the ANN index (its files: [`crate::sources::ann::hnsw`]).
pub const ANN_DIR: &str = "ann";
pub const CF_NEIGHBORS: &str = "cf/neighbors.arrow";
pub const CONTENT_CATEGORY_ITEMS: &str = "content/category_items.arrow";
pub const CONTENT_CATEGORY_PRIOR: &str = "content/category_prior.arrow";
pub const TRENDING: &str = "trending.arrow";
/// Per-item popularity and trending score, with the data cutoff.
pub const POPULARITY: &str = "popularity.arrow";
pub const BATCH_RECS: &str = "batch_recs.arrow";
/// The embedded online feature store (served without Redis).
pub const ONLINE_FEATURES: &str = "features/online.arrow";
/// `Vec<FeatureStats>` of the online features, as JSON.
pub const FEATURE_STATS: &str = "feature_stats.json";
/// The ranker manifest and the directory of their weights.
pub const RANKERS_MANIFEST: &str = "rankers.json";
pub const RANKERS_DIR: &str = "rankers";
/// The holdout's relevant pairs and the offline evaluation (bundles built with `--holdout`).
pub const HOLDOUT: &str = "holdout.arrow";
pub const EVAL: &str = "eval.json";
