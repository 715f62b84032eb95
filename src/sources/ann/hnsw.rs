//! The default ANN backend: an HNSW graph built with `hnsw_rs`, then frozen into flat, read-only
//! arrays (CSR adjacency per layer, contiguous unit vectors) and searched by our own code.
//!
//! Why frozen: the serving path only reads the graph, so flat arrays beat `hnsw_rs`'s
//! lock-and-`Arc`-per-point layout on cache misses, and our loader validates every index of a file
//! and returns an error instead of asserting on a corrupt one (see docs/adr/0001-frozen-hnsw.md).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use hnsw_rs::prelude::{Distance, Hnsw};
use serde::{Deserialize, Serialize};

use super::kernels::{self, Kernel};
use super::{dot, normalize, AnnIndex};
use crate::bundle::{BundleError, Column, Table};
use crate::sources::{OrdF32, ScoredItem};
use crate::ItemIdx;

/// Construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswParams {
    /// Max neighbours per node on upper layers (layer 0 keeps 2·m).
    #[serde(default = "d_m")]
    pub m: usize,
    #[serde(default = "d_efc")]
    pub ef_construction: usize,
    /// Beam width at query time (raised to k when k is larger).
    #[serde(default = "d_efs")]
    pub ef_search: usize,
    /// What "nearest" means: inner product (the score matrix-factorisation models are trained
    /// for; popular items keep their larger norms) or cosine.
    #[serde(default)]
    pub metric: Metric,
    /// Base-layer degree after freezing: `hnsw_rs`'s 2·m lists are re-pruned to this many
    /// diverse neighbours (0 keeps them whole). Fewer edges, fewer distance computations per
    /// expansion; see benches/ann.rs for the recall/speed curve.
    #[serde(default = "d_degree")]
    pub base_degree: usize,
    /// Precision of the vectors the graph walk reads; results are re-scored in f32 either way.
    /// `f16` halves the memory the walk touches (the search is memory-bound at 200K items).
    #[serde(default)]
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
    /// Maximum inner product, reduced to cosine by the norm-augmentation trick
    /// (x → [x/M, sqrt(1 − |x|²/M²)], q → [q, 0]; Bachrach et al. 2014).
    #[default]
    InnerProduct,
    Cosine,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::InnerProduct => "inner_product",
            Metric::Cosine => "cosine",
        }
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
const fn d_degree() -> usize {
    24
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

/// 1 − dot on unit vectors, clamped so rounding never yields a negative distance.
#[derive(Debug, Default, Clone, Copy)]
struct UnitDot;
impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
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

/// A read-only HNSW graph over unit vectors.
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
        let (vectors, dim) = match params.metric {
            Metric::Cosine => {
                vectors.chunks_mut(dim).for_each(normalize);
                (vectors, dim)
            }
            Metric::InnerProduct => {
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
                (aug, dim + 1)
            }
        };
        let hnsw: Hnsw<f32, UnitDot> = Hnsw::new(params.m, n, 16, params.ef_construction, UnitDot);
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

    /// The unit query vector in stored space (augmented with a zero for inner product, padded
    /// with zeros to the row stride).
    fn prepare(&self, query: &[f32]) -> Vec<f32> {
        let mut q = Vec::with_capacity(self.stride);
        q.extend_from_slice(query);
        q.resize(self.stride, 0.0);
        normalize(&mut q);
        q
    }

    /// Freezes a graph built with `hnsw_rs` over `vectors` (row-major, `dim` wide, unit length,
    /// inserted with their row numbers as ids). Public so benchmarks can search the same graph
    /// both ways.
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

    /// Writes `graph.arrow` (edges + parameters) and `vectors.arrow` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        std::fs::create_dir_all(dir).map_err(|e| BundleError::io(dir, e))?;
        let (mut ls, mut ns, mut nbs) = (Vec::new(), Vec::new(), Vec::new());
        for (l, layer) in self.layers.iter().enumerate() {
            let count = if l == 0 { self.n } else { layer.members.len() };
            for pos in 0..count {
                let node = if l == 0 {
                    pos as u32
                } else {
                    layer.members[pos]
                };
                let nb = layer.neighbors_of(node);
                // A membership row (neighbor = u32::MAX) keeps isolated upper-layer nodes.
                ls.push(l as u32);
                ns.push(node);
                nbs.push(u32::MAX);
                for &x in nb {
                    ls.push(l as u32);
                    ns.push(node);
                    nbs.push(x);
                }
            }
        }
        Table::new()
            .with("layer", Column::U32(ls))
            .with("node", Column::U32(ns))
            .with("neighbor", Column::U32(nbs))
            .meta("n", self.n)
            .meta("dim", self.dim)
            .meta("entry", self.entry)
            .meta("levels", self.layers.len())
            .meta("m", self.params.m)
            .meta("ef_construction", self.params.ef_construction)
            .meta("ef_search", self.params.ef_search)
            .meta("metric", self.params.metric.name())
            .meta("base_degree", self.params.base_degree)
            .meta("walk", self.params.walk.name())
            .meta("query_dim", self.query_dim)
            .write(&dir.join("graph.arrow"))?;
        Table::new()
            .with(
                "vector",
                Column::F32Vec {
                    dim: self.dim,
                    values: self.unpadded(),
                },
            )
            .write(&dir.join("vectors.arrow"))
    }

    /// Loads and validates a graph written by [`FrozenHnsw::save`].
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let gpath = dir.join("graph.arrow");
        let vpath = dir.join("vectors.arrow");
        let bad = |p: &Path, m: String| BundleError::format(p, m);
        let mut g = Table::read(&gpath)?;
        let meta = |k: &str| g.meta_usize(k).map_err(|m| bad(&gpath, m));
        let (n, dim, entry, levels) = (meta("n")?, meta("dim")?, meta("entry")?, meta("levels")?);
        let metric = match g.metadata.get("metric").map(String::as_str) {
            Some("inner_product") => Metric::InnerProduct,
            Some("cosine") => Metric::Cosine,
            other => return Err(bad(&gpath, format!("unknown metric {other:?}"))),
        };
        let query_dim = meta("query_dim")?;
        // Graphs saved before these parameters existed: whole lists, f16 walk.
        let base_degree = g.meta_usize("base_degree").unwrap_or(0);
        let walk = match g.metadata.get("walk").map(String::as_str) {
            None | Some("f16") => WalkPrecision::F16,
            Some("f32") => WalkPrecision::F32,
            Some(other) => return Err(bad(&gpath, format!("unknown walk precision {other:?}"))),
        };
        let params = HnswParams {
            m: meta("m")?,
            ef_construction: meta("ef_construction")?,
            ef_search: meta("ef_search")?,
            metric,
            base_degree,
            walk,
        };
        let expected_width = match metric {
            Metric::InnerProduct => query_dim + 1,
            Metric::Cosine => query_dim,
        };
        if expected_width != dim {
            return Err(bad(
                &gpath,
                format!("{metric:?} index of width {dim} cannot take {query_dim}-wide queries"),
            ));
        }
        let layer = g.take_u32("layer").map_err(|m| bad(&gpath, m))?;
        let node = g.take_u32("node").map_err(|m| bad(&gpath, m))?;
        let neighbor = g.take_u32("neighbor").map_err(|m| bad(&gpath, m))?;
        let mut v = Table::read(&vpath)?;
        let (vdim, vectors) = v.take_f32vec("vector").map_err(|m| bad(&vpath, m))?;
        if vdim != dim || vectors.len() != n * dim || n == 0 || levels == 0 || levels > 64 {
            return Err(bad(
                &vpath,
                format!(
                    "vectors ({vdim} wide, {} values) do not match graph (n {n}, dim {dim})",
                    vectors.len()
                ),
            ));
        }
        if entry >= n || vectors.iter().any(|x| !x.is_finite()) {
            return Err(bad(
                &gpath,
                "entry point out of range or non-finite vectors".into(),
            ));
        }
        let mut edges: Vec<Vec<(u32, u32)>> = vec![Vec::new(); levels];
        for ((&l, &a), &b) in layer.iter().zip(&node).zip(&neighbor) {
            if l as usize >= levels || a as usize >= n || (b != u32::MAX && b as usize >= n) {
                return Err(bad(&gpath, format!("edge ({l}, {a}, {b}) out of range")));
            }
            edges[l as usize].push((a, b));
        }
        let layers: Vec<Layer> = edges
            .into_iter()
            .enumerate()
            .map(|(l, e)| Self::csr(l, e, n))
            .collect();
        let top = &layers[levels - 1];
        if levels > 1 && top.members.binary_search(&(entry as u32)).is_err() {
            return Err(bad(&gpath, "entry point is not on the top layer".into()));
        }
        let stride = stride_for(dim);
        let vectors = pad_rows(&vectors, dim, stride);
        let kernel = Kernel::detect();
        Ok(Self {
            dim,
            stride,
            query_dim,
            n,
            walk16: half_rows(&vectors, params.walk, kernel),
            vectors,
            kernel,
            entry: entry as u32,
            layers,
            params,
        })
    }

    /// Exact search by scanning every vector (ground truth for recall measurements).
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<ScoredItem> {
        if query.len() != self.query_dim {
            return Vec::new();
        }
        let q = self.prepare(query);
        crate::sources::top_k(
            (0..self.n as u32).map(|i| ScoredItem {
                item: i,
                score: self.dot_k(&q, self.vector(i)),
            }),
            k,
        )
    }
}

