//! The default ANN backend: an HNSW graph built with `hnsw_rs`, then frozen into flat, read-only
//! arrays (CSR adjacency per layer, contiguous vectors) and searched by our own code. By default
//! the graph is an ip-NSW graph: built and searched by raw inner product over the unnormalised
//! item vectors (docs/adr/0007-inner-product-graph.md).
//!
//! Why frozen: the serving path only reads the graph, so flat arrays beat `hnsw_rs`'s
//! lock-and-`Arc`-per-point layout on cache misses, and our loader validates every index of a file
//! and returns an error instead of asserting on a corrupt one (see docs/adr/0001-frozen-hnsw.md).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hnsw_rs::prelude::{Distance, Hnsw};
use serde::{Deserialize, Serialize};

use super::kernels::{self, Kernel};
use super::{dot, normalize, AnnIndex};
use crate::table::{Column, DataError, Table};

/// The index's files inside its bundle directory (`layout::ANN_DIR`).
pub const GRAPH_FILE: &str = "graph.arrow";
pub const VECTORS_FILE: &str = "vectors.arrow";
use crate::sources::{OrdF32, ScoredItem};
use crate::ItemIdx;

/// Construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Max neighbours per node on upper layers (layer 0 keeps 2·m).
    pub m: usize,
    pub ef_construction: usize,
    /// Beam width at query time (raised to k when k is larger).
    pub ef_search: usize,
    /// What "nearest" means: inner product (the score matrix-factorisation models are trained
    /// for; popular items keep their larger norms) or cosine.
    pub metric: Metric,
    /// Base-layer degree after freezing: `hnsw_rs`'s 2·m lists are re-pruned to this many
    /// diverse neighbours (0 keeps them whole). Fewer edges, fewer distance computations per
    /// expansion; see benches/ann.rs for the recall/speed curve.
    pub base_degree: usize,
    /// Precision of the vectors the graph walk reads; results are re-scored in f32 either way.
    /// `f16` halves the memory the walk touches (the search is memory-bound at 200K items).
    pub walk: WalkPrecision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkPrecision {
    #[default]
    F16,
    F32,
}

impl WalkPrecision {
    fn name(self) -> &'static str {
        match self {
            WalkPrecision::F16 => "f16",
            WalkPrecision::F32 => "f32",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Maximum inner product searched directly: the graph is built with distance `C − x·y` over
    /// the raw vectors (an ip-NSW graph, as hnswlib's `ip` space builds) and walked by `q·x`.
    /// Scores are the true inner products.
    #[default]
    InnerProduct,
    /// Maximum inner product reduced to cosine by norm augmentation
    /// (x → [x/M, sqrt(1 − |x|²/M²)], q → [q, 0]; Bachrach et al. 2014). Kept for bundles built
    /// before ip-NSW and for comparison: on ALS embeddings it finds far fewer of the true top k
    /// (ADR 0007), because most augmented points crowd around the extra axis.
    InnerProductAugmented,
    Cosine,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::InnerProduct => "inner_product",
            Metric::InnerProductAugmented => "inner_product_augmented",
            Metric::Cosine => "cosine",
        }
    }

    /// Width of the stored rows for `query_dim`-wide queries.
    fn stored_width(self, query_dim: usize) -> usize {
        match self {
            Metric::InnerProductAugmented => query_dim + 1,
            Metric::InnerProduct | Metric::Cosine => query_dim,
        }
    }

    /// Whether queries are scaled to unit length (the stored rows are unit length then too).
    fn unit_queries(self) -> bool {
        !matches!(self, Metric::InnerProduct)
    }
}
const fn d_m() -> usize {
    16
}
const fn d_efc() -> usize {
    200
}
const fn d_efs() -> usize {
    100
}
// Whole lists: on the served ALS embeddings (ip-NSW) re-pruning to 24 lost recall (0.979
// against 0.986 at ef 200, benches/ann.rs ANN_DATA=bundle, ADR 0007); on unit vectors the two
// were level (ADR 0004).
const fn d_degree() -> usize {
    0
}
impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: d_m(),
            ef_construction: d_efc(),
            ef_search: d_efs(),
            metric: Metric::default(),
            base_degree: d_degree(),
            walk: WalkPrecision::default(),
        }
    }
}

