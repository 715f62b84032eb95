//! Multi-layer perceptron: ReLU tower over the standardized row, learning feature interactions
//! (e.g. across the u⊙i block) the linear model cannot.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{Dense, NetConfig};

/// Default tower: INPUT → 128 → 64 → 1.
pub const DEFAULT_HIDDEN: [usize; 2] = [128, 64];

/// `logit = out(relu(... relu(h0(x))))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    hidden: Vec<Dense>,
    out: Dense,
}

impl Mlp {
    pub fn new(cfg: &NetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let mut hidden = Vec::with_capacity(cfg.hidden.len());
        let mut dim = cfg.input_dim;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            hidden.push(Dense::new(dim, h, vb.pp(format!("hidden{i}")))?);
            dim = h;
        }
        Ok(Self {
            hidden,
            out: Dense::new(dim, 1, vb.pp("out"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for layer in &self.hidden {
            h = layer.forward(&h)?.relu()?;
        }
        self.out.forward(&h)
    }
}
