//! The composed libp2p behaviour and how each part is configured.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageId, PeerScoreParams, PeerScoreThresholds, TopicScoreParams};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, allow_block_list, autonat, connection_limits, dcutr, identify, mdns, ping, relay, upnp};
use sha2::{Digest, Sha256};

use crate::{IDENTIFY_PROTOCOL, KAD_PROTOCOL, NetConfig, NetError};

/// The gossip topic of node heartbeats. Scored on its own terms (see [`nodes_topic_params`]).
pub const NODES_TOPIC: &str = "quiver/1/nodes";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Peers banned by the reputation system: their connections are refused and closed.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Kademlia behind per-peer limits on inbound requests.
    pub kad: crate::kad_limit::LimitedKad,
    /// GossipSub, its streams not holding connections open (see `gossip_idle.rs`).
    pub gossipsub: crate::gossip_idle::IdleGossip,
    /// Application stream protocols (`/quiver/infer/1`, `/quiver/claim/1`), driven through
    /// `libp2p_stream::Control` handles outside the event loop.
    pub stream: libp2p_stream::Behaviour,
    /// Reachability probes (AutoNAT v1): asks peers to dial us back, and dials others back.
    /// Absent on the memory transport: a dial-back needs an IP address (AutoNAT checks the
    /// one the probe came from), so every probe there is refused, and in one process every
    /// node can dial every other anyway.
    pub autonat: Toggle<autonat::Behaviour>,
    /// The relay service offered to NATed peers; advertised only while we are reachable.
    /// Absent, like the relay client and hole punching, on the memory transport: no node there
    /// is behind a NAT, and with no relayed connection there is nothing to punch through.
    pub relay: Toggle<relay::Behaviour>,
    /// Reservations on relays and circuits through them (absent on transports without a relay
    /// client, e.g. in-memory simulations).
    pub relay_client: Toggle<relay::client::Behaviour>,
    /// Hole punching: upgrades a relayed connection to a direct one.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// Port mapping on the local gateway, only with `NetConfig::upnp`.
    pub upnp: Toggle<upnp::tokio::Behaviour>,
    /// LAN discovery (mDNS), only when [`NetConfig::runs_mdns`]. What it finds goes through
    /// the bounded book of `lan.rs` before anything is dialed.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    /// Every behaviour of a QUIVer node. `relay_client` is the behaviour half of the relay
    /// transport the swarm was built with, if any.
    pub(crate) fn new(
        key: &Keypair,
        relay_client: Option<relay::client::Behaviour>,
        cfg: &NetConfig,
    ) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(cfg.max_connections))
            .with_max_pending_incoming(Some(cfg.max_pending_incoming))
            .with_max_pending_outgoing(Some(cfg.max_pending_incoming))
            .with_max_established_per_peer(Some(cfg.max_connections_per_peer));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(cfg.agent_version.clone())
                .with_push_listen_addr_updates(true)
                .with_cache_size(256),
        );

        let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_cfg
            .disjoint_query_paths(true)
            .set_query_timeout(Duration::from_secs(30))
            // The event loop refreshes the routing table itself, on this period (`refresh`).
            .set_periodic_bootstrap_interval(None)
            // Records are validated by the event loop before they are stored.
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_max_packet_size(16 * 1024)
            // Provider records (who serves a model) go stale when a provider leaves: they live
            // an hour and their publisher renews them every ten minutes.
            .set_provider_record_ttl(Some(Duration::from_secs(3600)))
            .set_provider_publication_interval(Some(Duration::from_secs(600)));
        if let Some(r) = NonZeroUsize::new(20) {
            kad_cfg.set_replication_factor(r);
        }
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_records: 4096,
                max_value_bytes: 16 * 1024,
                max_providers_per_key: 64,
                max_provided_keys: 256,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_cfg);
        // Auto starts as a client: the event loop switches to server once AutoNAT confirms
        // that others can dial us.
        kad.set_mode(Some(match cfg.kad_mode {
            crate::KadMode::Server => kad::Mode::Server,
            crate::KadMode::Client | crate::KadMode::Auto => kad::Mode::Client,
        }));

        let mut gossip_cfg = gossipsub::ConfigBuilder::default();
        for (topic, max) in &cfg.gossip_topic_limits {
            // Bigger messages on such a topic count as invalid: the sender is penalised, not
            // just ignored.
            gossip_cfg.max_transmit_size_for_topic(*max, IdentTopic::new(topic.clone()).hash());
        }
        let gossip_cfg = gossip_cfg
            .heartbeat_interval(cfg.gossip_heartbeat)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(cfg.gossip_max_message)
            .message_id_fn(content_message_id)
            .duplicate_cache_time(Duration::from_secs(120))
            .build()
            .map_err(|e| NetError::Config(e.to_string()))?;
        let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)
            .map_err(|e| NetError::Config(e.to_string()))?;
        gossipsub.with_peer_score(score_params(), score_thresholds()).map_err(NetError::Config)?;

        // Over the OS network; the memory transport (simulations) leaves out what needs IP
        // addresses or NATs.
        let os = cfg.transport == crate::TransportKind::Os;
        Ok(Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(cfg.ping_interval)),
            kad: crate::kad_limit::LimitedKad::new(kad, cfg.dht_requests_per_sec, cfg.dht_request_burst),
            gossipsub: crate::gossip_idle::IdleGossip::new(gossipsub),
            stream: libp2p_stream::Behaviour::new(),
            autonat: os.then(|| autonat::Behaviour::new(peer_id, cfg.autonat.to_libp2p())).into(),
            relay: os
                .then(|| {
                    let mut r = relay::Behaviour::new(peer_id, cfg.relay_limits.to_libp2p());
                    // Decided by the event loop from reachability, never from addresses alone
                    // (a relayed address is "external" too, but a NATed node is no relay).
                    r.set_status(Some(relay::Status::Disable));
                    r
                })
                .into(),
            relay_client: relay_client.into(),
            dcutr: os.then(|| dcutr::Behaviour::new(peer_id)).into(),
            upnp: cfg.upnp.then(upnp::tokio::Behaviour::default).into(),
            mdns: if cfg.runs_mdns() { lan_discovery(peer_id) } else { None }.into(),
        })
    }
}

