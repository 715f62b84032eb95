//! The FAISS ANN backend (cargo feature `faiss`): any index the FAISS index factory can describe
//! (`HNSW32,Flat`, `IVF1024,Flat`, `IVF4096,PQ32x4fs,RFlat`, …), by inner product, trained and
//! written by the index-builder into `ann/faiss.index`, read and searched by the server through
//! the same [`AnnIndex`] trait as the frozen HNSW graph.
//!
//! Searches go through FAISS's C API on a shared `&self`: FAISS's CPU `search` is a const method
//! that may run on many threads at once (its documented threading model), which the `faiss`
//! crate only exposes for a few concrete index types.
//!
//! GPU: not built. FAISS's GPU build needs the CUDA toolkit, which no machine of this project
//! has had, so a GPU path could be neither compiled nor tested here (README, "ANN backends").

use std::path::Path;

use faiss::{index_factory, Index, MetricType};

use super::AnnIndex;
use crate::sources::ScoredItem;
use crate::ItemIdx;

/// The index file inside the bundle's `ann/` directory, and what it was built as.
pub const FAISS_FILE: &str = "faiss.index";
pub const FAISS_META: &str = "faiss.json";

/// `ann/faiss.json`: how the index was built, checked against the bundle at load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaissMeta {
    pub factory: String,
    pub n: usize,
    pub dim: usize,
}

/// Whether the bundle was built with a FAISS index (its manifest lists one).
pub fn bundle_has_index(bundle: &crate::bundle::Bundle) -> bool {
    let rel = format!("{}/{FAISS_FILE}", crate::layout::ANN_DIR);
    bundle.manifest.files.contains_key(&rel)
}

/// Loads the bundle's FAISS index: its files must exist, match the manifest's checksum (FAISS
/// trusts what it reads, so a flipped byte is caught before it gets there) and the catalog.
pub fn load_from_bundle(
    bundle: &crate::bundle::Bundle,
    params: &[(String, f64)],
) -> Result<FaissIndex, crate::bundle::BundleError> {
    use crate::bundle::BundleError;
    let rel = format!("{}/{FAISS_FILE}", crate::layout::ANN_DIR);
    let path = bundle.dir.join(&rel);
    let meta_path = bundle.dir.join(crate::layout::ANN_DIR).join(FAISS_META);
    let Some(entry) = bundle.manifest.files.get(&rel) else {
        return Err(BundleError::format(
            &path,
            "this bundle has no FAISS index; build it with an index-builder compiled with \
             `--features faiss` and a `[faiss] factory = \"…\"` in the build config, or serve \
             with retrieval.ann_backend = \"hnsw\"",
        ));
    };
    let (sha, _) = crate::bundle::files::sha256_file(&path)?;
    if sha != entry.sha256 {
        return Err(BundleError::format(
            &path,
            "checksum does not match the manifest (corrupt or replaced file)",
        ));
    }
    let bytes = std::fs::read(&meta_path).map_err(|e| BundleError::io(&meta_path, e))?;
    let meta: FaissMeta = serde_json::from_slice(&bytes)
        .map_err(|e| BundleError::format(&meta_path, e.to_string()))?;
    if meta.n != bundle.catalog.len() || meta.dim != bundle.dim {
        return Err(BundleError::format(
            &meta_path,
            format!(
                "index of {} × {} does not match the bundle's {} items × {}",
                meta.n,
                meta.dim,
                bundle.catalog.len(),
                bundle.dim
            ),
        ));
    }
    FaissIndex::load(&path, meta.n, meta.dim, &meta.factory, params)
        .map_err(|e| BundleError::format(&path, e.to_string()))
}

extern "C" {
    // OpenMP, which the static FAISS build links (libgomp).
    fn omp_set_num_threads(n: std::ffi::c_int);
}

/// Sets how many OpenMP threads FAISS's batch work (training, adding, multi-query search) may
/// use; 0 = one per core. A server searching one query per call does not need it.
pub fn set_threads(n: usize) {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |p| p.get())
    } else {
        n
    };
    // SAFETY: a plain setter of the OpenMP runtime's default team size.
    unsafe { omp_set_num_threads(n.min(i32::MAX as usize) as std::ffi::c_int) }
}

/// A FAISS error with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("faiss: {what}: {message}")]
pub struct FaissError {
    pub what: String,
    pub message: String,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> FaissError {
    FaissError {
        what: what.into(),
        message: e.to_string(),
    }
}

/// A FAISS index over the bundle's item vectors (row number = item index).
pub struct FaissIndex {
    index: faiss::index::IndexImpl,
    dim: usize,
    n: usize,
    factory: String,
}

impl std::fmt::Debug for FaissIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaissIndex")
            .field("factory", &self.factory)
            .field("n", &self.n)
            .field("dim", &self.dim)
            .finish()
    }
}