/// `c − dot`, clamped at 0: with `c` ≥ the largest squared norm (Cauchy–Schwarz) this is a
/// non-negative distance ordered exactly as −dot, so `hnsw_rs` builds an inner-product graph
/// (`c` = 1 on unit vectors is the cosine distance).
#[derive(Debug, Clone, Copy)]
struct ShiftedDot {
    c: f32,
}
impl Distance<f32> for ShiftedDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (self.c - dot(a, b)).max(0.0)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    /// Sorted node ids present on this layer (empty for layer 0, which holds every node).
    members: Vec<u32>,
    offsets: Vec<u32>,
    neighbors: Vec<u32>,
}

impl Layer {
    fn neighbors_of(&self, node: u32) -> &[u32] {
        let pos = if self.members.is_empty() {
            node as usize
        } else {
            match self.members.binary_search(&node) {
                Ok(p) => p,
                Err(_) => return &[],
            }
        };
        match (self.offsets.get(pos), self.offsets.get(pos + 1)) {
            (Some(&a), Some(&b)) => self.neighbors.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// A read-only HNSW graph over item vectors (raw for inner product, unit length otherwise).
#[derive(Debug, Clone)]
pub struct FrozenHnsw {
    /// Width of the stored (possibly augmented) unit vectors.
    dim: usize,
    /// Row stride of `vectors`: `dim` rounded up to 16 floats with zero padding, so every row
    /// starts on a cache line and the SIMD kernels run without a scalar tail.
    stride: usize,
    /// Width of the vectors callers query with.
    query_dim: usize,
    n: usize,
    /// `n` rows of `stride` floats.
    vectors: Vec<f32>,
    /// The same rows as f16 bits for the graph walk (empty when `params.walk` is f32).
    walk16: Vec<u16>,
    kernel: Kernel,
    entry: u32,
    /// layers[0] is the base layer.
    layers: Vec<Layer>,
    params: HnswParams,
}

/// Per-thread search scratch: visit marks (a generation counter per node, so nothing is cleared
/// between queries) and the buffer of a node's not-yet-visited neighbours.
struct Scratch {
    marks: Vec<u32>,
    generation: u32,
    fresh: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { marks: Vec::new(), generation: 0, fresh: Vec::new() })
    };
}

/// Rounds a vector width up to whole 64-byte lines.
fn stride_for(dim: usize) -> usize {
    dim.div_ceil(16) * 16
}

/// The f16 copy of `vectors` the walk reads, or nothing for an f32 walk (and for the portable
/// kernel, which walks the f32 rows).
fn half_rows(vectors: &[f32], walk: WalkPrecision, kernel: Kernel) -> Vec<u16> {
    match walk {
        WalkPrecision::F16 if kernel != Kernel::Portable => vectors
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect(),
        _ => Vec::new(),
    }
}

/// Copies `dim`-wide rows into `stride`-wide zero-padded rows.
fn pad_rows(vectors: &[f32], dim: usize, stride: usize) -> Vec<f32> {
    if dim == stride {
        return vectors.to_vec();
    }
    let mut out = Vec::with_capacity(vectors.len() / dim * stride);
    for row in vectors.chunks(dim) {
        out.extend_from_slice(row);
        out.resize(out.len() + stride - dim, 0.0);
    }
    out
}

impl FrozenHnsw {
    /// Builds the graph with `hnsw_rs` (parallel insertion) over `vectors` (row-major, `dim` wide;
    /// normalised here), then freezes it.
    pub fn build(mut vectors: Vec<f32>, dim: usize, params: HnswParams) -> Result<Self, String> {
        if dim == 0 || !vectors.len().is_multiple_of(dim) {
            return Err(format!(
                "{} values do not form rows of width {dim}",
                vectors.len()
            ));
        }
        let n = vectors.len() / dim;
        if n == 0 {
            return Err("no vectors to index".into());
        }
        if vectors.iter().any(|x| !x.is_finite()) {
            return Err("vectors contain NaN or infinity".into());
        }
        let query_dim = dim;
        let (vectors, dim, c) = match params.metric {
            Metric::Cosine => {
                vectors.chunks_mut(dim).for_each(normalize);
                (vectors, dim, 1.0)
            }
            // Slightly above the largest squared norm so rounding never clamps a real distance.
            Metric::InnerProduct => {
                let max_sq = vectors.chunks(dim).map(|v| dot(v, v)).fold(0f32, f32::max);
                (vectors, dim, max_sq * 1.001 + f32::MIN_POSITIVE)
            }
            Metric::InnerProductAugmented => {
                let max_norm = vectors
                    .chunks(dim)
                    .map(|v| dot(v, v).sqrt())
                    .fold(0f32, f32::max)
                    .max(f32::MIN_POSITIVE);
                let mut aug = Vec::with_capacity(n * (dim + 1));
                for v in vectors.chunks(dim) {
                    aug.extend(v.iter().map(|x| x / max_norm));
                    let sq = dot(v, v) / (max_norm * max_norm);
                    aug.push((1.0 - sq).max(0.0).sqrt());
                }
                // Re-normalise against rounding so every stored vector is unit length.
                aug.chunks_mut(dim + 1).for_each(normalize);
                (aug, dim + 1, 1.0)
            }
        };
        let hnsw: Hnsw<f32, ShiftedDot> =
            Hnsw::new(params.m, n, 16, params.ef_construction, ShiftedDot { c });
        let data: Vec<(&[f32], usize)> = vectors
            .chunks(dim)
            .enumerate()
            .map(|(i, v)| (v, i))
            .collect();
        hnsw.parallel_insert_slice(&data);
        let mut g = Self::freeze(&hnsw, vectors, dim, params)?;
        g.query_dim = query_dim;
        Ok(g)
    }

