//! Test harness shared by every crate's tests and benches, as a dev-dependency (rather than
//! `#[path]` imports across crates): a throwaway `redis-server` on an ephemeral loopback port, and
//! a throwaway 6-node Redis Cluster.

pub mod redis;
pub mod redis_cluster;
