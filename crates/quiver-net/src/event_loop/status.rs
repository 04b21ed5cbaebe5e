//! What the event loop reports of itself: [`NetStatus`], the routing table, and the estimate of
//! the network's size from the routing table's density (`crate::size`).

use libp2p::PeerId;
use libp2p::kad::KBucketKey;

use super::EventLoop;
use crate::client::NetStatus;
use crate::reachability::is_relayed;
use crate::size::{self, SizeEstimate};

impl EventLoop {
    pub(super) fn status(&mut self) -> NetStatus {
        let local = *self.swarm.local_peer_id();
        let listen_addrs = self.swarm.listeners().map(|a| a.clone().with_p2p(local).unwrap_or_else(|a| a)).collect();
        let routing_table = self.routing_table();
        let gossip = &self.swarm.behaviour().gossipsub;
        let gossip_mesh = gossip.topics().map(|t| (t.to_string(), gossip.mesh_peers(t).count())).collect();
        NetStatus {
            peer_id: local,
            listen_addrs,
            connected_peers: self.swarm.connected_peers().copied().collect(),
            routing_table_size: routing_table.len(),
            routing_table,
            kad_mode: self.swarm.behaviour().kad.mode().to_string(),
            gossip_mesh,
            reachability: self.reach.reachability(),
            // The same address can be confirmed twice, with and without `/p2p` (a UPnP
            // mapping, then AutoNAT's dial-back to it): listed once.
            public_addrs: self
                .swarm
                .external_addresses()
                .filter(|a| !is_relayed(a))
                .map(|a| a.clone().with_p2p(local).unwrap_or_else(|a| a))
                .fold(Vec::new(), |mut seen, a| {
                    if !seen.contains(&a) {
                        seen.push(a);
                    }
                    seen
                }),
            relayed_addrs: self
                .reach
                .relayed_addrs()
                .into_iter()
                .map(|a| a.with_p2p(local).unwrap_or_else(|a| a))
                .collect(),
            relays: self.reach.relays(),
            relay_service: self.relay_on,
            hole_punches_succeeded: self.hole_punches.0,
            hole_punches_failed: self.hole_punches.1,
            dht_bootstraps: self.net_metrics.dht_bootstraps.get(),
            mdns: self.lan.is_some(),
            size: self.size_estimate(),
        }
    }

    pub(super) fn routing_table(&mut self) -> Vec<PeerId> {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                peers.push(*entry.node.key.preimage());
            }
        }
        peers
    }

    /// The number of DHT servers estimated from the distances of the routing table's peers to
    /// our own key.
    pub(super) fn size_estimate(&mut self) -> SizeEstimate {
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let mut distances = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                distances.push(size::normalised_distance(local.hashed_bytes(), entry.node.key.hashed_bytes()));
            }
        }
        size::estimate(&distances)
    }

    /// Refreshes the gauge of our own estimate (0 while there is none), which heartbeats carry
    /// and `/metrics` shows; on the 1 s tick.
    pub(super) fn update_size_estimate(&mut self) {
        let nodes = self.size_estimate().nodes().unwrap_or(0);
        self.net_metrics.network_size_estimate.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }
}
