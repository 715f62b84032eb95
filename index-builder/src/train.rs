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
use funnel::observe::skew::InputReference;
use funnel::ranking::input::{
    self, CandidateSignals, ItemSignals, UserSignals, INPUT_DIM, INPUT_LAYOUT_VERSION,
};
use funnel::ranking::models::{self, NetConfig};
use funnel::ranking::{
    standardize_pinned_into, Arch, CandleRanker, RankError, Ranker, RankerMetrics, RankerSpec,
    RankersManifest, SegmentMetrics, RANKERS_DIR,
};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rayon::prelude::*;

/// Cutoff of the ranking metric reported for every model.
pub const NDCG_K: usize = 20;
/// User segments, shared with serving (the selector picks per segment).
pub use funnel::ranking::ensemble::{
    segment_for, segment_for_history, segment_of, LIGHT_MAX_HISTORY, RETURNING_AFTER_DAYS,
    SEGMENTS, SEGMENT_COLD, SEGMENT_HEAVY, SEGMENT_LIGHT, SEGMENT_NAMES, SEGMENT_RETURNING,
};
/// Architectures trained listwise by default: all of them (validation NDCG@20 on ML-100K rose
/// from 0.339/0.347 to 0.350/0.359 for logistic/MLP against their pointwise loss).
pub const DEFAULT_LISTWISE: [Arch; 5] = Arch::ALL;
/// Rows per forward pass when scoring the validation set (bounds peak memory).
const SCORE_CHUNK: usize = 8192;
/// Training rows the skew reference is computed from (an even stride beyond that): enough for
/// decile bins, bounded in time at any scale.
const REFERENCE_ROWS: usize = 200_000;

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
        self.segment
            .push(segment_for(user.history_len, user.gap_days));
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
    /// Architectures trained with the listwise objective (the others pointwise).
    pub listwise: Vec<Arch>,
    /// Weight of the pointwise cross-entropy added to the listwise loss: it keeps the listwise
    /// members' sigmoid outputs usable as probabilities (confidence, blending).
    pub calibration_weight: f64,
    /// Weigh users so every segment counts the same in the loss ([`segment_balance`]).
    pub balance_segments: bool,
    /// Keep the weights of the epoch with the best validation NDCG@20 (not the last epoch's).
    pub early_stopping: bool,
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
            listwise: DEFAULT_LISTWISE.to_vec(),
            calibration_weight: 0.1,
            balance_segments: true,
            early_stopping: true,
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
    /// The training rows' distribution of each input (the server's skew monitor compares
    /// served rows with it).
    pub input_reference: InputReference,
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
            input_reference: Some(self.input_reference.clone()),
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

    let stats = feature_stats(&train.x);
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
                let stats = &stats;
                scope.spawn(move || train_one(arch, m as u64, train, valid, stats, cfg, out_dir))
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
        input_reference: InputReference::from_rows(
            &train.x,
            &funnel::ranking::input::feature_names(),
            REFERENCE_ROWS,
        ),
    };
    report.manifest().write(out_dir)?;
    tracing::info!(
        models = ?report.model_ids,
        seconds = report.total_seconds,
        "rankers trained"
    );
    Ok(report)
}

/// Per-column standardisation of the training rows.
struct ColumnStats {
    mean: Vec<f32>,
    /// Population standard deviation; 1 for a constant column, so nothing divides by zero.
    std: Vec<f32>,
    /// The constant columns: serving pins them to their training value.
    constant: Vec<u32>,
}

/// Per-column mean and (population) standard deviation of row-major `x`.
fn feature_stats(x: &[f32]) -> ColumnStats {
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
    let sd: Vec<f32> = var.into_iter().map(|ss| (ss / n).sqrt() as f32).collect();
    let varies = |s: f32| s.is_finite() && s > 1e-6;
    ColumnStats {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        std: sd
            .iter()
            .map(|&s| if varies(s) { s } else { 1.0 })
            .collect(),
        constant: (0..INPUT_DIM as u32)
            .filter(|&j| !varies(sd[j as usize]))
            .collect(),
    }
}

/// Contiguous row ranges of each group (the example builder writes each user's rows together).
fn group_ranges(group: &[u32]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=group.len() {
        if i == group.len() || group[i] != group[start] {
            out.push((start, i));
            start = i;
        }
    }
    out
}

