//! ANN source: nearest items to the request's query vector in item-embedding space. The index is
//! behind the [`AnnIndex`] trait so the default frozen HNSW graph ([`hnsw::FrozenHnsw`]) and a FAISS
//! backend (CPU or GPU, behind the `faiss` feature) are interchangeable.

pub mod hnsw;
pub mod kernels;

use std::sync::Arc;

use super::{CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::ItemIdx;

/// Inner-product search over unit item vectors (cosine similarity).
pub trait AnnIndex: Send + Sync {
    /// Number of indexed items and vector width.
    fn len(&self) -> usize;
    fn dim(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Up to `k` allowed items by decreasing similarity to `query` (need not be normalised).
    fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: &(dyn Fn(ItemIdx) -> bool + Sync),
    ) -> Vec<ScoredItem>;
    /// Backend name for logs and `/readyz`.
    fn backend(&self) -> &'static str;
}

/// The candidate source over an [`AnnIndex`].
pub struct AnnSource {
    index: Arc<dyn AnnIndex>,
}

impl AnnSource {
    pub fn new(index: Arc<dyn AnnIndex>) -> Self {
        Self { index }
    }

    pub fn index(&self) -> &Arc<dyn AnnIndex> {
        &self.index
    }
}

impl CandidateSource for AnnSource {
    fn id(&self) -> SourceId {
        SourceId::Ann
    }

    fn retrieve(
        &self,
        q: &RetrievalQuery<'_>,
        quota: usize,
    ) -> Result<Vec<ScoredItem>, SourceError> {
        let Some(query) = q.embedding else {
            return Ok(Vec::new()); // cold user without session: nothing to search with
        };
        if query.len() != self.index.dim() {
            return Err(SourceError::Failed {
                source_name: "ann",
                message: format!(
                    "query has {} dims, index has {}",
                    query.len(),
                    self.index.dim()
                ),
            });
        }
        Ok(self.index.search(query, quota, q.allow))
    }
}

/// Scales `v` to unit length in place; a zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Dot product written so the compiler vectorises it (8 independent accumulators).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let o = c * 8;
        for j in 0..8 {
            acc[j] += a[o + j] * b[o + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}
