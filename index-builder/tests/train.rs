//! End-to-end ranker training: a learnable synthetic example set built through the serving
//! encoder, trained for every architecture, saved, reloaded and re-scored.

use std::time::Instant;

use funnel::ranking::input::RecentItem;
use funnel::ranking::input::{CandidateSignals, DeviceKind, ItemSignals, UserSignals, EMB_DIM};
use funnel::ranking::Arch;
use funnel::ranking::{load_rankers, RankersManifest};
use index_builder::ensemble;
use index_builder::train::{auc, train_all, ExampleSet, TrainConfig, TrainReport, SEGMENTS};
use rand::{rngs::StdRng, Rng, SeedableRng};

const N_CATEGORIES: usize = 12;

struct World {
    user_emb: Vec<Vec<f32>>,
    user_prefs: Vec<Vec<f32>>,
    user_hist: Vec<u32>,
    user_dev: Vec<DeviceKind>,
    item_emb: Vec<Vec<f32>>,
    item_cats: Vec<Vec<u32>>,
    item_pop: Vec<f32>,
    item_age: Vec<f32>,
}

fn unit_vec(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..EMB_DIM).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn world(rng: &mut StdRng, n_users: usize, n_items: usize) -> World {
    let devices = [
        DeviceKind::Unknown,
        DeviceKind::Mobile,
        DeviceKind::Desktop,
        DeviceKind::Tv,
    ];
    World {
        user_emb: (0..n_users).map(|_| unit_vec(rng)).collect(),
        user_prefs: (0..n_users)
            .map(|_| {
                (0..N_CATEGORIES)
                    .map(|_| rng.gen_range(0.0f32..1.0))
                    .collect()
            })
            .collect(),
        user_hist: (0..n_users)
            .map(|u| match u % 5 {
                0 => 0,
                1 | 2 => rng.gen_range(1..=20),
                _ => rng.gen_range(21..400),
            })
            .collect(),
        user_dev: (0..n_users).map(|_| devices[rng.gen_range(0..4)]).collect(),
        item_emb: (0..n_items).map(|_| unit_vec(rng)).collect(),
        item_cats: (0..n_items)
            .map(|_| {
                (0..rng.gen_range(1..=3))
                    .map(|_| rng.gen_range(0..N_CATEGORIES as u32))
                    .collect()
            })
            .collect(),
        item_pop: (0..n_items).map(|_| rng.gen_range(0.0f32..8.0)).collect(),
        item_age: (0..n_items).map(|_| rng.gen_range(0.0f32..365.0)).collect(),
    }
}

/// `per_user` candidates per user; the label depends on the embedding match, category affinity,
/// popularity, freshness and the retrieval scores, through a known logistic model.
fn examples(
    w: &World,
    rng: &mut StdRng,
    users: std::ops::Range<usize>,
    per_user: usize,
) -> ExampleSet {
    let mut set = ExampleSet::with_capacity(users.len() * per_user);
    for u in users {
        let cold = w.user_hist[u] == 0;
        for _ in 0..per_user {
            let i = rng.gen_range(0..w.item_emb.len());
            let dot: f32 = w.user_emb[u]
                .iter()
                .zip(&w.item_emb[i])
                .map(|(a, b)| a * b)
                .sum();
            let cats = &w.item_cats[i];
            let affinity = cats
                .iter()
                .map(|&c| w.user_prefs[u][c as usize])
                .sum::<f32>()
                / cats.len() as f32;
            let ann = ((dot + 1.0) / 2.0 + rng.gen_range(-0.1f32..0.1)).clamp(0.0, 1.0);
            let cf = if rng.gen_bool(0.5) {
                rng.gen_range(0.0f32..1.0)
            } else {
                0.0
            };
            let mask = 1u8 | if cf > 0.0 { 2 } else { 0 };
            let fresh = (-w.item_age[i] / 30.0).exp();
            let logit = if cold {
                // Cold users: no embedding signal, popularity and freshness drive the label.
                0.9 * w.item_pop[i] - 3.6 + 2.0 * fresh
            } else {
                14.0 * dot + 4.0 * (affinity - 0.5) + 0.3 * (w.item_pop[i] - 4.0) + 2.0 * cf - 1.0
            };
            let noise: f32 = rng.gen_range(-0.5..0.5);
            let p = 1.0 / (1.0 + (-(logit + noise)).exp());
            let label = rng.gen_bool(p as f64);

            let user = UserSignals {
                embedding: (!cold).then_some(w.user_emb[u].as_slice()),
                category_prefs: if cold { &[] } else { &w.user_prefs[u] },
                history_len: w.user_hist[u],
                device: w.user_dev[u],
                has_session: u % 3 == 0,
                recent: &[],
                gap_days: None,
            };
            let item = ItemSignals {
                embedding: &w.item_emb[i],
                categories: cats,
                log_popularity: w.item_pop[i],
                trending: rng.gen_range(0.0f32..5.0),
                age_days: w.item_age[i],
                promoted: i % 17 == 0,
                engagement: [0.0; 2],
            };
            let cand = CandidateSignals {
                source_scores: [ann, cf, 0.0, 0.0],
                source_mask: mask,
                source_ranks: [0; 4],
                merged_score: 0.6 * ann + 0.4 * cf,
            };
            set.push(&user, &item, &cand, label, u as u32);
        }
    }
    set
}

