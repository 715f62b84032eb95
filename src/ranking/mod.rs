//! Ranking stage: scores the merged candidates of a request with learned models.
//!
//! Owns the [`Ranker`] trait every model is served behind, the model metadata ([`RankerSpec`],
//! written by the nightly builder into the bundle's `rankers.json`), and loading trained weights
//! from the bundle. The input row itself is defined once in [`input`] and shared with training;
//! the network architectures live in [`models`].

pub mod combine;
pub mod controller;
pub mod cost;
pub mod encode;
pub mod ensemble;
pub mod input;
pub mod models;
pub mod registry;
pub mod select;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use input::{INPUT_DIM, INPUT_LAYOUT_VERSION};
use models::{Net, NetConfig};

pub use crate::layout::{RANKERS_DIR, RANKERS_MANIFEST as RANKERS_MANIFEST_FILE};

/// Errors from scoring or loading rankers.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("rows buffer holds {len} floats, expected {n} rows x {dim}")]
    RowShape { n: usize, dim: usize, len: usize },
    #[error("non-finite input value at row {row}, column {col}")]
    NonFiniteInput { row: usize, col: usize },
    #[error("invalid ranker spec `{id}`: {reason}")]
    InvalidSpec { id: String, reason: String },
    #[error("cannot read ranker weights {path}: {source}")]
    WeightsIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid ranker weights {path}: {source}")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("ranker `{id}` failed: {source}")]
    Model {
        id: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("ranker `{id}` returned {got} scores for {n} rows")]
    OutputShape { id: String, n: usize, got: usize },
    #[error("cannot access ranker manifest {path}: {source}")]
    ManifestIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed ranker manifest {path}: {source}")]
    ManifestJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A scoring model. Implementations are immutable after load and shared across request tasks.
pub trait Ranker: Send + Sync {
    /// Stable model id, e.g. `"mlp-v1"`.
    fn id(&self) -> &str;
    fn arch(&self) -> Arch;
    /// Scores `n` rows (`rows` is row-major `n × INPUT_DIM`, built with [`input::encode_row`]) in one
    /// batched forward pass. Returns one score per row in input order; higher is better.
    fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError>;
}

/// Model architecture. Serialized lowercase (`"logistic"`, `"mlp"`, `"dcn"`, `"fm"`, `"seq"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Logistic,
    Mlp,
    Dcn,
    /// Factorization machine on the tabular view.
    Fm,
    /// Target attention over the recent-item sequence.
    Seq,
}

impl Arch {
    /// Every architecture, in training order.
    pub const ALL: [Arch; 5] = [Arch::Logistic, Arch::Mlp, Arch::Dcn, Arch::Fm, Arch::Seq];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Logistic => "logistic",
            Arch::Mlp => "mlp",
            Arch::Dcn => "dcn",
            Arch::Fm => "fm",
            Arch::Seq => "seq",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validation quality of a model on one user segment (0 cold, 1 light, 2 heavy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentMetrics {
    pub segment: u8,
    pub name: String,
    pub examples: usize,
    pub positives: usize,
    /// `None` when the segment lacks positives or negatives.
    pub auc: Option<f64>,
    /// `None` when no group in the segment has a positive.
    pub ndcg_at_20: Option<f64>,
}

/// Training provenance and validation quality of a model, for monitoring and ensemble selection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RankerMetrics {
    pub valid_auc: Option<f64>,
    pub valid_ndcg_at_20: Option<f64>,
    /// Mean binary cross-entropy of the validation predictions.
    pub valid_logloss: Option<f64>,
    pub segments: Vec<SegmentMetrics>,
    pub train_examples: usize,
    pub valid_examples: usize,
    /// Epochs started (the last may be cut short by the step cap).
    pub epochs: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Mean training loss over the last (possibly partial, see `steps`) epoch.
    pub final_train_loss: Option<f64>,
    pub train_seconds: f64,
    pub n_params: usize,
    /// The training objective: `pointwise` (binary cross-entropy) or `listwise` (softmax
    /// cross-entropy over each user's candidate list, plus a small cross-entropy term).
    pub objective: String,
    /// The epoch whose weights were kept (best validation NDCG@20); None = the last one.
    pub best_epoch: Option<usize>,
}

/// Everything needed to rebuild and judge one trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerSpec {
    pub id: String,
    pub arch: Arch,
    pub version: u32,
    pub input_dim: usize,
    /// [`input::INPUT_LAYOUT_VERSION`] at training time; a mismatch means the row layout changed.
    pub input_layout_version: u32,
    /// Hidden (deep tower) widths; empty for architectures without one.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Cross layers (DCN only).
    #[serde(default)]
    pub cross_layers: usize,
    /// Rank of the cross layers' weights (DCN only; 0 = full rank).
    #[serde(default)]
    pub cross_rank: usize,
    /// Per-column standardisation learned on the training set and applied inside the ranker, so
    /// serving scales features exactly as training did.
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
    /// Columns that never varied in training (the logs carry no device, say). The model learned
    /// nothing from them, so serving scores them as their training value: a request's device
    /// must not reach weights that were never trained.
    #[serde(default)]
    pub constant_columns: Vec<u32>,
    /// Safetensors file, relative to the bundle directory (e.g. `rankers/mlp-v1.safetensors`).
    pub weights_file: String,
    #[serde(default)]
    pub metrics: RankerMetrics,
}

