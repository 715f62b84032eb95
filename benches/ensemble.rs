//! Ensemble subset selection (branch and bound) on realistic random instances: 20 and 100
//! models from five architectures, correlated within an architecture, a budget that fits about
//! a third of the total cost. Targets: ≤ 50 µs for 20 models, ≤ 2 ms for 100.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use funnel::ranking::select::{select, ModelOption, Problem};
use rand::{rngs::StdRng, Rng, SeedableRng};

struct Instance {
    models: Vec<ModelOption>,
    dissim: Vec<f64>,
    budget: f64,
}

fn instance(n: usize, seed: u64) -> Instance {
    let mut rng = StdRng::seed_from_u64(seed);
    let models: Vec<ModelOption> = (0..n)
        .map(|i| ModelOption {
            quality: rng.gen_range(0.35..0.45),
            cost_ms: rng.gen_range(0.2..3.0),
            arch: (i % 5) as u16,
        })
        .collect();
    let mut dissim = vec![0.0; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let rho = if models[i].arch == models[j].arch {
                rng.gen_range(0.85..0.95)
            } else {
                rng.gen_range(0.5..0.8)
            };
            dissim[i * n + j] = 1.0 - rho;
            dissim[j * n + i] = 1.0 - rho;
        }
    }
    let total: f64 = models.iter().map(|m| m.cost_ms).sum();
    Instance {
        models,
        dissim,
        budget: total / 3.0 / 2.0,
    }
}

fn problem(i: &Instance, max_models: usize) -> Problem<'_> {
    Problem {
        models: &i.models,
        dissim: &i.dissim,
        lambda: 0.3,
        budget_ms: i.budget,
        workers: 2,
        max_models,
        min_diversity: 0.5,
        max_nodes: u64::MAX,
    }
}

fn bench(c: &mut Criterion) {
    for (n, max_models) in [(20, 3), (20, 5), (100, 3), (100, 5)] {
        let inst: Vec<Instance> = (0..8).map(|s| instance(n, s)).collect();
        let nodes: Vec<u64> = inst
            .iter()
            .map(|i| select(&problem(i, max_models)).map_or(0, |s| s.nodes))
            .collect();
        eprintln!("{n} models, max {max_models}: search nodes per instance {nodes:?}");
        let mut k = 0;
        c.bench_function(&format!("select/{n}_models/max_{max_models}"), |b| {
            b.iter(|| {
                k = (k + 1) % inst.len();
                black_box(select(&problem(&inst[k], max_models)))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
