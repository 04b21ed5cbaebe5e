//! The proptest properties of every wire message and signed record, one test binary with each
//! file a module.

mod common;

mod props_signed;
mod props_wire;
