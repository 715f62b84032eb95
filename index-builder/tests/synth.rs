//! Synthetic data: determinism (same seed → same data and byte-identical files, independent of
//! thread count), planted structure (taste clusters, popularity skew, activity tail, freshness,
//! flags), and the write → ingest round trip.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use index_builder::ingest::{read_interactions, read_items};
use index_builder::synth::{generate, write, SynthConfig, SynthData, DEFAULT_END_TS};
use tempfile::TempDir;

fn small() -> SynthConfig {
    SynthConfig::new(2_000, 3_000, 60_000, 42)
}

#[test]
fn same_seed_same_data_and_bytes() {
    let cfg = small();
    let a = generate(&cfg);
    let b = generate(&cfg);
    assert!(a == b);

    // Thread count must not matter.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let c = pool.install(|| generate(&cfg));
    assert!(a == c);

    let d1 = TempDir::new().unwrap();
    let d2 = TempDir::new().unwrap();
    let f1 = write(&a, d1.path()).unwrap();
    let f2 = write(&b, &d2.path().join("nested/out")).unwrap();
    assert_eq!(
        std::fs::read(&f1.interactions).unwrap(),
        std::fs::read(&f2.interactions).unwrap()
    );
    assert_eq!(
        std::fs::read(&f1.items).unwrap(),
        std::fs::read(&f2.items).unwrap()
    );

    let other = generate(&SynthConfig { seed: 43, ..cfg });
    assert!(a.interactions != other.interactions);
}

#[test]
fn sizes_ids_and_catalog_shape() {
    let cfg = small();
    let data = generate(&cfg);
    assert_eq!(data.interactions.len(), cfg.interactions);
    assert_eq!(data.items.len(), cfg.items);

    let item_ids: Vec<u64> = data.items.iter().map(|i| i.item_id).collect();
    assert_eq!(item_ids, (1..=cfg.items as u64).collect::<Vec<_>>());
    let users: HashSet<u64> = data.interactions.iter().map(|r| r.user_id).collect();
    assert!(users == (1..=cfg.users as u64).collect::<HashSet<_>>());
    assert!(data
        .interactions
        .iter()
        .all(|r| (1..=cfg.items as u64).contains(&r.item_id)));

    // Sorted by time, within the span, with known events and matching weights.
    assert!(data
        .interactions
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp));
    let start = DEFAULT_END_TS - 180 * 86_400;
    for r in &data.interactions {
        assert!((start..DEFAULT_END_TS).contains(&r.timestamp));
        let w = match r.event_type.as_deref() {
            Some("impression") => 0.0,
            Some("click") => 1.0,
            Some("like") => 2.0,
            Some("purchase") => 4.0,
            other => panic!("unexpected event {other:?}"),
        };
        assert_eq!(r.weight, Some(w));
        assert_eq!(r.rating, None);
    }

    let creators: HashSet<u64> = data.items.iter().filter_map(|i| i.creator_id).collect();
    assert!(creators.len() > 1 && creators.iter().all(|&c| (1..=150).contains(&c)));
    for it in &data.items {
        assert!((1..=3).contains(&it.categories.len()), "{it:?}");
        assert!(it.creator_id.is_some() && it.published_at.is_some());
        assert!(!it.title.is_empty());
    }
    let cats: HashSet<&str> = data
        .items
        .iter()
        .flat_map(|i| i.categories.iter().map(String::as_str))
        .collect();
    assert_eq!(cats.len(), 20);

    let share = |f: &dyn Fn(&index_builder::ingest::RawItem) -> bool| {
        data.items.iter().filter(|i| f(i)).count() as f64 / data.items.len() as f64
    };
    let fresh_cut = DEFAULT_END_TS - 7 * 86_400;
    let fresh = share(&|i| i.published_at.unwrap() >= fresh_cut);
    assert!((0.07..0.13).contains(&fresh), "fresh share {fresh}");
    let flagged = share(&|i| i.policy_flag);
    assert!((0.003..0.02).contains(&flagged), "flagged share {flagged}");
    let promoted = share(&|i| i.promoted);
    assert!(
        (0.01..0.035).contains(&promoted),
        "promoted share {promoted}"
    );
}

#[test]
fn interactions_follow_publication_and_fresh_items_trend() {
    let data = generate(&small());
    let published: HashMap<u64, i64> = data
        .items
        .iter()
        .map(|i| (i.item_id, i.published_at.unwrap()))
        .collect();
    for r in &data.interactions {
        assert!(r.timestamp >= published[&r.item_id], "{r:?}");
    }
    // Fresh items get traffic, concentrated in the last week.
    let fresh_cut = DEFAULT_END_TS - 7 * 86_400;
    let last_week: Vec<_> = data
        .interactions
        .iter()
        .filter(|r| r.timestamp >= fresh_cut)
        .collect();
    let fresh_hits = last_week
        .iter()
        .filter(|r| published[&r.item_id] >= fresh_cut)
        .count();
    let share = fresh_hits as f64 / last_week.len() as f64;
    assert!(
        (0.05..0.6).contains(&share),
        "fresh items' share of last-week traffic {share}"
    );
}

fn categories_of(data: &SynthData) -> HashMap<u64, &[String]> {
    data.items
        .iter()
        .map(|i| (i.item_id, i.categories.as_slice()))
        .collect()
}

