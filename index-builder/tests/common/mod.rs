//! Shared test harness.
pub mod redis;