impl AnnIndex for FrozenHnsw {
    fn len(&self) -> usize {
        self.n
    }

    #[allow(clippy::misnamed_getters)] // callers query with `query_dim`-wide vectors
    fn dim(&self) -> usize {
        self.query_dim
    }

    fn backend(&self) -> &'static str {
        "hnsw"
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: &(dyn Fn(ItemIdx) -> bool + Sync),
    ) -> Vec<ScoredItem> {
        if k == 0 || query.len() != self.query_dim || self.n == 0 {
            return Vec::new();
        }
        let q = self.prepare(query);
        let half = !self.walk16.is_empty();
        let mut out = match (self.kernel, half) {
            // SAFETY: `kernel` is only ever a kernel `Kernel::detect` found on this CPU.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, true) => unsafe { self.search_avx512_f16(&q, k, allow) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, false) => unsafe { self.search_avx512(&q, k, allow) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2Fma, true) => unsafe { self.search_avx2_f16(&q, k, allow) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2Fma, false) => unsafe { self.search_avx2(&q, k, allow) },
            _ => self.search_with(
                k,
                allow,
                |i| dot(&q, self.vector(i)),
                |i| kernels::prefetch(self.vector(i)),
            ),
        };
        if half && self.kernel != Kernel::Portable {
            // The walk ranked by f16 scores: re-score the beam's results in f32 (loads issued
            // together, so they overlap) and keep the best k.
            out.iter()
                .for_each(|s| kernels::prefetch(self.vector(s.item)));
            for s in out.iter_mut() {
                s.score = self.dot_k(&q, self.vector(s.item));
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        out.truncate(k);
        out
    }
}

/// One search entry point per SIMD kernel: the whole loop is compiled with the kernel's target
/// features, so the dot product inlines into it.
macro_rules! kernel_search {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dot:path, $row:ident, $prefetch:path) => {
        $(#[$doc])*
        /// # Safety
        #[doc = concat!("The CPU must support ", $features, ".")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            &self,
            q: &[f32],
            k: usize,
            allow: &(dyn Fn(ItemIdx) -> bool + Sync),
        ) -> Vec<ScoredItem> {
            // SAFETY (closure): this function only runs where the features are present.
            self.search_with(
                k,
                allow,
                |i| unsafe { $dot(q, self.$row(i)) },
                |i| $prefetch(self.$row(i)),
            )
        }
    };
}

