//! Ranker training: turns labelled example rows into the bundle's trained ranking models.
//!
//! Owns the training set representation ([`ExampleSet`], whose rows come from the engine's own
//! `funnel::ranking::input::encode_row`, so training and serving cannot disagree on features), the
//! training loop for every [`Arch`], the offline metrics (AUC, NDCG@k, per-segment quality,
//! cross-model correlation) and writing `rankers/<id>.safetensors` + `rankers.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use funnel::ranking::input::{
    self, CandidateSignals, ItemSignals, UserSignals, INPUT_DIM, INPUT_LAYOUT_VERSION,
};
use funnel::ranking::models::{self, NetConfig};
use funnel::ranking::{
    standardize_row_into, Arch, CandleRanker, RankError, Ranker, RankerMetrics, RankerSpec,
    RankersManifest, SegmentMetrics, RANKERS_DIR,
};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rayon::prelude::*;

/// Cutoff of the ranking metric reported for every model.
pub const NDCG_K: usize = 20;
/// User segments by history length, shared with serving (the selector picks per segment).
pub use funnel::ranking::ensemble::{
    segment_for_history, LIGHT_MAX_HISTORY, SEGMENT_COLD, SEGMENT_HEAVY, SEGMENT_LIGHT,
    SEGMENT_NAMES,
};
/// Rows per forward pass when scoring the validation set (bounds peak memory).
const SCORE_CHUNK: usize = 8192;

/// Errors from training rankers.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid {set} example set: {reason}")]
    InvalidData { set: &'static str, reason: String },
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    #[error("training `{id}` failed: {source}")]
    Candle {
        id: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("training `{id}` diverged: loss {loss} at step {step}")]
    Diverged { id: String, step: usize, loss: f32 },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training thread for {0} panicked")]
    WorkerPanicked(Arch),
    #[error(transparent)]
    Rank(#[from] RankError),
}

/// Labelled ranker examples, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExampleSet {
    /// n × INPUT_DIM, row-major.
    pub x: Vec<f32>,
    /// 0/1 labels.
    pub y: Vec<f32>,
    /// Query (user/request) id, for NDCG.
    pub group: Vec<u32>,
    /// 0 cold, 1 light, 2 heavy (see [`segment_for_history`]).
    pub segment: Vec<u8>,
}

impl ExampleSet {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            x: Vec::with_capacity(n * INPUT_DIM),
            y: Vec::with_capacity(n),
            group: Vec::with_capacity(n),
            segment: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Row `i`, if in range.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.x.get(i * INPUT_DIM..(i + 1) * INPUT_DIM)
    }

    /// Appends one example encoded by the serving encoder; the segment follows the user's
    /// history length.
    pub fn push(
        &mut self,
        user: &UserSignals,
        item: &ItemSignals,
        cand: &CandidateSignals,
        label: bool,
        group: u32,
    ) {
        input::push_row(&mut self.x, user, item, cand);
        self.y.push(if label { 1.0 } else { 0.0 });
        self.group.push(group);
        self.segment.push(segment_for_history(user.history_len));
    }

    /// Checks lengths, labels and finiteness.
    pub fn validate(&self, set: &'static str) -> Result<(), TrainError> {
        let bad = |reason: String| Err(TrainError::InvalidData { set, reason });
        let n = self.y.len();
        if n > u32::MAX as usize {
            return bad(format!("{n} examples exceed the u32 row index"));
        }
        if self.x.len() != n * INPUT_DIM {
            return bad(format!(
                "x has {} floats, expected {n} rows x {INPUT_DIM}",
                self.x.len()
            ));
        }
        if self.group.len() != n || self.segment.len() != n {
            return bad(format!(
                "y/group/segment lengths differ: {}/{}/{}",
                n,
                self.group.len(),
                self.segment.len()
            ));
        }
        if let Some(i) = self.y.iter().position(|&v| v != 0.0 && v != 1.0) {
            return bad(format!("label {} at row {i} is not 0/1", self.y[i]));
        }
        if let Some(p) = self.x.par_iter().position_any(|v| !v.is_finite()) {
            return bad(format!(
                "non-finite value at row {}, column {}",
                p / INPUT_DIM,
                p % INPUT_DIM
            ));
        }
        Ok(())
    }
}

