//! Ensemble fitting: turns the trained rankers' validation predictions into the `ensemble`
//! section of `rankers.json` ([`EnsembleManifest`]).
//!
//! Owns, per user segment, each model's validation NDCG@20 and the pairwise correlation of their
//! predictions; the fit of λ, the weight of the selector's diversity term, against the real
//! NDCG@20 of model subsets; the stacking meta-learners (logistic regression over the models'
//! logits, fitted by Newton/IRLS); and every combination strategy's validation score.
//!
//! Validation rows are grouped by request (`ExampleSet::group`) once, so every per-request
//! operation (NDCG, rank-based combination) works on contiguous slices.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use funnel::evaluation::request_ndcg;
use funnel::ranking::combine::{self, combine, Stacker, Strategy};
use funnel::ranking::ensemble::{EnsembleManifest, EstimatorFit, SegmentStats, StrategyScore};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

use crate::train::{auc, pearson, ExampleSet, TrainReport, NDCG_K, SEGMENTS, SEGMENT_NAMES};

/// Up to this many models every subset is scored for the estimator fit; beyond, a sample.
pub const MAX_EXHAUSTIVE_MODELS: usize = 10;
/// Subsets sampled for the estimator fit when there are more than [`MAX_EXHAUSTIVE_MODELS`].
pub const SAMPLED_SUBSETS: usize = 200;
/// Up to this many models a stacker is trained for every subset; beyond, for the full set only
/// (the selector then falls back to `weighted` for other subsets).
pub const MAX_STACKED_MODELS: usize = 6;
/// L2 penalty on the stacker's weights (not its bias), on the mean log-loss scale.
const STACKER_L2: f64 = 1e-3;
const STACKER_MAX_ITER: usize = 25;
/// Newton stops once no parameter moves more than this, or the loss improves less than this.
const STACKER_TOL: f64 = 1e-6;
const STACKER_MIN_GAIN: f64 = 1e-10;
/// Fixed so the sampled subsets, and hence λ, are reproducible build to build.
const SUBSET_SEED: u64 = 0x5EED_E75E_3B1E_0001;
/// Groups with more positives than this are sorted for NDCG; fewer are ranked by counting.

#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    #[error("no models to fit an ensemble for")]
    NoModels,
    #[error("{what} has length {got}, expected {expected}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    #[error("model `{model}` predicted a non-finite score at validation row {row}")]
    NonFinite { model: String, row: usize },
}

/// Fits the ensemble section for the models of `report` on the validation set they were scored
/// on (`report.valid_predictions[m][row]` ↔ `valid` row).
pub fn fit(report: &TrainReport, valid: &ExampleSet) -> Result<EnsembleManifest, EnsembleError> {
    fit_predictions(&report.model_ids, &report.valid_predictions, valid)
}

/// [`fit`] on raw inputs: `preds[m][row]` is model `model_ids[m]`'s probability for `valid`
/// row `row`. Only `valid.y`, `group` and `segment` are read.
pub fn fit_predictions(
    model_ids: &[String],
    preds: &[Vec<f32>],
    valid: &ExampleSet,
) -> Result<EnsembleManifest, EnsembleError> {
    check_inputs(model_ids, preds, valid)?;
    let m = model_ids.len();

    // Rows by request id (stable, so rows keep their order within a request), then per segment.
    let mut by_group: Vec<u32> = (0..valid.len() as u32).collect();
    by_group.sort_by_key(|&r| valid.group[r as usize]);
    let mut views = vec![View::new(&by_group, None, preds, valid)];
    for seg in SEGMENTS {
        let rows: Vec<u32> = by_group
            .iter()
            .copied()
            .filter(|&r| valid.segment[r as usize] == seg)
            .collect();
        views.push(View::new(&rows, Some(seg), preds, valid));
    }
    let segments: Vec<SegmentStats> = views.iter().map(View::stats).collect();

    let subsets = estimator_subsets(m);
    let (lambda, estimator) = fit_estimator(&views, &segments, &subsets);

    let all = &views[0];
    // Feature columns of the stackers, computed once: the same logit serving applies.
    let logits: Vec<Vec<f32>> = all
        .preds
        .iter()
        .map(|p| p.iter().map(|&v| combine::logit(v)).collect())
        .collect();
    let stacked: Vec<Vec<usize>> = if m <= MAX_STACKED_MODELS {
        subsets
    } else if m >= 2 {
        vec![(0..m).collect()]
    } else {
        Vec::new()
    };
    let stackers: Vec<Stacker> = stacked
        .par_iter()
        .map(|subset| {
            let members = sorted_by_id(subset, model_ids);
            let cols: Vec<&[f32]> = members.iter().map(|&i| logits[i].as_slice()).collect();
            let (weights, bias) = fit_logistic(&cols, &all.labels);
            Stacker {
                models: members.iter().map(|&i| model_ids[i].clone()).collect(),
                weights,
                bias,
            }
        })
        .collect();

    let strategies = strategy_scores(all, &segments[0], &logits, model_ids);
    Ok(EnsembleManifest {
        models: model_ids.to_vec(),
        lambda,
        segments,
        stackers,
        estimator,
        strategies,
    })
}

