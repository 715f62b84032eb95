//! `index-builder build`: the whole nightly pipeline, step by step, into a new bundle version that
//! becomes current only when every step has succeeded.

use funnel::layout;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use funnel::bundle::files::sha256_file;
use funnel::bundle::publish::new_version_name;
use funnel::bundle::{BundleWriter, InputEntry};
use funnel::features::FeatureRegistry;
use funnel::ranking::input::ENGAGEMENT_FEATURES;
use funnel::ranking::{load_ranker, Ranker};
use funnel::table::{Column, Table};
use serde_json::json;

use crate::config::{BuildConfig, LabelSplit};
use crate::dataset::{CatalogDefaults, Dataset, Event};
use crate::eval::{evaluate, EvalReport};
use crate::progress::Progress;
use crate::split::{split, Holdout};
use crate::stage::Stage;
use crate::train::{train_all, TrainConfig, TrainReport};
use crate::{batch, examples, ingest, online_features};

/// Cap on the early stage's trending snapshots (memory: one trending vector pair each).
const MAX_SNAPSHOTS: usize = 64;
/// Evaluation users are capped so a 100K-user holdout stays inside the nightly time budget.
const EVAL_MAX_USERS: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Bundle(#[from] funnel::bundle::BundleError),
    #[error(transparent)]
    Data(#[from] funnel::table::DataError),
    #[error(transparent)]
    Features(#[from] funnel::features::FeatureError),
    #[error("{0}")]
    Invalid(String),
    #[error("ranker training: {0}")]
    Train(String),
    #[error("redis push to {url}: {message}")]
    Redis { url: String, message: String },
}

pub struct BuildArgs {
    pub interactions: PathBuf,
    pub items: Option<PathBuf>,
    pub out: PathBuf,
    pub holdout: Option<Holdout>,
    pub redis: Option<String>,
    pub config: BuildConfig,
    pub registry: FeatureRegistry,
    pub quiet: bool,
    pub seed: u64,
}

pub struct BuildOutcome {
    pub version: String,
    pub dir: PathBuf,
    pub eval: Option<EvalReport>,
    pub timings: Vec<(String, f64)>,
    pub total_seconds: f64,
    pub counts: BTreeMap<String, u64>,
}

fn input_entries(role: &str, path: &Path) -> Result<Vec<InputEntry>, BuildError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| funnel::bundle::BundleError::io(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| {
            let (sha256, size) = sha256_file(&f)?;
            Ok(InputEntry {
                role: role.to_string(),
                path: f.display().to_string(),
                sha256,
                size,
            })
        })
        .collect()
}

/// Splits training events into the early part (models for ranker examples) and the labels;
/// returns the early stage's cutoff too (the start of the temporal label window).
fn label_split(
    train: &[Event],
    fraction: f64,
    how: LabelSplit,
    max_tail: usize,
) -> (Vec<Event>, Vec<Event>, i64) {
    let k = ((train.len() as f64) * (1.0 - fraction)).floor() as usize;
    let cut = train
        .get(k.min(train.len().saturating_sub(1)))
        .map(|e| e.ts)
        .unwrap_or(0);
    let mut is_label: Vec<bool> = train
        .iter()
        .map(|e| how != LabelSplit::PerUser && e.ts >= cut)
        .collect();
    if how != LabelSplit::Temporal {
        // Each user's own tail, keeping at least one earlier interaction as their history.
        let n_users = train.iter().map(|e| e.user as usize + 1).max().unwrap_or(0);
        let mut count = vec![0usize; n_users];
        for e in train {
            count[e.user as usize] += 1;
        }
        let mut left: Vec<usize> = count
            .iter()
            .map(|&n| {
                if n >= 2 {
                    let tail = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
                    if max_tail > 0 {
                        tail.min(max_tail)
                    } else {
                        tail
                    }
                } else {
                    0
                }
            })
            .collect();
        if how == LabelSplit::Hybrid {
            // A user the window already labels keeps those labels only: one request (when they
            // came back), not a tail that reaches back across their gap.
            for e in train.iter().filter(|e| e.ts >= cut) {
                left[e.user as usize] = 0;
            }
        }
        for (i, e) in train.iter().enumerate().rev() {
            let l = &mut left[e.user as usize];
            if *l > 0 {
                is_label[i] = true;
                *l -= 1;
            }
        }
    }
    let (mut early, mut labels) = (Vec::new(), Vec::new());
    for (e, l) in train.iter().zip(is_label) {
        if l {
            labels.push(*e);
        } else {
            early.push(*e);
        }
    }
    if how == LabelSplit::PerUser {
        // No temporal window: the early stage's "now" is the end of what it saw.
        let end = train.last().map_or(0, |e| e.ts + 1);
        return (early, labels, end);
    }
    (early, labels, cut)
}

pub fn run(args: BuildArgs) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    let cfg = &args.config;
    cfg.validate().map_err(BuildError::Invalid)?;
    // Fail before hours of work, not at the feature step: the embedding width is declared twice.
    if let Some(dim) = args
        .registry
        .get("user_embedding")
        .and_then(|d| d.dtype.dim())
    {
        if dim != cfg.als.dim {
            return Err(BuildError::Invalid(format!(
                "als.dim is {} but feature-defs declare user_embedding with dim {dim}; make them agree",
                cfg.als.dim
            )));
        }
    }
    let progress = Progress::new(args.quiet);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();

    // 0. Inputs.
    let step = progress.spinner("read inputs");
    let raw = ingest::read_interactions(&args.interactions)?;
    let items = match &args.items {
        Some(p) => Some(ingest::read_items(p)?),
        None => None,
    };
    let mut inputs = input_entries("interactions", &args.interactions)?;
    if let Some(p) = &args.items {
        inputs.extend(input_entries("items", p)?);
    }
    step.finish();
    let step = progress.spinner("index dataset");
    let ds = Dataset::build(raw, items, &CatalogDefaults::from_registry(&args.registry));
    step.finish();
    if ds.events.is_empty() {
        return Err(BuildError::Invalid(format!(
            "{}: no usable interactions (all had zero weight)",
            args.interactions.display()
        )));
    }
    counts.insert("users".into(), ds.n_users() as u64);
    counts.insert("items".into(), ds.n_items() as u64);
    counts.insert("interactions".into(), ds.events.len() as u64);
    counts.insert("categories".into(), ds.catalog.categories.len() as u64);
    counts.insert("dropped_zero_weight".into(), ds.dropped_zero_weight as u64);
    counts.insert(
        "items_without_metadata".into(),
        ds.items_without_metadata as u64,
    );

    // 1. Holdout.
    let (train, test, cutoff) = match args.holdout {
        Some(h) => {
            let s = split(&ds.events, h, ds.n_users());
            (s.train, s.test, s.cutoff)
        }
        None => (ds.events.clone(), Vec::new(), ds.max_ts() + 1),
    };
    if train.is_empty() {
        return Err(BuildError::Invalid(
            "the holdout leaves no training interactions".into(),
        ));
    }
    counts.insert("train_interactions".into(), train.len() as u64);
    counts.insert("test_interactions".into(), test.len() as u64);

    let version = new_version_name();
    let writer = BundleWriter::create(&args.out, &version)?;

    // 2–8 (early stage): models as of the label cutoff, for ranker training examples.
    let (early_events, label_events, label_cut) = label_split(
        &train,
        cfg.rankers.label_fraction,
        cfg.rankers.label_split,
        cfg.rankers.max_tail_labels,
    );
    let mut early = Stage::build(&ds, &early_events, label_cut, cfg, "early stage", &progress)
        .map_err(BuildError::Invalid)?;
    // Point-in-time item signals for requests before the label cutoff (a user's own tail).
    let step = progress.spinner("early stage: trending snapshots");
    let asked = examples::request_times(&label_events, ds.n_users());
    let spacing = (cfg.trending.half_life_hours * 1800.0) as i64; // half a half-life
    let times = examples::snapshot_times(&asked, label_cut, spacing, MAX_SNAPSHOTS);
    early.add_snapshots(&ds, &train, &times, cfg);
    step.finish();
    let step = progress.spinner("ranker examples (retrieval negatives)");
    let ex = examples::build(&ds, &early, &label_events, cfg, args.seed);
    step.finish();
    drop(early);
    counts.insert("ranker_train_examples".into(), ex.train.y.len() as u64);
    counts.insert("ranker_valid_examples".into(), ex.valid.y.len() as u64);
    if ex.train.y.is_empty() || ex.valid.y.is_empty() {
        return Err(BuildError::Train(format!(
            "no training examples: {} users had labels, {} of them a positive among their candidates",
            ex.users_with_labels, ex.users_with_positive_candidates
        )));
    }
    let step = progress.spinner("train rankers (candle)");
    let tcfg = TrainConfig {
        epochs: cfg.rankers.epochs,
        batch_size: cfg.rankers.batch_size,
        lr: cfg.rankers.learning_rate,
        seed: args.seed,
        archs: cfg.rankers.archs.clone(),
        listwise: cfg.rankers.listwise.clone(),
        balance_segments: cfg.rankers.balance_segments,
        ..TrainConfig::default()
    };
    let report: TrainReport = train_all(&ex.train, &ex.valid, &tcfg, writer.dir())
        .map_err(|e| BuildError::Train(e.to_string()))?;
    step.finish();
    // Fitted on the same validation rows the models were scored on, before they are dropped;
    // rewrites rankers.json (train_all wrote it without the ensemble section).
    let step = progress.spinner("fit ensemble");
    let ensemble = crate::ensemble::fit(&report, &ex.valid)
        .map_err(|e| BuildError::Train(format!("fitting the ensemble: {e}")))?;
    let mut rankers_manifest = report.manifest();
    rankers_manifest.ensemble = Some(ensemble.clone());
    rankers_manifest
        .write(writer.dir())
        .map_err(|e| BuildError::Train(e.to_string()))?;
    step.finish();
    tracing::info!(
        lambda = ensemble.lambda,
        estimator_pearson = ?ensemble.estimator.as_ref().map(|e| e.pearson),
        strategy_ndcg20 = ?ensemble
            .strategies
            .iter()
            .map(|s| (s.strategy.as_str(), s.ndcg_at_20))
            .collect::<Vec<_>>(),
        "ensemble fitted"
    );
    drop(ex);

    // 2–7 (serving stage): the models the server loads.
    let stage = Stage::build(&ds, &train, cutoff, cfg, "serving stage", &progress)
        .map_err(BuildError::Invalid)?;

    let step = progress.spinner("write artifacts");
    write_artifacts(&writer, &ds, &stage, cfg)?;
    step.finish();

    let rankers: Vec<(String, Box<dyn Ranker>)> = report
        .specs
        .iter()
        .map(|s| load_ranker(s, writer.dir()).map(|r| (s.id.clone(), r)))
        .collect::<Result<_, _>>()
        .map_err(|e| BuildError::Train(format!("reloading a trained ranker: {e}")))?;
    let best =
        funnel::ranking::registry::best_by_validation(report.specs.iter().map(|s| &s.metrics));

    // 9. Batch recommendations.
    let users = batch::active_users(&stage, cfg);
    let step = progress.bar("batch recommendations", users.len() as u64);
    let best_ranker = best.and_then(|i| rankers.get(i)).map(|(_, r)| r.as_ref());
    let recs = batch::build(&ds, &stage, best_ranker, users, cfg, &|n| step.inc(n));
    step.finish();
    write_batch(&writer, &ds, &recs)?;
    counts.insert("batch_users".into(), recs.users.len() as u64);

    // 10–11. Online features and their statistics.
    let step = progress.spinner("online features + statistics");
    let table = online_features::build(&args.registry, &ds, &stage, &recs)?;
    table.write_embedded(writer.path(layout::ONLINE_FEATURES)?)?;
    let stats = table.stats();
    std::fs::write(
        writer.path(layout::FEATURE_STATS)?,
        serde_json::to_vec_pretty(&stats).map_err(|e| BuildError::Invalid(e.to_string()))?,
    )
    .map_err(|e| funnel::bundle::BundleError::io(writer.dir().join(layout::FEATURE_STATS), e))?;
    step.finish();

    // 12. Offline evaluation.
    let eval = if let Some(h) = args.holdout {
        let step = progress.spinner("offline evaluation");
        let rep = evaluate(&ds, &stage, &rankers, &test, &h.to_string(), EVAL_MAX_USERS);
        let pairs = crate::eval::relevant_pairs(&ds, &stage, &test);
        Table::new()
            .with("user_id", Column::U64(pairs.iter().map(|p| p.0).collect()))
            .with("item_id", Column::U64(pairs.iter().map(|p| p.1).collect()))
            .with("ts", Column::I64(pairs.iter().map(|p| p.2).collect()))
            .meta("holdout", h.to_string())
            .write(&writer.path(layout::HOLDOUT)?)?;
        std::fs::write(
            writer.path(layout::EVAL)?,
            serde_json::to_vec_pretty(&rep).map_err(|e| BuildError::Invalid(e.to_string()))?,
        )
        .map_err(|e| funnel::bundle::BundleError::io(writer.dir().join(layout::EVAL), e))?;
        step.finish();
        Some(rep)
    } else {
        None
    };

    // Online features go to Redis before the bundle becomes current: keys carry the new version,
    // so a server still on the old bundle never reads them, and a failed push publishes nothing.
    if let Some(url) = &args.redis {
        let step = progress.spinner("push online features to Redis");
        let stats = crate::online::push_to_redis_blocking(url, &args.registry, &table, &version)
            .map_err(|e| BuildError::Redis {
                url: url.clone(),
                message: e.to_string(),
            })?;
        // Read a sample back through the server's own path: a key, codec or version mix-up
        // fails the build instead of being served as defaults.
        let report =
            crate::online::verify_redis_blocking(url, &args.registry, &table, &version, 1000)
                .map_err(|e| BuildError::Redis {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
        if !report.is_ok() {
            return Err(BuildError::Redis {
                url: url.clone(),
                message: format!("read-back after push disagrees: {report:?}"),
            });
        }
        step.finish();
        counts.insert("redis_keys".into(), stats.keys);
    }

    let mut info: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    info.insert("counts".into(), json!(counts));
    info.insert("cutoff".into(), json!(cutoff));
    // The server compares its own with these (the rankers learned from such candidates).
    info.insert(
        "retrieval_plan".into(),
        serde_json::to_value(&cfg.serving).unwrap_or_default(),
    );
    info.insert("holdout".into(), json!(args.holdout.map(|h| h.to_string())));
    info.insert(
        "config".into(),
        serde_json::to_value(cfg).unwrap_or_default(),
    );
    info.insert(
        "rankers".into(),
        json!(report
            .specs
            .iter()
            .map(|s| json!({"id": s.id, "arch": s.arch, "metrics": s.metrics}))
            .collect::<Vec<_>>()),
    );
    info.insert("ranker_correlation".into(), json!(report.correlation));
    info.insert(
        "ensemble".into(),
        json!({
            "lambda": ensemble.lambda,
            "estimator": ensemble.estimator,
            "strategies": ensemble.strategies,
        }),
    );
    if let Some(rep) = &eval {
        info.insert("eval".into(), serde_json::to_value(rep).unwrap_or_default());
    }
    let timings = progress.timings();
    info.insert("timings_s".into(), json!(timings));
    let step = progress.spinner("publish bundle");
    let (dir, _manifest) = writer.publish(
        inputs,
        args.registry.hash().to_string(),
        info,
        cfg.publish.keep_versions,
    )?;
    step.finish();
    Ok(BuildOutcome {
        version,
        dir,
        eval,
        timings: progress.timings(),
        total_seconds: started.elapsed().as_secs_f64(),
        counts,
    })
}

fn write_artifacts(
    w: &BundleWriter,
    ds: &Dataset,
    stage: &Stage,
    cfg: &BuildConfig,
) -> Result<(), BuildError> {
    ds.catalog.save(&w.path(layout::CATALOG)?)?;
    let hist_len: Vec<u32> = (0..ds.n_users() as u32)
        .map(|u| stage.hist.len(u) as u32)
        .collect();
    Table::new()
        .with("user_id", Column::U64(ds.user_ids.clone()))
        .with("history_len", Column::U32(hist_len))
        .write(&w.path(layout::USERS)?)?;
    let d = stage.emb.dim;
    Table::new()
        .with(
            "vector",
            Column::F32Vec {
                dim: d,
                values: stage.emb.users.clone(),
            },
        )
        .meta("dim", d)
        .write(&w.path(layout::USER_EMBEDDINGS)?)?;
    Table::new()
        .with(
            "vector",
            Column::F32Vec {
                dim: d,
                values: stage.emb.items.clone(),
            },
        )
        .meta("dim", d)
        .write(&w.path(layout::ITEM_EMBEDDINGS)?)?;
    stage.ann_graph.save(&w.dir().join(layout::ANN_DIR))?;
    if let Some(f) = &cfg.faiss {
        write_faiss(w, stage, &f.factory)?;
    }
    stage.cf.neighbors().save(&w.path(layout::CF_NEIGHBORS)?)?;
    stage
        .content
        .index()
        .save(&w.path(layout::CONTENT_CATEGORY_ITEMS)?)?;
    Table::new()
        .with("prior", Column::F32(stage.prior.clone()))
        .write(&w.path(layout::CONTENT_CATEGORY_PRIOR)?)?;
    stage.trend.list().save(&w.path(layout::TRENDING)?)?;
    let mut table = Table::new()
        .with("popularity", Column::F32(stage.trending.popularity.clone()))
        .with("trending", Column::F32(stage.trending.score.clone()));
    for (name, rate) in ENGAGEMENT_FEATURES.iter().zip(&stage.trending.engagement) {
        table = table.with(name, Column::F32(rate.clone()));
    }
    table
        .meta("cutoff", stage.cutoff)
        .write(&w.path(layout::POPULARITY)?)?;
    Ok(())
}

/// Trains the configured FAISS index on the served item vectors and writes it into `ann/`.
fn write_faiss(w: &BundleWriter, stage: &Stage, factory: &str) -> Result<(), BuildError> {
    let t0 = std::time::Instant::now();
    funnel::sources::ann::write_faiss_index(
        &w.dir().join(layout::ANN_DIR),
        &stage.emb.items,
        stage.emb.dim,
        factory,
    )
    .map_err(BuildError::Invalid)?;
    tracing::info!(
        factory,
        secs = t0.elapsed().as_secs_f64(),
        "faiss index built"
    );
    Ok(())
}

fn write_batch(w: &BundleWriter, ds: &Dataset, recs: &batch::BatchRecs) -> Result<(), BuildError> {
    let (mut users, mut ranks, mut items, mut scores) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (&u, list) in recs.users.iter().zip(&recs.lists) {
        for (rank, &(i, s)) in list.iter().enumerate() {
            users.push(ds.user_ids[u as usize]);
            ranks.push(rank as u32);
            items.push(ds.catalog.items[i as usize].id);
            scores.push(s);
        }
    }
    Table::new()
        .with("user_id", Column::U64(users))
        .with("rank", Column::U32(ranks))
        .with("item_id", Column::U64(items))
        .with("score", Column::F32(scores))
        .write(&w.path(layout::BATCH_RECS)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: u32, ts: i64) -> Event {
        Event {
            user,
            item: ts as u32,
            ts,
            weight: 1.0,
        }
    }

    #[test]
    fn hybrid_labels_the_window_and_every_other_users_own_next_items() {
        // User 0: 20 events early on (no window events). User 1: 10 early, 2 in the window.
        // User 2: a single event in the window (cold at the label cutoff).
        let mut train: Vec<Event> = (0..20).map(|t| ev(0, t)).collect();
        train.extend((20..30).map(|t| ev(1, t)));
        train.extend([ev(1, 100), ev(1, 101), ev(2, 102)]);
        train.sort_by_key(|e| e.ts);
        // 8 % of 33 events: the window is the last three (from ts 100).
        let (early, labels, cut) = label_split(&train, 0.08, LabelSplit::Hybrid, 3);
        assert_eq!(cut, 100);
        let of = |u: u32, v: &[Event]| v.iter().filter(|e| e.user == u).count();
        // User 0: round(0.08·20) = 2 (under the cap of 3): their last two.
        assert_eq!(of(0, &labels), 2);
        assert!(labels.iter().filter(|e| e.user == 0).all(|e| e.ts >= 18));
        // The cap binds with a larger share: round(0.5·20) = 10 → 3.
        let (_, l, _) = label_split(&train, 0.5, LabelSplit::PerUser, 3);
        assert_eq!(of(0, &l), 3);
        // User 1: only the window labels them; no tail reaching back across the gap.
        assert_eq!(of(1, &labels), 2);
        assert_eq!(of(1, &early), 10);
        assert_eq!((of(2, &labels), of(2, &early)), (1, 0));
        assert!(early.iter().all(|e| e.ts < cut));
        assert_eq!(early.len() + labels.len(), train.len());

        // Per user: every user with two or more keeps at least one early event.
        let (early, labels, end) = label_split(&train, 0.9, LabelSplit::PerUser, 0);
        assert_eq!(end, 103);
        // round(0.9·20) = 18 and round(0.9·12) = 11 labels; the single-event user is all early.
        assert_eq!((of(0, &early), of(1, &early), of(2, &early)), (2, 1, 1));
        assert_eq!(of(2, &labels), 0);
        // Temporal: exactly the window.
        let (_, labels, _) = label_split(&train, 0.08, LabelSplit::Temporal, 0);
        assert!(labels.iter().all(|e| e.ts >= 100) && labels.len() == 3);
    }
}
