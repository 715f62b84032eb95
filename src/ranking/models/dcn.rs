//! DCN-v2 (parallel form): an explicit cross network, whose layer l computes bounded-degree
//! feature crosses `x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l`, beside a ReLU deep tower on x0; the
//! two outputs are concatenated into a final linear layer.

use candle_core::{Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::NetConfig;

/// Default deep tower widths.
pub const DEFAULT_HIDDEN: [usize; 2] = [128, 64];
/// Default number of cross layers (degree-4 crosses).
pub const DEFAULT_CROSS_LAYERS: usize = 3;

#[derive(Debug, Clone)]
pub struct Dcn {
    cross: Vec<Linear>,
    deep: Vec<Linear>,
    out: Linear,
}

impl Dcn {
    pub fn new(cfg: &NetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.input_dim;
        let cross = (0..cfg.cross_layers)
            .map(|i| linear(d, d, vb.pp(format!("cross{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut deep = Vec::with_capacity(cfg.hidden.len());
        let mut dim = d;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            deep.push(linear(dim, h, vb.pp(format!("deep{i}")))?);
            dim = h;
        }
        // Final layer sees the cross output (d) and the deep output (dim; d if no deep tower).
        let out = linear(d + dim, 1, vb.pp("out"))?;
        Ok(Self { cross, deep, out })
    }
}

impl Module for Dcn {
    fn forward(&self, x0: &Tensor) -> candle_core::Result<Tensor> {
        let mut xl = x0.clone();
        for layer in &self.cross {
            xl = ((x0 * layer.forward(&xl)?)? + &xl)?;
        }
        let mut h = x0.clone();
        for layer in &self.deep {
            h = layer.forward(&h)?.relu()?;
        }
        self.out.forward(&Tensor::cat(&[&xl, &h], 1)?)
    }
}
