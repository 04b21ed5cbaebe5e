//! Helpers shared by the node's integration tests: loopback-only nodes with fast timers.
#![allow(dead_code)]

use std::time::Duration;

use std::sync::Arc;

use quiver_engine::llama::{LlamaConfig, LlamaEngine};
use quiver_net::default_listen_addrs;
use quiver_node::{BootstrapAddr, Node, NodeConfig};

/// TCP and QUIC on 127.0.0.1 with ephemeral ports, and short periods so tests converge fast.
pub fn loopback_config() -> NodeConfig {
    NodeConfig {
        listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), 0, true),
        heartbeat_interval: Duration::from_millis(500),
        node_ttl: Duration::from_secs(30),
        random_walk_interval: Duration::from_secs(2),
        kad_bootstrap_interval: Duration::from_secs(10),
        ..NodeConfig::default()
    }
}

/// The TCP address (with `/p2p/`) a node listens on, once it is up.
pub async fn tcp_addr(node: &Node) -> BootstrapAddr {
    listen_addr(node, "/tcp/").await
}

/// The first address (with `/p2p/`) a node listens on whose text contains `part`, once it is up.
pub async fn listen_addr(node: &Node, part: &str) -> BootstrapAddr {
    let mut rx = node.listen_addrs();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(a) = rx.borrow().iter().find(|a| a.to_string().contains(part)) {
                return a.clone();
            }
            rx.changed().await.expect("node stopped");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("node reported no address with {part}"));
    addr.to_string().parse().expect("own address parses")
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
pub async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// The default model on llama.cpp, from `QUIVER_MODEL_DIR` or `target/models`.
pub fn load_engine(threads: u32, context_size: u32) -> Arc<LlamaEngine> {
    let dir = std::env::var("QUIVER_MODEL_DIR")
        .unwrap_or_else(|_| format!("{}/../../target/models", env!("CARGO_MANIFEST_DIR")));
    let path = std::path::Path::new(&dir).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "the default model is missing from {dir}: run scripts/fetch-model.sh");
    Arc::new(
        LlamaEngine::load(
            &path,
            "smollm2-135m",
            None,
            LlamaConfig { threads, context_size, slots: 0, ..LlamaConfig::default() },
        )
        .expect("model loads"),
    )
}

/// Tests that start many nodes hold this exclusively; the others share it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For a test that starts many nodes: runs alone in this test binary (the machines have two
/// cores; two such tests at once only starve each other's timers).
pub async fn heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// For a test of a few nodes: may run beside other such tests, never beside a heavy one.
pub async fn light() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}