impl RankerSpec {
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            input_dim: self.input_dim,
            hidden: self.hidden.clone(),
            cross_layers: self.cross_layers,
            cross_rank: self.cross_rank,
        }
    }

    /// Checks the spec against this binary's row layout and its own internal consistency.
    pub fn validate(&self) -> Result<(), RankError> {
        let bad = |reason: String| {
            Err(RankError::InvalidSpec {
                id: self.id.clone(),
                reason,
            })
        };
        if self.input_dim != INPUT_DIM {
            return bad(format!(
                "input_dim {} but this build encodes {INPUT_DIM} features",
                self.input_dim
            ));
        }
        if self.input_layout_version != INPUT_LAYOUT_VERSION {
            return bad(format!(
                "trained on input layout v{} but this build encodes v{INPUT_LAYOUT_VERSION}",
                self.input_layout_version
            ));
        }
        if self.feature_mean.len() != self.input_dim || self.feature_std.len() != self.input_dim {
            return bad(format!(
                "feature_mean/feature_std have {}/{} entries, expected {}",
                self.feature_mean.len(),
                self.feature_std.len(),
                self.input_dim
            ));
        }
        if self.feature_mean.iter().any(|m| !m.is_finite()) {
            return bad("non-finite feature_mean".into());
        }
        if self.feature_std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return bad("feature_std must be finite and > 0".into());
        }
        if let Some(c) = self
            .constant_columns
            .iter()
            .find(|&&c| c as usize >= self.input_dim)
        {
            return bad(format!("constant column {c} is outside the row"));
        }
        if self.hidden.contains(&0) {
            return bad("zero-width hidden layer".into());
        }
        // The weights path must stay inside the bundle.
        let p = Path::new(&self.weights_file);
        if self.weights_file.is_empty()
            || !p.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return bad(format!(
                "weights_file `{}` must be a relative path inside the bundle",
                self.weights_file
            ));
        }
        Ok(())
    }
}

/// The bundle's `rankers.json`: all trained models plus how correlated their validation
/// predictions are (`correlation[i][j]` = Pearson between `rankers[i]` and `rankers[j]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankersManifest {
    pub input_dim: usize,
    pub input_layout_version: u32,
    pub rankers: Vec<RankerSpec>,
    pub correlation: Vec<Vec<f32>>,
    /// Per-segment quality, correlations, stacking meta-learners and strategy scores (bundles
    /// built before the ensemble lack it; the registry then falls back to the fields above).
    #[serde(default)]
    pub ensemble: Option<ensemble::EnsembleManifest>,
    /// The training rows' distribution of every input, for the server's skew monitor (bundles
    /// built before it lack it; the monitor then reports `no_reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_reference: Option<crate::observe::skew::InputReference>,
}

impl RankersManifest {
    pub fn path(bundle_dir: &Path) -> PathBuf {
        bundle_dir.join(RANKERS_MANIFEST_FILE)
    }

