//! Synthetic data: a deterministic interaction log and item catalog with structure a recommender
//! can learn (taste clusters over categories, Zipf item popularity, heavy-tailed user activity,
//! fresh items that only get traffic after publication, flagged/promoted items), plus writing them
//! as Parquet files that [`crate::ingest`] reads back.
//!
//! Determinism: every random draw comes from an RNG seeded by (seed, stream, entity index), so the
//! output depends only on the config, never on thread count or scheduling.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, WeightedAliasIndex};
use rayon::prelude::*;

use crate::ingest::{RawInteraction, RawItem, MAX_TIMESTAMP};

/// 2026-11-01T00:00:00Z: a fixed end of the log, so output never depends on the wall clock.
pub const DEFAULT_END_TS: i64 = 1_793_491_200;
const DAY: i64 = 86_400;

/// Knobs of the generator. [`SynthConfig::new`] fills sensible defaults for everything but the sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Users get ids `1..=users`; every user gets ≥ 1 interaction when `interactions >= users`.
    pub users: usize,
    /// Items get ids `1..=items`; every item is in the catalog (tail items may get no traffic).
    pub items: usize,
    /// Exact number of interactions generated.
    pub interactions: usize,
    pub seed: u64,
    pub n_categories: usize,
    /// Taste clusters; each prefers `categories_per_cluster` categories.
    pub n_clusters: usize,
    pub categories_per_cluster: usize,
    /// Share of a user's interactions drawn from their cluster's categories (the rest follow
    /// global popularity).
    pub cluster_affinity: f64,
    /// Item popularity ∝ 1 / rank^zipf_exponent.
    pub zipf_exponent: f64,
    /// σ of the log-normal per-user activity weight (larger = heavier tail).
    pub activity_sigma: f64,
    /// Share of items published within the last `fresh_days` days.
    pub fresh_share: f64,
    pub fresh_days: u32,
    /// Popularity multiplier of fresh items while they are live, so they trend.
    pub fresh_boost: f64,
    pub flagged_share: f64,
    pub promoted_share: f64,
    /// Creators get ids `1..=n_creators`; each specializes in one category.
    pub n_creators: usize,
    /// Interactions fall in `[end_ts - span_days days, end_ts)`.
    pub span_days: u32,
    pub end_ts: i64,
}

impl SynthConfig {
    pub fn new(users: usize, items: usize, interactions: usize, seed: u64) -> Self {
        SynthConfig {
            users,
            items,
            interactions,
            seed,
            n_categories: 20,
            n_clusters: 12,
            categories_per_cluster: 3,
            cluster_affinity: 0.85,
            zipf_exponent: 1.0,
            activity_sigma: 1.3,
            fresh_share: 0.1,
            fresh_days: 7,
            fresh_boost: 3.0,
            flagged_share: 0.01,
            promoted_share: 0.02,
            n_creators: (items / 20).max(1),
            span_days: 180,
            end_ts: DEFAULT_END_TS,
        }
    }

    /// Clamps every knob into a range the generator handles (no config can make it panic).
    fn sanitized(&self) -> Self {
        let share = |v: f64, default: f64| {
            if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                default
            }
        };
        let n_categories = self.n_categories.clamp(1, 10_000);
        let span_days = self.span_days.clamp(1, 36_500);
        SynthConfig {
            users: self.users.min(u32::MAX as usize),
            items: self.items.min(u32::MAX as usize),
            interactions: self.interactions,
            seed: self.seed,
            n_categories,
            n_clusters: self.n_clusters.clamp(1, 100_000),
            categories_per_cluster: self.categories_per_cluster.clamp(1, n_categories),
            cluster_affinity: share(self.cluster_affinity, 0.85),
            zipf_exponent: if self.zipf_exponent.is_finite() {
                self.zipf_exponent.clamp(0.0, 4.0)
            } else {
                1.0
            },
            activity_sigma: if self.activity_sigma.is_finite() {
                self.activity_sigma.clamp(0.0, 4.0)
            } else {
                1.3
            },
            fresh_share: share(self.fresh_share, 0.1),
            fresh_days: self.fresh_days.clamp(1, span_days),
            fresh_boost: if self.fresh_boost.is_finite() {
                self.fresh_boost.clamp(0.01, 1000.0)
            } else {
                3.0
            },
            flagged_share: share(self.flagged_share, 0.01),
            promoted_share: share(self.promoted_share, 0.02),
            n_creators: self.n_creators.clamp(1, u32::MAX as usize),
            span_days,
            // Keeps every generated time (items are published up to a year before the span)
            // inside what ingest accepts, so written data always reads back.
            end_ts: self
                .end_ts
                .clamp(i64::from(span_days) * DAY + 366 * DAY, MAX_TIMESTAMP),
        }
    }
}

