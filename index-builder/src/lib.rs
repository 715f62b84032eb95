//! The index-builder library: the nightly job that turns interaction logs and an item catalog into
//! a versioned artifact bundle the Funnel server loads. Each build step is its own module, in the
//! order a build runs them: ingest → dataset → split → (embed, ann, cf, content, trending) as a
//! stage → examples → train → ensemble → batch → online_features → eval → publish (build.rs).

pub mod baselines;
pub mod batch;
pub mod build;
pub mod cf;
pub mod config;
pub mod content;
pub mod dataset;
pub mod embed;
pub mod ensemble;
pub mod eval;
pub mod examples;
pub mod ingest;
pub mod online;
pub mod online_features;
pub mod progress;
pub mod served;
pub mod split;
pub mod stage;
pub mod synth;
pub mod train;
pub mod trending;
