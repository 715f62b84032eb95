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
    160
}
impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: d_m(),
            ef_construction: d_efc(),
            ef_search: d_efs(),
            metric: Metric::default(),
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
    /// Width of the vectors callers query with.
    query_dim: usize,
    n: usize,
    vectors: Vec<f32>,
    entry: u32,
    /// layers[0] is the base layer.
    layers: Vec<Layer>,
    params: HnswParams,
}

thread_local! {
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
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

    /// The unit query vector in stored space (augmented with a zero for inner product).
    fn prepare(&self, query: &[f32]) -> Vec<f32> {
        let mut q = Vec::with_capacity(self.dim);
        q.extend_from_slice(query);
        q.resize(self.dim, 0.0);
        normalize(&mut q);
        q
    }

    fn freeze(
        hnsw: &Hnsw<f32, UnitDot>,
        vectors: Vec<f32>,
        dim: usize,
        params: HnswParams,
    ) -> Result<Self, String> {
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
        Ok(Self {
            dim,
            query_dim: dim,
            n,
            vectors,
            entry,
            layers,
            params,
        })
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

    pub fn levels(&self) -> usize {
        self.layers.len()
    }

    fn vector(&self, i: u32) -> &[f32] {
        let o = i as usize * self.dim;
        self.vectors.get(o..o + self.dim).unwrap_or(&[])
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
            .meta("query_dim", self.query_dim)
            .write(&dir.join("graph.arrow"))?;
        Table::new()
            .with(
                "vector",
                Column::F32Vec {
                    dim: self.dim,
                    values: self.vectors.clone(),
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
        let params = HnswParams {
            m: meta("m")?,
            ef_construction: meta("ef_construction")?,
            ef_search: meta("ef_search")?,
            metric,
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
        Ok(Self {
            dim,
            query_dim,
            n,
            vectors,
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
                score: dot(&q, self.vector(i)),
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
        let sim = |i: u32| dot(&q, self.vector(i));
        // Greedy descent through the upper layers.
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
        VISITED.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (marks, gen) = &mut *guard;
            if marks.len() != self.n {
                *marks = vec![0; self.n];
                *gen = 0;
            }
            *gen = gen.wrapping_add(1);
            if *gen == 0 {
                marks.iter_mut().for_each(|m| *m = 0);
                *gen = 1;
            }
            let g = *gen;
            let mut candidates: BinaryHeap<(OrdF32, u32)> = BinaryHeap::new();
            let mut results: BinaryHeap<Reverse<(OrdF32, u32)>> = BinaryHeap::new();
            candidates.push((OrdF32(cur_sim), cur));
            marks[cur as usize] = g;
            if allow(cur) {
                results.push(Reverse((OrdF32(cur_sim), cur)));
            }
            while let Some((OrdF32(s), node)) = candidates.pop() {
                if results.len() >= ef {
                    if let Some(Reverse((OrdF32(worst), _))) = results.peek() {
                        if s < *worst {
                            break;
                        }
                    }
                }
                for &nb in base.neighbors_of(node) {
                    let m = &mut marks[nb as usize];
                    if *m == g {
                        continue;
                    }
                    *m = g;
                    let s = sim(nb);
                    let worst = results.peek().map(|Reverse((OrdF32(w), _))| *w);
                    if results.len() < ef || worst.is_some_and(|w| s > w) {
                        candidates.push((OrdF32(s), nb));
                        if allow(nb) {
                            results.push(Reverse((OrdF32(s), nb)));
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<ScoredItem> = results
                .into_iter()
                .map(|Reverse((OrdF32(s), i))| ScoredItem { item: i, score: s })
                .collect();
            out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
            out.truncate(k);
            out
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
        for metric in [Metric::InnerProduct, Metric::Cosine] {
            recall_case(metric);
        }
    }

    fn recall_case(metric: Metric) {
        let (n, dim) = (3000, 16);
        let data = clustered(n, dim, 7);
        let params = HnswParams {
            metric,
            ..HnswParams::default()
        };
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
