//! Feature definitions: parses and validates `feature-defs/*.toml` into a [`FeatureRegistry`],
//! the one schema that both the index-builder (writer) and the server (reader) use.
//!
//! Validation errors name the file and line of the offending value and are all reported at
//! once, so a bad edit is fixed in one round trip.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::codec::{self, Dtype, FeatureValue};
use super::{DefError, FeatureError, FeatureRow};

/// The repository's `feature-defs/*.toml`, compiled in so a binary works from any cwd.
/// Keep in sync with the directory (a test checks that every file is listed).
pub const BUNDLED_DEFS: &[(&str, &str)] = &[
    (
        "feature-defs/item.toml",
        include_str!("../../feature-defs/item.toml"),
    ),
    (
        "feature-defs/streaming.toml",
        include_str!("../../feature-defs/streaming.toml"),
    ),
    (
        "feature-defs/user.toml",
        include_str!("../../feature-defs/user.toml"),
    ),
];

/// Longest accepted TTL: ten years. Anything longer is a typo (and Redis rejects expire times
/// that overflow its millisecond clock).
pub const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;
/// Largest accepted `dim` of an `f32_vec`.
pub const MAX_DIM: usize = 65_536;
const MAX_NAME_LEN: usize = 64;

/// What a feature's `{id}` identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    User,
    Item,
}

impl Entity {
    pub const ALL: [Entity; 2] = [Entity::User, Entity::Item];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::Item => "item",
        }
    }

    /// Position in [`Entity::ALL`]; used to index per-entity arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Entity::User => 0,
            Entity::Item => 1,
        }
    }

    fn parse(s: &str) -> Option<Entity> {
        match s {
            "user" => Some(Entity::User),
            "item" => Some(Entity::Item),
            _ => None,
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who produces a feature's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// Computed by the nightly index-builder; versioned with the bundle.
    Batch,
    /// Written continuously by a stream processor; not written by the builder.
    Streaming,
}

impl FeatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Batch => "batch",
            FeatureKind::Streaming => "streaming",
        }
    }
}

impl fmt::Display for FeatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeySegment {
    Literal(String),
    Id,
    Version,
    /// A time bucket number (streaming counters: one key per bucket, members are entity ids).
    Bucket,
}

/// A Redis key pattern such as `funnel:{version}:{{u:{id}}}`, parsed once so rendering is a plain
/// concatenation (a version string containing `{id}` cannot be re-substituted). `{{` and `}}`
/// are literal braces, for Redis Cluster hash tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPattern {
    raw: String,
    segments: Vec<KeySegment>,
}

