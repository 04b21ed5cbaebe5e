//! Many real nodes in one process over the memory transport: starting them with staggered
//! joins, waiting for them to join, reading their state, stopping some or all.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;
use quiver_net::{KadMode, Keypair, Multiaddr, NetStatus};
use quiver_node::{BootstrapAddr, Node, NodeConfig, PeerId, ProviderConfig, TransportKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracing::{debug, info};

use crate::SimError;
use crate::runtimes::NodeRuntimes;

/// Longest a node counts as joining for [`ClusterConfig::max_joining`]: a join that has not
/// finished a bootstrap by then no longer holds the next one back.
pub const JOIN_WAIT: Duration = Duration::from_secs(60);

/// Timers and limits of the simulated nodes, and how they join. Everything here is an ordinary
/// `NodeConfig` field: the node code is the same as in production, only its periods differ.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Period of heartbeats on `quiver/1/nodes` (production: 10 s).
    pub heartbeat_interval: Duration,
    /// GossipSub mesh maintenance period (production: 1 s).
    pub gossip_heartbeat: Duration,
    /// Kademlia random walk period (production: 60 s).
    pub random_walk_interval: Duration,
    /// Routing-table refresh period (production: 300 s).
    pub kad_bootstrap_interval: Duration,
    /// Idle connections are closed after this long (production: 60 s).
    pub idle_connection_timeout: Duration,
    /// Ping period on each connection (production: 15 s).
    pub ping_interval: Duration,
    /// Nodes started per second (staggered joins).
    pub joins_per_sec: f64,
    /// Joins in flight at most: a node is started only while fewer than this many of the
    /// nodes before it are still joining (have finished no routing-table refresh yet, for at most
    /// [`JOIN_WAIT`]). 0: no bound, only `joins_per_sec`.
    pub max_joining: usize,
    /// Bootstrap peers each new node is given, drawn from the nodes already started.
    pub bootstrap_peers: usize,
    /// How the memory transport's connections are secured.
    pub security: Security,
    /// Single-threaded runtimes the nodes are dealt over (one per core by default); 0 runs
    /// them on the caller's runtime.
    pub runtimes: usize,
}

/// Connection security of the simulated nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Noise XX, as on a real network.
    Noise,
    /// libp2p's plaintext handshake: identity keys are exchanged and checked, nothing is
    /// encrypted. Saves the Diffie-Hellman handshakes and ciphers, which at 1,000 nodes in one
    /// process take CPU that the DHT and gossip being measured need.
    Plaintext,
}

impl ClusterConfig {
    /// Settings that let `nodes` nodes run on a small machine: rare heartbeats and random
    /// walks, idle connections closed soon, joins bounded in rate and in number at once, one
    /// runtime per core.
    pub fn for_nodes(nodes: usize, seed: u64) -> ClusterConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ClusterConfig {
            nodes,
            seed,
            heartbeat_interval: Duration::from_secs(3600),
            gossip_heartbeat: Duration::from_secs(1),
            random_walk_interval: Duration::from_secs(600),
            kad_bootstrap_interval: Duration::from_secs(1800),
            idle_connection_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            joins_per_sec: 25.0,
            // Two joins per core: enough to keep the cores busy, few enough that a join ends
            // before its connections idle out (at 1,000 nodes, unbounded joins at 25/s opened
            // 2.3 times the connections and took twice the CPU).
            max_joining: 2 * cores,
            bootstrap_peers: 1,
            security: Security::Noise,
            runtimes: cores,
        }
    }
}

/// One simulated node.
pub struct SimNode {
    pub index: usize,
    pub node: Node,
    /// Its memory-transport address, with `/p2p/`.
    pub addr: Multiaddr,
    pub alive: bool,
    pub provider: bool,
}

/// The nodes of one run.
pub struct Cluster {
    pub config: ClusterConfig,
    pub nodes: Vec<SimNode>,
    /// How long starting every node took.
    pub start_time: Duration,
    /// Where the nodes run (after `nodes`: dropped once the nodes' handles are).
    _runtimes: Option<NodeRuntimes>,
}

/// The PeerIds of a run's `nodes` nodes with `seed` (without starting them).
pub fn seeded_peer_ids(seed: u64, nodes: usize) -> Result<Vec<quiver_node::PeerId>, SimError> {
    (0..nodes).map(|i| seeded_key(seed, i).map(|k| k.public().to_peer_id())).collect()
}

/// A node's key from the run's seed, so a seed gives the same PeerIds (and DHT layout).
fn seeded_key(seed: u64, index: usize) -> Result<Keypair, SimError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0000_0000_0000 ^ index as u64);
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    Keypair::ed25519_from_bytes(secret).map_err(|e| SimError::Setup(format!("node key: {e}")))
}

