//! A TCP connection that never completes its handshake (TLS/Noise, yamux) is dropped after
//! `TCP_UPGRADE_TIMEOUT`: a silent peer cannot hold a pending-connection slot.

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use quiver_net::{KadMode, Keypair, NetConfig, NetEvent, TCP_UPGRADE_TIMEOUT, default_listen_addrs, spawn};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_connection_is_dropped_after_the_upgrade_timeout() {
    let cfg = NetConfig {
        kad_mode: KadMode::Server,
        listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), 0, false),
        ..NetConfig::default()
    };
    let (net, mut events, _task) =
        spawn(Keypair::generate_ed25519(), cfg, &mut Registry::default()).await.expect("starts");
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

    // Connect and say nothing.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("TCP connect");
    let opened = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(TCP_UPGRADE_TIMEOUT + Duration::from_secs(20), async {
        loop {
            match socket.read(&mut buf).await {
                // The node's side of multistream-select may speak first; keep reading.
                Ok(n) if n > 0 => continue,
                _ => return opened.elapsed(),
            }
        }
    })
    .await
    .expect("the node dropped the silent connection");
    // Timers never fire early: the drop is the timeout's, not some other refusal.
    assert!(closed + Duration::from_millis(500) >= TCP_UPGRADE_TIMEOUT, "dropped after {closed:?}");
    net.shutdown().await;
}
