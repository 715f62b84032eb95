//! Funnel: a multi-stage recommendation serving engine.
//!
//! The module tree mirrors the funnel, and data flows one way through it:
//! request → [`features`] ∥ [`sources`] → [`merge`] → [`ranking`] → [`rerank`] → response.
//! [`engine`] runs that path for one request under its budget; [`server`] is its HTTP surface and
//! [`config`] its typed configuration. [`bundle`] owns the versioned artifact bundle that the nightly `index-builder` publishes and
//! the server loads; [`catalog`] owns item metadata shared by every stage.

pub mod api;
pub mod breaker;
pub mod bundle;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod engine;
pub mod evaluation;
pub mod events;
pub mod features;
pub mod layout;
pub mod merge;
pub mod observe;
pub mod pipeline;
pub mod ranking;
pub mod rerank;
pub mod server;
pub mod sources;
pub mod table;

/// Dense index of an item inside one bundle (position in the catalog). Stable only within a bundle version.
pub type ItemIdx = u32;
/// Dense index of a user inside one bundle. Stable only within a bundle version.
pub type UserIdx = u32;
