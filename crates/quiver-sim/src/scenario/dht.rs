//! `dht`: node-record lookups between random pairs of nodes.
//!
//! Every node puts its node record once it has joined; then `lookups` lookups, each from a
//! random node for the record of another random node, at most `concurrency` at once. Measured
//! per lookup: whether it resolved, its latency, and the peers Kademlia asked and that answered
//! (libp2p's query statistics; libp2p does not report the path length of its iterative
//! lookups). Hops are derived from the routing tables as they were at the time: the greedy
//! route from the querier, each step to the peer in the current node's table closest (XOR) to
//! the key, until no peer is closer — how many steps a single-path lookup would take, and
//! whether it ends among the 20 nodes closest to the key.
//!
//! The network size estimate: once the routing tables are filled, every node's own estimate
//! (routing-table density, `quiver_net::size`) against the true count, as relative errors over
//! nodes, and the median of all of them (what a node that heard every heartbeat shows).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::{KBucketKey, RecordKey};
use quiver_node::PeerId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracing::info;

use crate::cluster::{Cluster, ProcessCost, connections_established, kad_requests_sent};
use crate::report::{Outcome, Row, bytes, range, spread};
use crate::stats::Summary;
use crate::{SimError, SimParams};

/// Replication factor of QUIVer's DHT: a greedy route "arrives" when it ends among these.
const CLOSEST: usize = 20;
/// Longest a single lookup is waited for (the event loop ends lookups after 20 s).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct DhtResult {
    pub nodes: usize,
    /// Starting every node (staggered joins).
    pub start_secs: f64,
    /// From the last start until every routing table held `min_routing_table` peers.
    pub join_secs: f64,
    pub joined: bool,
    /// Node records put in the DHT that at least one peer took.
    pub records_stored: usize,
    pub routing_table: Summary,
    pub connections: Summary,
    /// Connections per node after `idle_check` without traffic, and that wait in seconds.
    pub connections_idle: Option<(f64, Summary)>,
    /// Process CPU per node while every node idles (the second half of the idle wait, when the
    /// lookups' connections have closed): milliseconds of CPU per node per second.
    pub idle_cpu_ms_per_node_sec: Option<f64>,
    pub lookups: usize,
    pub resolved: usize,
    pub latency_ms: Summary,
    pub peers_asked: Summary,
    pub peers_answered: Summary,
    pub greedy_hops: Summary,
    /// Greedy routes that ended among the 20 nodes closest to the key.
    pub greedy_arrived: usize,
    pub lookup_phase_secs: f64,
    /// Connections each node opened (inbound and outbound) until every routing table was
    /// filled: the joins' cost in handshakes.
    pub connections_opened_joining: Summary,
    /// Kademlia requests each node's own lookups sent until every routing table was filled (its
    /// join: the own-key lookup and the lookups of the farther buckets), the reason for those
    /// connections.
    pub kad_requests_joining: Summary,
    /// Routing-table refreshes each node finished until every routing table was filled (a join
    /// costs one, and one more per retry of a table still short of K peers).
    pub bootstraps_joining: Summary,
    /// Bytes each node sent over the whole run (joins, record puts, lookups, pings).
    pub bytes_sent_per_node: Summary,
    /// Bytes each node sent during the lookup phase, per minute.
    pub lookup_bytes_per_node_per_min: Summary,
    /// Nodes whose routing table held enough peers for an estimate of the network's size.
    pub size_estimated: usize,
    /// Each node's own size estimate, and its relative error |estimate − nodes| / nodes.
    pub size_estimate: Summary,
    pub size_error: Summary,
    /// The median of every node's estimate (what heartbeats give a node that heard them all),
    /// and its relative error.
    pub size_combined: Option<u64>,
    pub size_combined_error: Option<f64>,
    /// The same median from ideal routing tables (every node's estimate from the distances to
    /// all other keys): what the key set itself gives, apart from what the tables miss.
    pub size_combined_ideal: Option<u64>,
    pub cost: ProcessCost,
}