    pub fn read(bundle_dir: &Path) -> Result<Self, RankError> {
        let path = Self::path(bundle_dir);
        let bytes = std::fs::read(&path).map_err(|source| RankError::ManifestIo {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| RankError::ManifestJson { path, source })
    }

    /// Writes via a temporary file and rename so a reader never sees a half-written manifest.
    pub fn write(&self, bundle_dir: &Path) -> Result<(), RankError> {
        let path = Self::path(bundle_dir);
        let json = serde_json::to_vec_pretty(self).map_err(|source| RankError::ManifestJson {
            path: path.clone(),
            source,
        })?;
        let tmp = bundle_dir.join(format!("{RANKERS_MANIFEST_FILE}.tmp"));
        let io = |source| RankError::ManifestIo {
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// Appends `row` standardised as `(x - mean) / std` to `out` (through
/// [`standardize_pinned_into`], the one scaling serving and the builder use).
#[inline]
fn standardize_row_into(row: &[f32], mean: &[f32], std: &[f32], out: &mut Vec<f32>) {
    out.extend(row.iter().zip(mean).zip(std).map(|((x, m), s)| (x - m) / s));
}

/// [`standardize_row_into`], then the columns constant in training set to what training saw
/// there (exactly 0 once standardised), whatever the row holds.
pub fn standardize_pinned_into(
    row: &[f32],
    mean: &[f32],
    std: &[f32],
    constant: &[u32],
    out: &mut Vec<f32>,
) {
    let start = out.len();
    standardize_row_into(row, mean, std, out);
    for &c in constant {
        if let Some(v) = out.get_mut(start + c as usize) {
            *v = 0.0;
        }
    }
}

/// Logistic function, stable for logits of any magnitude.
#[inline]
fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// A candle model behind the [`Ranker`] trait: standardize → network → sigmoid, on CPU.
pub struct CandleRanker {
    spec: RankerSpec,
    net: Net,
}

impl fmt::Debug for CandleRanker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CandleRanker")
            .field("id", &self.spec.id)
            .field("arch", &self.spec.arch)
            .finish_non_exhaustive()
    }
}

impl CandleRanker {
    /// Builds the ranker from `vb`: safetensors when serving, the training `VarMap` when the builder
    /// scores validation rows (the exact same scoring path as serving).
    pub fn from_varbuilder(spec: RankerSpec, vb: VarBuilder) -> Result<Self, RankError> {
        spec.validate()?;
        let model_err = |source| RankError::Model {
            id: spec.id.clone(),
            source,
        };
        let net = models::build(spec.arch, &spec.net_config(), vb).map_err(model_err)?;
        Ok(Self { spec, net })
    }

    pub fn spec(&self) -> &RankerSpec {
        &self.spec
    }

    /// Logits of already standardised rows, one batched forward pass.
    fn logits(&self, x: Vec<f32>, n: usize) -> candle_core::Result<Vec<f32>> {
        let x = Tensor::from_vec(x, (n, self.spec.input_dim), &Device::Cpu)?;
        self.net.forward(&x)?.flatten_all()?.to_vec1::<f32>()
    }
}

impl Ranker for CandleRanker {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn arch(&self) -> Arch {
        self.spec.arch
    }

    fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
        let dim = self.spec.input_dim;
        if n.checked_mul(dim) != Some(rows.len()) {
            return Err(RankError::RowShape {
                n,
                dim,
                len: rows.len(),
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut x = Vec::with_capacity(rows.len());
        for (r, row) in rows.chunks_exact(dim).enumerate() {
            // A NaN would silently poison the batch's ordering; encode_row never emits one.
            if let Some(col) = row.iter().position(|v| !v.is_finite()) {
                return Err(RankError::NonFiniteInput { row: r, col });
            }
            standardize_pinned_into(
                row,
                &self.spec.feature_mean,
                &self.spec.feature_std,
                &self.spec.constant_columns,
                &mut x,
            );
        }
        let logits = self.logits(x, n).map_err(|source| RankError::Model {
            id: self.spec.id.clone(),
            source,
        })?;
        if logits.len() != n {
            return Err(RankError::OutputShape {
                id: self.spec.id.clone(),
                n,
                got: logits.len(),
            });
        }
        Ok(logits.into_iter().map(sigmoid).collect())
    }
}

/// Loads one ranker's weights (`bundle_dir/spec.weights_file`) on CPU. A missing, corrupt or
/// wrongly-shaped weights file is an error, never a panic.
pub fn load_ranker(spec: &RankerSpec, bundle_dir: &Path) -> Result<Box<dyn Ranker>, RankError> {
    Ok(Box::new(load_candle_ranker(spec, bundle_dir)?))
}

/// [`load_ranker`] keeping the concrete type (and so access to its spec).
pub fn load_candle_ranker(spec: &RankerSpec, bundle_dir: &Path) -> Result<CandleRanker, RankError> {
    spec.validate()?;
    let path = bundle_dir.join(&spec.weights_file);
    // Read into memory rather than mmap: a bundle file replaced under a live mmap is UB.
    let bytes = std::fs::read(&path).map_err(|source| RankError::WeightsIo {
        path: path.clone(),
        source,
    })?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).map_err(
        |source| RankError::Weights {
            path: path.clone(),
            source,
        },
    )?;
    // Missing tensors and shape mismatches surface here, while building the network.
    CandleRanker::from_varbuilder(spec.clone(), vb).map_err(|e| match e {
        RankError::Model { source, .. } => RankError::Weights { path, source },
        other => other,
    })
}

/// Loads every ranker listed in `bundle_dir/rankers.json`, in manifest order.
pub fn load_rankers(
    bundle_dir: &Path,
) -> Result<(RankersManifest, Vec<Box<dyn Ranker>>), RankError> {
    let manifest = RankersManifest::read(bundle_dir)?;
    let rankers = manifest
        .rankers
        .iter()
        .map(|spec| load_ranker(spec, bundle_dir))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((manifest, rankers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn spec(arch: Arch, weights_file: &str) -> RankerSpec {
        let cfg = NetConfig::default_for(arch, INPUT_DIM);
        RankerSpec {
            id: format!("{arch}-test"),
            arch,
            version: 1,
            input_dim: INPUT_DIM,
            input_layout_version: INPUT_LAYOUT_VERSION,
            hidden: cfg.hidden,
            cross_layers: cfg.cross_layers,
            cross_rank: cfg.cross_rank,
            feature_mean: vec![0.5; INPUT_DIM],
            feature_std: vec![2.0; INPUT_DIM],
            constant_columns: Vec::new(),
            weights_file: weights_file.to_string(),
            metrics: RankerMetrics::default(),
        }
    }

    /// Builds a seeded model, saves it, and returns its in-memory ranker.
    fn save_model(arch: Arch, dir: &Path, file: &str) -> CandleRanker {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let s = spec(arch, file);
        let ranker = CandleRanker::from_varbuilder(s, vb).unwrap();
        models::init_seeded(&varmap, 7).unwrap();
        std::fs::create_dir_all(dir.join(RANKERS_DIR)).unwrap();
        varmap.save(dir.join(file)).unwrap();
        ranker
    }

    fn rows(n: usize) -> Vec<f32> {
        (0..n * INPUT_DIM)
            .map(|k| ((k as f32) * 0.013).sin())
            .collect()
    }

    #[test]
    fn columns_constant_in_training_do_not_move_the_score() {
        let device = input::col::DEVICE as u32;
        for arch in Arch::ALL {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let mut s = spec(arch, "rankers/x.safetensors");
            s.constant_columns = (device..device + 4).collect();
            let pinned = CandleRanker::from_varbuilder(s.clone(), vb.clone()).unwrap();
            s.constant_columns.clear();
            let free = CandleRanker::from_varbuilder(s, vb).unwrap();
            models::init_seeded(&varmap, 7).unwrap();
            let mut x = rows(2);
            // Row 0 as training saw it (the column at its mean); row 1 from a mobile client.
            x[device as usize..device as usize + 4].fill(0.5);
            x.copy_within(..INPUT_DIM, INPUT_DIM);
            x[INPUT_DIM + device as usize + 1] = 1.0;
            let p = pinned.score(&x, 2).unwrap();
            assert_eq!(p[0].to_bits(), p[1].to_bits(), "{arch}");
            // Unpinned, the untrained weights of the device columns would move it (the
            // sequence model's view has no device column).
            let f = free.score(&x, 2).unwrap();
            assert_eq!(f[0].to_bits(), p[0].to_bits(), "{arch}");
            assert_eq!(f[1] != f[0], arch != Arch::Seq, "{arch}");
        }
    }

    #[test]
    fn arch_serde_lowercase() {
        assert_eq!(serde_json::to_string(&Arch::Dcn).unwrap(), "\"dcn\"");
        let a: Arch = serde_json::from_str("\"logistic\"").unwrap();
        assert_eq!(a, Arch::Logistic);
    }

    #[test]
    fn roundtrip_all_archs_and_score_contract() {
        let dir = tempfile::tempdir().unwrap();
        let x = rows(37);
        for arch in Arch::ALL {
            let file = format!("{RANKERS_DIR}/{arch}.safetensors");
            let trained = save_model(arch, dir.path(), &file);
            let loaded = load_ranker(trained.spec(), dir.path()).unwrap();
            assert_eq!(loaded.id(), trained.id());
            assert_eq!(loaded.arch(), arch);
            let a = trained.score(&x, 37).unwrap();
            let b = loaded.score(&x, 37).unwrap();
            assert_eq!(a.len(), 37);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-6);
                assert!((0.0..=1.0).contains(p));
            }
            // Scores are per row and order-preserving: scoring a row alone gives the same value.
            let single = loaded.score(&x[5 * INPUT_DIM..6 * INPUT_DIM], 1).unwrap();
            assert!((single[0] - b[5]).abs() < 1e-5);
            assert!(loaded.score(&[], 0).unwrap().is_empty());
            assert!(matches!(
                loaded.score(&x[..INPUT_DIM * 2], 3),
                Err(RankError::RowShape { .. })
            ));
            let mut bad = x.clone();
            bad[INPUT_DIM + 3] = f32::NAN;
            assert!(matches!(
                loaded.score(&bad, 37),
                Err(RankError::NonFiniteInput { row: 1, col: 3 })
            ));
        }
    }

    fn load_err(spec: &RankerSpec, dir: &Path) -> RankError {
        match load_ranker(spec, dir) {
            Ok(_) => panic!("loading {} should fail", spec.weights_file),
            Err(e) => e,
        }
    }

    #[test]
    fn load_rejects_missing_corrupt_and_misshapen_weights() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(Arch::Mlp, "rankers/absent.safetensors");
        assert!(matches!(
            load_ranker(&s, dir.path()),
            Err(RankError::WeightsIo { .. })
        ));

        std::fs::create_dir_all(dir.path().join(RANKERS_DIR)).unwrap();
        std::fs::write(
            dir.path().join("rankers/garbage.safetensors"),
            b"\x08\0\0\0\0\0\0\0{bad",
        )
        .unwrap();
        let s = spec(Arch::Mlp, "rankers/garbage.safetensors");
        let err = load_err(&s, dir.path());
        assert!(matches!(err, RankError::Weights { .. }), "{err}");

        // Truncated copy of a valid file.
        save_model(Arch::Mlp, dir.path(), "rankers/mlp.safetensors");
        let full = std::fs::read(dir.path().join("rankers/mlp.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("rankers/trunc.safetensors"),
            &full[..full.len() / 2],
        )
        .unwrap();
        let s = spec(Arch::Mlp, "rankers/trunc.safetensors");
        assert!(matches!(
            load_ranker(&s, dir.path()),
            Err(RankError::Weights { .. })
        ));

        // Valid file, wrong architecture shapes (MLP weights read as DCN).
        let s = spec(Arch::Dcn, "rankers/mlp.safetensors");
        assert!(matches!(
            load_ranker(&s, dir.path()),
            Err(RankError::Weights { .. })
        ));
        // Valid file, spec claims a different hidden width.
        let mut s = spec(Arch::Mlp, "rankers/mlp.safetensors");
        s.hidden = vec![32, 64];
        let err = load_err(&s, dir.path());
        assert!(err.to_string().contains("shape mismatch"), "{err}");
    }

    #[test]
    fn spec_validation() {
        let ok = spec(Arch::Logistic, "rankers/x.safetensors");
        assert!(ok.validate().is_ok());
        let mut s = ok.clone();
        s.input_layout_version += 1;
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.feature_std[3] = 0.0;
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.feature_mean.pop();
        assert!(s.validate().is_err());
        for path in ["../x.safetensors", "/etc/x", ""] {
            let mut s = ok.clone();
            s.weights_file = path.to_string();
            assert!(s.validate().is_err(), "{path}");
        }
    }

    #[test]
    fn manifest_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(Arch::Mlp, "rankers/mlp.safetensors");
        save_model(Arch::Mlp, dir.path(), "rankers/mlp.safetensors");
        s.metrics.valid_auc = Some(0.75);
        let m = RankersManifest {
            input_dim: INPUT_DIM,
            input_layout_version: INPUT_LAYOUT_VERSION,
            rankers: vec![s],
            correlation: vec![vec![1.0]],
            ensemble: None,
            input_reference: None,
        };
        m.write(dir.path()).unwrap();
        let (back, rankers) = load_rankers(dir.path()).unwrap();
        assert_eq!(back, m);
        assert_eq!(rankers.len(), 1);
        assert_eq!(rankers[0].id(), "mlp-test");
    }
}