impl Cluster {
    /// Starts `config.nodes` nodes over the memory transport. Node 0 is a bootstrap node; each
    /// later node joins through up to `bootstrap_peers` nodes drawn (by the seed) from those
    /// started before it. `provider(i)` gives node `i` the provider role.
    pub async fn start(
        config: ClusterConfig,
        mut provider: impl FnMut(usize) -> Option<ProviderConfig>,
    ) -> Result<Cluster, SimError> {
        let started = Instant::now();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut nodes: Vec<SimNode> = Vec::with_capacity(config.nodes);
        let pace = if config.joins_per_sec > 0.0 {
            Duration::from_secs_f64(1.0 / config.joins_per_sec)
        } else {
            Duration::ZERO
        };
        let runtimes = if config.runtimes > 0 { Some(NodeRuntimes::new(config.runtimes)?) } else { None };
        let mut next = tokio::time::Instant::now();
        // Nodes started and not yet joined, oldest first, with when they started.
        let mut joining: VecDeque<(usize, Instant)> = VecDeque::new();
        for i in 0..config.nodes {
            if config.max_joining > 0 {
                wait_for_joins(&nodes, &mut joining, config.max_joining).await;
            }
            let mut earlier: Vec<usize> = (0..i).collect();
            earlier.shuffle(&mut rng);
            let bootstrap_peers = earlier
                .iter()
                .take(config.bootstrap_peers.max(1))
                .map(|j| {
                    let (addr, peer_id) = quiver_net::split_peer_id(nodes[*j].addr.clone());
                    BootstrapAddr { addr, peer_id }
                })
                .collect();
            let provider = provider(i);
            let is_provider = provider.is_some();
            let node_config = NodeConfig {
                listen_addrs: vec![memory_any()],
                transport: match config.security {
                    Security::Noise => TransportKind::Memory,
                    Security::Plaintext => TransportKind::MemoryPlaintext,
                },
                bootstrap_peers,
                identity: Some(seeded_key(config.seed, i)?),
                bootstrap_node: i == 0,
                heartbeat_interval: config.heartbeat_interval,
                node_ttl: config.heartbeat_interval * 6,
                random_walk_interval: config.random_walk_interval,
                kad_bootstrap_interval: config.kad_bootstrap_interval,
                gossip_heartbeat: config.gossip_heartbeat,
                idle_connection_timeout: config.idle_connection_timeout,
                ping_interval: config.ping_interval,
                // In one process every node can dial every other: all serve the DHT from the
                // start (no AutoNAT wait) and none needs a relay.
                kad_mode: KadMode::Server,
                relay_service: false,
                provider,
                ..NodeConfig::default()
            };
            let start_result = match &runtimes {
                Some(r) => r
                    .handle(i)
                    .spawn(Node::start(node_config))
                    .await
                    .map_err(|e| SimError::Setup(format!("node {i}: its start did not finish: {e}")))?,
                None => Node::start(node_config).await,
            };
            let node = start_result.map_err(|e| SimError::Setup(format!("node {i}: {e}")))?;
            let addr = memory_addr(&node).await.ok_or_else(|| SimError::Setup(format!("node {i} has no address")))?;
            nodes.push(SimNode { index: i, node, addr, alive: true, provider: is_provider });
            joining.push_back((i, Instant::now()));
            if (i + 1) % 100 == 0 {
                info!(started = i + 1, of = config.nodes, "nodes started");
            }
            next += pace;
            tokio::time::sleep_until(next).await;
        }
        Ok(Cluster { config, nodes, start_time: started.elapsed(), _runtimes: runtimes })
    }

    pub fn alive(&self) -> impl Iterator<Item = &SimNode> {
        self.nodes.iter().filter(|n| n.alive)
    }