impl KeyPattern {
    /// Parses a pattern; exactly one of `{id}` and `{bucket}` is required, `{version}` is
    /// optional, any other `{..}` is an error. Which of them a feature needs is checked with its
    /// kind.
    pub fn parse(raw: &str) -> Result<KeyPattern, String> {
        let mut segments = Vec::new();
        let mut rest = raw;
        let mut has_id = false;
        let mut has_bucket = false;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    segments.push(KeySegment::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(pos) => {
                    if pos > 0 {
                        segments.push(KeySegment::Literal(rest[..pos].to_owned()));
                    }
                    let tail = &rest[pos..];
                    // `{{` and `}}` are literal braces: a Redis Cluster hash tag, e.g.
                    // `funnel:{version}:{{u:{id}}}` renders `funnel:v1:{u:42}`.
                    if tail.starts_with("{{") || tail.starts_with("}}") {
                        segments.push(KeySegment::Literal(tail[..1].to_owned()));
                        rest = &tail[2..];
                        continue;
                    }
                    if tail.starts_with('}') {
                        return Err(format!("key pattern {raw:?} has an unmatched '}}'"));
                    }
                    let close = tail
                        .find('}')
                        .ok_or_else(|| format!("key pattern {raw:?} has an unmatched '{{'"))?;
                    match &tail[..=close] {
                        "{id}" => {
                            has_id = true;
                            segments.push(KeySegment::Id);
                        }
                        "{version}" => segments.push(KeySegment::Version),
                        "{bucket}" => {
                            has_bucket = true;
                            segments.push(KeySegment::Bucket);
                        }
                        other => {
                            return Err(format!(
                                "key pattern {raw:?} has unknown placeholder {other} \
                                 (allowed: {{id}}, {{version}}, {{bucket}})"
                            ))
                        }
                    }
                    rest = &tail[close + 1..];
                }
            }
        }
        match (has_id, has_bucket) {
            (false, false) => return Err(format!("key pattern {raw:?} is missing {{id}}")),
            (true, true) => {
                return Err(format!(
                    "key pattern {raw:?} has both {{id}} and {{bucket}}; use one"
                ))
            }
            _ => {}
        }
        Ok(KeyPattern {
            raw: raw.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn has_version(&self) -> bool {
        self.segments.contains(&KeySegment::Version)
    }

    pub fn has_bucket(&self) -> bool {
        self.segments.contains(&KeySegment::Bucket)
    }

    /// The concrete key for one entity (or, for a `{bucket}` pattern, one time bucket) of one
    /// bundle version.
    pub fn render(&self, version: &str, id: u64) -> String {
        let mut out = String::with_capacity(self.raw.len() + version.len() + 20);
        for seg in &self.segments {
            match seg {
                KeySegment::Literal(s) => out.push_str(s),
                KeySegment::Id | KeySegment::Bucket => out.push_str(&id.to_string()),
                KeySegment::Version => out.push_str(version),
            }
        }
        out
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Where a definition came from, for error messages and tooling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefLocation {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for DefLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One validated feature definition.
#[derive(Debug, Clone)]
pub struct FeatureDef {
    pub name: String,
    pub entity: Entity,
    pub dtype: Dtype,
    /// Conforms to `dtype` (checked at load).
    pub default: FeatureValue,
    pub ttl_secs: u64,
    pub kind: FeatureKind,
    pub key: KeyPattern,
    /// For a streaming feature that Funnel's own event ingestion maintains: how (None = a batch
    /// feature, or a streaming hash field written by an external stream processor).
    pub update: Option<StreamUpdate>,
    pub description: String,
    pub owner: String,
    /// File and line of the `[[feature]]` entry.
    pub source: DefLocation,
}

/// How event ingestion maintains a streaming feature, and so its Redis structure. Each such
/// feature owns its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamUpdate {
    /// `update = "recent"`: the newest `max_len` distinct ids an entity interacted with, newest
    /// first (a Redis LIST; `i64_list`).
    Recent { max_len: usize },
    /// `update = "seen"`: ids an entity was shown or used, each forgotten `ttl` after it was
    /// last seen, at most `max_len` kept (a Redis ZSET scored by time; `i64_list`).
    Seen { max_len: usize },
    /// `update = "counter"`: weighted event counts per id in time buckets of `bucket_secs`, kept
    /// for `window_secs` (one Redis ZSET per bucket, members are ids; `f32`). The key holds
    /// `{bucket}` instead of `{id}`: a counter is read as a top list across ids.
    Counter { bucket_secs: u64, window_secs: u64 },
}

impl StreamUpdate {
    pub fn name(&self) -> &'static str {
        match self {
            StreamUpdate::Recent { .. } => "recent",
            StreamUpdate::Seen { .. } => "seen",
            StreamUpdate::Counter { .. } => "counter",
        }
    }
}

/// Largest accepted `max_len` of a streaming list or set.
pub const MAX_STREAM_LEN: i64 = 100_000;
/// Most buckets a counter's window may span (each is one Redis key read per refresh).
pub const MAX_COUNTER_BUCKETS: u64 = 1_000;

/// Features that share one key pattern, i.e. one Redis hash per entity.
#[derive(Debug, Clone)]
pub struct KeyGroup {
    pub entity: Entity,
    pub kind: FeatureKind,
    pub key: KeyPattern,
    /// The hash's expiry: the smallest `ttl` among its features.
    pub ttl_secs: u64,
    /// Indices into [`FeatureRegistry::defs`], in definition order.
    pub features: Vec<usize>,
}

/// The validated set of feature definitions, with lookups and a content hash.
#[derive(Debug, Clone)]
pub struct FeatureRegistry {
    defs: Vec<FeatureDef>,
    by_name: HashMap<String, usize>,
    /// Interned names, shared by every [`FeatureRow`] key.
    names: Vec<Arc<str>>,
    /// Def indices per entity (indexed by `Entity::index`), in definition order.
    entity_defs: [Vec<usize>; 2],
    /// Def index → position within its entity's list.
    slots: Vec<usize>,
    groups: Vec<KeyGroup>,
    hash: String,
}

impl FeatureRegistry {
    /// Loads every `*.toml` in `dir` (sorted by file name). Errors if there are none.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<FeatureRegistry, FeatureError> {
        let dir = dir.as_ref();
        let io_err = |source| FeatureError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(FeatureError::NoDefs {
                dir: dir.to_path_buf(),
            });
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let content = std::fs::read_to_string(&path).map_err(|source| FeatureError::Io {
                path: path.clone(),
                source,
            })?;
            files.push((path.display().to_string(), content));
        }
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_str()))
            .collect();
        Self::from_toml_strs(&refs)
    }

    /// Parses `(file name, content)` pairs; the names only appear in error messages.
    pub fn from_toml_strs(files: &[(&str, &str)]) -> Result<FeatureRegistry, FeatureError> {
        let mut errors = Vec::new();
        let mut defs: Vec<FeatureDef> = Vec::new();
        for (file, content) in files {
            parse_file(file, content, &mut defs, &mut errors);
        }
        let groups = build_groups(&defs, &mut errors);
        if !errors.is_empty() {
            return Err(FeatureError::InvalidDefs(errors));
        }
        let by_name = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        let names = defs.iter().map(|d| Arc::from(d.name.as_str())).collect();
        let mut entity_defs: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let mut slots = Vec::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            let list = &mut entity_defs[d.entity.index()];
            slots.push(list.len());
            list.push(i);
        }
        let hash = canonical_hash(&defs);
        Ok(FeatureRegistry {
            defs,
            by_name,
            names,
            entity_defs,
            slots,
            groups,
            hash,
        })
    }

    /// The repository's defs as compiled into this binary ([`BUNDLED_DEFS`]).
    pub fn bundled() -> Result<FeatureRegistry, FeatureError> {
        Self::from_toml_strs(BUNDLED_DEFS)
    }

    /// The defs in `dir` when given (a `--feature-defs` flag), else the compiled-in ones.
    pub fn load_or_bundled(dir: Option<&Path>) -> Result<FeatureRegistry, FeatureError> {
        match dir {
            Some(d) => Self::load_dir(d),
            None => Self::bundled(),
        }
    }

    /// All definitions: files in the given order, entries in file order.
    pub fn defs(&self) -> &[FeatureDef] {
        &self.defs
    }

    pub fn get(&self, name: &str) -> Option<&FeatureDef> {
        self.by_name.get(name).map(|&i| &self.defs[i])
    }

    /// Index of `name` in [`Self::defs`].
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The definitions for one entity, in definition order.
    pub fn for_entity(&self, entity: Entity) -> impl Iterator<Item = &FeatureDef> + '_ {
        self.entity_defs[entity.index()]
            .iter()
            .map(move |&i| &self.defs[i])
    }

    /// Key groups (one Redis hash each) of one entity, both kinds.
    pub fn key_groups(&self, entity: Entity) -> impl Iterator<Item = &KeyGroup> + '_ {
        self.groups.iter().filter(move |g| g.entity == entity)
    }

    /// Hex sha256 over the canonicalised *batch* defs, for the bundle manifest (what a bundle
    /// holds depends on them alone). Independent of file names, order and whitespace;
    /// `description` and `owner` are excluded so documentation edits do not invalidate bundles.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn default_of(&self, name: &str) -> Option<&FeatureValue> {
        self.get(name).map(|d| &d.default)
    }

    /// The value of `name` in `row`, or its declared default when the row (or the feature in
    /// it) is missing. `None` only for an unknown feature name. The stores return what is
    /// stored; this is where callers apply defaults.
    pub fn value_or_default<'a>(
        &'a self,
        row: Option<&'a FeatureRow>,
        name: &str,
    ) -> Option<&'a FeatureValue> {
        row.and_then(|r| r.get(name))
            .or_else(|| self.default_of(name))
    }

    /// Number of features of `entity`.
    pub(crate) fn entity_len(&self, entity: Entity) -> usize {
        self.entity_defs[entity.index()].len()
    }

    /// Def indices of `entity`, in slot order.
    pub(crate) fn entity_def_indices(&self, entity: Entity) -> &[usize] {
        &self.entity_defs[entity.index()]
    }

    /// Position of def `index` within its entity.
    pub(crate) fn slot(&self, index: usize) -> Option<usize> {
        self.slots.get(index).copied()
    }

    /// The interned name of def `index`.
    pub(crate) fn name_arc(&self, index: usize) -> Arc<str> {
        Arc::clone(&self.names[index])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    feature: Vec<Spanned<RawFeature>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: Spanned<String>,
    entity: Spanned<String>,
    dtype: Spanned<String>,
    #[serde(default)]
    dim: Option<Spanned<i64>>,
    default: Spanned<toml::Value>,
    ttl: Spanned<toml::Value>,
    kind: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    update: Option<Spanned<String>>,
    #[serde(default)]
    max_len: Option<Spanned<i64>>,
    #[serde(default)]
    bucket: Option<Spanned<toml::Value>>,
    #[serde(default)]
    window: Option<Spanned<toml::Value>>,
    description: Spanned<String>,
    owner: Spanned<String>,
}

