//! Logistic regression ("wide" model): one linear layer over the standardized row. Cheap, robust,
//! well calibrated; the ensemble's baseline and fallback.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{Dense, NetConfig};

/// `logit = w·x + b`.
#[derive(Debug, Clone)]
pub struct Logistic {
    out: Dense,
}

impl Logistic {
    pub fn new(cfg: &NetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            out: Dense::new(cfg.input_dim, 1, vb.pp("out"))?,
        })
    }
}

impl Module for Logistic {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.out.forward(xs)
    }
}