impl FaissIndex {
    /// Builds `factory` (an index-factory string) by inner product over `vectors` (row-major,
    /// `dim` wide): trains it when the kind needs training (IVF, PQ), then adds every row.
    pub fn build(vectors: &[f32], dim: usize, factory: &str) -> Result<Self, FaissError> {
        if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(err(
                "build",
                format!("{} values do not form rows of width {dim}", vectors.len()),
            ));
        }
        if vectors.iter().any(|x| !x.is_finite()) {
            return Err(err("build", "vectors contain NaN or infinity"));
        }
        let mut index = index_factory(dim as u32, factory, MetricType::InnerProduct)
            .map_err(|e| err(format!("index factory {factory:?}"), e))?;
        if !index.is_trained() {
            index
                .train(vectors)
                .map_err(|e| err(format!("training {factory:?}"), e))?;
        }
        index
            .add(vectors)
            .map_err(|e| err(format!("adding vectors to {factory:?}"), e))?;
        Ok(Self {
            n: vectors.len() / dim,
            dim,
            factory: factory.to_string(),
            index,
        })
    }

    /// Writes `faiss.index` and `faiss.json` into `dir` (the bundle's `ann/`).
    pub fn save_to(&self, dir: &Path) -> Result<(), FaissError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}", dir.display()), e))?;
        self.save(&dir.join(FAISS_FILE))?;
        let meta = FaissMeta {
            factory: self.factory.clone(),
            n: self.n,
            dim: self.dim,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| err("faiss.json", e))?;
        std::fs::write(dir.join(FAISS_META), json)
            .map_err(|e| err(format!("writing {}", dir.join(FAISS_META).display()), e))
    }

    /// Writes the index to `path` (FAISS's own format).
    pub fn save(&self, path: &Path) -> Result<(), FaissError> {
        let p = path
            .to_str()
            .ok_or_else(|| err("save", format!("path {} is not UTF-8", path.display())))?;
        faiss::write_index(&self.index, p).map_err(|e| err(format!("writing {p}"), e))
    }

    /// Reads an index written by [`FaissIndex::save`] and checks it holds `n` vectors of `dim`;
    /// `params` are FAISS tuning parameters (`efSearch`, `nprobe`, …) set through its
    /// `ParameterSpace`. The caller checks the file's checksum first: FAISS trusts its input.
    pub fn load(
        path: &Path,
        n: usize,
        dim: usize,
        factory: &str,
        params: &[(String, f64)],
    ) -> Result<Self, FaissError> {
        let p = path
            .to_str()
            .ok_or_else(|| err("load", format!("path {} is not UTF-8", path.display())))?;
        let index = faiss::read_index(p).map_err(|e| err(format!("reading {p}"), e))?;
        if index.ntotal() as usize != n || index.d() as usize != dim {
            return Err(err(
                format!("reading {p}"),
                format!(
                    "index holds {} vectors of width {}, the bundle {n} of width {dim}",
                    index.ntotal(),
                    index.d()
                ),
            ));
        }
        if index.metric_type() != MetricType::InnerProduct {
            return Err(err(format!("reading {p}"), "index is not inner product"));
        }
        let mut out = Self {
            index,
            dim,
            n,
            factory: factory.to_string(),
        };
        for (name, value) in params {
            out.set_param(name, *value)?;
        }
        Ok(out)
    }

    /// Sets one FAISS search parameter (`efSearch`, `nprobe`, …) through its `ParameterSpace`;
    /// a name the index kind does not know is an error.
    pub fn set_param(&mut self, name: &str, value: f64) -> Result<(), FaissError> {
        let space =
            faiss::index::autotune::ParameterSpace::new().map_err(|e| err("parameters", e))?;
        space
            .set_index_parameter(&self.index, name, value)
            .map_err(|e| err(format!("setting {name} = {value} on {:?}", self.factory), e))
    }

    /// The index-factory string it was built from.
    pub fn factory(&self) -> &str {
        &self.factory
    }

    /// One search of `k` results: (score, row) pairs, best first, FAISS's -1 padding dropped.
    fn raw_search(&self, query: &[f32], k: usize) -> Vec<(f32, i64)> {
        let k = k.min(self.n).max(1);
        let mut scores = vec![f32::NEG_INFINITY; k];
        let mut labels = vec![-1i64; k];
        // SAFETY: `query` is `dim` floats (checked by the caller), the output buffers hold `k`
        // entries each, and FAISS's CPU search is const and thread-safe.
        let rc = unsafe {
            faiss_sys::faiss_Index_search(
                self.index.inner_ptr(),
                1,
                query.as_ptr(),
                k as i64,
                scores.as_mut_ptr(),
                labels.as_mut_ptr(),
            )
        };
        if rc != 0 {
            tracing::warn!(factory = %self.factory, rc, "faiss search failed");
            return Vec::new();
        }
        scores
            .into_iter()
            .zip(labels)
            .filter(|(_, l)| *l >= 0 && (*l as usize) < self.n)
            .collect()
    }
}