fn check_report(report: &TrainReport, valid: &ExampleSet, dir: &std::path::Path) {
    assert_eq!(
        report.model_ids,
        ["logistic-v1", "mlp-v1", "dcn-v1", "fm-v1", "seq-v1"]
    );
    let m = report.specs.len();
    for (k, spec) in report.specs.iter().enumerate() {
        let a = spec.metrics.valid_auc.unwrap();
        // The report's AUC is the public metric on the report's predictions.
        assert_eq!(a, auc(&report.valid_predictions[k], &valid.y));
        // This world's labels follow the embedding dot and category affinity; the sequence
        // model's view holds only the affinity and popularity of those (no recent items here).
        let floor = if spec.arch == Arch::Seq { 0.55 } else { 0.7 };
        assert!(a > floor, "{} validation AUC {a}", spec.id);
        assert!(spec.metrics.valid_ndcg_at_20.unwrap() > 0.0);
        assert!(
            dir.join(&spec.weights_file).is_file(),
            "{}",
            spec.weights_file
        );
        assert_eq!(report.segment_metrics[k].len(), SEGMENTS.len());
        assert_eq!(
            report.segment_metrics[k]
                .iter()
                .map(|s| s.examples)
                .sum::<usize>(),
            valid.len()
        );
        println!(
            "{}: auc {:.4} ndcg@20 {:.4} logloss {:.4} steps {} train {:.2}s segments {:?}",
            spec.id,
            a,
            spec.metrics.valid_ndcg_at_20.unwrap(),
            spec.metrics.valid_logloss.unwrap(),
            spec.metrics.steps,
            spec.metrics.train_seconds,
            report.segment_metrics[k]
                .iter()
                .map(|s| (s.name.as_str(), s.auc.map(|v| (v * 1e4).round() / 1e4)))
                .collect::<Vec<_>>()
        );
    }

    // Correlation: symmetric, unit diagonal, valid range.
    assert_eq!(report.correlation.len(), m);
    for i in 0..m {
        assert_eq!(report.correlation[i].len(), m);
        assert_eq!(report.correlation[i][i], 1.0);
        for j in 0..m {
            assert_eq!(report.correlation[i][j], report.correlation[j][i]);
            assert!((-1.0..=1.0).contains(&report.correlation[i][j]));
        }
    }
    println!("correlation {:?}", report.correlation);

    // What the server does: read rankers.json, load every model, score the validation rows in
    // one batched pass each, and get the training-time predictions back.
    let (manifest, rankers) = load_rankers(dir).unwrap();
    assert_eq!(manifest, RankersManifest::read(dir).unwrap());
    assert_eq!(manifest.correlation, report.correlation);
    assert_eq!(manifest.rankers.len(), m);
    for (read, trained) in manifest.rankers.iter().zip(&report.specs) {
        // f32 fields round-trip exactly through JSON (serving must standardise identically);
        // f64 metrics may differ in the last ulp, so they are not compared bitwise.
        assert_eq!(read.id, trained.id);
        assert_eq!(read.feature_mean, trained.feature_mean);
        assert_eq!(read.feature_std, trained.feature_std);
        assert_eq!(read.weights_file, trained.weights_file);
        assert_eq!(read.metrics.segments.len(), trained.metrics.segments.len());
    }
    for (k, ranker) in rankers.iter().enumerate() {
        assert_eq!(ranker.id(), report.model_ids[k]);
        assert_eq!(ranker.arch(), report.specs[k].arch);
        let scores = ranker.score(&valid.x, valid.len()).unwrap();
        assert_eq!(scores.len(), valid.len());
        let max_diff = scores
            .iter()
            .zip(&report.valid_predictions[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-4, "{}: max diff {max_diff}", ranker.id());

        // Serving-sized batch: one request's 500 merged candidates.
        let n = valid.len().min(500);
        let rows = &valid.x[..n * funnel::ranking::input::INPUT_DIM];
        let t = Instant::now();
        for _ in 0..20 {
            assert_eq!(ranker.score(rows, n).unwrap().len(), n);
        }
        println!(
            "{}: {n}-row score {:.3} ms/call",
            ranker.id(),
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        );
    }
}

#[test]
fn trains_all_architectures_and_serving_reproduces_predictions() {
    let mut rng = StdRng::seed_from_u64(11);
    let w = world(&mut rng, 600, 3000);
    let train = examples(&w, &mut rng, 0..500, 60);
    let valid = examples(&w, &mut rng, 500..600, 60);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 8,
        batch_size: 256,
        ..TrainConfig::default()
    };
    let t = Instant::now();
    let report = train_all(&train, &valid, &cfg, dir.path()).unwrap();
    println!(
        "trained {} models on {} rows in {:.2}s",
        report.specs.len(),
        train.len(),
        t.elapsed().as_secs_f64()
    );
    check_report(&report, &valid, dir.path());

    // Same seed, same data → same weights and predictions.
    let dir2 = tempfile::tempdir().unwrap();
    let again = train_all(&train, &valid, &cfg, dir2.path()).unwrap();
    assert_eq!(again.valid_predictions, report.valid_predictions);
}

