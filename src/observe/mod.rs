//! What an operator watches: the Prometheus metrics ([`metrics`]), the training–serving skew
//! monitor ([`skew`]); the log format is set in [`crate::cli::init`]. Nothing on the request path depends on
//! them beyond recording into them.

pub mod metrics;
pub mod skew;
