use super::*;
use rand::{Rng, SeedableRng};

pub(crate) fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
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
    for metric in [
        Metric::InnerProduct,
        Metric::InnerProductAugmented,
        Metric::Cosine,
    ] {
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
                let got: Vec<u32> = idx.search(query, 10, &all).iter().map(|s| s.item).collect();
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

/// Embeddings shaped like trained ALS factors: norms spread over two orders of magnitude
/// (popular items are long), a fifth of the rows exactly zero (items the training window never
/// saw), queries from the same directions.
pub(crate) fn skewed(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = clustered(n, dim, seed);
    for row in v.chunks_mut(dim) {
        let scale = if rng.gen_bool(0.2) {
            0.0
        } else {
            10f32.powf(rng.gen_range(-1.5..0.5))
        };
        row.iter_mut().for_each(|x| *x *= scale);
    }
    v
}

/// Recall@k of any ANN backend against the exact inner-product top k (shared with FAISS's tests).
pub(crate) fn recall_at(
    idx: &dyn crate::sources::ann::AnnIndex,
    data: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
) -> f64 {
    let n = data.len() / dim;
    let mut hits = 0;
    let nq = queries.len() / dim;
    for q in queries.chunks(dim) {
        let mut exact: Vec<(f32, u32)> = (0..n)
            .map(|i| (dot(q, &data[i * dim..(i + 1) * dim]), i as u32))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: std::collections::HashSet<u32> = exact[..k].iter().map(|e| e.1).collect();
        hits += idx
            .search(q, k, &|_| true)
            .iter()
            .filter(|s| truth.contains(&s.item))
            .count();
    }
    hits as f64 / (nq * k) as f64
}

#[test]
fn inner_product_graph_finds_the_top_k_on_skewed_norms() {
    let (n, dim, k) = (4000, 16, 50);
    let data = skewed(n, dim, 21);
    let queries = clustered(100, dim, 22);
    let ip = FrozenHnsw::build(data.clone(), dim, HnswParams::default()).unwrap();
    let r_ip = recall_at(&ip, &data, &queries, dim, k);
    assert!(r_ip > 0.95, "ip-NSW recall@{k} {r_ip}");
    // Scores are the raw inner products, not cosines of a scaled query.
    let q = &queries[..dim];
    let got = ip.search(q, 5, &|_| true);
    for s in got {
        let want = dot(q, &data[s.item as usize * dim..(s.item as usize + 1) * dim]);
        assert!((s.score - want).abs() <= 1e-3 * want.abs().max(1.0));
    }
    // The graph it replaces, on the same rows, for the record: it must not beat ip-NSW.
    let aug = FrozenHnsw::build(
        data.clone(),
        dim,
        HnswParams {
            metric: Metric::InnerProductAugmented,
            ..HnswParams::default()
        },
    )
    .unwrap();
    let r_aug = recall_at(&aug, &data, &queries, dim, k);
    assert!(r_ip >= r_aug, "ip {r_ip} vs augmented {r_aug}");
}

#[test]
fn graphs_saved_before_ip_nsw_load_as_augmented() {
    let dim = 8;
    let params = HnswParams {
        metric: Metric::InnerProductAugmented,
        ..HnswParams::default()
    };
    let data = skewed(300, dim, 4);
    let idx = FrozenHnsw::build(data.clone(), dim, params).unwrap();
    let dir = tempfile::tempdir().unwrap();
    idx.save(dir.path()).unwrap();
    // Older builders wrote the augmented graph under the name "inner_product".
    let path = dir.path().join("graph.arrow");
    let mut t = Table::read(&path).unwrap();
    t.metadata.insert("metric".into(), "inner_product".into());
    let (layer, node, nb) = (
        t.take_u32("layer").unwrap(),
        t.take_u32("node").unwrap(),
        t.take_u32("neighbor").unwrap(),
    );
    Table {
        columns: vec![],
        metadata: t.metadata.clone(),
    }
    .with("layer", Column::U32(layer))
    .with("node", Column::U32(node))
    .with("neighbor", Column::U32(nb))
    .write(&path)
    .unwrap();
    let loaded = FrozenHnsw::load(dir.path()).unwrap();
    assert_eq!(loaded.params().metric, Metric::InnerProductAugmented);
    let q = &data[dim..2 * dim];
    assert_eq!(
        loaded.search(q, 10, &|_| true),
        idx.search(q, 10, &|_| true)
    );
}