/// 1-based line of a byte offset (toml spans are byte ranges).
fn line_of(content: &str, offset: usize) -> usize {
    content
        .as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_file(file: &str, content: &str, defs: &mut Vec<FeatureDef>, errors: &mut Vec<DefError>) {
    let err_at = |offset: usize, message: String| DefError {
        file: file.to_owned(),
        line: line_of(content, offset),
        message,
    };
    let raw: RawFile = match toml::from_str(content) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            errors.push(err_at(offset, e.message().trim().to_owned()));
            return;
        }
    };
    if raw.feature.is_empty() {
        errors.push(err_at(0, "file defines no [[feature]] entries".to_owned()));
        return;
    }
    for spanned in raw.feature {
        let entry_offset = spanned.span().start;
        let f = spanned.into_inner();
        let before = errors.len();
        let mut bad = |offset: usize, message: String| errors.push(err_at(offset, message));

        let name = f.name.get_ref().clone();
        if !valid_name(&name) {
            bad(
                f.name.span().start,
                format!(
                    "invalid feature name {name:?}: use [a-z][a-z0-9_]*, at most {MAX_NAME_LEN} chars"
                ),
            );
        } else if let Some(prev) = defs.iter().find(|d| d.name == name) {
            bad(
                f.name.span().start,
                format!(
                    "duplicate feature name {name:?} (first defined at {})",
                    prev.source
                ),
            );
        }

        let entity = Entity::parse(f.entity.get_ref());
        if entity.is_none() {
            bad(
                f.entity.span().start,
                format!(
                    "unknown entity {:?} (expected \"user\" or \"item\")",
                    f.entity.get_ref()
                ),
            );
        }

        let kind = match f.kind.get_ref().as_str() {
            "batch" => Some(FeatureKind::Batch),
            "streaming" => Some(FeatureKind::Streaming),
            other => {
                bad(
                    f.kind.span().start,
                    format!("unknown kind {other:?} (expected \"batch\" or \"streaming\")"),
                );
                None
            }
        };

        let dtype = parse_dtype(&f.dtype, f.dim.as_ref(), &mut bad);

        let default = dtype.and_then(|dt| match default_from_toml(&dt, f.default.get_ref()) {
            Ok(v) => Some(v),
            Err(msg) => {
                bad(
                    f.default.span().start,
                    format!("default does not match dtype {dt}: {msg}"),
                );
                None
            }
        });

        let ttl = match parse_ttl(f.ttl.get_ref()) {
            Ok(t) => Some(t),
            Err(msg) => {
                bad(f.ttl.span().start, msg);
                None
            }
        };

        let key = match KeyPattern::parse(f.key.get_ref()) {
            Ok(k) => {
                if kind == Some(FeatureKind::Batch) && k.has_bucket() {
                    bad(
                        f.key.span().start,
                        format!(
                            "key pattern {:?}: {{bucket}} is for streaming counters only",
                            k.as_str()
                        ),
                    );
                }
                if kind == Some(FeatureKind::Batch) && !k.has_version() {
                    bad(
                        f.key.span().start,
                        format!(
                            "key pattern {:?} of a batch feature must contain {{version}} \
                             so a server never mixes two builds",
                            k.as_str()
                        ),
                    );
                }
                Some(k)
            }
            Err(msg) => {
                bad(f.key.span().start, msg);
                None
            }
        };

        let update = parse_update(&f, kind, dtype.as_ref(), key.as_ref(), ttl, &mut bad);

        for (field, value) in [("description", &f.description), ("owner", &f.owner)] {
            if value.get_ref().trim().is_empty() {
                bad(value.span().start, format!("{field} must not be empty"));
            }
        }

        if errors.len() != before {
            continue;
        }
        if let (Some(entity), Some(kind), Some(dtype), Some(default), Some(ttl_secs), Some(key)) =
            (entity, kind, dtype, default, ttl, key)
        {
            defs.push(FeatureDef {
                name,
                entity,
                dtype,
                default,
                ttl_secs,
                kind,
                key,
                update,
                description: f.description.into_inner(),
                owner: f.owner.into_inner(),
                source: DefLocation {
                    file: file.to_owned(),
                    line: line_of(content, entry_offset),
                },
            });
        }
    }
}

