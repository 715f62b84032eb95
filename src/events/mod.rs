//! Interaction events after serving: the durable log the nightly build reads ([`log`]).
//! (Issue 6 in progress: ingestion over HTTP and the streaming features build on this.)

pub mod log;