impl FrozenHnsw {
    kernel_search!(
        search_avx512,
        "avx512f",
        kernels::dot_avx512,
        vector,
        kernels::prefetch
    );
    kernel_search!(
        /// The f16 walk.
        search_avx512_f16,
        "avx512f",
        kernels::dot_f16_avx512,
        row16,
        kernels::prefetch_u16
    );
    kernel_search!(
        search_avx2,
        "avx2,fma",
        kernels::dot_avx2,
        vector,
        kernels::prefetch
    );
    kernel_search!(
        /// The f16 walk.
        search_avx2_f16,
        "avx2,fma,f16c",
        kernels::dot_f16_avx2,
        row16,
        kernels::prefetch_u16
    );

    /// Greedy descent through the upper layers, then an `ef`-bounded best-first search on layer 0
    /// that keeps only allowed items as results (hnswlib's filtered search). `q` is prepared
    /// (unit, padded). Neighbours are filtered by the visit marks first and their vectors
    /// prefetched, so the memory loads of one expansion overlap instead of queueing.
    #[inline(always)]
    fn search_with<S: Fn(u32) -> f32, P: Fn(u32)>(
        &self,
        k: usize,
        allow: &(dyn Fn(ItemIdx) -> bool + Sync),
        sim: S,
        prefetch: P,
    ) -> Vec<ScoredItem> {
        let mut cur = self.entry;
        let mut cur_sim = sim(cur);
        for layer in self.layers.iter().skip(1).rev() {
            loop {
                let mut moved = false;
                for &nb in layer.neighbors_of(cur) {
                    let s = sim(nb);
                    if s > cur_sim {
                        cur_sim = s;
                        cur = nb;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let ef = self.params.ef_search.max(k);
        let base = &self.layers[0];
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let Scratch {
                marks,
                generation,
                fresh,
            } = &mut *guard;
            if marks.len() != self.n {
                *marks = vec![0; self.n];
                *generation = 0;
            }
            *generation = generation.wrapping_add(1);
            if *generation == 0 {
                marks.iter_mut().for_each(|m| *m = 0);
                *generation = 1;
            }
            let g = *generation;
            let mut candidates: BinaryHeap<(OrdF32, u32)> = BinaryHeap::with_capacity(ef * 2);
            let mut results: BinaryHeap<Reverse<(OrdF32, u32)>> = BinaryHeap::with_capacity(ef + 1);
            candidates.push((OrdF32(cur_sim), cur));
            if let Some(m) = marks.get_mut(cur as usize) {
                *m = g;
            }
            if allow(cur) {
                results.push(Reverse((OrdF32(cur_sim), cur)));
            }
            let mut worst = f32::NEG_INFINITY;
            while let Some((OrdF32(s), node)) = candidates.pop() {
                if results.len() >= ef && s < worst {
                    break;
                }
                // The next expansion's adjacency list, fetched while this one is scored.
                if let Some(&(_, next)) = candidates.peek() {
                    kernels::prefetch_u32(base.neighbors_of(next));
                }
                fresh.clear();
                for &nb in base.neighbors_of(node) {
                    if let Some(m) = marks.get_mut(nb as usize) {
                        if *m != g {
                            *m = g;
                            prefetch(nb);
                            fresh.push(nb);
                        }
                    }
                }
                for &nb in fresh.iter() {
                    let s = sim(nb);
                    if results.len() < ef || s > worst {
                        candidates.push((OrdF32(s), nb));
                        if allow(nb) {
                            results.push(Reverse((OrdF32(s), nb)));
                            if results.len() > ef {
                                results.pop();
                            }
                            if results.len() >= ef {
                                if let Some(Reverse((OrdF32(w), _))) = results.peek() {
                                    worst = *w;
                                }
                            }
                        }
                    }
                }
            }
            // Unsorted, all `ef` of them: the caller re-scores, sorts and cuts to k.
            results
                .into_iter()
                .map(|Reverse((OrdF32(s), i))| ScoredItem { item: i, score: s })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centers: Vec<f32> = (0..20 * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut v = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let c = rng.gen_range(0..20);
            for d in 0..dim {
                v.push(centers[c * dim + d] + rng.gen_range(-0.3..0.3));
            }
        }
        v
    }

    #[test]
    fn recall_against_exact_search_and_round_trip() {
        // Defaults (pruned base layer, f16 walk), then whole lists with an f32 walk.
        for metric in [Metric::InnerProduct, Metric::Cosine] {
            recall_case(HnswParams {
                metric,
                ..HnswParams::default()
            });
        }
        recall_case(HnswParams {
            base_degree: 0,
            walk: WalkPrecision::F32,
            ..HnswParams::default()
        });
    }

    #[test]
    fn every_kernel_finds_the_same_neighbours() {
        let (n, dim) = (2000, 24);
        let data = clustered(n, dim, 5);
        let params = HnswParams {
            walk: WalkPrecision::F32,
            ..HnswParams::default()
        };
        let mut idx = FrozenHnsw::build(data.clone(), dim, params).unwrap();
        let all = |_: u32| true;
        let best: Vec<Vec<u32>> = (0..20)
            .map(|q| {
                let query = &data[q * dim..(q + 1) * dim];
                idx.search(query, 10, &all).iter().map(|s| s.item).collect()
            })
            .collect();
        for k in [Kernel::Avx2Fma, Kernel::Portable] {
            if idx.set_kernel(k) {
                for (q, want) in best.iter().enumerate() {
                    let query = &data[q * dim..(q + 1) * dim];
                    let got: Vec<u32> =
                        idx.search(query, 10, &all).iter().map(|s| s.item).collect();
                    assert_eq!(&got, want, "{k:?} query {q}");
                }
            }
        }
    }

    #[test]
    fn pruning_caps_the_base_degree_and_keeps_nearest_first() {
        let (n, dim) = (1500, 8);
        let data = clustered(n, dim, 9);
        let params = HnswParams {
            base_degree: 0,
            ..HnswParams::default()
        };
        let mut idx = FrozenHnsw::build(data, dim, params).unwrap();
        idx.prune_base(6);
        assert_eq!(idx.params().base_degree, 6);
        for node in 0..n as u32 {
            let nb = idx.layers[0].neighbors_of(node);
            assert!(!nb.is_empty() && nb.len() <= 6, "node {node}: {}", nb.len());
            let v = idx.vector(node);
            let sims: Vec<f32> = nb.iter().map(|&x| dot(v, idx.vector(x))).collect();
            // The first kept neighbour is the nearest of the list.
            assert!(sims.iter().all(|&s| s <= sims[0] + 1e-6));
        }
    }

    fn recall_case(params: HnswParams) {
        let metric = params.metric;
        let (n, dim) = (3000, 16);
        let data = clustered(n, dim, 7);
        let idx = FrozenHnsw::build(data.clone(), dim, params).unwrap();
        let dir = tempfile::tempdir().unwrap();
        idx.save(dir.path()).unwrap();
        let loaded = FrozenHnsw::load(dir.path()).unwrap();
        let allow_all = |_: u32| true;
        let mut hits = 0;
        let k = 20;
        for q in 0..50 {
            let query = &data[q * dim..(q + 1) * dim];
            let truth: std::collections::HashSet<u32> = idx
                .exact_search(query, k)
                .into_iter()
                .map(|s| s.item)
                .collect();
            let got = loaded.search(query, k, &allow_all);
            assert_eq!(got, idx.search(query, k, &allow_all));
            hits += got.iter().filter(|s| truth.contains(&s.item)).count();
        }
        let recall = hits as f64 / (50 * k) as f64;
        assert!(recall > 0.95, "{metric:?} recall {recall}");
    }

    #[test]
    fn inner_product_ranks_by_raw_dot() {
        let (n, dim) = (500, 8);
        let data = clustered(n, dim, 11);
        let idx = FrozenHnsw::build(data.clone(), dim, HnswParams::default()).unwrap();
        let q = &data[0..dim];
        let got = idx.exact_search(q, 10);
        let mut want: Vec<(f32, u32)> = (0..n)
            .map(|i| (dot(q, &data[i * dim..(i + 1) * dim]), i as u32))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(
            got.iter().map(|s| s.item).collect::<Vec<_>>(),
            want[..10].iter().map(|w| w.1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn filter_is_honoured() {
        let (n, dim) = (2000, 8);
        let idx = FrozenHnsw::build(clustered(n, dim, 3), dim, HnswParams::default()).unwrap();
        let even = |i: u32| i.is_multiple_of(2);
        let got = idx.search(&[1.0; 8], 50, &even);
        assert_eq!(got.len(), 50);
        assert!(got.iter().all(|s| s.item % 2 == 0));
    }

    #[test]
    fn corrupt_graph_is_an_error() {
        let dim = 4;
        let idx = FrozenHnsw::build(clustered(200, dim, 1), dim, HnswParams::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        idx.save(dir.path()).unwrap();
        let mut t = Table::read(&dir.path().join("graph.arrow")).unwrap();
        let layer = t.take_u32("layer").unwrap();
        let node = t.take_u32("node").unwrap();
        let mut nb = t.take_u32("neighbor").unwrap();
        nb[3] = 10_000;
        Table {
            columns: vec![],
            metadata: t.metadata.clone(),
        }
        .with("layer", Column::U32(layer))
        .with("node", Column::U32(node))
        .with("neighbor", Column::U32(nb))
        .write(&dir.path().join("graph.arrow"))
        .unwrap();
        assert!(FrozenHnsw::load(dir.path()).is_err());
        std::fs::remove_file(dir.path().join("vectors.arrow")).unwrap();
        assert!(FrozenHnsw::load(dir.path()).is_err());
    }
}