/// Training hyperparameters shared by all architectures.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak AdamW learning rate (cosine-decayed to 10% over the run).
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Cap on optimizer steps per model, so the nightly job's time stays bounded as data grows
    /// (at the defaults: 5 epochs up to ~600K examples, fewer passes beyond).
    pub max_steps: usize,
    /// Architectures to train, in report order.
    pub archs: Vec<Arch>,
    /// Model version; ids are `<arch>-v<version>`.
    pub version: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 1024,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 42,
            max_steps: 3000,
            archs: Arch::ALL.to_vec(),
            version: 1,
        }
    }
}

/// Outcome of [`train_all`]; index `m` of every per-model vector refers to `model_ids[m]`.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub specs: Vec<RankerSpec>,
    pub model_ids: Vec<String>,
    /// Pearson correlation of validation predictions, model × model (symmetric, unit diagonal).
    pub correlation: Vec<Vec<f32>>,
    /// `[model][segment]` validation AUC and NDCG@20 (segments 0 cold, 1 light, 2 heavy, plus
    /// any other segment id present).
    pub segment_metrics: Vec<Vec<SegmentMetrics>>,
    /// `[model][valid row]` validation predictions, as the served ranker computes them.
    pub valid_predictions: Vec<Vec<f32>>,
    pub total_seconds: f64,
}

impl TrainReport {
    /// The `rankers.json` content for these models.
    pub fn manifest(&self) -> RankersManifest {
        RankersManifest {
            input_dim: INPUT_DIM,
            input_layout_version: INPUT_LAYOUT_VERSION,
            rankers: self.specs.clone(),
            correlation: self.correlation.clone(),
            ensemble: None,
        }
    }
}

/// Trains every architecture in `cfg.archs` on `train`, evaluates on `valid`, and writes
/// `out_dir/rankers/<id>.safetensors` plus `out_dir/rankers.json`.
pub fn train_all(
    train: &ExampleSet,
    valid: &ExampleSet,
    cfg: &TrainConfig,
    out_dir: &Path,
) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.max_steps == 0 {
        return Err(TrainError::InvalidConfig(
            "epochs, batch_size and max_steps must be > 0".into(),
        ));
    }
    let lr_ok = cfg.lr.is_finite() && cfg.lr > 0.0;
    let wd_ok = cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0;
    if !(lr_ok && wd_ok) {
        return Err(TrainError::InvalidConfig(format!(
            "bad lr {} / weight_decay {}",
            cfg.lr, cfg.weight_decay
        )));
    }
    let mut seen = BTreeSet::new();
    if cfg.archs.is_empty() || !cfg.archs.iter().all(|a| seen.insert(*a)) {
        return Err(TrainError::InvalidConfig(
            "archs must be non-empty and distinct".into(),
        ));
    }
    train.validate("train")?;
    valid.validate("valid")?;
    if train.is_empty() {
        return Err(TrainError::InvalidData {
            set: "train",
            reason: "no examples".into(),
        });
    }

    let (mean, std) = feature_stats(&train.x);
    let rankers_dir = out_dir.join(RANKERS_DIR);
    std::fs::create_dir_all(&rankers_dir).map_err(|source| TrainError::Io {
        path: rankers_dir.clone(),
        source,
    })?;

    // One thread per model: candle parallelises matmuls but runs elementwise ops and autograd
    // bookkeeping on the calling thread, so concurrent models keep both cores busy. Each model's
    // result depends only on its own seed, so this stays deterministic.
    let results: Vec<Result<(RankerSpec, Vec<f32>), TrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cfg
            .archs
            .iter()
            .enumerate()
            .map(|(m, &arch)| {
                let (mean, std) = (&mean, &std);
                scope
                    .spawn(move || train_one(arch, m as u64, train, valid, mean, std, cfg, out_dir))
            })
            .collect();
        handles
            .into_iter()
            .zip(&cfg.archs)
            .map(|(h, arch)| h.join().unwrap_or(Err(TrainError::WorkerPanicked(*arch))))
            .collect()
    });
    let mut specs = Vec::with_capacity(cfg.archs.len());
    let mut preds = Vec::with_capacity(cfg.archs.len());
    for r in results {
        let (spec, p) = r?;
        specs.push(spec);
        preds.push(p);
    }

    let correlation = correlation_matrix(&preds);
    let report = TrainReport {
        model_ids: specs.iter().map(|s| s.id.clone()).collect(),
        segment_metrics: specs.iter().map(|s| s.metrics.segments.clone()).collect(),
        specs,
        correlation,
        valid_predictions: preds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    report.manifest().write(out_dir)?;
    tracing::info!(
        models = ?report.model_ids,
        seconds = report.total_seconds,
        "rankers trained"
    );
    Ok(report)
}