/// How often a node asks the LAN who is there (after the first queries, 0.5 s apart and
/// doubling); answers to anyone's query are heard by all, so a node that starts later is found
/// at its own first query.
const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(60);

/// libp2p's mDNS behaviour, or `None` (with a warning: the node runs on without LAN discovery)
/// when it cannot start, e.g. without a way to watch the network interfaces.
fn lan_discovery(peer_id: libp2p::PeerId) -> Option<mdns::tokio::Behaviour> {
    let config = mdns::Config { query_interval: MDNS_QUERY_INTERVAL, ..mdns::Config::default() };
    match mdns::tokio::Behaviour::new(config, peer_id) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "LAN discovery (mDNS) cannot start; only bootstrap peers will be used");
            None
        }
    }
}

/// Messages are identified by their content, so the same bytes relayed twice are one message.
fn content_message_id(m: &gossipsub::Message) -> MessageId {
    let mut h = Sha256::new();
    h.update(m.topic.as_str().as_bytes());
    h.update([0]);
    h.update(&m.data);
    MessageId::from(h.finalize()[..20].to_vec())
}

/// Thresholds below which a peer loses gossip, publishing, then all RPCs.
pub(crate) fn score_thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    }
}

fn score_params() -> PeerScoreParams {
    PeerScoreParams {
        // Many honest nodes can share one address on a test host; the loopback range is not a
        // sign of a Sybil. Real addresses keep the colocation penalty.
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        topics: [
            (IdentTopic::new(NODES_TOPIC).hash(), nodes_topic_params(0.0, Duration::ZERO)),
            // Reputation reports are rarer still: scored for invalid messages only.
            (
                IdentTopic::new(quiver_proto::reputation::REPUTATION_TOPIC).hash(),
                nodes_topic_params(0.0, Duration::ZERO),
            ),
        ]
        .into(),
        ..PeerScoreParams::default()
    }
}

/// Share of the network's heartbeats a mesh peer must deliver (first or as a timely duplicate)
/// to escape the delivery-deficit penalty. An honest mesh peer relays about half of them (for
/// each message, one of two mesh neighbours usually hears it first and sends it to the other);
/// a peer that forwards nothing delivers only its own heartbeats, 1/(N−1) of them.
const DELIVERY_THRESHOLD_SHARE: f64 = 0.3;
/// Per-second decay of the delivery counter: it reflects about the last ten seconds.
const DELIVERY_DECAY: f64 = 0.9;
/// Score of a peer that delivers nothing at all (before the other terms): P3 is
/// `weight · deficit²` with `weight = FULL_DEFICIT_SCORE / threshold²`.
const FULL_DEFICIT_SCORE: f64 = -100.0;

