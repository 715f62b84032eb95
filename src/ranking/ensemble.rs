//! What the builder measures for the ensemble and ships in `rankers.json` (the `ensemble`
//! section): per user segment, each model's validation quality and the pairwise correlation of
//! their predictions; the fitted weight of the estimator's diversity term and how well the
//! estimator predicted real ensembles; stacking meta-learners; every strategy's validation score.

use serde::{Deserialize, Serialize};

use super::combine::{Stacker, Strategy};

/// User segments at request (or example) time: by history length, and known users back after
/// a long gap apart (they want what is new, not what follows their history, so other members
/// serve them best).
pub const SEGMENT_COLD: u8 = 0;
pub const SEGMENT_LIGHT: u8 = 1;
pub const SEGMENT_HEAVY: u8 = 2;
pub const SEGMENT_RETURNING: u8 = 3;
pub const SEGMENT_NAMES: [&str; 4] = ["cold", "light", "heavy", "returning"];
/// Every segment, in index order.
pub const SEGMENTS: [u8; 4] = [
    SEGMENT_COLD,
    SEGMENT_LIGHT,
    SEGMENT_HEAVY,
    SEGMENT_RETURNING,
];
/// Users with at most this many past interactions (and at least one) are "light".
pub const LIGHT_MAX_HISTORY: u32 = 20;
/// Known users back after at least this many days are "returning".
pub const RETURNING_AFTER_DAYS: f32 = 7.0;

/// Segment by history length alone: 0 cold, 1 light, 2 heavy.
pub fn segment_for_history(history_len: u32) -> u8 {
    match history_len {
        0 => SEGMENT_COLD,
        h if h <= LIGHT_MAX_HISTORY => SEGMENT_LIGHT,
        _ => SEGMENT_HEAVY,
    }
}

/// Segment of a user with `history_len` past interactions, `gap_days` since the last one (None =
/// unknown): cold, returning (known, back after [`RETURNING_AFTER_DAYS`]), else light or heavy.
pub fn segment_for(history_len: u32, gap_days: Option<f32>) -> u8 {
    segment_of(
        segment_for_history(history_len),
        gap_days.is_some_and(|g| g >= RETURNING_AFTER_DAYS),
    )
}

/// The segment of a user in history segment `history` who is (or is not) back after
/// [`RETURNING_AFTER_DAYS`]: a cold user stays cold.
pub fn segment_of(history: u8, returning: bool) -> u8 {
    match history {
        SEGMENT_COLD => SEGMENT_COLD,
        _ if returning => SEGMENT_RETURNING,
        s => s,
    }
}

pub fn segment_name(segment: u8) -> &'static str {
    SEGMENT_NAMES
        .get(segment as usize)
        .copied()
        .unwrap_or("other")
}

/// Per-model quality and pairwise correlation on one segment (`segment: None` = all examples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub segment: Option<u8>,
    pub name: String,
    pub examples: usize,
    /// Validation NDCG@20 per model (`EnsembleManifest::models` order); None without positives.
    pub quality: Vec<Option<f64>>,
    /// Pearson correlation of the models' validation predictions on this segment.
    pub correlation: Vec<Vec<f64>>,
}

/// How well the quality estimator predicted the real validation NDCG@20 of sampled subsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EstimatorFit {
    /// Subsets scored (all of them when few models, else a sample), over all segments.
    pub subsets: usize,
    pub pearson: f64,
    pub spearman: f64,
    /// Mean absolute error, in NDCG@20 points.
    pub mae: f64,
    /// The same errors for the baseline estimator "mean member quality" (λ = 0).
    pub mae_without_diversity: f64,
}

/// One strategy's validation quality over all models (stacking is cross-fitted by user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyScore {
    pub strategy: Strategy,
    pub ndcg_at_20: Option<f64>,
    pub auc: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnsembleManifest {
    /// Model ids, in the order of every per-model vector and matrix below.
    pub models: Vec<String>,
    /// Weight of the diversity term in [`super::select::estimate`] (fitted, ≥ 0).
    pub lambda: f64,
    /// `all` first, then each segment.
    pub segments: Vec<SegmentStats>,
    pub stackers: Vec<Stacker>,
    pub estimator: Option<EstimatorFit>,
    pub strategies: Vec<StrategyScore>,
}

impl EnsembleManifest {
    /// The combination strategy with the best validation NDCG@20 (ties: the earlier one).
    pub fn best_strategy(&self) -> Option<Strategy> {
        self.strategies
            .iter()
            .filter_map(|s| {
                s.ndcg_at_20
                    .filter(|v| v.is_finite())
                    .map(|v| (s.strategy, v))
            })
            .fold(None, |best: Option<(Strategy, f64)>, (st, v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((st, v)),
            })
            .map(|(st, _)| st)
    }

    /// The stats for `segment`, falling back to `all` when the segment was not measured.
    pub fn segment(&self, segment: u8) -> Option<&SegmentStats> {
        self.segments
            .iter()
            .find(|s| s.segment == Some(segment) && s.quality.iter().any(Option::is_some))
            .or_else(|| self.segments.iter().find(|s| s.segment.is_none()))
    }

    /// The meta-learner trained for exactly `ids` (any order).
    pub fn stacker(&self, ids: &[&str]) -> Option<&Stacker> {
        let mut want: Vec<&str> = ids.to_vec();
        want.sort_unstable();
        self.stackers
            .iter()
            .find(|s| s.models.iter().map(String::as_str).eq(want.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_lookup() {
        assert_eq!(segment_for_history(0), SEGMENT_COLD);
        assert_eq!(segment_for_history(20), SEGMENT_LIGHT);
        assert_eq!(segment_for_history(21), SEGMENT_HEAVY);
        let m = EnsembleManifest {
            models: vec!["a".into(), "b".into()],
            segments: vec![
                SegmentStats {
                    segment: None,
                    name: "all".into(),
                    quality: vec![Some(0.4), Some(0.3)],
                    ..Default::default()
                },
                SegmentStats {
                    segment: Some(SEGMENT_COLD),
                    name: "cold".into(),
                    quality: vec![None, None],
                    ..Default::default()
                },
            ],
            stackers: vec![Stacker {
                models: vec!["a".into(), "b".into()],
                weights: vec![1.0, 0.5],
                bias: 0.0,
            }],
            ..Default::default()
        };
        // Cold has no measured quality: fall back to all.
        assert_eq!(m.segment(SEGMENT_COLD).unwrap().name, "all");
        assert!(m.stacker(&["b", "a"]).is_some());
        assert!(m.stacker(&["a"]).is_none());
        let json = serde_json::to_string(&m).unwrap();
        let back: EnsembleManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
