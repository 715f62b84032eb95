//! Factorization machine (Rendle 2010) on the tabular view of the row: the retrieval signals
//! (per-source scores, ranks and bits), embedding agreement (dot, cosine), category affinity,
//! popularity over every horizon, trending, age and user context — not the u⊙i block and not the recent-item
//! sequence. Every pair of those inputs interacts through a rank-`k` factor product, so it
//! learns crosses such as "CF rank × history length" with few parameters, and its view keeps
//! it from agreeing with the sequence model by construction.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{select_columns, Dense, NetConfig};
use crate::ranking::input::{col, ENGAGEMENT_HALF_LIVES_DAYS, N_SOURCES};

/// Default factor rank.
pub const DEFAULT_FACTORS: usize = 8;

/// The FM's input columns.
pub fn view() -> Vec<u32> {
    let mut v = vec![col::DOT as u32, col::COSINE as u32];
    v.extend((col::CAT_AFFINITY..=col::PROMOTED).map(|c| c as u32));
    v.extend((col::SOURCE_RANKS..col::SOURCE_RANKS + N_SOURCES).map(|c| c as u32));
    v.extend(
        (col::LOG_ENGAGEMENT..col::LOG_ENGAGEMENT + ENGAGEMENT_HALF_LIVES_DAYS.len())
            .map(|c| c as u32),
    );
    v
}

/// `logit = w0 + wᵀx + ½ Σ_f ((Σ_i v_if x_i)² − Σ_i v_if² x_i²)`.
#[derive(Debug, Clone)]
pub struct Fm {
    columns: Tensor,
    linear: Dense,
    /// `(view, k)` factors.
    factors: Tensor,
}

impl Fm {
    pub fn new(cfg: &NetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let cols = view();
        if cols.iter().any(|&c| c as usize >= cfg.input_dim) {
            let need = cols.iter().max().map_or(0, |&c| c as usize + 1);
            candle_core::bail!("fm view needs {need} input columns");
        }
        let k = cfg.hidden.first().copied().unwrap_or(DEFAULT_FACTORS);
        let d = cols.len();
        Ok(Self {
            columns: Tensor::new(cols.as_slice(), vb.device())?,
            linear: Dense::new(d, 1, vb.pp("linear"))?,
            factors: vb.get((d, k), "factors")?,
        })
    }
}

impl Module for Fm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let x = select_columns(xs, &self.columns)?;
        let xv = x.matmul(&self.factors)?;
        let x2v2 = x.sqr()?.matmul(&self.factors.sqr()?)?;
        let pairs = ((xv.sqr()? - x2v2)?.sum_keepdim(1)? * 0.5)?;
        self.linear.forward(&x)? + pairs
    }
}