/// Generated log (sorted by timestamp, then user, item) and catalog (sorted by item id).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthData {
    pub interactions: Vec<RawInteraction>,
    pub items: Vec<RawItem>,
}

/// Paths written by [`write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthFiles {
    pub interactions: PathBuf,
    pub items: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: writing Parquet: {source}", path.display())]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("{}: building Arrow batch: {source}", path.display())]
    Arrow { path: PathBuf, source: ArrowError },
}

/// Names used for the first categories; more categories are named `category_NN`.
const CATEGORY_NAMES: [&str; 20] = [
    "news",
    "sports",
    "music",
    "movies",
    "gaming",
    "tech",
    "science",
    "travel",
    "food",
    "fashion",
    "finance",
    "health",
    "comedy",
    "education",
    "art",
    "history",
    "nature",
    "cars",
    "pets",
    "diy",
];

/// Event kinds with the confidence weight the builder gives them (impressions carry none).
const EVENTS: [(&str, f32); 4] = [
    ("impression", 0.0),
    ("click", 1.0),
    ("like", 2.0),
    ("purchase", 4.0),
];
/// Event-kind probabilities for draws from the user's tastes vs. popularity exploration: taste
/// draws engage more strongly, which is part of the planted signal.
const TASTE_EVENT_P: [f64; 4] = [0.30, 0.42, 0.18, 0.10];
const EXPLORE_EVENT_P: [f64; 4] = [0.80, 0.16, 0.03, 0.01];

/// RNG streams (one per purpose) so adding draws to one purpose never shifts another.
#[derive(Clone, Copy)]
enum Stream {
    Ranks = 1,
    Clusters = 2,
    Item = 3,
    UserProfile = 4,
    UserEvents = 5,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, stream: Stream, index: u64) -> StdRng {
    let s = splitmix64(splitmix64(seed ^ splitmix64(stream as u64)) ^ index);
    StdRng::seed_from_u64(s)
}