/// The median of every node's size estimate from its 20 closest keys among all others (ideal
/// routing tables). Only those 20 are given to the estimator, which never estimates fewer nodes
/// than it was given peers (+1): given all N − 1, every estimate below N would read N.
pub fn ideal_size_estimate(ids: &[PeerId]) -> Option<u64> {
    let keys: Vec<KBucketKey<PeerId>> = ids.iter().map(|p| KBucketKey::from(*p)).collect();
    let estimates: Vec<u64> = keys
        .iter()
        .filter_map(|own| {
            let mut distances: Vec<f64> = keys
                .iter()
                .filter(|k| k.preimage() != own.preimage())
                .map(|k| quiver_net::size::normalised_distance(own.hashed_bytes(), k.hashed_bytes()))
                .collect();
            distances.sort_unstable_by(f64::total_cmp);
            distances.truncate(quiver_net::size::SIZE_FIT_PEERS);
            quiver_net::size::estimate(&distances).nodes()
        })
        .collect();
    quiver_net::size::combine(&estimates)
}

/// Relative errors of size estimates against the true count.
pub fn size_errors(estimates: &[u64], nodes: usize) -> Vec<f64> {
    let n = nodes.max(1) as f64;
    estimates.iter().map(|e| (*e as f64 - n).abs() / n).collect()
}

impl Outcome for DhtResult {
    fn rows(&self) -> Vec<Row> {
        vec![
            ("nodes".into(), self.nodes.to_string()),
            ("node records put (taken by peers)".into(), format!("{} of {}", self.records_stored, self.nodes)),
            ("start (staggered joins)".into(), format!("{:.1} s", self.start_secs)),
            (
                "until every routing table is filled".into(),
                format!("{:.1} s (joined: {})", self.join_secs, self.joined),
            ),
            ("routing table size min / median / max".into(), range(&self.routing_table)),
            ("connections per node min / median / max".into(), range(&self.connections)),
            (
                "connections per node after the idle wait min / median / max".into(),
                match &self.connections_idle {
                    Some((secs, c)) => format!("{} (after {secs:.0} s)", range(c)),
                    None => "not measured".into(),
                },
            ),
            (
                "CPU per idle node (second half of the idle wait)".into(),
                match self.idle_cpu_ms_per_node_sec {
                    Some(ms) => {
                        format!("{ms:.2} ms/s ({:.2} cores for all {})", ms * self.nodes as f64 / 1000.0, self.nodes)
                    }
                    None => "not measured".into(),
                },
            ),
            (
                "network size estimate per node min / median / max".into(),
                format!("{} ({} of {} nodes had one)", range(&self.size_estimate), self.size_estimated, self.nodes),
            ),
            (
                "size estimate relative error per node p50 / p90 / max".into(),
                format!(
                    "{:.1}% / {:.1}% / {:.1}%",
                    100.0 * self.size_error.p50,
                    100.0 * self.size_error.p90,
                    100.0 * self.size_error.max
                ),
            ),
            (
                "median of all nodes' estimates (heartbeats) and its error".into(),
                match (self.size_combined, self.size_combined_error) {
                    (Some(c), Some(e)) => format!("{c} ({:.1}%)", 100.0 * e),
                    _ => "none".into(),
                },
            ),
            (
                "the same median from ideal tables (all keys known)".into(),
                self.size_combined_ideal.map_or("none".into(), |c| {
                    format!("{c} ({:.1}%)", 100.0 * (c as f64 - self.nodes as f64).abs() / self.nodes as f64)
                }),
            ),
            ("lookups resolved".into(), format!("{} of {}", self.resolved, self.lookups)),
            ("lookup latency p50 / p90 / p99 / max".into(), spread(&self.latency_ms, "ms")),
            ("peers asked per lookup p50 / p90 / p99 / max".into(), spread(&self.peers_asked, "")),
            ("peers answering per lookup p50 / p90 / p99 / max".into(), spread(&self.peers_answered, "")),
            ("greedy routing hops p50 / p90 / p99 / max".into(), spread(&self.greedy_hops, "")),
            (
                "greedy routes ending among the 20 closest".into(),
                format!("{} of {}", self.greedy_arrived, self.lookups),
            ),
            ("lookup phase".into(), format!("{:.1} s", self.lookup_phase_secs)),
            (
                "connections opened per node until routing tables filled (median / max)".into(),
                format!("{:.0} / {:.0}", self.connections_opened_joining.p50, self.connections_opened_joining.max),
            ),
            (
                "Kademlia requests sent per node until routing tables filled (median / max)".into(),
                format!("{:.0} / {:.0}", self.kad_requests_joining.p50, self.kad_requests_joining.max),
            ),
            (
                "DHT bootstraps per node until routing tables filled (min / median / max)".into(),
                range(&self.bootstraps_joining),
            ),
            (
                "bytes sent per node, whole run (median / max)".into(),
                format!("{} / {}", bytes(self.bytes_sent_per_node.p50), bytes(self.bytes_sent_per_node.max)),
            ),
            (
                "bytes sent per node per minute, lookup phase (median / max)".into(),
                format!(
                    "{} / {}",
                    bytes(self.lookup_bytes_per_node_per_min.p50),
                    bytes(self.lookup_bytes_per_node_per_min.max)
                ),
            ),
            (
                "process CPU / peak RSS".into(),
                format!("{:.1} s / {:.0} MiB", self.cost.cpu_secs, self.cost.peak_rss_mib),
            ),
        ]
    }
}

