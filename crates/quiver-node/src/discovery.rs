//! Node information sharing: the heartbeats every node publishes on `quiver/1/nodes`, and the
//! bounded, expiring table of the nodes heard of.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quiver_net::{Multiaddr, PeerId};
use quiver_proto::{Heartbeat, ProtoError, SignedHeartbeat};
use serde::Serialize;

pub use quiver_net::NODES_TOPIC;
/// A heartbeat dated further than this in the future is ignored (clock skew allowance).
const MAX_FUTURE_SKEW: Duration = Duration::from_secs(60);

/// What the table says of one node.
#[derive(Debug, Clone, Serialize)]
pub struct KnownNode {
    pub peer_id: PeerId,
    pub agent_version: String,
    pub listen_addrs: Vec<Multiaddr>,
    pub models: Vec<KnownModel>,
    pub cpu_load: f32,
    pub free_slots: u32,
    pub queue_depth: u32,
    pub uptime_secs: u64,
    /// Generation speed the node measured on its recent jobs (0 = unknown).
    pub tokens_per_sec: f32,
    /// Tokens per second of busy time with all its jobs together (0 = unknown).
    #[serde(default)]
    pub batch_tokens_per_sec: f32,
    /// Its own estimate of the network's size (DHT servers; 0 = too few peers to say).
    #[serde(default)]
    pub network_size_estimate: u64,
    /// Seconds since the last heartbeat was received.
    pub last_seen_secs: f64,
    #[serde(skip)]
    last_seen: Instant,
    #[serde(skip)]
    timestamp_ms: u64,
    #[serde(skip)]
    seq: u64,
}

impl KnownNode {
    /// When its last heartbeat was received.
    pub(crate) fn heard_at(&self) -> Instant {
        self.last_seen
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KnownModel {
    pub name: String,
    pub sha256: String,
    /// The node computes embeddings with it.
    pub embeds: bool,
    /// Where its layers run: `cpu` (also for nodes too old to say), or the GPU device.
    pub device: String,
    /// Layers offloaded to that device, of `layers` (0 = unknown).
    pub gpu_layers: u32,
    pub layers: u32,
    /// The device's memory in bytes, total and free when the model was loaded (0 on the CPU).
    pub device_memory_total: u64,
    pub device_memory_free: u64,
}

impl KnownModel {
    /// What a heartbeat (or this node's own provider) says of a model.
    pub(crate) fn from_wire(m: quiver_proto::ModelInfo) -> KnownModel {
        KnownModel {
            sha256: hex(&m.sha256),
            name: m.name,
            embeds: m.embeds,
            device: if m.device.is_empty() { "cpu".into() } else { m.device },
            gpu_layers: m.gpu_layers,
            layers: m.layers,
            device_memory_total: m.device_memory_total,
            device_memory_free: m.device_memory_free,
        }
    }
}

/// Verdict on a received heartbeat.
#[derive(Debug, PartialEq)]
pub enum HeartbeatVerdict {
    /// New information: stored, and forwarded by gossip.
    Accepted,
    /// Valid but not newer than what we have, or dated too far from now: dropped, no penalty.
    Stale,
}

/// Why a heartbeat was refused: the peer that forwarded it is penalised.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("heartbeat of {heartbeat} published by {author}")]
    WrongAuthor { heartbeat: PeerId, author: String },
}

/// Bounded table of the nodes heard of; entries expire when their heartbeats stop.
#[derive(Debug)]
pub struct NodeTable {
    nodes: HashMap<PeerId, KnownNode>,
    capacity: usize,
    ttl: Duration,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl NodeTable {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        NodeTable { nodes: HashMap::new(), capacity: capacity.max(1), ttl }
    }

    /// Checks a heartbeat received by gossip from `author` and stores it if it is news.
    pub fn on_heartbeat(
        &mut self,
        data: &[u8],
        author: Option<PeerId>,
        local: PeerId,
    ) -> Result<HeartbeatVerdict, HeartbeatError> {
        self.accept(SignedHeartbeat::decode(data)?, author, local)
    }

