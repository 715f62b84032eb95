//! Sequence model: target attention (as in DIN, Zhou et al. 2018) over the user's last
//! `SEQ_LEN` items, most recent first. Each position is described by the candidate's cosine to
//! that item and whether the position is present; a small network scores each position, a
//! learned per-position bias lets recency matter, and the softmax-weighted pool of the positions
//! feeds a ReLU head together with a few context columns. It sees the order of what the user did
//! last, which the bag-of-items inputs of the other members cannot.

use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;

use super::{select_columns, Dense, NetConfig};
use crate::ranking::input::{col, SEQ_LEN};

/// Default widths: attention/value width, head width.
pub const DEFAULT_HIDDEN: [usize; 2] = [16, 32];

/// Context columns beside the pooled sequence.
pub fn context_view() -> Vec<u32> {
    [
        col::SEQ_MAX_SIM,
        col::SEQ_MEAN_SIM,
        col::SEQ_CAT_SHARE,
        col::LOG_HISTORY,
        col::COLD_USER,
        col::LOG_POPULARITY,
        col::LOG_TRENDING,
        col::FRESHNESS,
        col::CAT_AFFINITY,
        col::LOG_ENGAGEMENT,
        col::LOG_ENGAGEMENT + 1,
    ]
    .map(|c| c as u32)
    .to_vec()
}

#[derive(Debug, Clone)]
pub struct Seq {
    sims: Tensor,
    present: Tensor,
    context: Tensor,
    att_hidden: Dense,
    att_out: Dense,
    /// `(1, SEQ_LEN)` recency bias added to the attention logits.
    position: Tensor,
    value: Dense,
    head: Dense,
    out: Dense,
}

impl Seq {
    pub fn new(cfg: &NetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let need = context_view()
            .into_iter()
            .map(|c| c as usize + 1)
            .chain([col::SEQ_MASK + SEQ_LEN])
            .max()
            .unwrap_or(0);
        if need > cfg.input_dim {
            candle_core::bail!("seq needs {need} input columns");
        }
        let att = cfg.hidden.first().copied().unwrap_or(DEFAULT_HIDDEN[0]);
        let head = cfg.hidden.get(1).copied().unwrap_or(DEFAULT_HIDDEN[1]);
        let range = |start: usize| {
            (start..start + SEQ_LEN)
                .map(|c| c as u32)
                .collect::<Vec<_>>()
        };
        let dev = vb.device();
        let ctx = context_view();
        Ok(Self {
            sims: Tensor::new(range(col::SEQ_SIM).as_slice(), dev)?,
            present: Tensor::new(range(col::SEQ_MASK).as_slice(), dev)?,
            context: Tensor::new(ctx.as_slice(), dev)?,
            att_hidden: Dense::new(2, att, vb.pp("att_hidden"))?,
            att_out: Dense::new(att, 1, vb.pp("att_out"))?,
            position: vb.get((1, SEQ_LEN), "position")?,
            value: Dense::new(2, att, vb.pp("value"))?,
            head: Dense::new(att + ctx.len(), head, vb.pp("head"))?,
            out: Dense::new(head, 1, vb.pp("out"))?,
        })
    }
}

impl Module for Seq {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let n = xs.dim(0)?;
        let sims = select_columns(xs, &self.sims)?;
        let present = select_columns(xs, &self.present)?;
        // (n·L, 2): one row per (candidate, position).
        let pairs = Tensor::stack(&[&sims, &present], 2)?.reshape((n * SEQ_LEN, 2))?;
        let logits = self
            .att_out
            .forward(&self.att_hidden.forward(&pairs)?.relu()?)?
            .reshape((n, SEQ_LEN))?
            .broadcast_add(&self.position)?;
        let weights = candle_nn::ops::softmax(&logits, D::Minus1)?.unsqueeze(2)?;
        let values = self
            .value
            .forward(&pairs)?
            .relu()?
            .reshape((n, SEQ_LEN, ()))?;
        let pooled = values.broadcast_mul(&weights)?.sum(1)?;
        let ctx = select_columns(xs, &self.context)?;
        let h = self
            .head
            .forward(&Tensor::cat(&[&pooled, &ctx], 1)?)?
            .relu()?;
        self.out.forward(&h)
    }
}