    /// The query in stored space: padded with zeros to the row stride (which also supplies the
    /// augmented zero), and unit length unless the graph is searched by raw inner product.
    fn prepare(&self, query: &[f32]) -> Vec<f32> {
        let mut q = Vec::with_capacity(self.stride);
        q.extend_from_slice(query);
        q.resize(self.stride, 0.0);
        if self.params.metric.unit_queries() {
            normalize(&mut q);
        }
        q
    }

    /// Freezes a graph built with `hnsw_rs` over `vectors` (row-major, `dim` wide, as the
    /// metric stores them, inserted with their row numbers as ids). Public so benchmarks can
    /// search the same graph both ways.
    pub fn freeze<D: Distance<f32> + Send + Sync>(
        hnsw: &Hnsw<f32, D>,
        vectors: Vec<f32>,
        dim: usize,
        params: HnswParams,
    ) -> Result<Self, String> {
        if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(format!(
                "{} values do not form rows of width {dim}",
                vectors.len()
            ));
        }
        let n = vectors.len() / dim;
        let top = hnsw.get_max_level_observed() as usize;
        // (layer, node, neighbor) edges from every point's per-layer neighbour lists.
        let mut edges: Vec<Vec<(u32, u32)>> = vec![Vec::new(); top + 1];
        let mut entry = None;
        for point in hnsw.get_point_indexation() {
            let node = point.get_origin_id() as u32;
            let level = point.get_point_id().0 as usize;
            if level == top && entry.is_none() {
                entry = Some(node);
            }
            for (layer, neigh) in point.get_neighborhood_id().into_iter().enumerate() {
                if layer > level || layer > top {
                    continue;
                }
                // Each node must appear on every layer up to its level, even without neighbours.
                edges[layer].push((node, u32::MAX));
                for nb in neigh {
                    edges[layer].push((node, nb.d_id as u32));
                }
            }
        }
        let entry = entry.ok_or("hnsw_rs graph has no entry point")?;
        let layers = edges
            .into_iter()
            .enumerate()
            .map(|(l, e)| Self::csr(l, e, n))
            .collect();
        let stride = stride_for(dim);
        let vectors = pad_rows(&vectors, dim, stride);
        let kernel = Kernel::detect();
        let mut g = Self {
            dim,
            stride,
            query_dim: dim,
            n,
            walk16: half_rows(&vectors, params.walk, kernel),
            vectors,
            kernel,
            entry,
            layers,
            params,
        };
        if params.base_degree > 0 {
            g.prune_base(params.base_degree);
        }
        Ok(g)
    }