/// Uniform in `[lo, hi)`, or `lo` when the range is empty.
fn uniform(rng: &mut StdRng, lo: i64, hi: i64) -> i64 {
    if hi > lo {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// Index drawn from small unnormalized weights (linear scan; the lists here have ≤ 4 entries).
fn pick(rng: &mut StdRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

fn category_name(k: usize) -> String {
    CATEGORY_NAMES
        .get(k)
        .map_or_else(|| format!("category_{k:02}"), |s| s.to_string())
}

/// Catalog plus what sampling needs per item.
struct Catalog {
    items: Vec<RawItem>,
    /// Category indices per item, primary first.
    cats: Vec<Vec<u32>>,
    /// Sampling weight (popularity × fresh boost).
    weight: Vec<f64>,
}

fn gen_items(cfg: &SynthConfig) -> Catalog {
    let n = cfg.items;
    // Popularity rank is a random permutation so it is unrelated to id or category.
    let mut ranks: Vec<u32> = (0..n as u32).collect();
    {
        use rand::seq::SliceRandom;
        ranks.shuffle(&mut rng_for(cfg.seed, Stream::Ranks, 0));
    }
    let end = cfg.end_ts;
    let fresh_secs = i64::from(cfg.fresh_days) * DAY;
    let start = end - i64::from(cfg.span_days) * DAY;
    let k = cfg.n_categories;

    let rows: Vec<(RawItem, Vec<u32>, f64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = rng_for(cfg.seed, Stream::Item, i as u64);
            let primary = rng.gen_range(0..k);
            let extra = match rng.gen::<f64>() {
                x if x < 0.5 => 0,
                x if x < 0.85 => 1,
                _ => 2,
            }
            .min(k - 1);
            let mut cats = vec![primary as u32];
            // Extra categories mostly neighbour the primary, so categories co-occur in a pattern.
            let mut tries = 0;
            while cats.len() < 1 + extra && tries < 16 {
                tries += 1;
                let c = if rng.gen::<f64>() < 0.7 {
                    (primary + rng.gen_range(1..=3)) % k
                } else {
                    rng.gen_range(0..k)
                };
                if !cats.contains(&(c as u32)) {
                    cats.push(c as u32);
                }
            }
            // Creators specialize: creator c covers category c % k when there are enough.
            let per_cat = cfg.n_creators.saturating_sub(primary).div_ceil(k);
            let creator = if per_cat > 0 {
                primary + k * rng.gen_range(0..per_cat)
            } else {
                rng.gen_range(0..cfg.n_creators)
            };
            let fresh = rng.gen::<f64>() < cfg.fresh_share;
            let published_at = if fresh {
                uniform(&mut rng, end - fresh_secs, end - 1)
            } else {
                uniform(&mut rng, start - 365 * DAY, end - fresh_secs)
            };
            let policy_flag = rng.gen::<f64>() < cfg.flagged_share;
            let promoted = rng.gen::<f64>() < cfg.promoted_share;
            let rank = ranks.get(i).copied().unwrap_or(0);
            let mut weight = (f64::from(rank) + 1.0).powf(-cfg.zipf_exponent);
            if fresh {
                weight *= cfg.fresh_boost;
            }
            let id = i as u64 + 1;
            let item = RawItem {
                item_id: id,
                title: format!("{} #{id}", category_name(primary)),
                categories: cats.iter().map(|&c| category_name(c as usize)).collect(),
                creator_id: Some(creator as u64 + 1),
                published_at: Some(published_at),
                policy_flag,
                promoted,
            };
            (item, cats, weight)
        })
        .collect();

    let mut cat = Catalog {
        items: Vec::with_capacity(n),
        cats: Vec::with_capacity(n),
        weight: Vec::with_capacity(n),
    };
    for (item, cats, weight) in rows {
        cat.items.push(item);
        cat.cats.push(cats);
        cat.weight.push(weight);
    }
    cat
}

/// Popularity-weighted samplers: one over all items, one per category over its items.
struct Samplers {
    global: Option<WeightedAliasIndex<f64>>,
    /// Item indices of each category, and an alias table over them.
    by_category: Vec<Option<(Vec<u32>, WeightedAliasIndex<f64>)>>,
}

fn build_samplers(cfg: &SynthConfig, cat: &Catalog) -> Samplers {
    let global = WeightedAliasIndex::new(cat.weight.clone()).ok();
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); cfg.n_categories];
    for (i, cs) in cat.cats.iter().enumerate() {
        for &c in cs {
            if let Some(m) = members.get_mut(c as usize) {
                m.push(i as u32);
            }
        }
    }
    let by_category = members
        .into_par_iter()
        .map(|m| {
            let w: Vec<f64> = m
                .iter()
                .map(|&i| cat.weight.get(i as usize).copied().unwrap_or(0.0))
                .collect();
            WeightedAliasIndex::new(w).ok().map(|t| (m, t))
        })
        .collect();
    Samplers {
        global,
        by_category,
    }
}

