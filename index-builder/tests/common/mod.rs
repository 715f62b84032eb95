//! Shared test harness (the workspace's testkit crate).
#[allow(unused_imports)] // not every test binary starts a redis-server
pub use funnel_testkit::redis;