fn check_inputs(
    model_ids: &[String],
    preds: &[Vec<f32>],
    valid: &ExampleSet,
) -> Result<(), EnsembleError> {
    if model_ids.is_empty() {
        return Err(EnsembleError::NoModels);
    }
    let n = valid.y.len();
    let len = |what: String, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(EnsembleError::Length {
                what,
                expected,
                got,
            })
        }
    };
    len("predictions".into(), model_ids.len(), preds.len())?;
    len("validation groups".into(), n, valid.group.len())?;
    len("validation segments".into(), n, valid.segment.len())?;
    for (id, p) in model_ids.iter().zip(preds) {
        len(format!("predictions of `{id}`"), n, p.len())?;
        // A NaN would poison every combined score and metric it touches.
        if let Some(row) = p.iter().position(|v| !v.is_finite()) {
            return Err(EnsembleError::NonFinite {
                model: id.clone(),
                row,
            });
        }
    }
    Ok(())
}

/// Validation rows of one segment (or all), grouped by request, with predictions and labels
/// laid out contiguously in that order.
struct View {
    segment: Option<u8>,
    /// `preds[m][i]`: model m's prediction for the view's i-th row.
    preds: Vec<Vec<f32>>,
    labels: Vec<f32>,
    /// Request g holds rows `bounds[g]..bounds[g + 1]`.
    bounds: Vec<usize>,
    /// Request id of each group.
    group_ids: Vec<u32>,
    judged: Judged,
}

