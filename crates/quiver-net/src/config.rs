use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Serialize};

use crate::BootstrapAddr;

/// Whether this node answers DHT queries from others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Serve the DHT (the default until reachability detection decides per node).
    #[default]
    Server,
    /// Only query the DHT; never added to others' routing tables.
    Client,
}

/// Which transport the swarm runs over. Security (Noise) and multiplexing (yamux) are the same
/// on both, and so are the behaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// The operating system's network: TCP (TLS or Noise, yamux), QUIC-v1, DNS.
    #[default]
    Os,
    /// libp2p's in-process memory transport (`/memory/<n>` addresses, Noise, yamux): many nodes
    /// in one process, as the simulator runs them.
    Memory,
}

/// Everything the swarm needs to start.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on. A QUIC address with port 0 beside a TCP address with port 0 on
    /// the same IP gets the port number TCP was given, so one number serves both.
    pub listen_addrs: Vec<Multiaddr>,
    /// The transport; with [`TransportKind::Memory`] the listen and bootstrap addresses are
    /// `/memory/<n>` addresses.
    pub transport: TransportKind,
    /// Peers to join through.
    pub bootstrap: Vec<BootstrapAddr>,
    pub kad_mode: KadMode,
    /// Period of the full Kademlia bootstrap (routing-table refresh).
    pub kad_bootstrap_interval: Duration,
    /// Period of random walks (lookups of random keys) that keep the routing table full.
    pub random_walk_interval: Duration,
    /// Gossipsub heartbeat period (mesh maintenance).
    pub gossip_heartbeat: Duration,
    /// Largest gossip message accepted or sent.
    pub gossip_max_message: usize,
    /// Tighter limits for some topics; a bigger message there is invalid and penalised.
    pub gossip_topic_limits: Vec<(String, usize)>,
    /// Period of pings on every connection (liveness and RTT).
    pub ping_interval: Duration,
    /// Connections without activity are closed after this long.
    pub idle_connection_timeout: Duration,
    /// Connection limits.
    pub max_connections: u32,
    pub max_pending_incoming: u32,
    pub max_connections_per_peer: u32,
    /// Capacity of the command and event channels.
    pub channel_capacity: usize,
    /// Agent version sent in Identify, e.g. `quiver/0.1.0`.
    pub agent_version: String,
    /// DHT requests one peer may make of this node per second, sustained and in a burst;
    /// beyond that they are refused.
    pub dht_requests_per_sec: u32,
    pub dht_request_burst: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen_addrs: default_listen_addrs(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, true),
            transport: TransportKind::Os,
            bootstrap: Vec::new(),
            kad_mode: KadMode::Server,
            kad_bootstrap_interval: Duration::from_secs(300),
            random_walk_interval: Duration::from_secs(60),
            gossip_heartbeat: Duration::from_secs(1),
            gossip_max_message: 64 * 1024,
            // A heartbeat is at most MAX_HEARTBEAT_BYTES; 1 KiB more for the gossip envelope
            // (author, key, signature, topic).
            gossip_topic_limits: vec![
                (crate::behaviour::NODES_TOPIC.to_owned(), quiver_proto::MAX_HEARTBEAT_BYTES + 1024),
                (
                    quiver_proto::reputation::REPUTATION_TOPIC.to_owned(),
                    quiver_proto::reputation::MAX_REPORT_BYTES + 1024,
                ),
            ],
            ping_interval: Duration::from_secs(15),
            idle_connection_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_pending_incoming: 64,
            max_connections_per_peer: 4,
            channel_capacity: 1024,
            agent_version: format!("quiver/{}", env!("CARGO_PKG_VERSION")),
            dht_requests_per_sec: crate::kad_limit::DHT_REQUESTS_PER_SEC,
            dht_request_burst: crate::kad_limit::DHT_REQUEST_BURST,
        }
    }
}

/// TCP on `ip:port`, and QUIC-v1 on the same IP and port number over UDP when `quic` is set.
pub fn default_listen_addrs(ip: IpAddr, port: u16, quic: bool) -> Vec<Multiaddr> {
    let mut addrs = vec![Multiaddr::from(ip).with(Protocol::Tcp(port))];
    if quic {
        addrs.push(Multiaddr::from(ip).with(Protocol::Udp(port)).with(Protocol::QuicV1));
    }
    addrs
}
