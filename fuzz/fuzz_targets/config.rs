//! The node's TOML config file parser (`FileConfig::parse` of quiver-node).
//!
//! quiver-node depends on the engine (llama.cpp), which a fuzz build should not compile, so this
//! target compiles quiver-node's `src/config.rs` itself: that file needs only serde, toml and
//! thiserror. If it ever uses more of quiver-node, this build fails and says so.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/quiver-node/src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = config::FileConfig::parse(text) {
        // Whatever parses keeps its meaning when parsed again.
        assert_eq!(config::FileConfig::parse(text), Ok(cfg));
    }
});
