//! ANN source: nearest items to the request's query vector in item-embedding space. The index is
//! behind the [`AnnIndex`] trait so the default frozen HNSW graph ([`hnsw::FrozenHnsw`]) and a FAISS
//! backend (CPU or GPU, behind the `faiss` feature) are interchangeable.

#[cfg(feature = "faiss")]
pub mod faiss;
pub mod hnsw;
pub mod kernels;

use std::sync::Arc;

use super::{CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::ItemIdx;

/// Whether this build has the FAISS backend (cargo feature `faiss`).
pub const FAISS_AVAILABLE: bool = cfg!(feature = "faiss");

/// Trains the FAISS index `factory` by inner product over `vectors` (row-major, `dim` wide) and
/// writes it into `ann_dir`; the index-builder's step, here so that any crate linking a funnel
/// built with `faiss` can write one. Without the feature: an error saying so.
pub fn write_faiss_index(
    ann_dir: &std::path::Path,
    vectors: &[f32],
    dim: usize,
    factory: &str,
) -> Result<(), String> {
    #[cfg(feature = "faiss")]
    {
        faiss::FaissIndex::build(vectors, dim, factory)
            .and_then(|i| i.save_to(ann_dir))
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "faiss"))]
    {
        let _ = (ann_dir, vectors, dim, factory);
        Err("a FAISS index needs a build with `--features faiss`".into())
    }
}

/// Maximum-inner-product search over the item vectors (cosine when the index stores them unit
/// length).
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
