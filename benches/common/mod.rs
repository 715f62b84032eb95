//! What the 200K-item benches share: the synthetic bench bundle, built once and cached.

use std::path::{Path, PathBuf};

use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::synth::{self, SynthConfig};

pub const USERS: usize = 50_000;
pub const ITEMS: usize = 200_000;
pub const INTERACTIONS: usize = 1_500_000;

/// The 200K-item bench bundle: `FUNNEL_BENCH_BUNDLE=DIR` when set (e.g. the load tests'
/// `target/loadtest/bundle-50000u-200000i-1500000n-s11`, the same data), else built once into
/// `target/bench-bundle-200k/` (a few minutes) and reused.
pub fn bundle_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FUNNEL_BENCH_BUNDLE") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-bundle-200k");
    let bundle = root.join("bundle");
    if bundle.join("CURRENT").exists() {
        return bundle;
    }
    eprintln!(
        "building the 200K-item bench bundle into {} …",
        root.display()
    );
    let data = synth::generate(&SynthConfig::new(USERS, ITEMS, INTERACTIONS, 11));
    let files = synth::write(&data, &root.join("data")).expect("synth");
    drop(data);
    run(BuildArgs {
        interactions: files.interactions,
        items: Some(files.items),
        out: bundle.clone(),
        holdout: None,
        redis: None,
        config: BuildConfig::default(),
        registry: FeatureRegistry::bundled().expect("defs"),
        quiet: true,
        seed: 11,
    })
    .expect("build bench bundle");
    bundle
}