/// Categories each taste cluster prefers: cluster c always includes category c mod k (so every
/// category has fans when clusters ≥ categories), plus distinct random others.
fn gen_clusters(cfg: &SynthConfig) -> Vec<Vec<u32>> {
    let mut rng = rng_for(cfg.seed, Stream::Clusters, 0);
    let k = cfg.n_categories;
    (0..cfg.n_clusters)
        .map(|c| {
            let mut cats = vec![(c % k) as u32];
            while cats.len() < cfg.categories_per_cluster {
                let x = rng.gen_range(0..k) as u32;
                if !cats.contains(&x) {
                    cats.push(x);
                }
            }
            cats
        })
        .collect()
}

/// A user's tastes: their cluster's categories with personal weights, and activity level.
struct Profile {
    cats: Vec<u32>,
    cat_weights: Vec<f64>,
    activity: f64,
}

fn gen_profiles(cfg: &SynthConfig, clusters: &[Vec<u32>]) -> Vec<Profile> {
    let activity = LogNormal::new(0.0, cfg.activity_sigma).ok();
    (0..cfg.users)
        .into_par_iter()
        .map(|u| {
            let mut rng = rng_for(cfg.seed, Stream::UserProfile, u as u64);
            let cluster = rng.gen_range(0..clusters.len().max(1));
            let cats = clusters.get(cluster).cloned().unwrap_or_default();
            // Exponential weights (a flat Dirichlet) give each user a personal favourite.
            let cat_weights = cats
                .iter()
                .map(|_| 0.2 - rng.gen::<f64>().max(1e-12).ln())
                .collect();
            let activity = activity.map_or(1.0, |d| d.sample(&mut rng));
            Profile {
                cats,
                cat_weights,
                activity,
            }
        })
        .collect()
}

/// Splits `total` interactions over users: one each first (when there are enough), the rest in
/// proportion to activity by largest remainder, so the sum is exact.
fn allocate(total: usize, activity: &[f64]) -> Vec<usize> {
    let n = activity.len();
    if n == 0 {
        return Vec::new();
    }
    if total < n {
        return (0..n).map(|u| usize::from(u < total)).collect();
    }
    let rest = total - n;
    let sum: f64 = activity.iter().sum();
    let share = |w: f64| {
        if sum > 0.0 && sum.is_finite() {
            rest as f64 * w / sum
        } else {
            rest as f64 / n as f64
        }
    };
    let exact: Vec<f64> = activity.iter().map(|&w| share(w)).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| 1 + e.floor() as usize).collect();
    let assigned: usize = counts.iter().sum();
    // Users by descending fractional part (ties by id) receive the leftover units.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    if assigned <= total {
        for u in order.iter().cycle().take(total - assigned) {
            counts[*u] += 1;
        }
    } else {
        // Float rounding overshot: take back from the users with the most.
        let mut by_count: Vec<usize> = (0..n).collect();
        by_count.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
        let mut excess = assigned - total;
        for u in by_count.iter().cycle() {
            if excess == 0 {
                break;
            }
            if counts[*u] > 1 {
                counts[*u] -= 1;
                excess -= 1;
            }
        }
    }
    counts
}

/// Compact event used while generating and sorting (field order = sort order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Ev {
    ts: i64,
    user: u32,
    item: u32,
    kind: u8,
}

struct World<'a> {
    cfg: &'a SynthConfig,
    cat: &'a Catalog,
    samplers: &'a Samplers,
    start: i64,
}