impl AnnIndex for FaissIndex {
    fn len(&self) -> usize {
        self.n
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn backend(&self) -> &'static str {
        "faiss"
    }

    /// FAISS cannot call back into Rust per candidate, so the filter runs on the results: ask
    /// for `k`, and while too few pass and FAISS still had more to give, ask again for twice as
    /// many plus 32. Asking for more than `k` up front would widen an HNSW index's beam to it
    /// (FAISS searches with max(efSearch, k)) and halve its speed for every request.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: &(dyn Fn(ItemIdx) -> bool + Sync),
    ) -> Vec<ScoredItem> {
        if k == 0 || query.len() != self.dim || self.n == 0 {
            return Vec::new();
        }
        let mut ask = k.min(self.n);
        loop {
            let raw = self.raw_search(query, ask);
            let got = raw.len();
            let out: Vec<ScoredItem> = raw
                .into_iter()
                .map(|(score, l)| ScoredItem {
                    item: l as ItemIdx,
                    score,
                })
                .filter(|s| allow(s.item))
                .take(k)
                .collect();
            if out.len() >= k || got < ask || ask >= self.n {
                return out;
            }
            ask = (ask * 2 + 32).min(self.n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ann::dot;
    use crate::sources::ann::hnsw::tests::{clustered, recall_at, skewed};
    use rand::{Rng, SeedableRng};

    fn data(n: usize, dim: usize) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn flat_index_is_exact_inner_product_and_round_trips() {
        let (n, dim) = (500, 12);
        let v = data(n, dim);
        let idx = FaissIndex::build(&v, dim, "Flat").unwrap();
        let q = &v[7 * dim..8 * dim];
        let got = idx.search(q, 10, &|_| true);
        let mut want: Vec<(f32, u32)> = (0..n)
            .map(|i| (dot(q, &v[i * dim..(i + 1) * dim]), i as u32))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(
            got.iter().map(|s| s.item).collect::<Vec<_>>(),
            want[..10].iter().map(|w| w.1).collect::<Vec<_>>()
        );
        assert!((got[0].score - want[0].0).abs() < 1e-4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FAISS_FILE);
        idx.save(&path).unwrap();
        let back = FaissIndex::load(&path, n, dim, "Flat", &[]).unwrap();
        assert_eq!(back.search(q, 10, &|_| true), got);
        // The filter holds even when most of the nearest items are excluded.
        let odd = back.search(q, 10, &|i| i % 7 == 3);
        assert_eq!(odd.len(), 10);
        assert!(odd.iter().all(|s| s.item % 7 == 3));
        // A bundle that disagrees with the file is refused.
        assert!(FaissIndex::load(&path, n + 1, dim, "Flat", &[]).is_err());
    }

    #[test]
    fn finds_the_inner_product_top_k_on_skewed_norms() {
        let (n, dim, k) = (4000, 16, 50);
        // Norms spread over two orders of magnitude, a fifth of the rows zero (like ALS factors).
        let data = skewed(n, dim, 21);
        let queries = clustered(100, dim, 22);
        let flat = FaissIndex::build(&data, dim, "Flat").unwrap();
        assert!(recall_at(&flat, &data, &queries, dim, k) > 0.999);
        let mut hnsw = FaissIndex::build(&data, dim, "HNSW32,Flat").unwrap();
        hnsw.set_param("efSearch", 128.0).unwrap();
        let r = recall_at(&hnsw, &data, &queries, dim, k);
        assert!(r > 0.95, "faiss HNSW32,Flat recall@{k} {r}");
        // Scores are the raw inner products.
        let q = &queries[dim..2 * dim];
        for s in hnsw.search(q, 5, &|_| true) {
            let want = dot(q, &data[s.item as usize * dim..(s.item as usize + 1) * dim]);
            assert!((s.score - want).abs() <= 1e-3 * want.abs().max(1.0));
        }
    }

    #[test]
    fn hnsw_and_ivf_kinds_build_and_take_parameters() {
        let (n, dim) = (2000, 16);
        let v = data(n, dim);
        for (factory, param) in [("HNSW16,Flat", "efSearch"), ("IVF16,Flat", "nprobe")] {
            let idx = FaissIndex::build(&v, dim, factory).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(FAISS_FILE);
            idx.save(&path).unwrap();
            let back =
                FaissIndex::load(&path, n, dim, factory, &[(param.to_string(), 64.0)]).unwrap();
            let q = &v[..dim];
            assert_eq!(back.search(q, 20, &|_| true).len(), 20, "{factory}");
            assert!(
                FaissIndex::load(&path, n, dim, factory, &[("noSuchParam".into(), 1.0)]).is_err()
            );
        }
        assert!(FaissIndex::build(&v, dim, "NotAFactory").is_err());
    }
}
