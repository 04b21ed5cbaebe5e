//! The integration tests of quiver-net (real swarms on 127.0.0.1), one test binary with each file
//! a module: one binary instantiates and links the network stack once instead of once per file.

mod bootstrap_count;
mod connect;
mod dht_limits;
mod handshake_timeout;
mod join_refresh;
mod relay_limits;

use std::time::Duration;

use quiver_net::{BootstrapAddr, KadMode, Multiaddr, NetConfig, NetEvent, default_listen_addrs};
use tokio::sync::mpsc;

/// A node on 127.0.0.1 (ephemeral ports) joining through `bootstrap`. A node that others join
/// through is a DHT server by definition (like `--bootstrap-node`); the others decide from
/// reachability.
fn loopback_config(bootstrap: Vec<BootstrapAddr>) -> NetConfig {
    NetConfig {
        kad_mode: if bootstrap.is_empty() { KadMode::Server } else { KadMode::Auto },
        listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), 0, false),
        bootstrap,
        ..NetConfig::default()
    }
}

/// The first full address a node reports listening on (10 s at most).
async fn first_listen_addr(events: &mut mpsc::Receiver<NetEvent>) -> Multiaddr {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(NetEvent::NewListenAddr(addr)) => return addr,
                Some(_) => {}
                None => panic!("the node stopped"),
            }
        }
    })
    .await
    .expect("listening")
}

/// The samples of metric `name` in `registry`, as Prometheus text lines (`name{labels} value`).
fn metric_lines(registry: &prometheus_client::registry::Registry, name: &str) -> Vec<String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("metrics encode");
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .map(str::to_owned)
        .collect()
}