    /// The swarm state of every live node (at most `concurrency` asked at once), in index order.
    pub async fn statuses(&self, concurrency: usize) -> Vec<(usize, NetStatus)> {
        let alive: Vec<&SimNode> = self.alive().collect();
        let mut out: Vec<(usize, NetStatus)> = futures::stream::iter(alive)
            .map(|n| async move {
                let s = tokio::time::timeout(Duration::from_secs(30), n.node.net().status()).await;
                (n.index, s)
            })
            .buffer_unordered(concurrency.max(1))
            .filter_map(|(i, s)| async move {
                match s {
                    Ok(Ok(s)) => Some((i, s)),
                    _ => {
                        debug!(node = i, "no status");
                        None
                    }
                }
            })
            .collect()
            .await;
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Waits until every live node's routing table holds at least `min_table` peers (or
    /// `limit` passes); returns the time it took and whether it happened.
    pub async fn wait_joined(&self, min_table: usize, limit: Duration) -> (Duration, bool) {
        let start = Instant::now();
        loop {
            let statuses = self.statuses(64).await;
            let short = statuses.iter().filter(|(_, s)| s.routing_table_size < min_table).count()
                + (self.alive().count() - statuses.len());
            if short == 0 {
                return (start.elapsed(), true);
            }
            if start.elapsed() >= limit {
                info!(short, min_table, "not every node joined in time");
                return (start.elapsed(), false);
            }
            debug!(short, "waiting for routing tables");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Every live node puts its node record in the DHT (at most `concurrency` at once) and
    /// waits for the put to end; returns how many were taken by peers.
    pub async fn publish_node_records(&self, concurrency: usize) -> usize {
        let alive: Vec<Node> = self.alive().map(|n| n.node.clone()).collect();
        futures::stream::iter(alive)
            .map(|node| async move {
                match tokio::time::timeout(Duration::from_secs(60), node.publish_node_record()).await {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(e)) => {
                        debug!(error = %e, "node record not published");
                        false
                    }
                    Err(_) => false,
                }
            })
            .buffer_unordered(concurrency.max(1))
            .filter(|stored| futures::future::ready(*stored))
            .count()
            .await
    }

    /// Stops node `i` (its connections close; it is gone from the network).
    pub async fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i)
            && n.alive
        {
            n.node.shutdown().await;
            n.alive = false;
        }
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            n.node.shutdown().await;
            n.alive = false;
        }
    }

    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.nodes.iter().map(|n| n.node.peer_id()).collect()
    }

    /// Bytes each live node has sent over its transport so far (the sum of its
    /// `libp2p_bandwidth_bytes_total{direction="Outbound"}` counters), by index.
    pub fn bytes_sent(&self) -> Vec<(usize, u64)> {
        self.per_node(outbound_bytes)
    }

    /// Figures read from each live node's metrics text (rendered once per node), by index.
    pub fn per_node<T>(&self, read: impl Fn(&str) -> T) -> Vec<(usize, T)> {
        self.alive().map(|n| (n.index, read(&n.node.metrics_text()))).collect()
    }
}

/// Waits until fewer than `max` of the `joining` nodes are still joining: a node has joined once
/// it finished a routing-table refresh (its own-key lookup, then the farther buckets short of
/// peers), or once it has tried for [`JOIN_WAIT`].
async fn wait_for_joins(nodes: &[SimNode], joining: &mut VecDeque<(usize, Instant)>, max: usize) {
    loop {
        joining.retain(|(i, since)| since.elapsed() < JOIN_WAIT && nodes[*i].node.dht_bootstraps() == 0);
        if joining.len() < max {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sums libp2p's established-connection counters in an OpenMetrics text.
pub fn connections_established(metrics: &str) -> u64 {
    metric_sum(metrics, "swarm_connections_established_total", "")
}

/// Kademlia requests a node's own lookups sent (every query type: its join's own-key lookup and
/// bucket lookups among them), from an OpenMetrics text.
pub fn kad_requests_sent(metrics: &str) -> u64 {
    metric_sum(metrics, "kad_query_result_num_requests_sum", "")
}

/// Sums the outbound bandwidth counters in an OpenMetrics text.
pub fn outbound_bytes(metrics: &str) -> u64 {
    metric_sum(metrics, "libp2p_bandwidth_bytes_total", "direction=\"Outbound\"")
}

/// Sums every series of a counter whose name ends with `name` and whose labels contain `label`.
fn metric_sum(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric.ends_with(name) && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

/// `/memory/0`: a free memory-transport port.
pub fn memory_any() -> Multiaddr {
    Multiaddr::empty().with(quiver_net::Protocol::Memory(0))
}

/// The node's memory address once it listens (with `/p2p/`).
pub async fn memory_addr(node: &Node) -> Option<Multiaddr> {
    let mut rx = node.listen_addrs();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(a) = rx.borrow().iter().find(|a| a.iter().any(|p| matches!(p, quiver_net::Protocol::Memory(_))))
            {
                return Some(a.clone());
            }
            rx.changed().await.ok()?;
        }
    })
    .await
    .ok()
    .flatten()
}

/// Process CPU time (user + system) and peak resident memory, from `/proc/self`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessCost {
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
}

impl ProcessCost {
    pub fn now() -> ProcessCost {
        let cpu_secs = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the command name (which is in parentheses and may hold spaces).
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11)?.parse().ok()?;
                let stime: f64 = f.get(12)?.parse().ok()?;
                Some((utime + stime) / clock_ticks())
            })
            .unwrap_or(0.0);
        let peak_rss_mib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / 1024.0)
            })
            .unwrap_or(0.0);
        ProcessCost { cpu_secs, peak_rss_mib }
    }
}

/// Kernel clock ticks per second (`USER_HZ`, 100 on Linux).
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(test)]
#[path = "tests/cluster.rs"]
mod tests;