/// Per-column mean and (population) standard deviation of row-major `x`; constant columns get
/// std 1 so standardisation never divides by zero.
fn feature_stats(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / INPUT_DIM).max(1) as f64;
    // Chunked f64 sums merged in chunk order: deterministic regardless of thread scheduling.
    // Two passes (mean, then squared deviations) avoid E[x²]−E[x]² cancellation.
    let column_sums = |f: &(dyn Fn(usize, f32) -> f64 + Sync)| -> Vec<f64> {
        x.par_chunks(INPUT_DIM * 4096)
            .map(|chunk| {
                let mut acc = vec![0.0f64; INPUT_DIM];
                for row in chunk.chunks_exact(INPUT_DIM) {
                    for (j, &v) in row.iter().enumerate() {
                        acc[j] += f(j, v);
                    }
                }
                acc
            })
            .collect::<Vec<_>>()
            .into_iter()
            .fold(vec![0.0f64; INPUT_DIM], |mut total, part| {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                total
            })
    };
    let mean: Vec<f64> = column_sums(&|_, v| v as f64)
        .into_iter()
        .map(|s| s / n)
        .collect();
    let var = column_sums(&|j, v| (v as f64 - mean[j]).powi(2));
    let std = var
        .into_iter()
        .map(|ss| {
            let sd = (ss / n).sqrt() as f32;
            if sd.is_finite() && sd > 1e-6 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// Numerically stable mean BCE with logits: max(z,0) − z·y + ln(1 + e^{−|z|}).
/// (candle's version takes log(sigmoid), which overflows for confident logits.)
fn bce_with_logits(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((z.relu()? - (z * y)?)? + softplus)?.mean_all()
}

#[allow(clippy::too_many_arguments)]
fn train_one(
    arch: Arch,
    model_no: u64,
    train: &ExampleSet,
    valid: &ExampleSet,
    mean: &[f32],
    std: &[f32],
    cfg: &TrainConfig,
    out_dir: &Path,
) -> Result<(RankerSpec, Vec<f32>), TrainError> {
    let started = Instant::now();
    let id = format!("{arch}-v{}", cfg.version);
    let candle_err = |source| TrainError::Candle {
        id: id.clone(),
        source,
    };
    let dev = Device::Cpu;
    let net_cfg = NetConfig::default_for(arch, INPUT_DIM);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = models::build(arch, &net_cfg, vb).map_err(candle_err)?;
    // Distinct, reproducible streams per model.
    let seed = cfg.seed ^ (model_no + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    models::init_seeded(&varmap, seed).map_err(candle_err)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )
    .map_err(candle_err)?;

    let n = train.len();
    let bs = cfg.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(bs);
    let total_steps = (steps_per_epoch * cfg.epochs).min(cfg.max_steps);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut xbuf: Vec<f32> = Vec::with_capacity(bs * INPUT_DIM);
    let mut ybuf: Vec<f32> = Vec::with_capacity(bs);
    let mut step = 0usize;
    let mut epochs_run = 0usize;
    let mut last_epoch_loss = None;

    for epoch in 0..cfg.epochs {
        if step >= total_steps {
            break;
        }
        order.shuffle(&mut rng);
        let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
        // The step cap may end the last epoch early; its partial loss is still reported.
        for batch in order.chunks(bs).take(total_steps - step) {
            xbuf.clear();
            ybuf.clear();
            for &i in batch {
                let i = i as usize;
                let row = &train.x[i * INPUT_DIM..(i + 1) * INPUT_DIM];
                // The served ranker's own scaling code.
                standardize_row_into(row, mean, std, &mut xbuf);
                ybuf.push(train.y[i]);
            }
            // Cosine decay from lr to lr/10: big early steps, settled weights at the end.
            let progress = step as f64 / total_steps as f64;
            opt.set_learning_rate(
                cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())),
            );
            let loss = (|| {
                let xs = Tensor::from_slice(&xbuf, (batch.len(), INPUT_DIM), &dev)?;
                let ys = Tensor::from_slice(&ybuf, batch.len(), &dev)?;
                let logits = net.forward(&xs)?.flatten_all()?;
                let loss = bce_with_logits(&logits, &ys)?;
                opt.backward_step(&loss)?;
                loss.to_scalar::<f32>()
            })()
            .map_err(candle_err)?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { id, step, loss });
            }
            loss_sum += loss as f64 * batch.len() as f64;
            loss_n += batch.len();
            step += 1;
        }
        epochs_run = epoch + 1;
        last_epoch_loss = Some(loss_sum / loss_n.max(1) as f64);
        tracing::debug!(%id, epoch, loss = ?last_epoch_loss, "epoch done");
    }

    let weights_file = format!("{RANKERS_DIR}/{id}.safetensors");
    let weights_path = out_dir.join(&weights_file);
    varmap.save(&weights_path).map_err(candle_err)?;

    let mut spec = RankerSpec {
        id: id.clone(),
        arch,
        version: cfg.version,
        input_dim: INPUT_DIM,
        input_layout_version: INPUT_LAYOUT_VERSION,
        hidden: net_cfg.hidden,
        cross_layers: net_cfg.cross_layers,
        cross_rank: net_cfg.cross_rank,
        feature_mean: mean.to_vec(),
        feature_std: std.to_vec(),
        weights_file,
        metrics: RankerMetrics::default(),
    };
    // Score validation through the serving ranker type so reported metrics are what serving sees.
    let ranker = CandleRanker::from_varbuilder(
        spec.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let preds = score_all(&ranker, &valid.x)?;
    let train_seconds = started.elapsed().as_secs_f64();

    spec.metrics = RankerMetrics {
        valid_auc: finite(auc(&preds, &valid.y)),
        valid_ndcg_at_20: finite(ndcg_at_k(&preds, &valid.y, &valid.group, NDCG_K)),
        valid_logloss: finite(logloss(&preds, &valid.y)),
        segments: segment_metrics(&preds, valid),
        train_examples: n,
        valid_examples: valid.len(),
        epochs: epochs_run,
        steps: step,
        final_train_loss: last_epoch_loss,
        train_seconds,
        n_params: models::param_count(&varmap),
    };
    tracing::info!(
        %id,
        auc = ?spec.metrics.valid_auc,
        ndcg20 = ?spec.metrics.valid_ndcg_at_20,
        steps = step,
        seconds = train_seconds,
        "ranker trained"
    );
    Ok((spec, preds))
}

