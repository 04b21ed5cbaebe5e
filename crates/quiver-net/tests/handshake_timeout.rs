//! A TCP connection that never completes its handshake (TLS/Noise, yamux) is dropped after
//! `TCP_UPGRADE_TIMEOUT`: a silent peer cannot hold a pending-connection slot. The node counts
//! each such drop (`quiver_tcp_upgrade_timeouts_total`), which tells the timeout from any other
//! refusal.

use std::time::Duration;

use prometheus_client::registry::Registry;
use quiver_net::{KadMode, Keypair, NetConfig, NetEvent, TCP_UPGRADE_TIMEOUT, default_listen_addrs, spawn};
use tokio::io::AsyncReadExt;

use crate::metric_lines;

const TIMEOUTS: &str = "quiver_tcp_upgrade_timeouts_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_connection_is_dropped_after_the_upgrade_timeout() {
    let cfg = NetConfig {
        kad_mode: KadMode::Server,
        listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), 0, false),
        ..NetConfig::default()
    };
    let mut registry = Registry::default();
    let (net, mut events, _task) = spawn(Keypair::generate_ed25519(), cfg, &mut registry).await.expect("starts");
    let port = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(NetEvent::NewListenAddr(addr)) = events.recv().await {
                let port = addr.iter().find_map(|p| match p {
                    quiver_net::Protocol::Tcp(port) => Some(port),
                    _ => None,
                });
                if let Some(port) = port {
                    return port;
                }
            }
        }
    })
    .await
    .expect("listening on TCP");

    assert_eq!(metric_lines(&registry, TIMEOUTS), [format!("{TIMEOUTS} 0")]);

    // Connect and say nothing.
    let mut socket = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("TCP connect in time")
        .expect("TCP connect");
    let mut buf = [0u8; 256];
    tokio::time::timeout(TCP_UPGRADE_TIMEOUT + Duration::from_secs(20), async {
        loop {
            match socket.read(&mut buf).await {
                // The node's side of multistream-select may speak first; keep reading.
                Ok(n) if n > 0 => continue,
                _ => return,
            }
        }
    })
    .await
    .expect("the node dropped the silent connection");
    // The drop is the upgrade timeout's (counted before the socket closes), not some other
    // refusal.
    assert_eq!(metric_lines(&registry, TIMEOUTS), [format!("{TIMEOUTS} 1")]);
    net.shutdown().await;
}
