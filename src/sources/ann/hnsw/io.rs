//! Reading and writing the frozen graph: `graph.arrow` (edges and parameters) and
//! `vectors.arrow`, every index validated on load so a corrupt file is an error, not a panic.

use std::path::Path;

use super::*;

impl FrozenHnsw {
    /// Writes `graph.arrow` (edges + parameters) and `vectors.arrow` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
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
            .write(&dir.join(GRAPH_FILE))?;
        Table::new()
            .with(
                "vector",
                Column::F32Vec {
                    dim: self.dim,
                    values: self.unpadded(),
                },
            )
            .write(&dir.join(VECTORS_FILE))
    }

    /// Loads and validates a graph written by [`FrozenHnsw::save`].
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let gpath = dir.join(GRAPH_FILE);
        let vpath = dir.join(VECTORS_FILE);
        let bad = |p: &Path, m: String| DataError::format(p, m);
        let mut g = Table::read(&gpath)?;
        let meta = |k: &str| g.meta_usize(k).map_err(|m| bad(&gpath, m));
        let (n, dim, entry, levels) = (meta("n")?, meta("dim")?, meta("entry")?, meta("levels")?);
        let query_dim = meta("query_dim")?;
        let metric = match g.metadata.get("metric").map(String::as_str) {
            // Bundles built before ip-NSW named their augmented graph "inner_product"; the extra
            // column tells them apart.
            Some("inner_product") if dim == query_dim + 1 => Metric::InnerProductAugmented,
            Some("inner_product") => Metric::InnerProduct,
            Some("inner_product_augmented") => Metric::InnerProductAugmented,
            Some("cosine") => Metric::Cosine,
            other => return Err(bad(&gpath, format!("unknown metric {other:?}"))),
        };
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
        let expected_width = metric.stored_width(query_dim);
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
}