/// The `update`, `max_len`, `bucket` and `window` fields: only streaming features maintained by
/// event ingestion have them, and each update kind needs its own dtype, key shape and fields.
fn parse_update(
    f: &RawFeature,
    kind: Option<FeatureKind>,
    dtype: Option<&Dtype>,
    key: Option<&KeyPattern>,
    ttl: Option<u64>,
    bad: &mut impl FnMut(usize, String),
) -> Option<StreamUpdate> {
    let Some(update) = &f.update else {
        for (field, at) in [
            ("max_len", f.max_len.as_ref().map(|v| v.span().start)),
            ("bucket", f.bucket.as_ref().map(|v| v.span().start)),
            ("window", f.window.as_ref().map(|v| v.span().start)),
        ] {
            if let Some(at) = at {
                bad(
                    at,
                    format!("{field} needs update = \"recent\", \"seen\" or \"counter\""),
                );
            }
        }
        if key.is_some_and(KeyPattern::has_bucket) && kind == Some(FeatureKind::Streaming) {
            bad(
                f.key.span().start,
                "a {bucket} key needs update = \"counter\"".to_owned(),
            );
        }
        return None;
    };
    let at = update.span().start;
    if key.is_some_and(KeyPattern::has_version) {
        bad(
            f.key.span().start,
            "a streaming feature with `update` describes what users did, whichever bundle \
             serves: its key must not contain {version}"
                .to_owned(),
        );
    }
    if kind == Some(FeatureKind::Batch) {
        bad(
            at,
            "update is for streaming features; batch features are written by the build".to_owned(),
        );
        return None;
    }
    let want_dtype = |want: Dtype, bad: &mut dyn FnMut(usize, String)| {
        if let Some(d) = dtype {
            if *d != want {
                bad(
                    f.dtype.span().start,
                    format!(
                        "update = {:?} needs dtype {want}, not {d}",
                        update.get_ref()
                    ),
                );
            }
        }
    };
    let forbid = |field: &str, at: Option<usize>, bad: &mut dyn FnMut(usize, String)| {
        if let Some(at) = at {
            bad(
                at,
                format!("{field} does not apply to update = {:?}", update.get_ref()),
            );
        }
    };
    let max_len = |bad: &mut dyn FnMut(usize, String)| match &f.max_len {
        None => {
            bad(at, format!("update = {:?} needs max_len", update.get_ref()));
            None
        }
        Some(m) if !(1..=MAX_STREAM_LEN).contains(m.get_ref()) => {
            bad(
                m.span().start,
                format!("max_len must be within 1..={MAX_STREAM_LEN}"),
            );
            None
        }
        Some(m) => usize::try_from(*m.get_ref()).ok(),
    };
    match update.get_ref().as_str() {
        name @ ("recent" | "seen") => {
            want_dtype(Dtype::I64List, bad);
            forbid("bucket", f.bucket.as_ref().map(|v| v.span().start), bad);
            forbid("window", f.window.as_ref().map(|v| v.span().start), bad);
            if key.is_some_and(KeyPattern::has_bucket) {
                bad(
                    f.key.span().start,
                    format!("update = {name:?} keys one entity: use {{id}}, not {{bucket}}"),
                );
            }
            let n = max_len(bad)?;
            Some(if name == "recent" {
                StreamUpdate::Recent { max_len: n }
            } else {
                StreamUpdate::Seen { max_len: n }
            })
        }
        "counter" => {
            want_dtype(Dtype::F32, bad);
            forbid("max_len", f.max_len.as_ref().map(|v| v.span().start), bad);
            if key.is_some_and(|k| !k.has_bucket()) {
                bad(
                    f.key.span().start,
                    "update = \"counter\" keys one time bucket: use {bucket}, not {id}".to_owned(),
                );
            }
            let dur = |field: &str,
                       v: &Option<Spanned<toml::Value>>,
                       bad: &mut dyn FnMut(usize, String)| {
                match v {
                    None => {
                        bad(at, format!("update = \"counter\" needs {field}"));
                        None
                    }
                    Some(v) => match parse_ttl(v.get_ref()) {
                        Ok(s) => Some(s),
                        Err(m) => {
                            bad(
                                v.span().start,
                                format!("{field}: {}", m.trim_start_matches("bad ttl")),
                            );
                            None
                        }
                    },
                }
            };
            let bucket = dur("bucket", &f.bucket, bad);
            let window = dur("window", &f.window, bad);
            let (bucket_secs, window_secs) = (bucket?, window?);
            if window_secs < bucket_secs || window_secs / bucket_secs > MAX_COUNTER_BUCKETS {
                bad(
                    f.window.as_ref().map_or(at, |v| v.span().start),
                    format!(
                        "window must span 1..={MAX_COUNTER_BUCKETS} buckets \
                         ({window_secs} s / {bucket_secs} s)"
                    ),
                );
                return None;
            }
            if ttl.is_some_and(|t| t < window_secs) {
                bad(
                    f.ttl.span().start,
                    "a counter's ttl (how long a bucket key lives) must be >= its window"
                        .to_owned(),
                );
            }
            Some(StreamUpdate::Counter {
                bucket_secs,
                window_secs,
            })
        }
        other => {
            bad(
                at,
                format!("unknown update {other:?} (expected \"recent\", \"seen\" or \"counter\")"),
            );
            None
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_dtype(
    dtype: &Spanned<String>,
    dim: Option<&Spanned<i64>>,
    bad: &mut impl FnMut(usize, String),
) -> Option<Dtype> {
    let simple = match dtype.get_ref().as_str() {
        "bool" => Some(Dtype::Bool),
        "i64" => Some(Dtype::I64),
        "f32" => Some(Dtype::F32),
        "string" => Some(Dtype::String),
        "timestamp" => Some(Dtype::Timestamp),
        "i64_list" => Some(Dtype::I64List),
        "string_list" => Some(Dtype::StringList),
        "f32_map" => Some(Dtype::F32Map),
        "f32_vec" => None,
        other => {
            bad(
                dtype.span().start,
                format!(
                    "unknown dtype {other:?} (expected one of: {})",
                    Dtype::NAMES.join(", ")
                ),
            );
            return None;
        }
    };
    match (simple, dim) {
        (Some(dt), None) => Some(dt),
        (Some(dt), Some(d)) => {
            bad(
                d.span().start,
                format!("`dim` is only allowed for f32_vec, not {dt}"),
            );
            None
        }
        (None, None) => {
            bad(
                dtype.span().start,
                "dtype f32_vec requires `dim`".to_owned(),
            );
            None
        }
        (None, Some(d)) => match usize::try_from(*d.get_ref()) {
            Ok(dim) if (1..=MAX_DIM).contains(&dim) => Some(Dtype::F32Vec { dim }),
            _ => {
                bad(
                    d.span().start,
                    format!("dim must be in 1..={MAX_DIM}, got {}", d.get_ref()),
                );
                None
            }
        },
    }
}

fn toml_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn toml_f32(v: &toml::Value) -> Result<f32, String> {
    let x = match v {
        toml::Value::Float(x) => *x,
        toml::Value::Integer(i) => *i as f64,
        other => return Err(format!("expected a number, got {}", toml_type(other))),
    };
    let f = x as f32;
    // Defaults are served to models as-is; NaN/inf or an f64 that overflows f32 is a bug.
    if !f.is_finite() {
        return Err(format!("{x} is not a finite f32"));
    }
    Ok(f)
}

fn default_from_toml(dtype: &Dtype, v: &toml::Value) -> Result<FeatureValue, String> {
    let wrong = || format!("got {}", toml_type(v));
    let array = || match v {
        toml::Value::Array(a) => Ok(a),
        _ => Err(format!("expected an array, {}", wrong())),
    };
    match dtype {
        Dtype::Bool => v.as_bool().map(FeatureValue::Bool).ok_or_else(wrong),
        Dtype::I64 => v.as_integer().map(FeatureValue::I64).ok_or_else(wrong),
        Dtype::Timestamp => v
            .as_integer()
            .map(FeatureValue::Timestamp)
            .ok_or_else(|| format!("expected integer unix seconds, {}", wrong())),
        Dtype::F32 => toml_f32(v).map(FeatureValue::F32),
        Dtype::String => v
            .as_str()
            .map(|s| FeatureValue::String(s.to_owned()))
            .ok_or_else(wrong),
        Dtype::F32Vec { dim } => match v {
            toml::Value::Array(a) => {
                if a.len() != *dim {
                    return Err(format!("expected {dim} elements, got {}", a.len()));
                }
                a.iter()
                    .map(toml_f32)
                    .collect::<Result<_, _>>()
                    .map(FeatureValue::F32Vec)
            }
            // One number is broadcast, so a 64-dim zero default is not 64 literals.
            other => toml_f32(other)
                .map(|x| FeatureValue::F32Vec(vec![x; *dim]))
                .map_err(|e| format!("{e} (or an array of {dim} numbers)")),
        },
        Dtype::I64List => array()?
            .iter()
            .map(|x| {
                x.as_integer()
                    .ok_or_else(|| format!("elements must be integers, got {}", toml_type(x)))
            })
            .collect::<Result<_, _>>()
            .map(FeatureValue::I64List),
        Dtype::StringList => array()?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("elements must be strings, got {}", toml_type(x)))
            })
            .collect::<Result<_, _>>()
            .map(FeatureValue::StringList),
        Dtype::F32Map => match v {
            toml::Value::Table(t) => t
                .iter()
                .map(|(k, x)| toml_f32(x).map(|f| (k.clone(), f)))
                .collect::<Result<_, _>>()
                .map(FeatureValue::F32Map),
            _ => Err(format!("expected an inline table, {}", wrong())),
        },
    }
}