/// Batches of row indices: single shuffled rows (pointwise) or shuffled whole groups packed up
/// to `bs` rows (listwise, so every list is complete inside its batch).
fn epoch_batches(
    order: &mut [u32],
    groups: &mut [(usize, usize)],
    listwise: bool,
    bs: usize,
    rng: &mut StdRng,
) -> Vec<Vec<u32>> {
    if !listwise {
        order.shuffle(rng);
        return order.chunks(bs).map(<[u32]>::to_vec).collect();
    }
    groups.shuffle(rng);
    let mut out = Vec::new();
    let mut cur: Vec<u32> = Vec::with_capacity(bs);
    for &(a, b) in groups.iter() {
        if !cur.is_empty() && cur.len() + (b - a) > bs {
            out.push(std::mem::take(&mut cur));
        }
        cur.extend(a as u32..b as u32);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Softmax cross-entropy over each list (ListNet with the labels as the target distribution):
/// mean over lists with a positive of `−Σ_i (y_i / n⁺) (z_i − logsumexp(z))`. `list` gives each
/// row's list number (0..n_lists, rows of a list need not be adjacent); `z_values` are the
/// logits' values, used only to shift each list by its own max (a constant, so the gradient is
/// exact and no list underflows).
fn listwise_loss(
    z: &Tensor,
    z_values: &[f32],
    y: &[f32],
    list: &[usize],
    n_lists: usize,
    weight: &[f32],
) -> candle_core::Result<Option<Tensor>> {
    let n = y.len();
    let dev = z.device();
    let mut max = vec![f32::NEG_INFINITY; n_lists];
    let mut pos = vec![0.0f32; n_lists];
    let mut list_w = vec![0.0f32; n_lists];
    for i in 0..n {
        max[list[i]] = max[list[i]].max(z_values[i]);
        pos[list[i]] += y[i];
        list_w[list[i]] = weight[i];
    }
    let weight_with_pos: f64 = (0..n_lists)
        .filter(|&g| pos[g] > 0.0)
        .map(|g| list_w[g] as f64)
        .sum();
    if weight_with_pos <= 0.0 {
        return Ok(None);
    }
    let shift: Vec<f32> = (0..n).map(|i| max[list[i]]).collect();
    let target: Vec<f32> = (0..n)
        .map(|i| {
            if pos[list[i]] > 0.0 {
                weight[i] * y[i] / pos[list[i]]
            } else {
                0.0
            }
        })
        .collect();
    let mut member = vec![0.0f32; n_lists * n];
    for i in 0..n {
        member[list[i] * n + i] = 1.0;
    }
    let member = Tensor::from_vec(member, (n_lists, n), dev)?;
    let shift_t = Tensor::from_vec(shift, n, dev)?;
    let sums = member
        .matmul(&(z - &shift_t)?.exp()?.unsqueeze(1)?)?
        .squeeze(1)?;
    let max_t = Tensor::from_vec(max, n_lists, dev)?;
    let lse = (sums.log()? + max_t)?;
    let has_pos: Vec<f32> = (0..n_lists)
        .map(|g| if pos[g] > 0.0 { list_w[g] } else { 0.0 })
        .collect();
    let has_pos = Tensor::from_vec(has_pos, n_lists, dev)?;
    let target = Tensor::from_vec(target, n, dev)?;
    let gain = (z * target)?.sum_all()?;
    let norm = (lse * has_pos)?.sum_all()?;
    Ok(Some(((norm - gain)? / weight_with_pos)?))
}

/// Numerically stable mean BCE with logits: max(z,0) − z·y + ln(1 + e^{−|z|}).
/// (candle's version takes log(sigmoid), which overflows for confident logits.)
/// `w` weighs the rows (weighted mean; `w_sum` is their sum, known on the host).
fn bce_with_logits(z: &Tensor, y: &Tensor, w: &Tensor, w_sum: f64) -> candle_core::Result<Tensor> {
    let softplus = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let per_row = ((z.relu()? - (z * y)?)? + softplus)?;
    (per_row * w)?.sum_all()? / w_sum.max(f64::MIN_POSITIVE)
}

/// What an encoded row says of its user: (history segment, back after at least
/// [`RETURNING_AFTER_DAYS`]). The row holds ln(1 + history length) and ln(1 + gap days).
pub fn row_strata(row: &[f32]) -> (u8, bool) {
    let history = row[input::col::LOG_HISTORY].exp_m1().round().max(0.0) as u32;
    let returning = row[input::col::GAP_KNOWN] > 0.5
        && row[input::col::LOG_GAP_DAYS] >= RETURNING_AFTER_DAYS.ln_1p();
    (segment_for_history(history), returning)
}

/// The selection segment ([`segment_for`]) of the user of an encoded row.
pub fn segment_of_row(row: &[f32]) -> u8 {
    let (history, returning) = row_strata(row);
    segment_of(history, returning)
}

/// Per-row training weights that give every stratum of users — segment (cold, light, heavy) ×
/// continuing / returning after [`RETURNING_AFTER_DAYS`] — the same total weight, counted in lists
/// (users): otherwise the stratum with the most users (heavy users in mid-history on a per-user
/// split, new ones on a temporal window) decides what every member learns, and the users who come
/// back after weeks, who want what is new rather than what follows, are drowned out. Each list's
/// weight is `lists / (strata present × lists in its stratum)`: mean weight over lists is 1.
pub fn segment_balance(set: &ExampleSet) -> Vec<f32> {
    let ranges = group_ranges(&set.group);
    let stratum = |a: usize| -> usize {
        let (segment, returning) = row_strata(&set.x[a * INPUT_DIM..(a + 1) * INPUT_DIM]);
        segment as usize * 2 + usize::from(returning)
    };
    let mut lists = vec![0usize; 512];
    for &(a, _) in &ranges {
        lists[stratum(a)] += 1;
    }
    let present = lists.iter().filter(|&&n| n > 0).count().max(1);
    let total = ranges.len() as f64;
    let mut w = vec![1.0f32; set.len()];
    for &(a, b) in &ranges {
        let n = lists[stratum(a)] as f64;
        w[a..b].fill((total / (present as f64 * n)) as f32);
    }
    w
}

#[allow(clippy::too_many_arguments)]
fn train_one(
    arch: Arch,
    model_no: u64,
    train: &ExampleSet,
    valid: &ExampleSet,
    stats: &ColumnStats,
    cfg: &TrainConfig,
    out_dir: &Path,
) -> Result<(RankerSpec, Vec<f32>), TrainError> {
    let (mean, std) = (&stats.mean[..], &stats.std[..]);
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
    let listwise = cfg.listwise.contains(&arch);
    let mut groups = group_ranges(&train.group);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    // Batches per epoch do not depend on the shuffle for pointwise; for listwise they vary
    // slightly, so the total is estimated from one packing.
    let steps_per_epoch = epoch_batches(&mut order, &mut groups, listwise, bs, &mut rng.clone())
        .len()
        .max(1);
    let total_steps = (steps_per_epoch * cfg.epochs).min(cfg.max_steps);
    let mut xbuf: Vec<f32> = Vec::with_capacity(bs * INPUT_DIM);
    let mut ybuf: Vec<f32> = Vec::with_capacity(bs);
    let mut lbuf: Vec<usize> = Vec::with_capacity(bs);
    let mut wbuf: Vec<f32> = Vec::with_capacity(bs);
    let row_weight = if cfg.balance_segments {
        segment_balance(train)
    } else {
        vec![1.0; n]
    };
    let mut step = 0usize;
    let mut epochs_run = 0usize;
    let mut last_epoch_loss = None;
    // Early stopping: the weights of the best validation epoch so far.
    let vars = varmap.all_vars();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;

    for epoch in 0..cfg.epochs {
        if step >= total_steps {
            break;
        }
        let batches = epoch_batches(&mut order, &mut groups, listwise, bs, &mut rng);
        let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
        // The step cap may end the last epoch early; its partial loss is still reported.
        for batch in batches.iter().take(total_steps - step) {
            xbuf.clear();
            ybuf.clear();
            lbuf.clear();
            wbuf.clear();
            let mut n_lists = 0usize;
            for (k, &i) in batch.iter().enumerate() {
                let i = i as usize;
                let row = &train.x[i * INPUT_DIM..(i + 1) * INPUT_DIM];
                // The served ranker's own scaling code.
                standardize_pinned_into(row, mean, std, &stats.constant, &mut xbuf);
                ybuf.push(train.y[i]);
                wbuf.push(row_weight[i]);
                if k > 0 && train.group[i] != train.group[batch[k - 1] as usize] {
                    n_lists += 1;
                }
                lbuf.push(n_lists);
            }
            let n_lists = n_lists + 1;
            // Cosine decay from lr to lr/10: big early steps, settled weights at the end.
            let progress = step as f64 / total_steps as f64;
            opt.set_learning_rate(
                cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())),
            );
            let loss = (|| {
                let xs = Tensor::from_slice(&xbuf, (batch.len(), INPUT_DIM), &dev)?;
                let ys = Tensor::from_slice(&ybuf, batch.len(), &dev)?;
                let logits = net.forward(&xs)?.flatten_all()?;
                let ws = Tensor::from_slice(&wbuf, batch.len(), &dev)?;
                let w_sum: f64 = wbuf.iter().map(|&w| w as f64).sum();
                let bce = bce_with_logits(&logits, &ys, &ws, w_sum)?;
                let loss = if listwise {
                    let zv = logits.to_vec1::<f32>()?;
                    match listwise_loss(&logits, &zv, &ybuf, &lbuf, n_lists, &wbuf)? {
                        Some(l) => (l + (bce * cfg.calibration_weight)?)?,
                        None => bce,
                    }
                } else {
                    bce
                };
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
        if cfg.early_stopping && !valid.is_empty() {
            let z = valid_logits(net.as_ref(), valid, stats).map_err(candle_err)?;
            let ndcg = ndcg_at_k(&z, &valid.y, &valid.group, NDCG_K);
            if ndcg.is_finite() && best.as_ref().is_none_or(|b| ndcg > b.0) {
                let copies = vars
                    .iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(candle_err)?;
                best = Some((ndcg, epoch + 1, copies));
            }
        }
    }
    let best_epoch = best.as_ref().map(|b| b.1);
    if let Some((_, _, copies)) = best {
        for (v, t) in vars.iter().zip(copies) {
            v.set(&t).map_err(candle_err)?;
        }
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
        constant_columns: stats.constant.clone(),
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
        objective: if listwise { "listwise" } else { "pointwise" }.to_string(),
        best_epoch,
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

/// The training network's logits for the validation rows (standardised as served), in chunks.
fn valid_logits(
    net: &(dyn candle_core::Module + Send + Sync),
    valid: &ExampleSet,
    stats: &ColumnStats,
) -> candle_core::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(valid.len());
    let mut buf = Vec::with_capacity(SCORE_CHUNK * INPUT_DIM);
    for chunk in valid.x.chunks(SCORE_CHUNK * INPUT_DIM) {
        buf.clear();
        for row in chunk.chunks_exact(INPUT_DIM) {
            standardize_pinned_into(row, &stats.mean, &stats.std, &stats.constant, &mut buf);
        }
        let n = chunk.len() / INPUT_DIM;
        let xs = Tensor::from_slice(&buf, (n, INPUT_DIM), &Device::Cpu)?;
        out.extend(net.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
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
    let mut segments: BTreeSet<u8> = SEGMENTS.into();
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
        let st = feature_stats(&x);
        let (m, s) = (&st.mean, &st.std);
        assert!((m[0] - 1.0).abs() < 1e-6);
        assert!((s[0] - (2.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!((m[1], s[1]), (7.0, 1.0));
        assert_eq!(s[5], 1.0);
        // Every column but the first is constant.
        assert_eq!(st.constant, (1..INPUT_DIM as u32).collect::<Vec<_>>());
    }

    #[test]
    fn correlation_matrix_is_symmetric_with_a_unit_diagonal() {
        let c = correlation_matrix(&[vec![1.0, 2.0, 3.0], vec![1.0, 3.0, 2.0]]);
        assert_eq!(c[0][0], 1.0);
        assert_eq!(c[0][1], c[1][0]);
    }

    #[test]
    fn listwise_loss_matches_the_softmax_cross_entropy() {
        // Two lists: [2, 0, 1] with the first a positive, [0.5, -1] with both positive.
        let zv = [2.0f32, 0.0, 1.0, 0.5, -1.0];
        let y = [1.0f32, 0.0, 0.0, 1.0, 1.0];
        let list = [0usize, 0, 0, 1, 1];
        let z = Tensor::new(&zv, &Device::Cpu).unwrap();
        let got = listwise_loss(&z, &zv, &y, &list, 2, &[1.0; 5])
            .unwrap()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse = |v: &[f32]| v.iter().map(|x| x.exp()).sum::<f32>().ln();
        let l0 = lse(&zv[..3]) - 2.0;
        let l1 = lse(&zv[3..]) - 0.5 * (0.5 - 1.0);
        assert!((got - (l0 + l1) / 2.0).abs() < 1e-5, "{got}");
        // List weights: the second list counts three times.
        let w = [1.0, 1.0, 1.0, 3.0, 3.0];
        let got = listwise_loss(&z, &zv, &y, &list, 2, &w)
            .unwrap()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got - (l0 + 3.0 * l1) / 4.0).abs() < 1e-5, "{got}");
        // A batch without a positive has no listwise term.
        assert!(listwise_loss(&z, &zv, &[0.0; 5], &list, 2, &[1.0; 5])
            .unwrap()
            .is_none());
        // Far-apart lists do not underflow.
        let zv = [500.0f32, 499.0, -500.0, -501.0];
        let z = Tensor::new(&zv, &Device::Cpu).unwrap();
        let l = listwise_loss(&z, &zv, &[1.0, 0.0, 1.0, 0.0], &[0, 0, 1, 1], 2, &[1.0; 4])
            .unwrap()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(l.is_finite() && l > 0.0);
    }

    #[test]
    fn listwise_batches_keep_lists_whole() {
        let group = [3u32, 3, 3, 7, 7, 9, 9, 9, 9, 4];
        let mut groups = group_ranges(&group);
        assert_eq!(groups, vec![(0, 3), (3, 5), (5, 9), (9, 10)]);
        let mut order: Vec<u32> = (0..10).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let batches = epoch_batches(&mut order, &mut groups, true, 4, &mut rng);
        let mut all: Vec<u32> = batches.concat();
        all.sort();
        assert_eq!(all, order_sorted(10));
        for b in &batches {
            let gs: BTreeSet<u32> = b.iter().map(|&i| group[i as usize]).collect();
            for g in gs {
                let in_batch = b.iter().filter(|&&i| group[i as usize] == g).count();
                assert_eq!(in_batch, group.iter().filter(|&&x| x == g).count());
            }
        }
    }

    #[test]
    fn segment_balance_gives_each_segment_the_same_weight() {
        // Users 1, 2 heavy (3 rows each, 50 interactions), user 3 cold (2 rows).
        let mut set = ExampleSet {
            x: vec![0.0; 8 * INPUT_DIM],
            y: vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0],
            group: vec![1, 1, 1, 2, 2, 2, 3, 3],
            segment: vec![2, 2, 2, 2, 2, 2, 0, 0],
        };
        for r in 0..6 {
            set.x[r * INPUT_DIM + input::col::LOG_HISTORY] = 50f32.ln_1p();
        }
        let w = segment_balance(&set);
        // 3 lists, 2 segments: heavy lists 3/(2·2) = 0.75, the cold list 3/(2·1) = 1.5.
        assert_eq!(w, vec![0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 1.5, 1.5]);
        // User 2 came back after 30 days: three strata of one list each, weight 1.
        for r in 3..6 {
            set.x[r * INPUT_DIM + input::col::LOG_GAP_DAYS] = 30f32.ln_1p();
            set.x[r * INPUT_DIM + input::col::GAP_KNOWN] = 1.0;
        }
        assert_eq!(segment_balance(&set), vec![1.0; 8]);
    }

    fn order_sorted(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn segments() {
        assert_eq!(segment_for_history(0), SEGMENT_COLD);
        assert_eq!(segment_for_history(LIGHT_MAX_HISTORY), SEGMENT_LIGHT);
        assert_eq!(segment_for_history(LIGHT_MAX_HISTORY + 1), SEGMENT_HEAVY);
        // Known users back after a week are their own segment; cold stays cold.
        assert_eq!(
            segment_for(3, Some(RETURNING_AFTER_DAYS)),
            SEGMENT_RETURNING
        );
        assert_eq!(segment_for(300, Some(30.0)), SEGMENT_RETURNING);
        assert_eq!(segment_for(300, Some(0.5)), SEGMENT_HEAVY);
        assert_eq!(segment_for(3, None), SEGMENT_LIGHT);
        assert_eq!(segment_for(0, Some(30.0)), SEGMENT_COLD);
        // The builder reads the same segment back from an encoded row.
        for (h, gap) in [
            (0u32, None),
            (3, Some(2.0f32)),
            (300, None),
            (300, Some(30.0)),
        ] {
            let mut row = vec![0.0f32; INPUT_DIM];
            row[input::col::LOG_HISTORY] = (h as f32).ln_1p();
            if let Some(g) = gap {
                row[input::col::LOG_GAP_DAYS] = g.ln_1p();
                row[input::col::GAP_KNOWN] = 1.0;
            }
            assert_eq!(segment_of_row(&row), segment_for(h, gap), "{h} {gap:?}");
        }
    }
}