/// Scoring of the heartbeat topic. Invalid messages are always punished. Delivery deficits
/// (P3, the defence against peers that receive but never forward) are scored only when the
/// network's heartbeat rate is known (`expected_per_sec > 0`, set by the node from the number of
/// nodes it knows): on a rare-message topic a fixed threshold would punish honest peers of a
/// small network and miss non-forwarders of a large one.
pub(crate) fn nodes_topic_params(expected_per_sec: f64, activation: Duration) -> TopicScoreParams {
    let mut p = TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.9,
        // First deliveries earn at most +10: less than a delivery deficit costs.
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // One invalid heartbeat costs -50; two put the sender below the graylist threshold.
        // The count decays by 1% a second (half-life about 70 s).
        invalid_message_deliveries_weight: -50.0,
        invalid_message_deliveries_decay: 0.99,
        ..TopicScoreParams::default()
    };
    if expected_per_sec.is_finite() && expected_per_sec > 0.0 {
        let steady = expected_per_sec / (1.0 - DELIVERY_DECAY);
        let threshold = DELIVERY_THRESHOLD_SHARE * steady;
        let weight = FULL_DEFICIT_SCORE / (threshold * threshold);
        p.mesh_message_deliveries_weight = weight;
        p.mesh_message_deliveries_decay = DELIVERY_DECAY;
        p.mesh_message_deliveries_threshold = threshold;
        p.mesh_message_deliveries_cap = 2.0 * steady;
        // Duplicates within a second of our own validation count as delivered.
        p.mesh_message_deliveries_window = Duration::from_secs(1);
        p.mesh_message_deliveries_activation = activation.max(Duration::from_secs(1));
        // A peer pruned with a deficit keeps it as a penalty for about as long as the prune
        // backoff (60 s) keeps it out anyway: a full deficit (-100) is under the +10 first
        // deliveries can earn back after 45 s (decay 0.95 a second, half-life ~14 s). Longer
        // only delayed honest peers cut off by a partition: at 0.99 (half-life ~70 s) meshes
        // took 125 s and more to regrow after the partition healed.
        p.mesh_failure_penalty_weight = weight;
        p.mesh_failure_penalty_decay = 0.95;
    }
    p
}

/// The heartbeat rate the delivery threshold is computed from. The node sets the network's rate
/// from the nodes it knows ([`DeliveryRate::set`]); a lower rate applies at once, a higher one
/// is approached second by second ([`DeliveryRate::tick`]) no faster than a mesh peer's delivery
/// counter (decay [`DELIVERY_DECAY`] a second) can follow the extra traffic. Otherwise the
/// threshold jumps whenever the node table grows at once (the eighth node turns scoring on, a
/// healed partition doubles the table within a second) and honest mesh peers, whose counters
/// still reflect the old traffic, are charged a deficit, pruned, and kept out by the prune
/// backoff: after a heal the bootstrap node of the partition test spent 23 s with no mesh peer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryRate {
    target: f64,
    effective: f64,
    activation: Duration,
    /// The rate of the parameters last handed to GossipSub.
    applied: f64,
}

impl DeliveryRate {
    pub(crate) fn new() -> Self {
        DeliveryRate { target: 0.0, effective: 0.0, activation: Duration::ZERO, applied: 0.0 }
    }

    /// The network's expected heartbeats per second and the mesh activation; the parameters to
    /// apply now (a lower rate takes effect at once, a higher one through [`DeliveryRate::tick`]).
    pub(crate) fn set(&mut self, expected_per_sec: f64, activation: Duration) -> TopicScoreParams {
        self.target = if expected_per_sec.is_finite() { expected_per_sec.max(0.0) } else { 0.0 };
        self.activation = activation;
        if self.target < self.effective {
            self.effective = self.target;
        }
        self.applied = self.effective;
        nodes_topic_params(self.effective, activation)
    }

    /// Moves the rate `elapsed` closer to the target; the parameters to apply when it moved by
    /// more than 2% of the target or reached it.
    pub(crate) fn tick(&mut self, elapsed: Duration) -> Option<TopicScoreParams> {
        if self.effective >= self.target {
            return None;
        }
        let gap = (self.target - self.effective) * DELIVERY_DECAY.powf(elapsed.as_secs_f64());
        self.effective = if gap <= 0.01 * self.target { self.target } else { self.target - gap };
        if self.effective == self.target || self.effective - self.applied > 0.02 * self.target {
            self.applied = self.effective;
            return Some(nodes_topic_params(self.effective, self.activation));
        }
        None
    }

    /// The rate the threshold is computed from now.
    pub(crate) fn effective(&self) -> f64 {
        self.effective
    }
}

#[cfg(test)]
#[path = "tests/behaviour.rs"]
mod tests;