/// Integer seconds, or a number with one unit suffix: s, m, h, d, w.
fn parse_ttl(v: &toml::Value) -> Result<u64, String> {
    const HELP: &str =
        "expected integer seconds or a duration like \"90s\", \"30m\", \"36h\", \"7d\", \"2w\"";
    let secs = match v {
        toml::Value::Integer(i) => u64::try_from(*i).ok(),
        toml::Value::String(s) => {
            let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(digits_end);
            let mult = match unit {
                "" | "s" => Some(1u64),
                "m" => Some(60),
                "h" => Some(3_600),
                "d" => Some(86_400),
                "w" => Some(604_800),
                _ => None,
            };
            match (num.parse::<u64>().ok(), mult) {
                (Some(n), Some(m)) => n.checked_mul(m),
                _ => return Err(format!("bad ttl {s:?}: {HELP}")),
            }
        }
        other => return Err(format!("bad ttl: {HELP}, got {}", toml_type(other))),
    };
    match secs {
        Some(0) => Err("bad ttl: must be > 0".to_owned()),
        Some(s) if s <= MAX_TTL_SECS => Ok(s),
        _ => Err(format!(
            "bad ttl: must be between 1 and {MAX_TTL_SECS} seconds (10 years)"
        )),
    }
}

/// Groups defs by key pattern and checks that each group is one entity and one kind: a hash
/// shared by two entities would mix ids, and a batch push (which rewrites the whole hash)
/// must never clobber streaming fields.
fn build_groups(defs: &[FeatureDef], errors: &mut Vec<DefError>) -> Vec<KeyGroup> {
    let mut groups: Vec<KeyGroup> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        match groups.iter_mut().find(|g| g.key == d.key) {
            None => groups.push(KeyGroup {
                entity: d.entity,
                kind: d.kind,
                key: d.key.clone(),
                ttl_secs: d.ttl_secs,
                features: vec![i],
            }),
            Some(g) => {
                let first = &defs[g.features[0]];
                if d.update.is_some() || first.update.is_some() {
                    errors.push(DefError {
                        file: d.source.file.clone(),
                        line: d.source.line,
                        message: format!(
                            "feature {:?} shares key {:?} with {:?} ({}); a streaming feature \
                             with `update` is its own Redis structure and needs its own key",
                            d.name,
                            d.key.as_str(),
                            first.name,
                            first.source
                        ),
                    });
                    continue;
                }
                if g.entity != d.entity || g.kind != d.kind {
                    errors.push(DefError {
                        file: d.source.file.clone(),
                        line: d.source.line,
                        message: format!(
                            "feature {:?} ({} {}) shares key {:?} with {:?} ({} {}, {}); \
                             features sharing a key must have the same entity and kind",
                            d.name,
                            d.kind,
                            d.entity,
                            d.key.as_str(),
                            first.name,
                            first.kind,
                            first.entity,
                            first.source
                        ),
                    });
                    continue;
                }
                g.ttl_secs = g.ttl_secs.min(d.ttl_secs);
                g.features.push(i);
            }
        }
    }
    groups
}

