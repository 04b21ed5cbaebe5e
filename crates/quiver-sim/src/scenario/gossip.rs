//! `gossip`: heartbeats on `quiver/1/nodes`.
//!
//! Every node publishes a heartbeat each `heartbeat_interval`. After the nodes have joined and
//! the meshes have formed (three heartbeat periods), every heartbeat published during the
//! `window` is followed: which nodes accepted it (each node reports the heartbeats it accepts,
//! [`quiver_node::Node::heartbeat_events`]), and how long after its author dated it. Delivery
//! ratio = acceptances ÷ (heartbeats × (live nodes − 1)). Bytes sent per node are read from
//! the transport's counters (`libp2p_bandwidth_bytes_total`, all protocols) at the start and end
//! of the window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_node::{HeartbeatEvent, PeerId};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tracing::info;

use crate::cluster::{Cluster, ProcessCost};
use crate::report::{Outcome, Row, bytes, range, spread};
use crate::scenario::dht::per_minute;
use crate::stats::Summary;
use crate::{SimError, SimParams};

#[derive(Debug, Clone, Serialize)]
pub struct GossipResult {
    pub nodes: usize,
    pub heartbeat_interval_secs: f64,
    pub window_secs: f64,
    pub joined: bool,
    /// Heartbeats published during the window.
    pub heartbeats: usize,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub delivery_ratio: f64,
    /// From the heartbeat's timestamp to its acceptance, over all deliveries.
    pub latency_ms: Summary,
    /// Events an observer missed because it fell behind (0 means the counts are complete).
    pub observer_lagged: u64,
    pub bytes_sent_per_node_per_min: Summary,
    pub mesh_peers: Summary,
    pub connections: Summary,
    pub cost: ProcessCost,
}

impl Outcome for GossipResult {
    fn rows(&self) -> Vec<Row> {
        vec![
            ("nodes".into(), self.nodes.to_string()),
            ("heartbeat interval".into(), format!("{:.1} s", self.heartbeat_interval_secs)),
            ("measurement window".into(), format!("{:.0} s", self.window_secs)),
            ("heartbeats published in the window".into(), self.heartbeats.to_string()),
            ("deliveries / expected".into(), format!("{} / {}", self.deliveries, self.expected_deliveries)),
            ("delivery ratio".into(), format!("{:.4}", self.delivery_ratio)),
            ("delivery latency p50 / p90 / p99 / max".into(), spread(&self.latency_ms, "ms")),
            ("events lost by the observer".into(), self.observer_lagged.to_string()),
            (
                "bytes sent per node per minute (median / p90 / max)".into(),
                format!(
                    "{} / {} / {}",
                    bytes(self.bytes_sent_per_node_per_min.p50),
                    bytes(self.bytes_sent_per_node_per_min.p90),
                    bytes(self.bytes_sent_per_node_per_min.max)
                ),
            ),
            ("mesh peers on quiver/1/nodes min / median / max".into(), range(&self.mesh_peers)),
            ("connections per node min / median / max".into(), range(&self.connections)),
            (
                "process CPU / peak RSS".into(),
                format!("{:.1} s / {:.0} MiB", self.cost.cpu_secs, self.cost.peak_rss_mib),
            ),
        ]
    }
}

#[derive(Default)]
struct Tally {
    /// (author, seq) → publication date (ms) of heartbeats published in the window.
    published: HashMap<(PeerId, u64), u64>,
    /// (author, seq) → (acceptances, latencies in ms).
    accepted: HashMap<(PeerId, u64), Vec<f64>>,
    lagged: u64,
}

pub async fn run(params: &SimParams) -> Result<GossipResult, SimError> {
    params.check()?;
    let n = params.cluster.nodes;
    let interval = params.cluster.heartbeat_interval;
    let mut cluster = Cluster::start(params.cluster.clone(), |_| None).await?;
    let (_, joined) = cluster.wait_joined(params.min_routing_table, params.join_limit).await;
    // Meshes form and every node has heard of every other before the window opens.
    tokio::time::sleep(interval * 3).await;
    info!(nodes = n, "measuring heartbeat delivery");

    let tally = Arc::new(Mutex::new(Tally::default()));
    let window_start_ms = now_ms();
    let window_end_ms = window_start_ms + params.window.as_millis() as u64;
    let mut observers = Vec::new();
    for sim in cluster.alive() {
        let mut events = sim.node.heartbeat_events();
        let me = sim.node.peer_id();
        let tally = tally.clone();
        observers.push(tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(RecvError::Lagged(k)) => {
                        lock(&tally).lagged += k;
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let mut t = lock(&tally);
                match event {
                    HeartbeatEvent::Published { seq, timestamp_ms } => {
                        if (window_start_ms..window_end_ms).contains(&timestamp_ms) {
                            t.published.insert((me, seq), timestamp_ms);
                        }
                    }
                    HeartbeatEvent::Accepted { from, seq, timestamp_ms, received_ms } => {
                        if (window_start_ms..window_end_ms).contains(&timestamp_ms) {
                            t.accepted
                                .entry((from, seq))
                                .or_default()
                                .push(received_ms.saturating_sub(timestamp_ms) as f64);
                        }
                    }
                }
            }
        }));
    }
    let before = cluster.bytes_sent();
    let start = Instant::now();
    tokio::time::sleep(params.window).await;
    let after = cluster.bytes_sent();
    let per_min = per_minute(&before, &after, start.elapsed());
    // Heartbeats published at the end of the window get time to arrive.
    tokio::time::sleep(Duration::from_secs(5) + params.cluster.gossip_heartbeat * 3).await;
    for o in &observers {
        o.abort();
    }
    let statuses = cluster.statuses(params.concurrency).await;
    let mesh: Vec<f64> = statuses
        .iter()
        .map(|(_, s)| s.gossip_mesh.get(quiver_node::NODES_TOPIC).copied().unwrap_or(0) as f64)
        .collect();
    let connections: Vec<f64> = statuses.iter().map(|(_, s)| s.connected_peers.len() as f64).collect();
    let alive = cluster.alive().count() as u64;
    let t = lock(&tally);
    let mut latencies = Vec::new();
    let mut deliveries = 0u64;
    for key in t.published.keys() {
        if let Some(l) = t.accepted.get(key) {
            deliveries += l.len() as u64;
            latencies.extend_from_slice(l);
        }
    }
    let expected = t.published.len() as u64 * alive.saturating_sub(1);
    let result = GossipResult {
        nodes: n,
        heartbeat_interval_secs: interval.as_secs_f64(),
        window_secs: params.window.as_secs_f64(),
        joined,
        heartbeats: t.published.len(),
        expected_deliveries: expected,
        deliveries,
        delivery_ratio: if expected == 0 { 0.0 } else { deliveries as f64 / expected as f64 },
        latency_ms: Summary::of(&latencies),
        observer_lagged: t.lagged,
        bytes_sent_per_node_per_min: Summary::of(&per_min),
        mesh_peers: Summary::of(&mesh),
        connections: Summary::of(&connections),
        cost: ProcessCost::now(),
    };
    drop(t);
    cluster.shutdown().await;
    Ok(result)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
