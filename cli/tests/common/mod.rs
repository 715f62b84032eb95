//! What the process-level tests share: a small bundle built by the index-builder library and a
//! free loopback port.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::synth::{self, SynthConfig};

/// A small synthetic bundle (200 users, 500 items) in `dir/bundle`.
pub fn build_bundle(dir: &Path) -> PathBuf {
    let data = synth::generate(&SynthConfig::new(200, 500, 6_000, 5));
    let files = synth::write(&data, &dir.join("data")).expect("synth");
    let mut cfg = BuildConfig::default();
    cfg.rankers.epochs = 1;
    cfg.als.iterations = 2;
    let out = dir.join("bundle");
    run(BuildArgs {
        interactions: files.interactions,
        items: Some(files.items),
        out: out.clone(),
        holdout: None,
        redis: None,
        config: cfg,
        registry: FeatureRegistry::bundled().expect("defs"),
        quiet: true,
        seed: 5,
    })
    .expect("build");
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}