fn canonical_hash(defs: &[FeatureDef]) -> String {
    // Only batch features are built into a bundle or pushed under its version, so only they
    // decide whether a bundle fits these defs: adding or changing a streaming feature does not
    // invalidate bundles.
    let mut sorted: Vec<&FeatureDef> = defs
        .iter()
        .filter(|d| d.kind == FeatureKind::Batch)
        .collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    h.update(b"funnel-feature-defs/v1\n");
    for d in sorted {
        // Names are [a-z0-9_] and free text is hex, so tab/newline separators are unambiguous.
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            d.name,
            d.entity,
            d.dtype.name(),
            d.dtype.dim().unwrap_or(0),
            d.ttl_secs,
            d.kind,
            hex::encode(d.key.as_str()),
            hex::encode(codec::encode(&d.default)),
        );
        h.update(line.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pattern_renders_in_one_pass() {
        let k = KeyPattern::parse("funnel:{version}:u:{id}").unwrap();
        assert_eq!(k.render("v{id}", 7), "funnel:v{id}:u:7");
        assert!(KeyPattern::parse("x:{ver}:{id}").is_err());
        assert!(KeyPattern::parse("x:{id").is_err());
        assert!(KeyPattern::parse("x:}{id}").is_err());
        assert!(KeyPattern::parse("x:{version}").is_err());
        // Literal braces make a cluster hash tag around the id.
        let k = KeyPattern::parse("funnel:{version}:{{u:{id}}}").unwrap();
        assert_eq!(k.render("v1", 42), "funnel:v1:{u:42}");
        let k = KeyPattern::parse("funnel:s:{{trending}}:{bucket}").unwrap();
        assert_eq!(k.render("", 9), "funnel:s:{trending}:9");
        assert!(
            KeyPattern::parse("x:{{id}}").is_err(),
            "{{id}} is literal: no id left"
        );
    }

    #[test]
    fn ttl_forms() {
        let s = |x: &str| parse_ttl(&toml::Value::String(x.into()));
        assert_eq!(s("36h"), Ok(129_600));
        assert_eq!(s("7d"), Ok(604_800));
        assert_eq!(s("90"), Ok(90));
        assert_eq!(parse_ttl(&toml::Value::Integer(60)), Ok(60));
        assert!(s("7x").is_err());
        assert!(s("h").is_err());
        assert!(s("0s").is_err());
        assert!(s("99999999999999999999d").is_err());
        assert!(parse_ttl(&toml::Value::Integer(-5)).is_err());
    }
}