#[test]
fn step_cap_and_arch_subset() {
    let mut rng = StdRng::seed_from_u64(9);
    let w = world(&mut rng, 60, 400);
    let train = examples(&w, &mut rng, 0..50, 40);
    let valid = examples(&w, &mut rng, 50..60, 40);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        batch_size: 64,
        max_steps: 5,
        archs: vec![Arch::Dcn, Arch::Logistic],
        version: 3,
        ..TrainConfig::default()
    };
    let report = train_all(&train, &valid, &cfg, dir.path()).unwrap();
    assert_eq!(report.model_ids, ["dcn-v3", "logistic-v3"]);
    for spec in &report.specs {
        // 2000 rows / 64 = 32 steps per epoch; the cap cuts the first epoch short.
        assert_eq!(spec.metrics.steps, 5);
        assert_eq!(spec.metrics.epochs, 1);
        assert!(spec.metrics.final_train_loss.is_some());
    }
    let (manifest, rankers) = load_rankers(dir.path()).unwrap();
    assert_eq!(manifest.rankers.len(), 2);
    assert_eq!(rankers[0].arch(), Arch::Dcn);
}

#[test]
fn rejects_malformed_example_sets() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let w = world(&mut rng, 10, 50);
    let good = examples(&w, &mut rng, 0..10, 5);
    let cfg = TrainConfig::default();

    let mut bad = good.clone();
    bad.x.pop();
    assert!(train_all(&bad, &good, &cfg, dir.path()).is_err());
    let mut bad = good.clone();
    bad.y[0] = 0.5;
    assert!(train_all(&bad, &good, &cfg, dir.path()).is_err());
    let mut bad = good.clone();
    bad.x[7] = f32::NAN;
    assert!(train_all(&good, &bad, &cfg, dir.path()).is_err());
    let mut bad = good.clone();
    bad.group.pop();
    assert!(train_all(&bad, &good, &cfg, dir.path()).is_err());
    assert!(train_all(&ExampleSet::default(), &good, &cfg, dir.path()).is_err());
}

/// Time budget at ML-100K scale (~300K examples) with the default config. Run with
/// `cargo test --release -p index-builder --test train -- --ignored --nocapture`.
#[test]
#[ignore]
fn budget_300k_examples() {
    let mut rng = StdRng::seed_from_u64(5);
    let w = world(&mut rng, 3500, 5000);
    let train = examples(&w, &mut rng, 0..3000, 100);
    let valid = examples(&w, &mut rng, 3000..3500, 100);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let report = train_all(&train, &valid, &TrainConfig::default(), dir.path()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "300K: trained 3 models on {} rows in {secs:.2}s",
        train.len()
    );
    check_report(&report, &valid, dir.path());
    assert!(secs < 40.0, "took {secs:.1}s");
}

