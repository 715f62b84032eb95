//! Combining the scores of an ensemble's models into one score and a confidence per candidate.
//!
//! Strategies: mean, weighted mean (validation-quality weights), rank average, top-k vote
//! (Borda) and stacking (a logistic meta-learner over the models' logits, trained by the
//! builder). The same code scores the builder's validation set and live requests.

use serde::{Deserialize, Serialize};

/// How model scores are combined. Serialized snake_case (`"rank_avg"`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Mean of the models' probabilities.
    Mean,
    /// Mean weighted by each model's validation quality on the request's segment.
    Weighted,
    /// Mean of each model's normalised rank (1 = its top candidate, 0 = its last).
    RankAvg,
    /// Top-k vote: each model gives k − r points to its r-th candidate (r < k).
    Borda,
    /// Logistic meta-learner over the models' logits (falls back to `weighted` for a subset
    /// the builder trained no meta-learner for).
    Stacking,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::Mean,
        Strategy::Weighted,
        Strategy::RankAvg,
        Strategy::Borda,
        Strategy::Stacking,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Mean => "mean",
            Strategy::Weighted => "weighted",
            Strategy::RankAvg => "rank_avg",
            Strategy::Borda => "borda",
            Strategy::Stacking => "stacking",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|x| x.as_str()).collect();
                format!("unknown strategy {s:?} (expected one of {names:?})")
            })
    }
}

/// A trained logistic meta-learner for one model subset: `σ(bias + Σ w_i · logit(p_i))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stacker {
    /// Model ids, sorted; `weights[i]` belongs to `models[i]`.
    pub models: Vec<String>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

/// Top-k cut-off of the Borda vote.
pub const BORDA_K: usize = 50;

/// Clamp for logits of probabilities at 0 or 1.
const LOGIT_EPS: f32 = 1e-6;

#[inline]
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS);
    (p / (1.0 - p)).ln()
}

/// Logistic function, stable for any magnitude (the stacker's link; the builder fits with it).
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Normalised ranks of one model's scores: 1 for its best candidate, 0 for its worst (ties share
/// their mean rank), 1 for a lone candidate.
pub fn rank_scores(scores: &[f32]) -> Vec<f32> {
    let n = scores.len();
    let mut out = vec![1.0f32; n];
    if n < 2 {
        return out;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let denom = (n - 1) as f32;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f32 / 2.0;
        for &k in &idx[i..=j] {
            out[k] = 1.0 - r / denom;
        }
        i = j + 1;
    }
    out
}

/// The combined scores and per-candidate confidence of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    pub scores: Vec<f32>,
    /// Model agreement in [0, 1]: 1 − 2 · std of the models' normalised ranks (the largest
    /// possible std of values in [0, 1] is 0.5). 0.5 for a single model: no second opinion.
    pub confidence: Vec<f32>,
    /// The strategy actually applied (stacking without a trained subset falls back to weighted).
    pub strategy: Strategy,
}

/// Combines `scores[m][c]` (model m, candidate c; equal lengths) with `weights[m]` (≥ 0, used
/// by `weighted`). `stacker` is the meta-learner for exactly these models, in this order.
pub fn combine(
    strategy: Strategy,
    scores: &[Vec<f32>],
    weights: &[f64],
    stacker: Option<&[f64]>,
    stacker_bias: f64,
) -> Combined {
    let m = scores.len();
    let n = scores.first().map_or(0, Vec::len);
    if m == 0 || n == 0 {
        return Combined {
            scores: vec![0.0; n],
            confidence: vec![0.0; n],
            strategy,
        };
    }
    let ranks: Vec<Vec<f32>> = scores.iter().map(|s| rank_scores(s)).collect();
    let confidence = agreement(&ranks, n);
    let mean_of = |w: &[f64], rows: &[Vec<f32>]| -> Vec<f32> {
        let total: f64 = w.iter().sum();
        let w: Vec<f64> = if total > 0.0 && total.is_finite() {
            w.iter().map(|x| x / total).collect()
        } else {
            vec![1.0 / m as f64; m]
        };
        (0..n)
            .map(|c| {
                rows.iter()
                    .zip(&w)
                    .map(|(r, wi)| r[c] as f64 * wi)
                    .sum::<f64>() as f32
            })
            .collect()
    };
    let uniform = vec![1.0; m];
    let weights: Vec<f64> = if weights.len() == m {
        weights.iter().map(|w| w.max(0.0)).collect()
    } else {
        uniform.clone()
    };
    let (scores, strategy) = match strategy {
        Strategy::Mean => (mean_of(&uniform, scores), strategy),
        Strategy::Weighted => (mean_of(&weights, scores), strategy),
        Strategy::RankAvg => (mean_of(&uniform, &ranks), strategy),
        Strategy::Borda => {
            let k = BORDA_K.min(n);
            let mut points = vec![0.0f64; n];
            for s in scores {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_unstable_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
                for (r, &c) in idx.iter().take(k).enumerate() {
                    points[c] += (k - r) as f64;
                }
            }
            // Ties in points (common below everyone's top k) break by mean rank, which stays
            // below one point.
            let tie = mean_of(&uniform, &ranks);
            let scale = (k * m) as f64 + 1.0;
            let out = points
                .iter()
                .zip(&tie)
                .map(|(p, t)| ((p + 0.999 * *t as f64) / scale) as f32)
                .collect();
            (out, strategy)
        }
        Strategy::Stacking => match stacker {
            Some(w) if w.len() == m => {
                let out = (0..n)
                    .map(|c| {
                        let z = stacker_bias
                            + scores
                                .iter()
                                .zip(w)
                                .map(|(s, wi)| wi * logit(s[c]) as f64)
                                .sum::<f64>();
                        sigmoid(z) as f32
                    })
                    .collect();
                (out, strategy)
            }
            _ => (mean_of(&weights, scores), Strategy::Weighted),
        },
    };
    Combined {
        scores,
        confidence,
        strategy,
    }
}