#[test]
fn users_concentrate_on_their_cluster_categories() {
    let data = generate(&small());
    let cats = categories_of(&data);
    let mut per_user: HashMap<u64, Vec<u64>> = HashMap::new();
    for r in &data.interactions {
        per_user.entry(r.user_id).or_default().push(r.item_id);
    }
    let mut shares = Vec::new();
    for items in per_user.values().filter(|v| v.len() >= 20) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in items {
            for c in cats[i] {
                *counts.entry(c.as_str()).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let top3: HashSet<&str> = ranked.iter().take(3).map(|(c, _)| *c).collect();
        let inside = items
            .iter()
            .filter(|i| cats[*i].iter().any(|c| top3.contains(c.as_str())))
            .count();
        shares.push(inside as f64 / items.len() as f64);
    }
    assert!(shares.len() > 200, "{} active users", shares.len());
    shares.sort_by(f64::total_cmp);
    let median = shares[shares.len() / 2];
    assert!(median > 0.7, "median top-3 category share {median}");

    // And users do not all like the same thing: top categories differ across users.
    let mut tops: HashSet<String> = HashSet::new();
    for items in per_user.values().filter(|v| v.len() >= 20) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in items {
            for c in cats[i] {
                *counts.entry(c.as_str()).or_default() += 1;
            }
        }
        if let Some((c, _)) = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        {
            tops.insert(c.to_string());
        }
    }
    assert!(
        tops.len() >= 8,
        "only {} distinct favourite categories",
        tops.len()
    );
}

#[test]
fn popularity_and_activity_are_skewed() {
    let cfg = small();
    let data = generate(&cfg);
    let mut item_counts: HashMap<u64, usize> = HashMap::new();
    let mut user_counts: HashMap<u64, usize> = HashMap::new();
    for r in &data.interactions {
        *item_counts.entry(r.item_id).or_default() += 1;
        *user_counts.entry(r.user_id).or_default() += 1;
    }
    let mut ic: Vec<usize> = item_counts.values().copied().collect();
    ic.sort_unstable_by(|a, b| b.cmp(a));
    let top1pct: usize = ic.iter().take(cfg.items / 100).sum();
    let share = top1pct as f64 / cfg.interactions as f64;
    assert!(share > 0.15, "top 1% of items hold {share} of traffic");

    let uc: Vec<usize> = user_counts.values().copied().collect();
    let min = *uc.iter().min().unwrap();
    let max = *uc.iter().max().unwrap();
    let light = uc.iter().filter(|&&c| c <= 3).count();
    let heavy = uc.iter().filter(|&&c| c >= 100).count();
    assert!(min >= 1 && max >= 300, "activity range {min}..{max}");
    assert!(light >= 20 && heavy >= 20, "light {light}, heavy {heavy}");
}

#[test]
fn write_then_ingest_round_trips() {
    let data = generate(&SynthConfig::new(300, 500, 8_000, 7));
    let dir = TempDir::new().unwrap();
    let files = write(&data, dir.path()).unwrap();
    assert_eq!(files.interactions, dir.path().join("interactions.parquet"));
    assert_eq!(files.items, dir.path().join("items.parquet"));
    assert!(read_interactions(&files.interactions).unwrap() == data.interactions);
    assert!(read_items(&files.items).unwrap() == data.items);
    // No temp files left behind.
    let names: HashSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        HashSet::from(["interactions.parquet".into(), "items.parquet".into()])
    );
}

#[test]
fn degenerate_configs_do_not_panic() {
    for cfg in [
        SynthConfig::new(0, 0, 0, 1),
        SynthConfig::new(5, 0, 100, 1),
        SynthConfig::new(0, 5, 100, 1),
        SynthConfig::new(10, 1, 3, 1),
        SynthConfig {
            n_categories: 0,
            n_clusters: 0,
            categories_per_cluster: 99,
            zipf_exponent: f64::NAN,
            activity_sigma: -1.0,
            fresh_share: 2.0,
            span_days: 0,
            fresh_days: 0,
            end_ts: i64::MIN,
            n_creators: 0,
            ..SynthConfig::new(20, 30, 200, 1)
        },
    ] {
        let data = generate(&cfg);
        let expected = if cfg.users == 0 || cfg.items == 0 {
            0
        } else {
            cfg.interactions
        };
        assert_eq!(data.interactions.len(), expected, "{cfg:?}");
        if !data.interactions.is_empty() {
            let dir = TempDir::new().unwrap();
            let files = write(&data, dir.path()).unwrap();
            assert_eq!(
                read_interactions(&files.interactions).unwrap().len(),
                expected
            );
        }
    }
}

/// Peak resident memory so far (Linux), for the scale report.
fn peak_rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(|| "unknown".to_string(), |kb| format!("{} MiB", kb / 1024))
}

/// Scale check: `cargo test --release -p index-builder --test synth -- --ignored --nocapture`.
#[test]
#[ignore = "scale benchmark; run in release mode"]
fn scale_100k_users_200k_items_5m_interactions() {
    let cfg = SynthConfig::new(100_000, 200_000, 5_000_000, 1);
    let t = Instant::now();
    let data = generate(&cfg);
    let gen_s = t.elapsed().as_secs_f64();
    let dir = TempDir::new().unwrap();
    let t = Instant::now();
    let files = write(&data, dir.path()).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    let t = Instant::now();
    let back = read_interactions(&files.interactions).unwrap();
    let read_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let items = read_items(&files.items).unwrap();
    let read_items_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&files.interactions).unwrap().len();
    println!(
        "generate {gen_s:.2}s, write {write_s:.2}s ({:.1} MiB; peak RSS after generate+write {peak}), read 5M interactions {read_s:.2}s, read 200K items {read_items_s:.2}s",
        size as f64 / (1 << 20) as f64
    );
    assert_eq!(back.len(), 5_000_000);
    assert_eq!(items.len(), 200_000);
    assert!(back == data.interactions);
}
