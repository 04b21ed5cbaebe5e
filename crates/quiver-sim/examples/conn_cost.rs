//! CPU cost of one connection between two real nodes over the memory transport: `B` dials
//! `A`, the connection's protocols run (plaintext handshake, yamux, Identify both ways, Ping,
//! GossipSub's subscription exchange, Kademlia's routing-table insertion), then `B` closes it
//! (by blocking `A` for a moment) and waits until it is gone. Prints the process CPU per
//! connection, less what the two idle nodes use in the same time.
//!
//! `cargo run --release -p quiver-sim --example conn_cost -- 200 [noise|plaintext] [current]`
//! (plaintext unless `noise` is given; a multi-threaded runtime unless `current` is given).

use std::time::{Duration, Instant};

use anyhow::Context;
use quiver_net::KadMode;
use quiver_node::{Node, NodeConfig, TransportKind};
use quiver_sim::cluster::{ProcessCost, memory_addr, memory_any};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(transport: TransportKind) -> NodeConfig {
    NodeConfig {
        listen_addrs: vec![memory_any()],
        transport,
        heartbeat_interval: Duration::from_secs(3600),
        ping_interval: Duration::from_secs(60),
        kad_mode: KadMode::Server,
        relay_service: false,
        ..NodeConfig::default()
    }
}

fn main() -> anyhow::Result<()> {
    // `current`: both nodes on one single-threaded runtime, to see what cross-thread wake-ups
    // add to a connection's cost.
    let runtime = if std::env::args().nth(3).as_deref() == Some("current") {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    };
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().context("the argument is the number of connections")?,
        None => 200,
    };
    let transport = match std::env::args().nth(2).as_deref() {
        Some("noise") => TransportKind::Memory,
        _ => TransportKind::MemoryPlaintext,
    };
    let a = Node::start(config(transport)).await?;
    let b = Node::start(config(transport)).await?;
    let addr = memory_addr(&a).await.context("node A listens on no memory address")?;
    let (addr, peer) = quiver_net::split_peer_id(addr);
    let peer = peer.context("node A's address names no peer")?;

    let idle_start = (ProcessCost::now().cpu_secs, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rate = (ProcessCost::now().cpu_secs - idle_start.0) / idle_start.1.elapsed().as_secs_f64();

    let (cpu0, t0) = (ProcessCost::now().cpu_secs, Instant::now());
    for _ in 0..n {
        b.net().connect(peer, vec![addr.clone()]).await?;
        // Let every protocol finish its exchange on the new connection.
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.net().block(peer).await?;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !b.net().status().await?.connected_peers.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
        .await
        .context("the connection did not close")??;
        b.net().unblock(peer).await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = ProcessCost::now().cpu_secs - cpu0 - idle_rate * wall;
    println!(
        "{n} connections ({transport:?}): {:.2} ms of CPU each (idle use {:.1}% of a core subtracted; {wall:.1} s wall)",
        cpu * 1000.0 / n as f64,
        idle_rate * 100.0
    );
    Ok(())
}
