//! What the network offers, at a glance: its estimated size and every model served on it with
//! its provider count, free slots and measured speed, built from the node table of heartbeats
//! (and this node's own offer). Pure functions over snapshots; [`Node::network`](crate::Node)
//! feeds them.
//!
//! The size: every node estimates the number of DHT servers from its routing table's density
//! (`quiver_net::size`, about 15% off per node) and puts that figure, its own and never a
//! combined one, in its heartbeats. A node shows the median of its own estimate and the ones in
//! the live heartbeats it holds: many independent estimates make the median close (within a few
//! percent over hundreds), and nodes lying about it move the median only if they are half of
//! those heard. The figure is never below the number of nodes heard of.

use std::collections::{BTreeMap, HashSet};

use quiver_net::size::{MIN_SIZE_PEERS, SizeEstimate, combine};
use serde::Serialize;

use crate::discovery::KnownNode;

/// The network's estimated size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkSize {
    /// About this many nodes serve the DHT: the median of this node's estimate and those heard
    /// in heartbeats, at least the nodes heard of. `None`: nobody had enough peers to say.
    pub estimate: Option<u64>,
    /// This node's own estimate from its routing table.
    pub local: SizeEstimate,
    /// Estimates the median was taken over (this node's included when it had one).
    pub sources: usize,
    /// Nodes heard of by heartbeat, this one included: a floor on the size.
    pub known_nodes: usize,
    /// The same in words, for people ([`NetworkSize::describe`]).
    pub summary: String,
}

impl NetworkSize {
    /// The size from this node's own estimate, the live heartbeats' estimates (0 = none) and
    /// the number of other nodes heard of.
    pub fn new(local: SizeEstimate, heard: &[u64], others_known: usize) -> NetworkSize {
        let mut all: Vec<u64> = heard.iter().copied().filter(|e| *e > 0).collect();
        all.extend(local.nodes());
        let known_nodes = others_known + 1;
        let mut size = NetworkSize {
            estimate: combine(&all).map(|e| e.max(known_nodes as u64)),
            local,
            sources: all.len(),
            known_nodes,
            summary: String::new(),
        };
        size.summary = size.describe();
        size
    }

    /// One line for people: "about 950 nodes (median of 40 estimates; 41 heard of)", or why
    /// there is no figure.
    pub fn describe(&self) -> String {
        match self.estimate {
            Some(n) => format!(
                "about {n} nodes (median of {} estimate{}; {} heard of)",
                self.sources,
                if self.sources == 1 { "" } else { "s" },
                self.known_nodes
            ),
            None => {
                let peers = match self.local {
                    SizeEstimate::TooFewPeers { peers } => peers,
                    SizeEstimate::Nodes { peers_used, .. } => peers_used,
                };
                format!(
                    "unknown: {peers} DHT peers known, too few to estimate (at least {MIN_SIZE_PEERS} needed); {} \
                     node{} heard of",
                    self.known_nodes,
                    if self.known_nodes == 1 { "" } else { "s" }
                )
            }
        }
    }
}

/// One model served on the network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkModel {
    pub name: String,
    /// Nodes serving it (this one included when it does).
    pub providers: usize,
    /// Jobs its providers could start right now, all together.
    pub free_slots: u64,
    /// Jobs waiting in its providers' queues.
    pub queue_depth: u64,
    /// Measured throughput of its providers together: the sum of their tokens per second of busy
    /// time with all jobs together (the batched figure heartbeats carry; the single-job speed
    /// where a provider has no batched figure yet). 0: none measured.
    pub tokens_per_sec: f64,
    /// Providers with a measured speed.
    pub measured_providers: usize,
    /// Some provider computes embeddings with it.
    pub embeds: bool,
}

/// What one provider offers, as `aggregate` reads it.
#[derive(Debug, Clone)]
pub struct Offer {
    pub peer: String,
    pub models: Vec<(String, bool)>,
    pub free_slots: u32,
    pub queue_depth: u32,
    pub tokens_per_sec: f32,
    pub batch_tokens_per_sec: f32,
}

impl From<&KnownNode> for Offer {
    fn from(n: &KnownNode) -> Offer {
        Offer {
            peer: n.peer_id.to_string(),
            models: n.models.iter().map(|m| (m.name.clone(), m.embeds)).collect(),
            free_slots: n.free_slots,
            queue_depth: n.queue_depth,
            tokens_per_sec: n.tokens_per_sec,
            batch_tokens_per_sec: n.batch_tokens_per_sec,
        }
    }
}

/// Every model in `offers`, by name, with its providers counted once each.
pub fn aggregate(offers: &[Offer]) -> Vec<NetworkModel> {
    let mut by_name: BTreeMap<&str, (NetworkModel, HashSet<&str>)> = BTreeMap::new();
    for o in offers {
        for (name, embeds) in &o.models {
            let (row, seen) = by_name.entry(name.as_str()).or_insert_with(|| {
                let row = NetworkModel {
                    name: name.clone(),
                    providers: 0,
                    free_slots: 0,
                    queue_depth: 0,
                    tokens_per_sec: 0.0,
                    measured_providers: 0,
                    embeds: false,
                };
                (row, HashSet::new())
            });
            row.embeds |= *embeds;
            // A node listing one name twice (two files under one name) is one provider.
            if !seen.insert(o.peer.as_str()) {
                continue;
            }
            row.providers += 1;
            row.free_slots += u64::from(o.free_slots);
            row.queue_depth += u64::from(o.queue_depth);
            let speed = if o.batch_tokens_per_sec > 0.0 { o.batch_tokens_per_sec } else { o.tokens_per_sec };
            if speed.is_finite() && speed > 0.0 {
                row.tokens_per_sec += f64::from(speed);
                row.measured_providers += 1;
            }
        }
    }
    by_name.into_values().map(|(row, _)| row).collect()
}

/// The network at a glance: `/api/v1/network`, `quiver model list --network`, the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkView {
    pub size: NetworkSize,
    /// One row a model, by name.
    pub models: Vec<NetworkModel>,
}

#[cfg(test)]
#[path = "tests/network.rs"]
mod tests;