    /// [`NodeTable::on_heartbeat`] for a heartbeat already decoded and its signature checked.
    pub fn accept(
        &mut self,
        signed: SignedHeartbeat,
        author: Option<PeerId>,
        local: PeerId,
    ) -> Result<HeartbeatVerdict, HeartbeatError> {
        let SignedHeartbeat { peer_id, heartbeat } = signed;
        // Only a node itself publishes its heartbeat; a relayed copy under another author is
        // someone replaying it.
        if author != Some(peer_id) {
            return Err(HeartbeatError::WrongAuthor {
                heartbeat: peer_id,
                author: author.map(|a| a.to_string()).unwrap_or_else(|| "nobody".into()),
            });
        }
        let now = now_ms();
        let too_new = heartbeat.timestamp_ms > now + MAX_FUTURE_SKEW.as_millis() as u64;
        let too_old = heartbeat.timestamp_ms.saturating_add(self.ttl.as_millis() as u64) < now;
        if peer_id == local || too_new || too_old {
            return Ok(HeartbeatVerdict::Stale);
        }
        if let Some(known) = self.nodes.get(&peer_id)
            && (heartbeat.timestamp_ms, heartbeat.seq) <= (known.timestamp_ms, known.seq)
        {
            return Ok(HeartbeatVerdict::Stale);
        }
        self.insert(peer_id, heartbeat);
        Ok(HeartbeatVerdict::Accepted)
    }

    fn insert(&mut self, peer_id: PeerId, hb: Heartbeat) {
        if !self.nodes.contains_key(&peer_id) && self.nodes.len() >= self.capacity {
            // Full: the node heard of least recently makes room.
            if let Some(oldest) = self.nodes.values().min_by_key(|n| n.last_seen).map(|n| n.peer_id) {
                self.nodes.remove(&oldest);
            }
        }
        let listen_addrs = hb.listen_addrs.into_iter().filter_map(|a| Multiaddr::try_from(a).ok()).collect();
        let models = hb.models.into_iter().map(KnownModel::from_wire).collect();
        self.nodes.insert(
            peer_id,
            KnownNode {
                peer_id,
                agent_version: hb.agent_version,
                listen_addrs,
                models,
                cpu_load: hb.cpu_load,
                free_slots: hb.free_slots,
                queue_depth: hb.queue_depth,
                uptime_secs: hb.uptime_secs,
                tokens_per_sec: if hb.tokens_per_sec.is_finite() { hb.tokens_per_sec.max(0.0) } else { 0.0 },
                batch_tokens_per_sec: if hb.batch_tokens_per_sec.is_finite() {
                    hb.batch_tokens_per_sec.max(0.0)
                } else {
                    0.0
                },
                network_size_estimate: hb.network_size_estimate,
                last_seen_secs: 0.0,
                last_seen: Instant::now(),
                timestamp_ms: hb.timestamp_ms,
                seq: hb.seq,
            },
        );
    }

    /// Sequence number and date (Unix ms) of the latest heartbeat of `peer`.
    pub(crate) fn seq_and_timestamp(&self, peer: &PeerId) -> Option<(u64, u64)> {
        self.nodes.get(peer).map(|n| (n.seq, n.timestamp_ms))
    }

    /// Forgets nodes not heard of within the TTL.
    pub fn expire(&mut self) -> usize {
        let ttl = self.ttl;
        let before = self.nodes.len();
        self.nodes.retain(|_, n| n.last_seen.elapsed() <= ttl);
        before - self.nodes.len()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The live entry of one node.
    pub fn get(&self, peer: &PeerId) -> Option<KnownNode> {
        self.nodes.get(peer).filter(|n| n.last_seen.elapsed() <= self.ttl).cloned().map(|mut n| {
            n.last_seen_secs = n.last_seen.elapsed().as_secs_f64();
            n
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The live entries, most recently heard first.
    pub fn snapshot(&self) -> Vec<KnownNode> {
        let mut v: Vec<KnownNode> = self
            .nodes
            .values()
            .filter(|n| n.last_seen.elapsed() <= self.ttl)
            .cloned()
            .map(|mut n| {
                n.last_seen_secs = n.last_seen.elapsed().as_secs_f64();
                n
            })
            .collect();
        v.sort_by(|a, b| a.last_seen.cmp(&b.last_seen).reverse());
        v
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CPU load for heartbeats: the 1-minute load average over the number of cores (Linux), or 0.
pub(crate) fn cpu_load() -> f32 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f32;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f32>().ok()))
        .map(|l| (l / cores).clamp(0.0, 1024.0))
        .unwrap_or(0.0)
}

#[cfg(test)]
#[path = "tests/discovery.rs"]
mod tests;
