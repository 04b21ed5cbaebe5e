//! What a node says of itself ([`NodeStatus`], `/api/v1/status`) and of the network at a glance
//! ([`NetworkView`], `/api/v1/network`).

use std::collections::BTreeMap;

use quiver_net::size::SizeEstimate;
use quiver_net::{NetStatus, Reachability};
use serde::Serialize;

use super::{AGENT_VERSION, Node, NodeError};
use crate::discovery::KnownNode;
use crate::network::{NetworkSize, NetworkView, Offer, aggregate};

/// A node's view of itself and the network, as `/api/v1/status` serves it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub version: String,
    pub bootstrap_node: bool,
    pub uptime_secs: u64,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub peers: Vec<String>,
    pub routing_table_size: usize,
    pub routing_table: Vec<String>,
    pub kad_mode: String,
    /// How others can reach this node: public, private, relayed or unknown.
    pub reachability: Reachability,
    /// Addresses others can dial this node on: confirmed direct ones, then relayed ones.
    pub public_addrs: Vec<String>,
    pub relayed_addrs: Vec<String>,
    /// Relays holding a reservation for this node.
    pub relays: Vec<String>,
    /// This node relays for NATed peers now.
    pub relay_service: bool,
    pub hole_punches_succeeded: u64,
    pub hole_punches_failed: u64,
    /// Kademlia bootstraps finished: 0 while the node is still joining the DHT.
    pub dht_bootstraps: u64,
    /// This node looks for peers on the local network (mDNS).
    pub mdns: bool,
    /// Said while this node has no peer and no bootstrap peer to join through: where it looks
    /// and how to join a network elsewhere (see `lonely.rs`).
    pub no_peers: Option<String>,
    pub gossip_mesh: BTreeMap<String, usize>,
    pub known_nodes: Vec<KnownNode>,
    /// The network at a glance: its estimated size and every model served on it.
    pub network: NetworkView,
    /// Present when this node serves models.
    pub provider: Option<ProviderStatus>,
    /// Present when this node is the head of a split model: its members and their layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_head: Option<crate::shard::ShardHeadStatus>,
    /// Present when this node serves split models' heads (`--shard-host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_host: Option<crate::shard::ShardHostStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub models: Vec<crate::discovery::KnownModel>,
    pub max_concurrent: usize,
    pub free_slots: u32,
    pub queue_depth: u32,
    pub tokens_per_sec: f32,
    /// Tokens per second of busy time with all jobs together (0 = not measured yet).
    pub batch_tokens_per_sec: f32,
}

impl Node {
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let NetStatus {
            peer_id,
            listen_addrs,
            connected_peers,
            routing_table,
            kad_mode,
            gossip_mesh,
            reachability,
            public_addrs,
            relayed_addrs,
            relays,
            relay_service,
            hole_punches_succeeded,
            hole_punches_failed,
            dht_bootstraps,
            mdns,
            size,
            ..
        } = self.inner.net.status().await?;
        let no_peers = crate::lonely::note(self, mdns, connected_peers.len()).map(str::to_owned);
        let known_nodes = self.known_nodes();
        let network = self.network_view(size, &known_nodes);
        Ok(NodeStatus {
            peer_id: peer_id.to_string(),
            version: AGENT_VERSION.to_owned(),
            bootstrap_node: self.inner.config.bootstrap_node,
            uptime_secs: self.inner.started.elapsed().as_secs(),
            listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
            connected_peers: connected_peers.len(),
            peers: connected_peers.iter().map(ToString::to_string).collect(),
            routing_table_size: routing_table.len(),
            routing_table: routing_table.iter().map(ToString::to_string).collect(),
            kad_mode,
            reachability,
            public_addrs: public_addrs.iter().map(ToString::to_string).collect(),
            relayed_addrs: relayed_addrs.iter().map(ToString::to_string).collect(),
            relays: relays.iter().map(ToString::to_string).collect(),
            relay_service,
            hole_punches_succeeded,
            hole_punches_failed,
            dht_bootstraps,
            mdns,
            no_peers,
            gossip_mesh,
            known_nodes,
            network,
            provider: self.inner.provider.as_ref().map(|p| ProviderStatus {
                models: p.models().into_iter().map(crate::discovery::KnownModel::from_wire).collect(),
                max_concurrent: p.max_concurrent(),
                free_slots: p.free_slots(),
                queue_depth: p.queue_depth(),
                tokens_per_sec: p.tokens_per_sec(),
                batch_tokens_per_sec: p.batch_tokens_per_sec(),
            }),
            shard_head: self.inner.config.provider.as_ref().and_then(|p| p.shard_head.as_ref()).map(|h| h.status()),
            shard_host: self.shard_host().map(|h| h.status()),
        })
    }

    /// The network at a glance: its estimated size and every model served on it (this node's
    /// own models included), from the node table of heartbeats.
    pub async fn network(&self) -> Result<NetworkView, NodeError> {
        let size = self.inner.net.status().await?.size;
        Ok(self.network_view(size, &self.known_nodes()))
    }

    fn network_view(&self, local: SizeEstimate, known: &[KnownNode]) -> NetworkView {
        let heard: Vec<u64> = known.iter().map(|n| n.network_size_estimate).collect();
        let mut offers: Vec<Offer> = known.iter().filter(|n| !n.models.is_empty()).map(Offer::from).collect();
        if let Some(p) = &self.inner.provider {
            offers.push(Offer {
                peer: self.peer_id().to_string(),
                models: p.models().into_iter().map(|m| (m.name, m.embeds)).collect(),
                free_slots: p.free_slots(),
                queue_depth: p.queue_depth(),
                tokens_per_sec: p.tokens_per_sec(),
                batch_tokens_per_sec: p.batch_tokens_per_sec(),
            });
        }
        NetworkView { size: NetworkSize::new(local, &heard, known.len()), models: aggregate(&offers) }
    }
}
