//! The in-process integration tests of quiver-node, one test binary with each file a module.
//!
//! One binary instantiates and links the node stack once: as five binaries they took about
//! 3 minutes of a clean CI build (30–50 s each). Tests that start many nodes (`churn`, `sybil`,
//! `load`) run alone ([`common::heavy`]); the others may run beside each other
//! ([`common::light`]), as they did inside their own binaries.

mod common;

mod churn;
mod discovery;
mod inference;
mod load;
mod shard;
mod sybil;
