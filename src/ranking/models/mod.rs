//! Ranking network architectures: one file per architecture, each a candle-nn module built from a
//! `VarBuilder`, so the same code builds a fresh network for training (`VarMap`) and the trained
//! network for serving (safetensors).
//!
//! Every network maps standardized rows `(n, input_dim)` to logits `(n, 1)`; standardization and
//! the sigmoid live in [`super::CandleRanker`] so all architectures share them. Adding an
//! architecture = one file here + one [`Arch`] variant (the compiler then points at the `match`
//! arms below).

pub mod dcn;
pub mod fm;
pub mod logistic;
pub mod mlp;
pub mod seq;

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::Arch;

/// A network ready for a forward pass: standardized rows in, logits `(n, 1)` out.
pub type Net = Box<dyn Module + Send + Sync>;

/// Shape hyperparameters of a network; stored in the ranker spec so the server rebuilds exactly
/// the shapes that were trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub input_dim: usize,
    /// Widths of the hidden (deep) layers; unused by architectures without a deep tower.
    pub hidden: Vec<usize>,
    /// Number of cross layers; unused by architectures without a cross network.
    pub cross_layers: usize,
    /// Rank of each cross layer's weight matrix; 0 (or >= input_dim) means full rank.
    pub cross_rank: usize,
}

impl NetConfig {
    /// The default shape of `arch` for rows of `input_dim` floats.
    pub fn default_for(arch: Arch, input_dim: usize) -> NetConfig {
        let (hidden, cross_layers, cross_rank) = match arch {
            Arch::Logistic => (Vec::new(), 0, 0),
            Arch::Mlp => (mlp::DEFAULT_HIDDEN.to_vec(), 0, 0),
            Arch::Dcn => (
                dcn::DEFAULT_HIDDEN.to_vec(),
                dcn::DEFAULT_CROSS_LAYERS,
                dcn::DEFAULT_CROSS_RANK,
            ),
            Arch::Fm => (vec![fm::DEFAULT_FACTORS], 0, 0),
            Arch::Seq => (seq::DEFAULT_HIDDEN.to_vec(), 0, 0),
        };
        NetConfig {
            input_dim,
            hidden,
            cross_layers,
            cross_rank,
        }
    }
}

/// Builds (training: creates; serving: loads) the network of `arch` from `vb`.
pub fn build(arch: Arch, cfg: &NetConfig, vb: VarBuilder) -> candle_core::Result<Net> {
    if cfg.input_dim == 0 || cfg.hidden.contains(&0) {
        candle_core::bail!("network dims must be non-zero: {cfg:?}");
    }
    Ok(match arch {
        Arch::Logistic => Box::new(logistic::Logistic::new(cfg, vb)?),
        Arch::Mlp => Box::new(mlp::Mlp::new(cfg, vb)?),
        Arch::Dcn => Box::new(dcn::Dcn::new(cfg, vb)?),
        Arch::Fm => Box::new(fm::Fm::new(cfg, vb)?),
        Arch::Seq => Box::new(seq::Seq::new(cfg, vb)?),
    })
}

/// The columns `cols` (a u32 index tensor) of `(n, d)` rows: a member's own feature view.
pub fn select_columns(xs: &Tensor, cols: &Tensor) -> candle_core::Result<Tensor> {
    xs.index_select(cols, 1)?.contiguous()
}

/// Fully connected layer `y = x Wᵀ + b` with the same variables (`weight` `(out, in)`, `bias`
/// `(out,)`) as `candle_nn::Linear`, but adding the bias as `1 bᵀ` through a matmul: candle's
/// backward for a broadcast add reduces over the batch dimension with a slow strided loop, and
/// that dominated CPU training time; a `(1×n)(n×out)` matmul computes the same gradient fast.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// `in_dim → out_dim` with bias, variables under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self::from(candle_nn::linear(in_dim, out_dim, vb)?))
    }

    /// `in_dim → out_dim` without bias.
    pub fn no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self::from(candle_nn::linear_no_bias(in_dim, out_dim, vb)?))
    }
}

impl From<Linear> for Dense {
    fn from(l: Linear) -> Self {
        Self {
            weight: l.weight().clone(),
            bias: l.bias().cloned(),
        }
    }
}

impl Module for Dense {
    /// `x` is `(n, in)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            None => Ok(y),
            Some(b) => {
                let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
                y + ones.matmul(&b.reshape((1, b.elem_count()))?)?
            }
        }
    }
}

/// Number of scalar parameters held by `varmap`.
pub fn param_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Re-initialises every variable of a freshly built network from `seed`.
///
/// candle's CPU RNG cannot be seeded, so the `VarMap`'s own initialisation is not reproducible;
/// this overwrites it deterministically (variables visited in name order). Matrices `(out, in)`
/// get U(±1/√in) (PyTorch's linear default), vectors (biases) start at zero.
pub fn init_seeded(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let Some(var) = data.get(name) else { continue };
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = match shape.dims() {
            [_, fan_in] if *fan_in > 0 => {
                let bound = 1.0 / (*fan_in as f32).sqrt();
                (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
            }
            _ => vec![0.0; n],
        };
        let t = Tensor::from_vec(values, shape, var.device())?.to_dtype(DType::F32)?;
        var.set(&t)?;
    }
    Ok(())
}