fn agreement(ranks: &[Vec<f32>], n: usize) -> Vec<f32> {
    let m = ranks.len();
    if m < 2 {
        return vec![0.5; n];
    }
    (0..n)
        .map(|c| {
            let mean = ranks.iter().map(|r| r[c]).sum::<f32>() / m as f32;
            let var = ranks.iter().map(|r| (r[c] - mean).powi(2)).sum::<f32>() / m as f32;
            (1.0 - 2.0 * var.sqrt()).clamp(0.0, 1.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    #[test]
    fn rank_scores_handle_ties_and_edges() {
        assert_eq!(rank_scores(&[]), Vec::<f32>::new());
        assert_eq!(rank_scores(&[0.3]), vec![1.0]);
        assert_eq!(rank_scores(&[0.1, 0.9, 0.5]), vec![0.0, 1.0, 0.5]);
        assert_eq!(rank_scores(&[0.5, 0.5]), vec![0.5, 0.5]);
    }

    #[test]
    fn strategies_agree_on_a_clear_winner() {
        let scores = vec![
            vec![0.9, 0.2, 0.1],
            vec![0.8, 0.3, 0.4],
            vec![0.7, 0.1, 0.2],
        ];
        for s in Strategy::ALL {
            let c = combine(s, &scores, &[1.0, 2.0, 1.0], Some(&[1.0, 1.0, 1.0]), 0.0);
            assert_eq!(c.scores.len(), 3);
            let top = (0..3)
                .max_by(|&a, &b| c.scores[a].total_cmp(&c.scores[b]))
                .unwrap();
            assert_eq!(top, 0, "{s}: {:?}", c.scores);
            assert!(c.confidence[0] > c.confidence[2], "{:?}", c.confidence);
        }
        // Full agreement on every position: confidence 1.
        let same = vec![vec![0.9, 0.2], vec![0.8, 0.1]];
        let c = combine(Strategy::Mean, &same, &[], None, 0.0);
        assert_eq!(c.confidence, vec![1.0, 1.0]);
        // Stacking without a meta-learner for this subset falls back to weighted.
        let c = combine(Strategy::Stacking, &same, &[1.0, 1.0], None, 0.0);
        assert_eq!(c.strategy, Strategy::Weighted);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let scores = vec![vec![0.9, 0.1], vec![0.1, 0.9]];
        let c = combine(Strategy::Weighted, &scores, &[3.0, 1.0], None, 0.0);
        assert!(c.scores[0] > c.scores[1]);
        let c = combine(Strategy::Weighted, &scores, &[1.0, 3.0], None, 0.0);
        assert!(c.scores[1] > c.scores[0]);
    }

    proptest! {
        /// Every strategy yields one finite score per candidate and confidences in [0, 1].
        #[test]
        fn outputs_are_finite_and_bounded(
            m in 1usize..5,
            n in 0usize..80,
            seed in any::<u64>(),
            strat in 0usize..5,
        ) {
            let mut x = seed;
            let mut next = || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((x >> 33) as f32) / (u32::MAX >> 1) as f32 };
            let scores: Vec<Vec<f32>> = (0..m).map(|_| (0..n).map(|_| next()).collect()).collect();
            let w: Vec<f64> = (0..m).map(|i| i as f64).collect();
            let st: Vec<f64> = vec![0.5; m];
            let c = combine(Strategy::ALL[strat], &scores, &w, Some(&st), 0.1);
            prop_assert_eq!(c.scores.len(), n);
            prop_assert_eq!(c.confidence.len(), n);
            prop_assert!(c.scores.iter().all(|s| s.is_finite()));
            prop_assert!(c.confidence.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
}
