//! The build's typed configuration (TOML, every field defaulted), validated at load.

use std::path::Path;

use serde::{Deserialize, Serialize};

use funnel::config::RetrievalPlan;
use funnel::ranking::Arch;
use funnel::sources::ann::hnsw::HnswParams;

use crate::cf::CfConfig;
use crate::content::ContentConfig;
use crate::embed::AlsConfig;
use crate::trending::TrendingConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    #[serde(default)]
    pub als: AlsConfig,
    #[serde(default)]
    pub hnsw: HnswParams,
    #[serde(default)]
    pub cf: CfConfig,
    #[serde(default)]
    pub content: ContentConfig,
    #[serde(default)]
    pub trending: TrendingConfig,
    /// Not read from the build's TOML: the serving config's quotas and merge
    /// (`--serving-config`, else the server's defaults), so training candidates are the ones the
    /// server will rank.
    #[serde(skip)]
    pub serving: RetrievalPlan,
    #[serde(default)]
    pub rankers: RankerBuildConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub publish: PublishConfig,
    /// A FAISS index to train and write beside the HNSW graph (`ann/faiss.index`); needs an
    /// index-builder compiled with `--features faiss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faiss: Option<FaissBuildConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaissBuildConfig {
    /// A FAISS index-factory string, built by inner product: "HNSW32,Flat", "IVF1024,Flat",
    /// "IVF4096,PQ32x4fs,RFlat", …
    pub factory: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankerBuildConfig {
    /// Share of the training period (its end) whose interactions label ranker examples; with a
    /// per-user split, also the share of each user's own latest interactions.
    pub label_fraction: f64,
    /// Which interactions label ranker examples (see [`LabelSplit`]).
    pub label_split: LabelSplit,
    /// Share of each training user's negatives taken from the top of their merged candidates
    /// (the rest are drawn at random from the remainder).
    pub hard_negative_share: f64,
    /// At most this many users contribute examples (sampled deterministically).
    pub max_users: usize,
    /// Negatives per user, drawn from the user's retrieval candidates.
    pub negatives_per_user: usize,
    /// Share of example users held out for validation metrics.
    pub validation_fraction: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Architectures to train (the ensemble's members), in report order.
    pub archs: Vec<Arch>,
    /// Of those, the ones trained with the listwise objective.
    pub listwise: Vec<Arch>,
    /// Weigh users so each segment (cold, light, heavy) counts the same in training.
    pub balance_segments: bool,
    /// Cap on the labels a user's own tail contributes (0 = no cap): the server predicts what a
    /// user does next, not the last quarter of their life.
    pub max_tail_labels: usize,
}
/// How the builder picks the label interactions (the early stage is built without them, so a
/// ranker never sees its labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSplit {
    /// The latest `label_fraction` of the period: mostly users who arrived late, light ones.
    Temporal,
    /// Each user's own latest `label_fraction` (at least one) of interactions, for every user
    /// with two or more: heavy users are labelled too.
    PerUser,
    /// Both: the temporal window (new and returning users), and every other user's own tail.
    #[default]
    Hybrid,
}

const fn d_label() -> f64 {
    0.25
}
const fn d_users() -> usize {
    20_000
}
const fn d_neg() -> usize {
    60
}
const fn d_valid() -> f64 {
    0.2
}
const fn d_epochs() -> usize {
    40
}
const fn d_batch() -> usize {
    512
}
const fn d_lr() -> f64 {
    2e-3
}
impl Default for RankerBuildConfig {
    fn default() -> Self {
        Self {
            label_fraction: d_label(),
            label_split: LabelSplit::default(),
            hard_negative_share: 0.0,
            archs: Arch::ALL.to_vec(),
            listwise: crate::train::DEFAULT_LISTWISE.to_vec(),
            balance_segments: true,
            max_tail_labels: 10,
            max_users: d_users(),
            negatives_per_user: d_neg(),
            validation_fraction: d_valid(),
            epochs: d_epochs(),
            batch_size: d_batch(),
            learning_rate: d_lr(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Recommendations precomputed per active user (the server's fallback list).
    pub k: usize,
    /// Users with an interaction in this many days before the cutoff are active.
    pub active_days: i64,
}
const fn d_k() -> usize {
    50
}
const fn d_active() -> i64 {
    30
}
impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            k: d_k(),
            active_days: d_active(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Published versions kept in the bundle root.
    pub keep_versions: usize,
}
const fn d_keep() -> usize {
    3
}
impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            keep_versions: d_keep(),
        }
    }
}

impl BuildConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cfg: BuildConfig = toml::from_str(&text).map_err(|e| {
            format!(
                "{}{}",
                path.display(),
                funnel::config::toml_error(&text, &e)
            )
        })?;
        cfg.validate()
            .map_err(|m| format!("{}: {m}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 13] = [
            (
                self.als.dim > 0 && self.als.dim <= 1024,
                "als.dim must be in 1..=1024",
            ),
            (self.als.iterations > 0, "als.iterations must be > 0"),
            (
                self.als.regularization >= 0.0 && self.als.alpha > 0.0,
                "als.regularization must be >= 0 and als.alpha > 0",
            ),
            (
                self.hnsw.m >= 2
                    && self.hnsw.ef_construction >= self.hnsw.m
                    && self.hnsw.ef_search > 0
                    && (self.hnsw.base_degree == 0 || self.hnsw.base_degree >= 2),
                "hnsw: m >= 2, ef_construction >= m, ef_search > 0, base_degree 0 or >= 2",
            ),
            (self.cf.neighbors > 0, "cf.neighbors must be > 0"),
            (
                self.rankers.label_fraction > 0.0 && self.rankers.label_fraction < 0.5,
                "rankers.label_fraction must be in (0, 0.5)",
            ),
            (
                !self.rankers.archs.is_empty()
                    && self
                        .rankers
                        .listwise
                        .iter()
                        .all(|a| self.rankers.archs.contains(a)),
                "rankers.archs must be non-empty and contain every rankers.listwise entry",
            ),
            (
                (0.0..=1.0).contains(&self.rankers.hard_negative_share),
                "rankers.hard_negative_share must be in [0, 1]",
            ),
            (
                self.rankers.validation_fraction > 0.0 && self.rankers.validation_fraction < 0.9,
                "rankers.validation_fraction must be in (0, 0.9)",
            ),
            (
                self.rankers.epochs > 0
                    && self.rankers.batch_size > 0
                    && self.rankers.learning_rate > 0.0,
                "rankers: epochs, batch_size and learning_rate must be > 0",
            ),
            (
                self.batch.k > 0 && self.publish.keep_versions > 0,
                "batch.k and publish.keep_versions must be > 0",
            ),
            (
                self.als.cold_start_strength >= 0.0 && self.als.cold_start_strength.is_finite(),
                "als.cold_start_strength must be >= 0",
            ),
            (
                self.faiss.is_none() || funnel::sources::ann::FAISS_AVAILABLE,
                "[faiss] needs an index-builder compiled with `--features faiss`",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(msg.to_string());
        }
        self.serving.merge.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_matches_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/builder.toml");
        let c = BuildConfig::load(&p).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(BuildConfig::default()).unwrap()
        );
    }

    #[test]
    fn invalid_values_are_rejected_with_the_field_named() {
        let mut c = BuildConfig::default();
        c.als.dim = 0;
        assert!(c.validate().unwrap_err().contains("als.dim"));
    }
}