/// Scores row-major `x` in bounded chunks.
fn score_all(ranker: &dyn Ranker, x: &[f32]) -> Result<Vec<f32>, RankError> {
    let mut out = Vec::with_capacity(x.len() / INPUT_DIM);
    for chunk in x.chunks(SCORE_CHUNK * INPUT_DIM) {
        out.extend(ranker.score(chunk, chunk.len() / INPUT_DIM)?);
    }
    Ok(out)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn segment_metrics(preds: &[f32], valid: &ExampleSet) -> Vec<SegmentMetrics> {
    let mut segments: BTreeSet<u8> = [SEGMENT_COLD, SEGMENT_LIGHT, SEGMENT_HEAVY].into();
    segments.extend(valid.segment.iter().copied());
    segments
        .into_iter()
        .map(|seg| {
            let idx: Vec<usize> = (0..valid.len())
                .filter(|&i| valid.segment[i] == seg)
                .collect();
            let s: Vec<f32> = idx.iter().map(|&i| preds[i]).collect();
            let y: Vec<f32> = idx.iter().map(|&i| valid.y[i]).collect();
            let g: Vec<u32> = idx.iter().map(|&i| valid.group[i]).collect();
            SegmentMetrics {
                segment: seg,
                name: SEGMENT_NAMES
                    .get(seg as usize)
                    .map_or_else(|| format!("segment{seg}"), |n| n.to_string()),
                examples: idx.len(),
                positives: y.iter().filter(|&&v| v > 0.5).count(),
                auc: finite(auc(&s, &y)),
                ndcg_at_20: finite(ndcg_at_k(&s, &y, &g, NDCG_K)),
            }
        })
        .collect()
}

/// Area under the ROC curve via the rank-sum (Mann–Whitney) statistic; tied scores get their
/// average rank, so ties count as half-correct. Labels > 0.5 are positive. Returns NaN when the
/// lengths differ or either class is absent (AUC undefined).
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    if scores.len() != labels.len() {
        return f64::NAN;
    }
    let n_pos = labels.iter().filter(|&&l| l > 0.5).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut pos_rank_sum = 0.0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their average.
        let avg_rank = (i + j + 2) as f64 / 2.0;
        let pos_in_tie = idx[i..=j].iter().filter(|&&k| labels[k] > 0.5).count();
        pos_rank_sum += avg_rank * pos_in_tie as f64;
        i = j + 1;
    }
    let np = n_pos as f64;
    (pos_rank_sum - np * (np + 1.0) / 2.0) / (np * n_neg as f64)
}