impl World<'_> {
    fn sample_item(&self, rng: &mut StdRng, p: &Profile) -> Option<(u32, bool)> {
        if rng.gen::<f64>() < self.cfg.cluster_affinity && !p.cats.is_empty() {
            let c = p.cats.get(pick(rng, &p.cat_weights)).copied();
            if let Some(Some((members, table))) =
                c.and_then(|c| self.samplers.by_category.get(c as usize))
            {
                return members.get(table.sample(rng)).map(|&i| (i, true));
            }
        }
        self.samplers
            .global
            .as_ref()
            .map(|t| (t.sample(rng) as u32, false))
    }

    /// Fills `out` with user `u`'s interactions. Time first, then an item already published at
    /// that time (a few redraws; then the time moves after publication).
    fn fill_user(&self, u: usize, p: &Profile, out: &mut [Ev]) {
        let mut rng = rng_for(self.cfg.seed, Stream::UserEvents, u as u64);
        let end = self.cfg.end_ts;
        for ev in out.iter_mut() {
            let mut ts = uniform(&mut rng, self.start, end);
            let mut chosen = None;
            for attempt in 0..8 {
                let Some((item, taste)) = self.sample_item(&mut rng, p) else {
                    break;
                };
                let published = self
                    .cat
                    .items
                    .get(item as usize)
                    .and_then(|it| it.published_at)
                    .unwrap_or(self.start);
                if published <= ts {
                    chosen = Some((item, taste));
                    break;
                }
                if attempt == 7 {
                    ts = uniform(&mut rng, published.max(self.start), end);
                    chosen = Some((item, taste));
                }
            }
            let (item, taste) = chosen.unwrap_or((0, false));
            let probs = if taste {
                &TASTE_EVENT_P
            } else {
                &EXPLORE_EVENT_P
            };
            *ev = Ev {
                ts,
                user: u as u32,
                item,
                kind: pick(&mut rng, probs) as u8,
            };
        }
    }
}

/// Generates the catalog and log. Deterministic in `cfg` (including `seed`) alone.
pub fn generate(cfg: &SynthConfig) -> SynthData {
    let cfg = cfg.sanitized();
    let cat = gen_items(&cfg);
    if cfg.items == 0 || cfg.users == 0 {
        return SynthData {
            interactions: Vec::new(),
            items: cat.items,
        };
    }
    let samplers = build_samplers(&cfg, &cat);
    let clusters = gen_clusters(&cfg);
    let profiles = gen_profiles(&cfg, &clusters);
    let activity: Vec<f64> = profiles.iter().map(|p| p.activity).collect();
    let counts = allocate(cfg.interactions, &activity);

    let world = World {
        cfg: &cfg,
        cat: &cat,
        samplers: &samplers,
        start: cfg.end_ts - i64::from(cfg.span_days) * DAY,
    };
    let total: usize = counts.iter().sum();
    let mut evs = vec![Ev::default(); total];
    {
        // Carve the buffer into one slice per user so users fill in parallel without copying.
        let mut slices: Vec<(usize, &mut [Ev])> = Vec::with_capacity(counts.len());
        let mut rest: &mut [Ev] = &mut evs;
        for (u, &c) in counts.iter().enumerate() {
            let n = c.min(rest.len());
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
            slices.push((u, head));
            rest = tail;
        }
        slices.into_par_iter().for_each(|(u, out)| {
            if let Some(p) = profiles.get(u) {
                world.fill_user(u, p, out);
            }
        });
    }
    evs.par_sort_unstable();

    let interactions = evs
        .par_iter()
        .map(|e| {
            let (kind, weight) = EVENTS
                .get(e.kind as usize)
                .copied()
                .unwrap_or(("click", 1.0));
            RawInteraction {
                user_id: u64::from(e.user) + 1,
                item_id: u64::from(e.item) + 1,
                timestamp: e.ts,
                event_type: Some(kind.to_string()),
                weight: Some(weight),
                rating: None,
            }
        })
        .collect();
    SynthData {
        interactions,
        items: cat.items,
    }
}

/// Rows per Parquet write call: bounds the memory of the Arrow arrays built for a write.
const WRITE_CHUNK: usize = 1 << 20;

