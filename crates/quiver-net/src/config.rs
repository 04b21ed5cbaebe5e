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
    /// Serve the DHT once AutoNAT has confirmed that others can dial this node; a client until
    /// then, and again whenever the node is found unreachable.
    #[default]
    Auto,
    /// Always serve the DHT (bootstrap nodes, or a user who knows the node is reachable).
    Server,
    /// Only query the DHT; never added to others' routing tables.
    Client,
}

/// How this node probes its own reachability (AutoNAT v1) and answers others' probes.
///
/// A probe asks a directly connected peer (never one that reached us through a relay: it may have
/// punched a hole to us) to dial this node back on its listen and observed addresses, on a new
/// connection from a new port; only a completed dial-back counts. Addresses are not
/// required to be global IPs: loopback and private test networks are probed like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoNatConfig {
    /// First probe this long after start (the bootstrap peers are usually connected by then).
    pub boot_delay: Duration,
    /// Period of probes while the answer is not yet settled.
    pub retry_interval: Duration,
    /// Period of probes once `confidence_max` answers agree.
    pub refresh_interval: Duration,
    /// Answers that must contradict the current verdict before it flips.
    pub confidence_max: usize,
    /// A peer asked to dial us back is not asked again for this long.
    pub server_reuse_period: Duration,
    /// Longest wait for one probe's answer.
    pub probe_timeout: Duration,
    /// As a server: dial-backs for one peer, and for all peers together, per `probe_period`;
    /// more requests are refused.
    pub max_probes_per_peer: usize,
    pub max_probes_total: usize,
    pub probe_period: Duration,
}

impl Default for AutoNatConfig {
    fn default() -> Self {
        AutoNatConfig {
            boot_delay: Duration::from_millis(1500),
            retry_interval: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(300),
            confidence_max: 3,
            server_reuse_period: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(15),
            max_probes_per_peer: 2,
            max_probes_total: 32,
            probe_period: Duration::from_secs(10),
        }
    }
}

impl AutoNatConfig {
    pub(crate) fn to_libp2p(&self) -> libp2p::autonat::Config {
        libp2p::autonat::Config {
            timeout: self.probe_timeout,
            boot_delay: self.boot_delay,
            retry_interval: self.retry_interval,
            refresh_interval: self.refresh_interval,
            throttle_server_period: self.server_reuse_period,
            // The event loop chooses the servers (`EventLoop::update_autonat_server`).
            use_connected: false,
            confidence_max: self.confidence_max,
            max_peer_addresses: 16,
            throttle_clients_global_max: self.max_probes_total,
            throttle_clients_peer_max: self.max_probes_per_peer,
            throttle_clients_period: self.probe_period,
            // Reachability is whatever a real dial-back shows, on any address.
            only_global_ips: false,
        }
    }
}

/// Limits of the circuit relay service a reachable node offers to NATed peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, in total and per peer.
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    /// A reservation lasts this long unless renewed.
    pub reservation_duration: Duration,
    /// Circuits relayed at once, in total and per peer.
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// A circuit is closed after this long or after this many bytes (each direction), whichever
    /// comes first: long enough to set up a hole punch, a claim and a short answer.
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
    /// New reservations and circuits one peer may ask for per minute.
    pub per_peer_per_minute: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 64,
            max_reservations_per_peer: 2,
            reservation_duration: Duration::from_secs(30 * 60),
            max_circuits: 32,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(5 * 60),
            max_circuit_bytes: 4 * 1024 * 1024,
            per_peer_per_minute: 30,
        }
    }
}

impl RelayLimits {
    pub(crate) fn to_libp2p(&self) -> libp2p::relay::Config {
        let mut c = libp2p::relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            reservation_rate_limiters: Vec::new(),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            circuit_src_rate_limiters: Vec::new(),
        };
        if let Some(n) = std::num::NonZeroU32::new(self.per_peer_per_minute) {
            c = c
                .reservation_rate_per_peer(n, Duration::from_secs(60))
                .circuit_src_per_peer(n, Duration::from_secs(60));
        }
        c
    }
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
    /// The memory transport with libp2p's plaintext security instead of Noise: peers still
    /// prove their identity keys to each other, but nothing is encrypted. For simulations so
    /// large that the handshakes' and ciphers' CPU time would hide what is measured; never on a
    /// real network (there is no socket to send it over).
    MemoryPlaintext,
}

/// Everything the swarm needs to start.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on. A QUIC address with port 0 beside a TCP address with port 0 on
    /// the same IP gets the port number TCP was given, so one number serves both.
    pub listen_addrs: Vec<Multiaddr>,
    /// Use QUIC: listen on the QUIC addresses of `listen_addrs` and dial QUIC addresses. Off, the
    /// node speaks only TCP (no UDP at all, e.g. where a firewall drops it).
    pub quic: bool,
    /// The transport; with [`TransportKind::Memory`] the listen and bootstrap addresses are
    /// `/memory/<n>` addresses.
    pub transport: TransportKind,
    /// Peers to join through.
    pub bootstrap: Vec<BootstrapAddr>,
    pub kad_mode: KadMode,
    /// Period of the routing-table refresh (own-key lookup, then the farther buckets short of
    /// peers), and the longest wait between refreshes of a table short of K peers.
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
    /// Reachability probing (AutoNAT).
    pub autonat: AutoNatConfig,
    /// Offer a relay to NATed peers while this node is reachable.
    pub relay_service: bool,
    pub relay_limits: RelayLimits,
    /// Relays a NATed node reserves a slot on (each gives it one relayed address per transport).
    pub max_relay_reservations: usize,
    /// Ask the local gateway for a port mapping (UPnP IGD). Off unless the user turns it on.
    pub upnp: bool,
    /// Find peers on the local network with mDNS (and answer others' queries), dialing them
    /// within the bounds of `lan.rs`. Off by default in the library (in-process tests must not
    /// multicast on the machine's network); the binaries turn it on unless `--no-mdns`. Runs
    /// only on the OS transport and only when some listen address is not loopback (a node bound
    /// to 127.0.0.1 has nothing to announce on a LAN and stays off it).
    pub mdns: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen_addrs: default_listen_addrs(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, true),
            quic: true,
            transport: TransportKind::Os,
            bootstrap: Vec::new(),
            kad_mode: KadMode::Auto,
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
            autonat: AutoNatConfig::default(),
            relay_service: true,
            relay_limits: RelayLimits::default(),
            max_relay_reservations: 2,
            upnp: false,
            mdns: false,
        }
    }
}

impl NetConfig {
    /// Whether mDNS runs: asked for, on the OS transport, with a listen address that is not
    /// loopback (see [`NetConfig::mdns`]).
    pub fn runs_mdns(&self) -> bool {
        self.mdns
            && self.transport == TransportKind::Os
            && self.listen_addrs.iter().any(|a| match a.iter().next() {
                Some(Protocol::Ip4(ip)) => !ip.is_loopback(),
                Some(Protocol::Ip6(ip)) => !ip.is_loopback(),
                _ => false,
            })
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

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