/// Time at ~3M examples (one pass under the default step cap). Run with
/// `cargo test --release -p index-builder --test train budget_3m -- --ignored --nocapture`.
#[test]
#[ignore]
fn budget_3m_examples() {
    let mut rng = StdRng::seed_from_u64(6);
    let w = world(&mut rng, 31_000, 20_000);
    let train = examples(&w, &mut rng, 0..30_000, 100);
    let valid = examples(&w, &mut rng, 30_000..31_000, 100);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let report = train_all(&train, &valid, &TrainConfig::default(), dir.path()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("3M: trained 3 models on {} rows in {secs:.2}s", train.len());
    check_report(&report, &valid, dir.path());
}

/// A planted sequence signal: a user's next item is in the category of the item they touched
/// last. Ten recent items of random categories, forty candidates per list; nothing else carries
/// signal. The sequence model sees the order; the factorization machine sees only the bag
/// (category affinity over all recent items, max / mean similarity to them).
fn next_follows_last(rng: &mut StdRng, users: usize) -> ExampleSet {
    const CATS: usize = 8;
    let centres: Vec<Vec<f32>> = (0..CATS).map(|_| unit_vec(rng)).collect();
    let items: Vec<(Vec<f32>, Vec<u32>)> = (0..400)
        .map(|i| {
            let c = i % CATS;
            let v: Vec<f32> = centres[c]
                .iter()
                .map(|x| x + 0.15 * rng.gen_range(-1.0f32..1.0))
                .collect();
            (v, vec![c as u32])
        })
        .collect();
    let mut set = ExampleSet::default();
    for u in 0..users {
        let recent_idx: Vec<usize> = (0..10).map(|_| rng.gen_range(0..items.len())).collect();
        let recent: Vec<RecentItem> = recent_idx
            .iter()
            .map(|&i| RecentItem::new(&items[i].0, &items[i].1))
            .collect();
        let mut prefs = vec![0.0f32; CATS];
        for &i in &recent_idx {
            prefs[i % CATS] += 0.1;
        }
        let last = recent_idx[0] % CATS;
        let user = UserSignals {
            embedding: None,
            category_prefs: &prefs,
            history_len: 50,
            device: DeviceKind::Unknown,
            has_session: false,
            recent: &recent,
            gap_days: Some(0.0),
        };
        for _ in 0..40 {
            let i = rng.gen_range(0..items.len());
            let item = ItemSignals {
                embedding: &items[i].0,
                categories: &items[i].1,
                log_popularity: rng.gen_range(0.0f32..5.0),
                trending: 0.0,
                age_days: 10.0,
                promoted: false,
                engagement: [0.0; 2],
            };
            let cand = CandidateSignals {
                source_scores: [0.5, 0.5, 0.0, 0.0],
                source_mask: 0b11,
                source_ranks: [1, 1, 0, 0],
                merged_score: 0.5,
            };
            set.push(&user, &item, &cand, i % CATS == last, u as u32);
        }
    }
    set
}

#[test]
fn the_sequence_model_finds_a_planted_order_signal_and_the_ensemble_keeps_it() {
    let mut rng = StdRng::seed_from_u64(21);
    let train = next_follows_last(&mut rng, 300);
    let valid = next_follows_last(&mut rng, 100);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 30,
        batch_size: 256,
        archs: vec![Arch::Fm, Arch::Seq],
        ..TrainConfig::default()
    };
    let report = train_all(&train, &valid, &cfg, dir.path()).unwrap();
    let ndcg = |id: &str| -> f64 {
        let k = report.model_ids.iter().position(|m| m == id).unwrap();
        report.specs[k].metrics.valid_ndcg_at_20.unwrap()
    };
    let (fm, seq) = (ndcg("fm-v1"), ndcg("seq-v1"));
    println!("validation NDCG@20: fm {fm:.4}, seq {seq:.4}");
    assert!(seq > 0.9, "the order signal is learnable exactly: {seq}");
    assert!(seq > fm + 0.2, "seq {seq} vs the bag-of-items fm {fm}");
    // The ensemble's best strategy on the same validation users does not lose the signal.
    let manifest = ensemble::fit(&report, &valid).unwrap();
    let best = manifest
        .strategies
        .iter()
        .filter_map(|s| s.ndcg_at_20)
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(best >= seq - 1e-9, "ensemble {best} vs best member {seq}");
    assert!(manifest.best_strategy().is_some());
}
