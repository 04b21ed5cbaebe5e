//! The integration tests of quiver-net (real swarms on 127.0.0.1), one test binary with each file
//! a module: one binary instantiates and links the network stack once instead of once per file.

mod bootstrap_count;
mod dht_limits;
mod handshake_timeout;
mod relay_limits;