/// Writes `out_dir/interactions.parquet` and `out_dir/items.parquet` (categories as
/// `List<Utf8>`), creating `out_dir`. Each file is written to a temporary name and renamed, so a
/// reader never sees a half-written file. Same data → byte-identical files.
pub fn write(data: &SynthData, out_dir: &Path) -> Result<SynthFiles, SynthError> {
    std::fs::create_dir_all(out_dir).map_err(|source| SynthError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let files = SynthFiles {
        interactions: out_dir.join("interactions.parquet"),
        items: out_dir.join("items.parquet"),
    };
    write_atomic(&files.interactions, |path, file| {
        write_interactions(path, file, &data.interactions)
    })?;
    write_atomic(&files.items, |path, file| {
        write_items(path, file, &data.items)
    })?;
    Ok(files)
}

fn write_atomic(
    path: &Path,
    body: impl FnOnce(&Path, File) -> Result<(), SynthError>,
) -> Result<(), SynthError> {
    let tmp = path.with_extension("parquet.tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SynthError::Io { path: p, source }
    };
    let file = File::create(&tmp).map_err(io(&tmp))?;
    if let Err(e) = body(path, file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn writer(path: &Path, file: File, schema: Arc<Schema>) -> Result<ArrowWriter<File>, SynthError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    ArrowWriter::try_new(file, schema, Some(props)).map_err(|source| SynthError::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

fn write_batches(
    path: &Path,
    mut w: ArrowWriter<File>,
    schema: Arc<Schema>,
    chunks: impl Iterator<Item = Vec<ArrayRef>>,
) -> Result<(), SynthError> {
    let pq = |source| SynthError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    for columns in chunks {
        let batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|source| SynthError::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
        w.write(&batch).map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(())
}

fn write_interactions(path: &Path, file: File, rows: &[RawInteraction]) -> Result<(), SynthError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::UInt64, false),
        Field::new("item_id", DataType::UInt64, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("weight", DataType::Float32, true),
        Field::new("rating", DataType::Float32, true),
    ]));
    let w = writer(path, file, schema.clone())?;
    let chunks = rows.chunks(WRITE_CHUNK).map(|c| {
        vec![
            Arc::new(UInt64Array::from_iter_values(c.iter().map(|r| r.user_id))) as ArrayRef,
            Arc::new(UInt64Array::from_iter_values(c.iter().map(|r| r.item_id))),
            Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.timestamp))),
            Arc::new(
                c.iter()
                    .map(|r| r.event_type.as_deref())
                    .collect::<StringArray>(),
            ),
            Arc::new(c.iter().map(|r| r.weight).collect::<Float32Array>()),
            Arc::new(c.iter().map(|r| r.rating).collect::<Float32Array>()),
        ]
    });
    write_batches(path, w, schema, chunks)
}

fn write_items(path: &Path, file: File, rows: &[RawItem]) -> Result<(), SynthError> {
    let list_item = Arc::new(Field::new("item", DataType::Utf8, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::UInt64, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("categories", DataType::List(list_item.clone()), false),
        Field::new("creator_id", DataType::UInt64, true),
        Field::new("published_at", DataType::Int64, true),
        Field::new("policy_flag", DataType::Boolean, false),
        Field::new("promoted", DataType::Boolean, false),
    ]));
    let w = writer(path, file, schema.clone())?;
    let chunks = rows.chunks(WRITE_CHUNK).map(|c| {
        let mut cats = ListBuilder::new(StringBuilder::new()).with_field(list_item.clone());
        for r in c {
            for s in &r.categories {
                cats.values().append_value(s);
            }
            cats.append(true);
        }
        vec![
            Arc::new(UInt64Array::from_iter_values(c.iter().map(|r| r.item_id))) as ArrayRef,
            Arc::new(
                c.iter()
                    .map(|r| Some(r.title.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(cats.finish()),
            Arc::new(c.iter().map(|r| r.creator_id).collect::<UInt64Array>()),
            Arc::new(c.iter().map(|r| r.published_at).collect::<Int64Array>()),
            Arc::new(
                c.iter()
                    .map(|r| Some(r.policy_flag))
                    .collect::<BooleanArray>(),
            ),
            Arc::new(c.iter().map(|r| Some(r.promoted)).collect::<BooleanArray>()),
        ]
    });
    write_batches(path, w, schema, chunks)
}