pub use funnel::evaluation::ndcg_grouped as ndcg_at_k;

/// Mean binary cross-entropy of probabilities (clamped away from 0/1).
fn logloss(probs: &[f32], labels: &[f32]) -> f64 {
    if probs.is_empty() || probs.len() != labels.len() {
        return f64::NAN;
    }
    let eps = 1e-7;
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(eps, 1.0 - eps);
            if y > 0.5 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / probs.len() as f64
}

pub use funnel::evaluation::pearson_f32 as pearson;

/// Symmetric model × model Pearson matrix with an exact unit diagonal.
pub fn correlation_matrix(preds: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let m = preds.len();
    let mut c = vec![vec![0.0f32; m]; m];
    for i in 0..m {
        c[i][i] = 1.0;
        for j in i + 1..m {
            let r = pearson(&preds[i], &preds[j]) as f32;
            c[i][j] = r;
            c[j][i] = r;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_known_values() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
        assert_eq!(auc(&[1.0, 2.0], &[0.0, 1.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[1.0, 0.0]), 0.0);
        // All tied: exactly chance.
        assert_eq!(auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), 0.5);
        assert!(auc(&[0.1, 0.2], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn stats_guard_constant_columns() {
        let mut x = vec![0.0f32; 3 * INPUT_DIM];
        for r in 0..3 {
            x[r * INPUT_DIM] = r as f32;
            x[r * INPUT_DIM + 1] = 7.0;
        }
        let (m, s) = feature_stats(&x);
        assert!((m[0] - 1.0).abs() < 1e-6);
        assert!((s[0] - (2.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!((m[1], s[1]), (7.0, 1.0));
        assert_eq!(s[5], 1.0);
    }

    #[test]
    fn correlation_matrix_is_symmetric_with_a_unit_diagonal() {
        let c = correlation_matrix(&[vec![1.0, 2.0, 3.0], vec![1.0, 3.0, 2.0]]);
        assert_eq!(c[0][0], 1.0);
        assert_eq!(c[0][1], c[1][0]);
    }

    #[test]
    fn segments() {
        assert_eq!(segment_for_history(0), SEGMENT_COLD);
        assert_eq!(segment_for_history(LIGHT_MAX_HISTORY), SEGMENT_LIGHT);
        assert_eq!(segment_for_history(LIGHT_MAX_HISTORY + 1), SEGMENT_HEAVY);
    }
}
