//! The integration tests of the commands: the real `quiver`, `quiver-node` and `quiver-provider`
//! binaries as separate processes, on 127.0.0.1 or in network namespaces. One test binary with
//! each file a module: as ten binaries they were ten release compiles and links of their own.
//! Tests that run the model or many processes run alone ([`support::heavy`]); the others may
//! run beside each other ([`support::light`]).

mod support;

mod backend;
mod batching;
mod cli;
mod garbage;
mod gateway;
mod inference;
mod lan;
mod model_sources;
mod multiprocess;
mod nat;
mod partition;
mod split;
mod status_page;
mod surface;
mod trust;
mod upnp;
