//! Online features: the one module that parses `feature-defs/` and encodes/decodes feature
//! values, shared by the index-builder (writer) and the server (reader) so they cannot disagree.
//!
//! * [`defs`]: `feature-defs/*.toml` → validated [`FeatureRegistry`] (+ content hash).
//! * [`codec`]: [`FeatureValue`] ↔ bytes, the same bytes in Redis and in the bundle.
//! * [`table`]: builder-side [`FeatureTable`] of computed values, written into the bundle.
//! * [`stats`]: per-feature distribution summaries for training–serving skew checks.
//! * [`embedded`]: the server's in-process store read from the bundle (no-Redis mode).
//! * [`redis`]: pushing a table to Redis and the server's pipelined Redis reader.
//! * [`online`]: the request path's typed view of user features and item overrides (Redis + moka).
//! * [`streaming`]: the streaming features event ingestion maintains (Redis or in process).
//!
//! Both stores return only what is stored (`None` for an unknown entity, rows may lack
//! features); callers apply declared defaults with [`FeatureRegistry::value_or_default`].

pub mod codec;
pub mod defs;
pub mod embedded;
pub mod online;
pub mod redis;
pub mod redis_conn;
pub mod stats;
pub mod streaming;
pub mod table;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

pub use self::codec::{CodecError, Dtype, FeatureValue};
pub use self::defs::{
    DefLocation, Entity, FeatureDef, FeatureKind, FeatureRegistry, KeyGroup, KeyPattern,
    StreamUpdate, BUNDLED_DEFS,
};
pub use self::embedded::EmbeddedStore;
pub use self::redis::{
    block_on, push, push_blocking, PushOptions, PushStats, RedisFeatureStore, RedisStoreOptions,
    CURRENT_VERSION_KEY,
};
pub use self::stats::{FeatureStats, StatMeasure};
pub use self::table::FeatureTable;

/// Where the embedded feature store and the feature statistics live in a bundle.
pub use crate::layout::{FEATURE_STATS as STATS_FILE_NAME, ONLINE_FEATURES as EMBEDDED_FILE_NAME};

/// The stored features of one entity, keyed by feature name (`row.get("popularity")`). Keys
/// are interned by the registry, so a row costs no string allocation per feature.
pub type FeatureRow = HashMap<Arc<str>, FeatureValue>;

/// One problem in `feature-defs/`, located by file and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for DefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every failure of the features module.
#[derive(Debug, Error)]
pub enum FeatureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no feature definitions (*.toml) in {dir}")]
    NoDefs { dir: PathBuf },
    #[error("invalid feature definitions:\n{}", join_lines(.0))]
    InvalidDefs(Vec<DefError>),
    #[error("unknown feature {0:?}")]
    UnknownFeature(String),
    #[error("feature {feature:?} belongs to entity {expected}, not {got}")]
    WrongEntity {
        feature: String,
        expected: Entity,
        got: Entity,
    },
    #[error("feature {0:?} is a streaming feature; only batch features are built and pushed")]
    NotBatch(String),
    #[error("feature {feature:?} is declared {expected}, got a {got} value")]
    TypeMismatch {
        feature: String,
        expected: Dtype,
        got: String,
    },
    #[error("feature {feature:?}: {source}")]
    Codec { feature: String, source: CodecError },
    #[error("feature definitions differ: expected hash {expected}, found {found}")]
    DefsMismatch { expected: String, found: String },
    #[error("embedded feature file {path}: {message}")]
    Embedded { path: PathBuf, message: String },
    #[error("invalid bundle version {0:?}: must be non-empty, without whitespace, control chars or braces")]
    InvalidVersion(String),
    #[error("redis ({context}): {source}")]
    Redis {
        context: String,
        source: ::redis::RedisError,
    },
    #[error("redis ({context}): unexpected reply: {message}")]
    RedisReply { context: String, message: String },
    #[error("async runtime: {0}")]
    Runtime(String),
}

fn join_lines(errors: &[DefError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}