/// Steps of the greedy route from `from` towards `target` over the routing tables `tables`,
/// and the node it ends at.
pub fn greedy_route(
    tables: &HashMap<PeerId, Vec<PeerId>>,
    from: PeerId,
    target: &KBucketKey<RecordKey>,
) -> (usize, PeerId) {
    let dist = |p: &PeerId| KBucketKey::from(*p).distance(target);
    let mut current = from;
    let mut hops = 0;
    // The distance strictly falls at every step, so this ends; the bound is a second guard.
    while hops < 256 {
        let Some(best) = tables.get(&current).and_then(|t| t.iter().min_by_key(|p| dist(p))) else { break };
        if dist(best) >= dist(&current) {
            break;
        }
        current = *best;
        hops += 1;
    }
    (hops, current)
}

pub async fn run(params: &SimParams) -> Result<DhtResult, SimError> {
    params.check()?;
    let n = params.cluster.nodes;
    let mut cluster = Cluster::start(params.cluster.clone(), |_| None).await?;
    info!(nodes = n, secs = cluster.start_time.as_secs_f64(), "all nodes started");
    let (join_time, joined) = cluster.wait_joined(params.min_routing_table, params.join_limit).await;
    info!(secs = join_time.as_secs_f64(), joined, "routing tables filled");
    // Connections opened, Kademlia requests sent and bootstraps finished by each node while
    // joining.
    let (opened, kad_requests): (Vec<f64>, Vec<f64>) = cluster
        .per_node(|m| (connections_established(m) as f64, kad_requests_sent(m) as f64))
        .into_iter()
        .map(|(_, c)| c)
        .unzip();
    let bootstraps: Vec<f64> = cluster.alive().map(|n| n.node.dht_bootstraps() as f64).collect();
    let records_stored = cluster.publish_node_records(params.concurrency).await;
    info!(records_stored, "node records put");
    tokio::time::sleep(params.settle).await;

    let statuses = cluster.statuses(params.concurrency).await;
    let tables: HashMap<PeerId, Vec<PeerId>> =
        statuses.iter().map(|(_, s)| (s.peer_id, s.routing_table.clone())).collect();
    let table_sizes: Vec<f64> = statuses.iter().map(|(_, s)| s.routing_table_size as f64).collect();
    let connections: Vec<f64> = statuses.iter().map(|(_, s)| s.connected_peers.len() as f64).collect();
    let ids = cluster.peer_ids();
    let estimates: Vec<u64> = statuses.iter().filter_map(|(_, s)| s.size.nodes()).collect();
    let size_combined = quiver_net::size::combine(&estimates);
    let size_error = size_errors(&estimates, n);
    let size_combined_ideal = ideal_size_estimate(&ids);
    info!(
        estimated = estimates.len(),
        median_error = crate::stats::percentile(&size_error, 50.0),
        combined = size_combined,
        "network size estimates"
    );

    // The pairs, from the seed.
    let mut rng = StdRng::seed_from_u64(params.cluster.seed.wrapping_add(1));
    let pairs: Vec<(usize, usize)> = (0..params.lookups)
        .map(|_| {
            let q = rng.gen_range(0..n);
            let t = (q + rng.gen_range(1..n)) % n;
            (q, t)
        })
        .collect();
    let mut greedy_hops = Vec::with_capacity(pairs.len());
    let mut greedy_arrived = 0;
    let id_keys: Vec<(PeerId, KBucketKey<PeerId>)> = ids.iter().map(|p| (*p, KBucketKey::from(*p))).collect();
    for (q, t) in &pairs {
        let target = KBucketKey::new(RecordKey::new(&quiver_net::node_record_key(&ids[*t])));
        let (hops, end) = greedy_route(&tables, ids[*q], &target);
        let mut by_distance: Vec<(libp2p::kad::KBucketDistance, PeerId)> =
            id_keys.iter().map(|(p, k)| (k.distance(&target), *p)).collect();
        by_distance.sort_unstable();
        if by_distance.iter().take(CLOSEST).any(|(_, p)| *p == end) {
            greedy_arrived += 1;
        }
        greedy_hops.push(hops as f64);
    }

    let before = cluster.bytes_sent();
    let phase = Instant::now();
    let nodes: Vec<quiver_node::Node> = cluster.nodes.iter().map(|n| n.node.clone()).collect();
    let outcomes: Vec<Option<(f64, u32, u32)>> = futures::stream::iter(pairs.iter().copied())
        .map(|(q, t)| {
            let node = nodes[q].clone();
            let key = quiver_net::node_record_key(&ids[t]);
            async move {
                let start = Instant::now();
                match tokio::time::timeout(LOOKUP_TIMEOUT, node.net().lookup_record(key)).await {
                    Ok(Ok(l)) if l.value.is_some() => {
                        Some((start.elapsed().as_secs_f64() * 1000.0, l.peers_asked, l.peers_answered))
                    }
                    _ => None,
                }
            }
        })
        .buffered(params.concurrency.max(1))
        .collect()
        .await;
    let lookup_phase = phase.elapsed();
    let after = cluster.bytes_sent();
    let sent: Vec<f64> = after.iter().map(|(_, b)| *b as f64).collect();
    let per_min = per_minute(&before, &after, lookup_phase);

    let (connections_idle, idle_cpu_ms_per_node_sec) = match params.idle_check {
        Some(wait) => {
            tokio::time::sleep(wait / 2).await;
            let (cpu_before, since) = (ProcessCost::now().cpu_secs, Instant::now());
            tokio::time::sleep(wait - wait / 2).await;
            let cpu = ProcessCost::now().cpu_secs - cpu_before;
            let per_node =
                1000.0 * cpu / since.elapsed().as_secs_f64().max(1e-3) / cluster.alive().count().max(1) as f64;
            let idle = cluster.statuses(params.concurrency).await;
            let counts: Vec<f64> = idle.iter().map(|(_, s)| s.connected_peers.len() as f64).collect();
            (Some((wait.as_secs_f64(), Summary::of(&counts))), Some(per_node))
        }
        None => (None, None),
    };

    let resolved: Vec<&(f64, u32, u32)> = outcomes.iter().flatten().collect();
    let result = DhtResult {
        nodes: n,
        start_secs: cluster.start_time.as_secs_f64(),
        join_secs: join_time.as_secs_f64(),
        joined,
        records_stored,
        routing_table: Summary::of(&table_sizes),
        connections: Summary::of(&connections),
        connections_idle,
        idle_cpu_ms_per_node_sec,
        lookups: pairs.len(),
        resolved: resolved.len(),
        latency_ms: Summary::of(&resolved.iter().map(|r| r.0).collect::<Vec<_>>()),
        peers_asked: Summary::of(&resolved.iter().map(|r| f64::from(r.1)).collect::<Vec<_>>()),
        peers_answered: Summary::of(&resolved.iter().map(|r| f64::from(r.2)).collect::<Vec<_>>()),
        greedy_hops: Summary::of(&greedy_hops),
        greedy_arrived,
        lookup_phase_secs: lookup_phase.as_secs_f64(),
        connections_opened_joining: Summary::of(&opened),
        kad_requests_joining: Summary::of(&kad_requests),
        bootstraps_joining: Summary::of(&bootstraps),
        bytes_sent_per_node: Summary::of(&sent),
        lookup_bytes_per_node_per_min: Summary::of(&per_min),
        size_estimated: estimates.len(),
        size_estimate: Summary::of(&estimates.iter().map(|e| *e as f64).collect::<Vec<_>>()),
        size_error: Summary::of(&size_error),
        size_combined,
        size_combined_error: size_combined.and_then(|c| size_errors(&[c], n).first().copied()),
        size_combined_ideal,
        cost: ProcessCost::now(),
    };
    cluster.shutdown().await;
    Ok(result)
}

/// Bytes sent per node per minute between two snapshots taken `elapsed` apart (nodes present
/// in both).
pub(crate) fn per_minute(before: &[(usize, u64)], after: &[(usize, u64)], elapsed: Duration) -> Vec<f64> {
    let before: HashMap<usize, u64> = before.iter().copied().collect();
    let minutes = elapsed.as_secs_f64().max(1e-3) / 60.0;
    after.iter().filter_map(|(i, b)| Some(b.saturating_sub(*before.get(i)?) as f64 / minutes)).collect()
}