    /// Builds one layer's CSR from (node, neighbor) pairs; `u32::MAX` neighbours mark membership.
    fn csr(layer: usize, mut e: Vec<(u32, u32)>, n: usize) -> Layer {
        e.sort_unstable();
        e.dedup();
        let mut members = Vec::new();
        let mut offsets = Vec::new();
        let mut neighbors = Vec::new();
        if layer == 0 {
            offsets.reserve(n + 1);
            let mut it = e.iter().peekable();
            for node in 0..n as u32 {
                offsets.push(neighbors.len() as u32);
                while let Some(&&(a, b)) = it.peek() {
                    if a != node {
                        break;
                    }
                    if b != u32::MAX {
                        neighbors.push(b);
                    }
                    it.next();
                }
            }
            offsets.push(neighbors.len() as u32);
        } else {
            for (node, nb) in e {
                if members.last() != Some(&node) {
                    members.push(node);
                    offsets.push(neighbors.len() as u32);
                }
                if nb != u32::MAX {
                    neighbors.push(nb);
                }
            }
            offsets.push(neighbors.len() as u32);
        }
        Layer {
            members,
            offsets,
            neighbors,
        }
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    /// Switches the walk between the f16 copy and the f32 rows.
    pub fn set_walk(&mut self, walk: WalkPrecision) {
        if walk != self.params.walk {
            self.params.walk = walk;
            self.walk16 = half_rows(&self.vectors, walk, self.kernel);
        }
    }

    pub fn levels(&self) -> usize {
        self.layers.len()
    }

    /// The dot-product kernel searches run with.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Switches to a slower kernel (for measuring them against each other); a kernel this CPU
    /// lacks is refused and `false` returned.
    pub fn set_kernel(&mut self, kernel: Kernel) -> bool {
        if !kernel.supported() {
            return false;
        }
        self.kernel = kernel;
        if kernel != Kernel::Portable && self.walk16.is_empty() {
            self.walk16 = half_rows(&self.vectors, self.params.walk, kernel);
        }
        true
    }

    /// Re-prunes every base-layer neighbour list to at most `max_degree` entries with HNSW's
    /// diversity heuristic (keep a neighbour only if it is closer to the node than to every
    /// neighbour already kept, nearest first; fill up with the nearest skipped ones), and orders
    /// each list nearest first. Fewer, more diverse edges mean fewer distance computations per
    /// expansion for the same reach.
    pub fn prune_base(&mut self, max_degree: usize) {
        let max_degree = max_degree.max(1);
        let base = &self.layers[0];
        let mut offsets = Vec::with_capacity(self.n + 1);
        let mut neighbors = Vec::with_capacity(self.n * max_degree);
        for node in 0..self.n as u32 {
            offsets.push(neighbors.len() as u32);
            let v = self.vector(node);
            let mut cand: Vec<(f32, u32)> = base
                .neighbors_of(node)
                .iter()
                .map(|&nb| (self.dot_k(v, self.vector(nb)), nb))
                .collect();
            cand.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut kept: Vec<u32> = Vec::with_capacity(max_degree);
            let mut skipped = Vec::new();
            for &(s, nb) in &cand {
                if kept.len() >= max_degree {
                    break;
                }
                let w = self.vector(nb);
                if kept.iter().all(|&k| self.dot_k(w, self.vector(k)) < s) {
                    kept.push(nb);
                } else {
                    skipped.push(nb);
                }
            }
            for nb in skipped {
                if kept.len() >= max_degree {
                    break;
                }
                kept.push(nb);
            }
            neighbors.extend(kept);
        }
        offsets.push(neighbors.len() as u32);
        self.layers[0] = Layer {
            members: Vec::new(),
            offsets,
            neighbors,
        };
        self.params.base_degree = max_degree;
    }

    /// Bytes held by vectors and adjacency.
    pub fn memory_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| 4 * (l.members.len() + l.offsets.len() + l.neighbors.len()))
            .sum();
        4 * self.vectors.len() + 2 * self.walk16.len() + layers
    }

    /// A stored row as f16 bits, `stride` wide (empty without an f16 copy).
    fn row16(&self, i: u32) -> &[u16] {
        let o = i as usize * self.stride;
        self.walk16.get(o..o + self.stride).unwrap_or(&[])
    }

    /// A stored row, `stride` wide.
    fn vector(&self, i: u32) -> &[f32] {
        let o = i as usize * self.stride;
        self.vectors.get(o..o + self.stride).unwrap_or(&[])
    }

    /// The stored rows without padding (`dim` wide), as the bundle keeps them.
    fn unpadded(&self) -> Vec<f32> {
        if self.stride == self.dim {
            return self.vectors.clone();
        }
        let mut out = Vec::with_capacity(self.n * self.dim);
        for row in self.vectors.chunks(self.stride) {
            out.extend_from_slice(&row[..self.dim]);
        }
        out
    }

    /// One dot product with this index's kernel.
    fn dot_k(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.kernel {
            // SAFETY: `kernel` is only ever a kernel `Kernel::detect` found on this CPU.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { kernels::dot_avx512(a, b) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { kernels::dot_avx2(a, b) },
            _ => dot(a, b),
        }
    }
}

mod io;
mod search;

#[cfg(test)]
pub(crate) mod tests;
