use super::*;

#[test]
fn select_all_takes_every_model_that_fits_best_first() {
    let models = vec![
        ModelOption {
            quality: 0.40,
            cost_ms: 1.0,
            arch: 0,
        },
        ModelOption {
            quality: 0.45,
            cost_ms: 3.0,
            arch: 1,
        },
        ModelOption {
            quality: 0.42,
            cost_ms: 2.0,
            arch: 2,
        },
    ];
    let dissim = vec![0.5; 9];
    let mut p = Problem {
        models: &models,
        dissim: &dissim,
        lambda: 0.0,
        budget_ms: 10.0,
        workers: 1,
        max_models: 3,
        min_diversity: 0.0,
        max_nodes: 1000,
    };
    assert_eq!(select_all(&p).unwrap().chosen, vec![0, 1, 2]);
    p.max_models = 2;
    assert_eq!(select_all(&p).unwrap().chosen, vec![1, 2]);
    // 3 + 2 = 5 > 4.5: the third-best still fits after the second is refused.
    p.max_models = 3;
    p.budget_ms = 4.5;
    assert_eq!(select_all(&p).unwrap().chosen, vec![0, 1]);
    p.budget_ms = 0.5;
    assert!(select_all(&p).is_none());
}
use proptest::prelude::*;

fn problem<'a>(models: &'a [ModelOption], dissim: &'a [f64]) -> Problem<'a> {
    Problem {
        models,
        dissim,
        lambda: 0.1,
        budget_ms: 10.0,
        workers: 2,
        max_models: 3,
        min_diversity: 0.0,
        max_nodes: u64::MAX,
    }
}

fn instance() -> impl Strategy<Value = (Vec<ModelOption>, Vec<f64>, f64, f64, usize, usize, f64)> {
    (1usize..=16).prop_flat_map(|n| {
        (
            proptest::collection::vec(
                (0.2f64..0.6, 0.05f64..5.0, 0u16..4).prop_map(|(q, c, a)| ModelOption {
                    quality: q,
                    cost_ms: c,
                    arch: a,
                }),
                n,
            ),
            proptest::collection::vec(0.0f64..1.2, n * n),
            0.0f64..0.6,
            0.0f64..12.0,
            1usize..4,
            1usize..6,
            prop_oneof![Just(0.0), 0.0f64..1.0],
        )
    })
}

fn symmetric(n: usize, raw: &[f64]) -> Vec<f64> {
    let mut d = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            d[i * n + j] = if i == j {
                0.0
            } else {
                raw[i.min(j) * n + i.max(j)]
            };
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Branch and bound finds the brute-force optimum (same value, a feasible subset).
    #[test]
    fn matches_brute_force((models, raw, lambda, budget, workers, max_models, min_div) in instance()) {
        let n = models.len();
        let dissim = symmetric(n, &raw);
        let p = Problem {
            models: &models,
            dissim: &dissim,
            lambda,
            budget_ms: budget,
            workers,
            max_models,
            min_diversity: min_div,
            max_nodes: u64::MAX,
        };
        let bb = select(&p);
        let bf = brute_force(&p);
        match (&bb, &bf) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                prop_assert!(feasible(&p, &a.chosen), "{a:?}");
                prop_assert!((a.estimate - b.estimate).abs() < 1e-9, "bb {a:?} bf {b:?}");
                prop_assert!((estimate(&p, &a.chosen) - a.estimate).abs() < 1e-9);
                prop_assert!(a.exhaustive);
            }
            _ => prop_assert!(false, "bb {bb:?} bf {bf:?}"),
        }
    }
}

#[test]
fn diverse_pair_beats_the_best_single_only_with_enough_lambda() {
    let models = [
        ModelOption {
            quality: 0.45,
            cost_ms: 1.0,
            arch: 0,
        },
        ModelOption {
            quality: 0.44,
            cost_ms: 1.0,
            arch: 1,
        },
    ];
    let dissim = [0.0, 0.3, 0.3, 0.0];
    let mut p = problem(&models, &dissim);
    p.lambda = 0.0;
    assert_eq!(select(&p).unwrap().chosen, vec![0]);
    // Pair: 0.445 + 2λ·0.3/4 > 0.45 ⇔ λ > 0.0333.
    p.lambda = 0.05;
    assert_eq!(select(&p).unwrap().chosen, vec![0, 1]);
}

#[test]
fn budget_size_and_diversity_constrain() {
    let models = [
        ModelOption {
            quality: 0.5,
            cost_ms: 4.0,
            arch: 0,
        },
        ModelOption {
            quality: 0.49,
            cost_ms: 1.0,
            arch: 0,
        },
        ModelOption {
            quality: 0.48,
            cost_ms: 1.0,
            arch: 1,
        },
    ];
    let dissim = [0.0, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5, 0.0];
    let mut p = problem(&models, &dissim);
    p.lambda = 1.0;
    assert_eq!(select(&p).unwrap().chosen, vec![0, 1, 2]);
    // Two workers: {0,1,2} costs max(4, 6/2) = 4; a 3.5 ms budget rules model 0 out.
    p.budget_ms = 3.5;
    let s = select(&p).unwrap();
    assert_eq!(s.chosen, vec![1, 2]);
    assert_eq!(skip_reason(&p, &s.chosen, 0), SkipReason::Budget);
    p.budget_ms = 10.0;
    p.max_models = 2;
    let s = select(&p).unwrap();
    assert_eq!(s.chosen.len(), 2);
    p.max_models = 3;
    p.min_diversity = 1.0; // two arch-0 models can never be together
    let s = select(&p).unwrap();
    assert!(!(s.chosen.contains(&0) && s.chosen.contains(&1)), "{s:?}");
    p.budget_ms = 0.5;
    assert!(select(&p).is_none());
}

#[test]
fn node_cap_returns_the_best_found() {
    let n = 40;
    let models: Vec<ModelOption> = (0..n)
        .map(|i| ModelOption {
            quality: 0.4,
            cost_ms: 0.1,
            arch: (i % 5) as u16,
        })
        .collect();
    let dissim: Vec<f64> = (0..n * n)
        .map(|k| {
            if k / n == k % n {
                0.0
            } else {
                0.2 + ((k * 7919) % 97) as f64 / 200.0
            }
        })
        .collect();
    let dissim = symmetric(n, &dissim);
    let mut p = problem(&models, &dissim);
    p.max_models = 8;
    p.lambda = 0.5;
    p.max_nodes = 50;
    let s = select(&p).unwrap();
    assert!(!s.exhaustive);
    assert!(feasible(&p, &s.chosen));
}