impl View {
    /// `rows` must be sorted by group id.
    fn new(rows: &[u32], segment: Option<u8>, preds: &[Vec<f32>], valid: &ExampleSet) -> Self {
        let mut bounds = vec![0];
        let mut group_ids = Vec::new();
        for (i, &r) in rows.iter().enumerate() {
            let g = valid.group[r as usize];
            if group_ids.last() != Some(&g) {
                if i > 0 {
                    bounds.push(i);
                }
                group_ids.push(g);
            }
        }
        if !rows.is_empty() {
            bounds.push(rows.len());
        }
        let labels: Vec<f32> = rows.iter().map(|&r| valid.y[r as usize]).collect();
        Self {
            segment,
            preds: preds
                .iter()
                .map(|p| rows.iter().map(|&r| p[r as usize]).collect())
                .collect(),
            judged: Judged::new(&labels, &bounds),
            labels,
            bounds,
            group_ids,
        }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn groups(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.bounds.windows(2).map(|w| w[0]..w[1])
    }

    fn stats(&self) -> SegmentStats {
        let m = self.preds.len();
        let mut scratch = Vec::new();
        let quality = self
            .preds
            .iter()
            .map(|p| finite(self.judged.ndcg(p, &mut scratch)))
            .collect();
        // upper[i][j - i - 1] = ρ(i, j) for i < j; 0 when undefined (a constant model, an
        // empty segment).
        let upper: Vec<Vec<f64>> = (0..m)
            .map(|i| {
                (i + 1..m)
                    .map(|j| {
                        let r = pearson(&self.preds[i], &self.preds[j]);
                        if r.is_finite() {
                            r
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let correlation = (0..m)
            .map(|i| {
                (0..m)
                    .map(|j| match i.cmp(&j) {
                        Ordering::Equal => 1.0,
                        Ordering::Less => upper[i][j - i - 1],
                        Ordering::Greater => upper[j][i - j - 1],
                    })
                    .collect()
            })
            .collect();
        SegmentStats {
            segment: self.segment,
            name: self
                .segment
                .and_then(|s| SEGMENT_NAMES.get(s as usize))
                .map_or("all", |n| n)
                .to_string(),
            examples: self.len(),
            quality,
            correlation,
        }
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The requests of a view that NDCG counts (those with a positive), found once per view so the
/// hundreds of subset evaluations only rank. NDCG@[`NDCG_K`] here has the semantics of
/// [`crate::train::ndcg_at_k`]: binary relevance, ties ranked negatives first, requests without a
/// positive skipped, NaN when no request has one.
#[derive(Debug, Default)]
struct Judged {
    /// Rows of the view, in view order.
    positive: Vec<bool>,
    /// Per counted request: its rows `start..end` and its positives `pos[pos_start..pos_end]`.
    groups: Vec<JudgedGroup>,
    /// Offsets of the positives within their request.
    pos: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct JudgedGroup {
    start: usize,
    end: usize,
    pos_start: usize,
    pos_end: usize,
}

impl Judged {
    fn new(labels: &[f32], bounds: &[usize]) -> Self {
        let positive: Vec<bool> = labels.iter().map(|&l| l > 0.5).collect();
        let (mut groups, mut pos) = (Vec::new(), Vec::new());
        for w in bounds.windows(2) {
            let pos_start = pos.len();
            pos.extend(
                (w[0]..w[1])
                    .filter(|&r| positive[r])
                    .map(|r| (r - w[0]) as u32),
            );
            if pos.len() > pos_start {
                groups.push(JudgedGroup {
                    start: w[0],
                    end: w[1],
                    pos_start,
                    pos_end: pos.len(),
                });
            }
        }
        Self {
            positive,
            groups,
            pos,
        }
    }

    /// Mean NDCG@[`NDCG_K`] of `scores` (view order) over the counted requests.
    fn ndcg(&self, scores: &[f32], scratch: &mut Vec<u32>) -> f64 {
        if self.groups.is_empty() {
            return f64::NAN;
        }
        let sum: f64 = self
            .groups
            .iter()
            .map(|g| {
                request_ndcg(
                    &scores[g.start..g.end],
                    &self.positive[g.start..g.end],
                    &self.pos[g.pos_start..g.pos_end],
                    NDCG_K,
                    scratch,
                )
            })
            .sum();
        sum / self.groups.len() as f64
    }
}

/// Model subsets (ascending indices, size ≥ 2) whose real quality the estimator is fitted on.
fn estimator_subsets(m: usize) -> Vec<Vec<usize>> {
    if m < 2 {
        return Vec::new();
    }
    if m <= MAX_EXHAUSTIVE_MODELS {
        return (1u32..1 << m)
            .filter(|mask| mask.count_ones() >= 2)
            .map(|mask| (0..m).filter(|&i| (mask >> i) & 1 == 1).collect())
            .collect();
    }
    let mut rng = StdRng::seed_from_u64(SUBSET_SEED);
    let mut out = BTreeSet::new();
    // Beyond 10 models there are > 1000 subsets, so 200 distinct ones come quickly; the cap on
    // tries only guards the loop.
    for _ in 0..SAMPLED_SUBSETS * 100 {
        if out.len() >= SAMPLED_SUBSETS {
            break;
        }
        let size = rng.gen_range(2..=m);
        let mut s = rand::seq::index::sample(&mut rng, m, size).into_vec();
        s.sort_unstable();
        out.insert(s);
    }
    out.into_iter().collect()
}

/// Member indices ordered by model id: the order of a [`Stacker`]'s models and weights.
fn sorted_by_id(subset: &[usize], model_ids: &[String]) -> Vec<usize> {
    let mut v = subset.to_vec();
    v.sort_by(|&a, &b| model_ids[a].cmp(&model_ids[b]).then(a.cmp(&b)));
    v
}

/// The weights `combine` applies for `Strategy::Weighted`: negatives clipped to 0, normalised
/// to sum 1, uniform when they sum to nothing.
fn normalised_weights(w: &[f64]) -> Vec<f64> {
    let w: Vec<f64> = w.iter().map(|x| x.max(0.0)).collect();
    let total: f64 = w.iter().sum();
    if total > 0.0 && total.is_finite() {
        w.iter().map(|x| x / total).collect()
    } else {
        vec![1.0 / w.len().max(1) as f64; w.len()]
    }
}

/// Per-thread buffers of the estimator loop.
#[derive(Default)]
struct Scratch {
    acc: Vec<f64>,
    scores: Vec<f32>,
    idx: Vec<u32>,
}

/// `Strategy::Weighted` of `members` (equal lengths) into `scratch.scores`. The strategy is
/// pointwise, so combining whole groups at once equals combining per request; it is computed
/// here directly, with `combine`'s arithmetic (a test pins bit equality), to skip the ranks and
/// confidences `combine` also computes, which add up across hundreds of subsets.
fn weighted_mean_into(members: &[&[f32]], weights: &[f64], scratch: &mut Scratch) {
    let n = members.first().map_or(0, |p| p.len());
    let w = normalised_weights(weights);
    scratch.acc.clear();
    scratch.acc.resize(n, 0.0);
    // Member by member in order: the same summation order as `combine`, and streaming access.
    for (p, wi) in members.iter().zip(&w) {
        for (a, &v) in scratch.acc.iter_mut().zip(p.iter()) {
            *a += v as f64 * wi;
        }
    }
    scratch.scores.clear();
    scratch.scores.extend(scratch.acc.iter().map(|&a| a as f32));
}

/// One estimator data point: a subset on a segment.
#[derive(Debug, Clone, Copy)]
struct Point {
    actual: f64,
    /// Mean member quality (the estimate with λ = 0).
    base: f64,
    /// The diversity regressor 2P/s², P = Σ_{i<j} (1 − ρ_ij).
    x: f64,
}

/// The real validation NDCG@20 of `subset` combined with `Strategy::Weighted` on `view`, with
/// its estimator inputs; None when a member's quality or the ensemble's is undefined.
fn score_subset(
    view: &View,
    stats: &SegmentStats,
    subset: &[usize],
    scratch: &mut Scratch,
) -> Option<Point> {
    let q: Vec<f64> = subset
        .iter()
        .map(|&i| stats.quality[i])
        .collect::<Option<_>>()?;
    let members: Vec<&[f32]> = subset.iter().map(|&i| view.preds[i].as_slice()).collect();
    weighted_mean_into(&members, &q, scratch);
    let actual = finite(view.judged.ndcg(&scratch.scores, &mut scratch.idx))?;
    let s = subset.len() as f64;
    let mut pairs = 0.0;
    for (a, &i) in subset.iter().enumerate() {
        for &j in &subset[a + 1..] {
            pairs += 1.0 - stats.correlation[i][j];
        }
    }
    Some(Point {
        actual,
        base: q.iter().sum::<f64>() / s,
        x: 2.0 * pairs / (s * s),
    })
}

/// Fits λ of `Q(S) = mean q + λ·2P/s²` by least squares through the origin on every
/// (segment, subset) point, and reports how well the fitted estimator tracks the real scores.
/// Subsets are of size ≥ 2 only: for a single model the estimate is its measured quality, so
/// exact by construction, and counting those would flatter the fit.
fn fit_estimator(
    views: &[View],
    stats: &[SegmentStats],
    subsets: &[Vec<usize>],
) -> (f64, Option<EstimatorFit>) {
    let tasks: Vec<(usize, usize)> = (0..views.len())
        .flat_map(|v| (0..subsets.len()).map(move |s| (v, s)))
        .collect();
    let points: Vec<Point> = tasks
        .par_iter()
        .map_init(Scratch::default, |scratch, &(v, s)| {
            score_subset(&views[v], &stats[v], &subsets[s], scratch)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect();
    if points.is_empty() {
        return (0.0, None);
    }
    let sxx: f64 = points.iter().map(|p| p.x * p.x).sum();
    let sxy: f64 = points.iter().map(|p| p.x * (p.actual - p.base)).sum();
    // No diversity anywhere (all members perfectly correlated) leaves λ unidentified: 0.
    let lambda = if sxx > 1e-12 {
        (sxy / sxx).max(0.0)
    } else {
        0.0
    };
    let lambda = if lambda.is_finite() { lambda } else { 0.0 };
    let estimate: Vec<f64> = points.iter().map(|p| p.base + lambda * p.x).collect();
    let actual: Vec<f64> = points.iter().map(|p| p.actual).collect();
    let n = points.len() as f64;
    let mae = estimate
        .iter()
        .zip(&actual)
        .map(|(e, a)| (e - a).abs())
        .sum::<f64>()
        / n;
    let mae_without_diversity = points
        .iter()
        .map(|p| (p.base - p.actual).abs())
        .sum::<f64>()
        / n;
    let fit = EstimatorFit {
        subsets: points.len(),
        pearson: funnel::evaluation::pearson(&estimate, &actual),
        spearman: funnel::evaluation::pearson(&average_ranks(&estimate), &average_ranks(&actual)),
        mae,
        mae_without_diversity,
    };
    (lambda, Some(fit))
}

/// 1-based ranks, ties sharing their mean rank (for Spearman).
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_unstable_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            out[k] = r;
        }
        i = j + 1;
    }
    out
}

/// Penalised mean log-loss, its gradient and Hessian (row-major d × d) at `theta`.
struct Newton {
    loss: f64,
    grad: Vec<f64>,
    hess: Vec<f64>,
}

/// One pass over the rows: `x` is row-major n × d with the constant 1 in column 0, so
/// `theta[0]` is the bias. The bias is unpenalised.
fn logistic_pass(theta: &[f64], x: &[f64], y: &[f64]) -> Newton {
    let d = theta.len();
    let (mut loss, mut grad, mut hess) = (0.0f64, vec![0.0f64; d], vec![0.0f64; d * d]);
    for (row, &y) in x.chunks_exact(d).zip(y) {
        let z: f64 = row.iter().zip(theta).map(|(a, b)| a * b).sum();
        // Stable softplus(z) − y·z and σ(z), sharing one exp.
        let ez = (-z.abs()).exp();
        loss += z.max(0.0) + ez.ln_1p() - y * z;
        let p = if z >= 0.0 {
            1.0 / (1.0 + ez)
        } else {
            ez / (1.0 + ez)
        };
        let (e, wt) = (p - y, p * (1.0 - p));
        for (a, &xa) in row.iter().enumerate() {
            grad[a] += e * xa;
            let wa = wt * xa;
            for (h, &xb) in hess[a * d + a..(a + 1) * d].iter_mut().zip(&row[a..]) {
                *h += wa * xb;
            }
        }
    }
    let inv_n = 1.0 / y.len().max(1) as f64;
    loss *= inv_n;
    for a in 0..d {
        grad[a] *= inv_n;
        for b in a..d {
            hess[a * d + b] *= inv_n;
            hess[b * d + a] = hess[a * d + b];
        }
        if a > 0 {
            loss += 0.5 * STACKER_L2 * theta[a] * theta[a];
            grad[a] += STACKER_L2 * theta[a];
            hess[a * d + a] += STACKER_L2;
        } else {
            // A tiny ridge keeps H positive definite along the unpenalised bias.
            hess[0] += 1e-10;
        }
    }
    Newton { loss, grad, hess }
}

/// Fits `σ(bias + Σ w_j·cols[j][r])` to `labels` by Newton's method (IRLS) with backtracking;
/// returns `(weights, bias)`. Falls back to equal weights 1/k and bias 0 when the labels hold
/// one class or the fit goes non-finite, so the stacker is always usable.
fn fit_logistic(cols: &[&[f32]], labels: &[f32]) -> (Vec<f64>, f64) {
    let k = cols.len();
    let fallback = (vec![1.0 / k.max(1) as f64; k], 0.0);
    let n = labels.len();
    let n_pos = labels.iter().filter(|&&y| y > 0.5).count();
    if k == 0 || n_pos == 0 || n_pos == n || cols.iter().any(|c| c.len() != n) {
        return fallback;
    }
    let d = k + 1;
    // Row-major f64 copy: each pass then streams one contiguous buffer.
    let mut x = Vec::with_capacity(n * d);
    for r in 0..n {
        x.push(1.0);
        x.extend(cols.iter().map(|c| c[r] as f64));
    }
    let y: Vec<f64> = labels
        .iter()
        .map(|&v| if v > 0.5 { 1.0 } else { 0.0 })
        .collect();
    let mut theta = vec![0.0f64; d];
    theta[0] = (n_pos as f64 / (n - n_pos) as f64).ln();
    let mut cur = logistic_pass(&theta, &x, &y);
    for _ in 0..STACKER_MAX_ITER {
        let Some(step) = cholesky_solve(&cur.hess, &cur.grad, d) else {
            break;
        };
        let slope: f64 = cur.grad.iter().zip(&step).map(|(a, b)| a * b).sum();
        // Backtracking (Armijo): plain Newton can overshoot on near-separable data. Each trial is
        // a full pass, whose gradient and Hessian the next iteration reuses when accepted.
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..30 {
            let cand: Vec<f64> = theta.iter().zip(&step).map(|(v, s)| v - t * s).collect();
            let next = logistic_pass(&cand, &x, &y);
            if next.loss.is_finite() && next.loss <= cur.loss - 1e-4 * t * slope {
                accepted = Some((cand, next));
                break;
            }
            t *= 0.5;
        }
        let Some((cand, next)) = accepted else { break };
        let moved = step.iter().map(|s| (t * s).abs()).fold(0.0, f64::max);
        let gained = cur.loss - next.loss;
        theta = cand;
        cur = next;
        if moved < STACKER_TOL || gained < STACKER_MIN_GAIN {
            break;
        }
    }
    if theta.iter().all(|v| v.is_finite()) {
        (theta[1..].to_vec(), theta[0])
    } else {
        fallback
    }
}

/// Solves `H·x = g` for symmetric positive definite `H` (d × d, row-major); None otherwise.
fn cholesky_solve(h: &[f64], g: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = h[i * d + i] - s;
                if !(v > 0.0 && v.is_finite()) {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (h[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    let mut y = vec![0.0f64; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (g[i] - s) / l[i * d + i];
    }
    let mut x = vec![0.0f64; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * d + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Cross-fitting fold of a request: a hash of its id, so the split is fixed and balanced.
fn fold_of(group: u32) -> usize {
    // splitmix64 finaliser.
    let mut z = (group as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) & 1) as usize
}

/// Every strategy's validation NDCG@20 and AUC over all models, combining per request exactly
/// as serving does. Stacking is cross-fitted: each fold of requests is scored by a stacker
/// trained on the other, so its score is not inflated by fitting on what it is scored on.
fn strategy_scores(
    all: &View,
    all_stats: &SegmentStats,
    logits: &[Vec<f32>],
    model_ids: &[String],
) -> Vec<StrategyScore> {
    let members = sorted_by_id(&(0..model_ids.len()).collect::<Vec<_>>(), model_ids);
    let weights: Vec<f64> = members
        .iter()
        .map(|&i| all_stats.quality[i].unwrap_or(0.0))
        .collect();
    // Row folds follow their request's fold.
    let mut row_fold = vec![0usize; all.len()];
    for (range, &g) in all.groups().zip(&all.group_ids) {
        row_fold[range].fill(fold_of(g));
    }
    // fold_stackers[f] was trained on the rows outside fold f.
    let fold_stackers: Vec<(Vec<f64>, f64)> = (0..2)
        .into_par_iter()
        .map(|f| {
            let rows: Vec<usize> = (0..all.len()).filter(|&r| row_fold[r] != f).collect();
            let cols: Vec<Vec<f32>> = members
                .iter()
                .map(|&i| rows.iter().map(|&r| logits[i][r]).collect())
                .collect();
            let labels: Vec<f32> = rows.iter().map(|&r| all.labels[r]).collect();
            let cols: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
            fit_logistic(&cols, &labels)
        })
        .collect();

    Strategy::ALL
        .par_iter()
        .map(|&strategy| {
            let mut combined = vec![0.0f32; all.len()];
            let mut mat: Vec<Vec<f32>> = vec![Vec::new(); members.len()];
            for (range, &g) in all.groups().zip(&all.group_ids) {
                for (row, &i) in mat.iter_mut().zip(&members) {
                    row.clear();
                    row.extend_from_slice(&all.preds[i][range.clone()]);
                }
                let (w, b) = &fold_stackers[fold_of(g)];
                let c = combine(strategy, &mat, &weights, Some(w), *b);
                combined[range].copy_from_slice(&c.scores);
            }
            let mut scratch = Vec::new();
            StrategyScore {
                strategy,
                ndcg_at_20: finite(all.judged.ndcg(&combined, &mut scratch)),
                auc: finite(auc(&combined, &all.labels)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{ndcg_at_k, SEGMENT_HEAVY};
    use funnel::ranking::combine::sigmoid;
    use rand_distr::{Distribution, Normal};

    /// `groups` requests of `per_group` candidates, about 15% positive; segment by request.
    fn synthetic(groups: u32, per_group: u32, seed: u64) -> ExampleSet {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut set = ExampleSet::default();
        for g in 0..groups {
            for _ in 0..per_group {
                set.y.push(if rng.gen_bool(0.15) { 1.0 } else { 0.0 });
                set.group.push(g * 7 + 3);
                set.segment.push(SEGMENTS[g as usize % SEGMENTS.len()]);
            }
        }
        set
    }

    /// A model that sees the label through independent Gaussian noise of scale `noise`.
    fn noisy_model(valid: &ExampleSet, noise: f64, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0, noise).unwrap();
        valid
            .y
            .iter()
            .map(|&y| sigmoid(2.0 * (y as f64 - 0.5) + normal.sample(&mut rng)) as f32)
            .collect()
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn assert_no_nan(m: &EnsembleManifest) {
        assert!(
            m.lambda.is_finite() && m.lambda >= 0.0,
            "lambda {}",
            m.lambda
        );
        for s in &m.segments {
            assert!(s.quality.iter().flatten().all(|v| v.is_finite()), "{s:?}");
            assert!(
                s.correlation.iter().flatten().all(|v| v.is_finite()),
                "{s:?}"
            );
        }
        for s in &m.stackers {
            assert!(s.weights.iter().all(|v| v.is_finite()) && s.bias.is_finite());
        }
        if let Some(e) = &m.estimator {
            for v in [e.pearson, e.spearman, e.mae, e.mae_without_diversity] {
                assert!(v.is_finite(), "{e:?}");
            }
        }
        for s in &m.strategies {
            assert!(s.ndcg_at_20.into_iter().chain(s.auc).all(f64::is_finite));
        }
        // A NaN in a plain f64 serializes as null, which does not read back.
        let json = serde_json::to_string(m).unwrap();
        let back: EnsembleManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.segments.len(), m.segments.len());
        assert_eq!(back.strategies.len(), m.strategies.len());
    }

    #[test]
    fn two_noisy_models_make_a_better_ensemble() {
        let valid = synthetic(600, 40, 1);
        let models = ids(&["mlp-v1", "dcn-v1"]);
        let preds = vec![noisy_model(&valid, 1.5, 10), noisy_model(&valid, 1.5, 11)];
        let m = fit_predictions(&models, &preds, &valid).unwrap();
        assert_no_nan(&m);
        assert_eq!(m.models, models);

        assert_eq!(m.segments.len(), 1 + SEGMENTS.len());
        assert_eq!(m.segments[0].segment, None);
        assert_eq!(m.segments[0].name, "all");
        assert_eq!(m.segments[0].examples, valid.len());
        for (s, seg) in m.segments[1..].iter().zip(SEGMENTS) {
            assert_eq!(s.segment, Some(seg));
            assert_eq!(s.name, SEGMENT_NAMES[seg as usize]);
        }
        assert_eq!(
            m.segments[1..].iter().map(|s| s.examples).sum::<usize>(),
            valid.len()
        );
        for s in &m.segments {
            assert_eq!(s.quality.len(), 2);
            assert!(s.quality.iter().all(Option::is_some));
            assert_eq!(s.correlation.len(), 2);
            assert!(s.correlation.iter().all(|r| r.len() == 2));
            assert_eq!((s.correlation[0][0], s.correlation[1][1]), (1.0, 1.0));
            assert_eq!(s.correlation[0][1], s.correlation[1][0]);
        }

        // Independent noise averages out: the ensemble beats each member.
        let best_single = m.segments[0]
            .quality
            .iter()
            .flatten()
            .copied()
            .fold(0.0, f64::max);
        let score = |s: Strategy| {
            m.strategies
                .iter()
                .find(|x| x.strategy == s)
                .and_then(|x| x.ndcg_at_20)
                .unwrap()
        };
        assert_eq!(m.strategies.len(), Strategy::ALL.len());
        for s in [Strategy::Mean, Strategy::Weighted, Strategy::Stacking] {
            assert!(score(s) > best_single, "{s}: {} vs {best_single}", score(s));
        }
        assert!(m.strategies.iter().all(|s| s.auc.is_some()));

        // One subset per view (all, then each segment); with diversity paying off, λ is positive.
        let est = m.estimator.as_ref().unwrap();
        assert_eq!(est.subsets, 1 + SEGMENTS.len());
        assert!(m.lambda > 0.0, "{}", m.lambda);
        assert!(est.mae <= est.mae_without_diversity + 1e-12, "{est:?}");

        assert_eq!(m.stackers.len(), 1);
        let st = &m.stackers[0];
        // Sorted ids, weights aligned.
        assert_eq!(st.models, ids(&["dcn-v1", "mlp-v1"]));
        assert!(
            st.weights.iter().all(|&w| w.is_finite() && w > 0.0),
            "{st:?}"
        );
        assert!(m.stacker(&["mlp-v1", "dcn-v1"]).is_some());
    }

    #[test]
    fn a_single_model_has_no_subsets() {
        let valid = synthetic(100, 20, 2);
        let preds = vec![noisy_model(&valid, 1.0, 3)];
        let m = fit_predictions(&ids(&["logistic-v1"]), &preds, &valid).unwrap();
        assert_no_nan(&m);
        assert_eq!(m.lambda, 0.0);
        assert!(m.estimator.is_none());
        assert!(m.stackers.is_empty());
        assert_eq!(m.segments.len(), 1 + SEGMENTS.len());
        assert!(m.segments.iter().all(|s| s.quality.len() == 1));
        // Every strategy reduces to the model itself (the stacker is monotone in it).
        let q = m.segments[0].quality[0].unwrap();
        for s in &m.strategies {
            let v = s.ndcg_at_20.unwrap();
            assert!((v - q).abs() < 1e-9, "{s:?} vs {q}");
        }
    }

    #[test]
    fn three_models_get_every_subset_and_stacker() {
        let valid = synthetic(300, 30, 4);
        let models = ids(&["mlp-v1", "logistic-v1", "dcn-v1"]);
        let preds = vec![
            noisy_model(&valid, 1.0, 5),
            noisy_model(&valid, 2.0, 6),
            noisy_model(&valid, 1.5, 7),
        ];
        let m = fit_predictions(&models, &preds, &valid).unwrap();
        assert_no_nan(&m);
        // 4 subsets of size ≥ 2, on every view (all, then each segment).
        assert_eq!(
            m.estimator.as_ref().unwrap().subsets,
            4 * (1 + SEGMENTS.len())
        );
        assert_eq!(m.stackers.len(), 4);
        for s in &m.stackers {
            let mut sorted = s.models.clone();
            sorted.sort();
            assert_eq!(s.models, sorted);
            assert_eq!(s.weights.len(), s.models.len());
        }
    }

    #[test]
    fn empty_segments_and_missing_positives_stay_defined() {
        let mut valid = synthetic(50, 10, 8);
        valid.segment.iter_mut().for_each(|s| *s = SEGMENT_HEAVY);
        let preds = vec![noisy_model(&valid, 1.0, 1), noisy_model(&valid, 1.0, 2)];
        let m = fit_predictions(&ids(&["a", "b"]), &preds, &valid).unwrap();
        assert_no_nan(&m);
        assert_eq!(m.segments[1].examples, 0);
        assert_eq!(m.segments[1].quality, vec![None, None]);
        assert_eq!(
            m.segments[1].correlation,
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );

        // No positive anywhere: quality and NDCG undefined, nothing NaN.
        valid.y.iter_mut().for_each(|y| *y = 0.0);
        let m = fit_predictions(&ids(&["a", "b"]), &preds, &valid).unwrap();
        assert_no_nan(&m);
        assert!(m.estimator.is_none());
        assert_eq!(m.lambda, 0.0);
        assert!(m.strategies.iter().all(|s| s.ndcg_at_20.is_none()));
        assert!(m.stackers.iter().all(|s| s.weights == vec![0.5, 0.5]));
    }

    #[test]
    fn rejects_mismatched_inputs() {
        let valid = synthetic(10, 5, 9);
        let preds = vec![noisy_model(&valid, 1.0, 1)];
        assert!(matches!(
            fit_predictions(&[], &[], &valid),
            Err(EnsembleError::NoModels)
        ));
        assert!(matches!(
            fit_predictions(&ids(&["a", "b"]), &preds, &valid),
            Err(EnsembleError::Length { .. })
        ));
        let short = vec![vec![0.5f32; 3]];
        assert!(matches!(
            fit_predictions(&ids(&["a"]), &short, &valid),
            Err(EnsembleError::Length { .. })
        ));
        let mut bad = preds.clone();
        bad[0][4] = f32::NAN;
        assert!(matches!(
            fit_predictions(&ids(&["a"]), &bad, &valid),
            Err(EnsembleError::NonFinite { row: 4, .. })
        ));
    }

    #[test]
    fn grouped_ndcg_matches_train_metric() {
        let mut rng = StdRng::seed_from_u64(11);
        for case in 0..50 {
            let n = rng.gen_range(1..400);
            // Coarse scores force ties; some cases have many positives (the sorting path).
            let p_pos = if case % 2 == 0 { 0.1 } else { 0.6 };
            let mut rows: Vec<(u32, f32, f32)> = (0..n)
                .map(|_| {
                    (
                        rng.gen_range(0..12),
                        rng.gen_range(0..6) as f32 / 5.0,
                        if rng.gen_bool(p_pos) { 1.0 } else { 0.0 },
                    )
                })
                .collect();
            let scores: Vec<f32> = rows.iter().map(|r| r.1).collect();
            let labels: Vec<f32> = rows.iter().map(|r| r.2).collect();
            let groups: Vec<u32> = rows.iter().map(|r| r.0).collect();
            let want = ndcg_at_k(&scores, &labels, &groups, NDCG_K);
            rows.sort_by_key(|r| r.0);
            let mut bounds = vec![0];
            for i in 1..rows.len() {
                if rows[i].0 != rows[i - 1].0 {
                    bounds.push(i);
                }
            }
            bounds.push(rows.len());
            let s: Vec<f32> = rows.iter().map(|r| r.1).collect();
            let l: Vec<f32> = rows.iter().map(|r| r.2).collect();
            let got = Judged::new(&l, &bounds).ndcg(&s, &mut Vec::new());
            assert!(
                (want.is_nan() && got.is_nan()) || (want - got).abs() < 1e-12,
                "case {case}: {want} vs {got}"
            );
        }
    }

    #[test]
    fn direct_weighted_mean_matches_combine() {
        let mut rng = StdRng::seed_from_u64(12);
        for _ in 0..50 {
            let m = rng.gen_range(1..5);
            let n = rng.gen_range(1..30);
            let scores: Vec<Vec<f32>> = (0..m)
                .map(|_| (0..n).map(|_| rng.gen::<f32>()).collect())
                .collect();
            let raw: Vec<f64> = (0..m).map(|_| rng.gen_range(-0.2..1.0)).collect();
            let want = combine(Strategy::Weighted, &scores, &raw, None, 0.0).scores;
            let members: Vec<&[f32]> = scores.iter().map(Vec::as_slice).collect();
            let mut scratch = Scratch::default();
            weighted_mean_into(&members, &raw, &mut scratch);
            assert_eq!(scratch.scores, want);
        }
    }

    #[test]
    fn logistic_fit_recovers_known_weights() {
        let mut rng = StdRng::seed_from_u64(13);
        let n = 20_000;
        let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let y: Vec<f32> = (0..n)
            .map(|i| {
                let p = sigmoid(-0.5 + 1.5 * a[i] as f64 + 0.5 * b[i] as f64);
                if rng.gen_bool(p) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let (w, bias) = fit_logistic(&[a.as_slice(), b.as_slice()], &y);
        assert!((w[0] - 1.5).abs() < 0.15, "{w:?}");
        assert!((w[1] - 0.5).abs() < 0.1, "{w:?}");
        assert!((bias + 0.5).abs() < 0.1, "{bias}");

        // Perfectly separable: the penalty and line search keep it finite.
        let y: Vec<f32> = a.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
        let (w, bias) = fit_logistic(&[a.as_slice()], &y);
        assert!(
            w[0].is_finite() && w[0] > 0.0 && bias.is_finite(),
            "{w:?} {bias}"
        );

        // One class only: equal weights, no bias.
        let (w, bias) = fit_logistic(&[a.as_slice(), b.as_slice()], &vec![1.0; n]);
        assert_eq!((w, bias), (vec![0.5, 0.5], 0.0));
    }

    #[test]
    fn subsets_are_exhaustive_then_sampled() {
        assert!(estimator_subsets(1).is_empty());
        assert_eq!(estimator_subsets(3).len(), 4);
        assert_eq!(estimator_subsets(10).len(), 1024 - 11);
        let s = estimator_subsets(14);
        assert_eq!(s.len(), SAMPLED_SUBSETS);
        assert!(s
            .iter()
            .all(|x| x.len() >= 2 && x.windows(2).all(|w| w[0] < w[1]) && x[x.len() - 1] < 14));
        assert_eq!(s, estimator_subsets(14));
    }

    #[test]
    fn spearman_ranks_handle_ties() {
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        use funnel::evaluation::pearson;
        assert_eq!(pearson(&[1.0], &[2.0]), 0.0);
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), 0.0);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]) - 0.9934).abs() < 1e-3);
    }

    /// Timing on a realistic size: `cargo test --release -p index-builder --lib ensemble -- --ignored`.
    #[test]
    #[ignore]
    fn large_validation_set_is_fast() {
        let valid = synthetic(1_000, 100, 21);
        for m in [3usize, 6, 10] {
            let models: Vec<String> = (0..m).map(|i| format!("model-{i}")).collect();
            let preds: Vec<Vec<f32>> = (0..m)
                .map(|i| noisy_model(&valid, 1.0 + i as f64 * 0.2, 100 + i as u64))
                .collect();
            let t = std::time::Instant::now();
            let e = fit_predictions(&models, &preds, &valid).unwrap();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{m} models, {} rows: {secs:.2} s, lambda {:.4}, {:?}",
                valid.len(),
                e.lambda,
                e.estimator
            );
            assert_no_nan(&e);
        }
    }
}
