//! [`Node`]: a running QUIVer node, and [`NodeConfig`], what it starts from. What it says of
//! itself and the network (`NodeStatus`, `NetworkView`) is built in `node/status.rs`; its events,
//! heartbeats and reputation reports are handled in `node/gossip.rs`.

mod gossip;
mod status;

pub use status::{NodeStatus, ProviderStatus};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use quiver_net::{
    BootstrapAddr, KadMode, Keypair, Multiaddr, NetClient, NetConfig, NetError, NetEvent, PeerInfo, Protocol,
    Reachability, RelayLimits, TransportKind, Validation, default_listen_addrs,
};
use quiver_proto::reputation::REPUTATION_TOPIC;
use quiver_proto::{Heartbeat, Observation, ReputationReport};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cache::ResultCache;
use crate::client::ClaimBoard;
use crate::discovery::{self, HeartbeatVerdict, KnownNode, NODES_TOPIC, NodeTable};
use crate::dispatch::Dispatched;
use crate::identity::{self, IdentityError};
use crate::metrics::{NodeMetrics, OutcomeLabel};
use crate::provider::{Provider, ProviderConfig};
use quiver_net::PeerId;
use quiver_reputation::{Offence, PeerView, Reputation, ReputationConfig};
use std::collections::HashMap;
use std::time::SystemTime;

/// Version string nodes announce (Identify agent and heartbeats).
pub const AGENT_VERSION: &str = concat!("quiver/", env!("CARGO_PKG_VERSION"));
/// Most addresses kept as this node's own (listen, relayed, confirmed external).
const MAX_LISTEN_ADDRS: usize = 64;
/// Most listen addresses put in a heartbeat.
const MAX_ADVERTISED_ADDRS: usize = 16;
/// The node record in the DHT is republished every this many heartbeats (by default).
const NODE_RECORD_EVERY: u64 = 30;
/// Longest wait for a node record from the DHT.
const NODE_RECORD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What a node starts from. `NodeConfig::default()` listens on all interfaces on free ports with
/// a fresh identity that is not stored.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on (TCP and QUIC-v1 multiaddrs).
    pub listen_addrs: Vec<Multiaddr>,
    /// Speak QUIC (listen and dial); off, TCP only.
    pub quic: bool,
    /// Peers to join through.
    pub bootstrap_peers: Vec<BootstrapAddr>,
    /// Directory of the identity key; `None` uses `identity`, or a fresh identity for this run
    /// only.
    pub data_dir: Option<PathBuf>,
    /// The node's key when there is no data directory (e.g. the simulator's seeded keys).
    pub identity: Option<Keypair>,
    /// A bootstrap node always serves the DHT and needs no peers itself.
    pub bootstrap_node: bool,
    /// Period of heartbeats on `quiver/1/nodes`.
    pub heartbeat_interval: Duration,
    /// The node record (the signed heartbeat) is put in the DHT at the third heartbeat and then
    /// every this many heartbeats (30).
    pub node_record_every: u64,
    /// Nodes not heard of for this long are forgotten.
    pub node_ttl: Duration,
    /// Most nodes kept in the table.
    pub max_known_nodes: usize,
    /// Period of random DHT walks that keep the routing table full.
    pub random_walk_interval: Duration,
    /// Period of full DHT bootstraps.
    pub kad_bootstrap_interval: Duration,
    /// Serve these engines to the network (the provider role).
    pub provider: Option<ProviderConfig>,
    /// Serve this machine's memory and CPU to the heads of split models on its allow list.
    pub shard_host: Option<crate::shard::ShardHostConfig>,
    /// Fraction of greedy requests verified on a second provider even when not asked for.
    pub verify_rate: f64,
    /// Seed of the random choices in routing (which of two near-equal providers gets a job):
    /// `None` (the default) seeds from the operating system; a test fixes it to replay them.
    pub route_seed: Option<u64>,
    /// Take part in the DHT as a client only (never in others' routing tables): for short-lived
    /// processes such as `quiver ask`.
    pub dht_client_only: bool,
    /// Period of this node's reputation reports (its own observations, gossiped as hearsay).
    pub reputation_report_interval: Duration,
    /// DHT mode when neither `bootstrap_node` (always a server) nor `dht_client_only` (always
    /// a client) decides it: `Auto` serves once AutoNAT has confirmed that others can dial us.
    pub kad_mode: KadMode,
    /// Offer a relay to NATed peers while reachable, within these limits.
    pub relay_service: bool,
    pub relay_limits: RelayLimits,
    /// Ask the local gateway for a port mapping (UPnP). Off by default.
    pub upnp: bool,
    /// Find peers on the local network with mDNS (see [`NetConfig::mdns`]). Off by default here
    /// (a library in a test must not multicast on the machine's network); the `quiver`,
    /// `quiver-node` and `quiver-provider` commands turn it on unless `--no-mdns`.
    pub mdns: bool,
    /// The transport: the OS network, or libp2p's in-process memory transport (the simulator,
    /// `quiver-sim`, runs many nodes in one process over it with `/memory/<n>` addresses).
    pub transport: TransportKind,
    /// Period of GossipSub's mesh maintenance.
    pub gossip_heartbeat: Duration,
    /// Period of pings on every connection.
    pub ping_interval: Duration,
    /// Connections without activity are closed after this long.
    pub idle_connection_timeout: Duration,
    /// Misbehave on purpose (tests only).
    #[cfg(feature = "adversary")]
    pub adversary: Option<crate::adversary::Adversary>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let net_defaults = NetConfig::default();
        NodeConfig {
            listen_addrs: default_listen_addrs(std::net::Ipv4Addr::UNSPECIFIED.into(), 0, net_defaults.quic),
            quic: net_defaults.quic,
            bootstrap_peers: Vec::new(),
            data_dir: None,
            identity: None,
            bootstrap_node: false,
            heartbeat_interval: Duration::from_secs(10),
            node_record_every: NODE_RECORD_EVERY,
            node_ttl: Duration::from_secs(60),
            max_known_nodes: 10_000,
            random_walk_interval: Duration::from_secs(60),
            kad_bootstrap_interval: Duration::from_secs(300),
            provider: None,
            shard_host: None,
            verify_rate: 0.0,
            route_seed: None,
            dht_client_only: false,
            reputation_report_interval: Duration::from_secs(60),
            kad_mode: KadMode::Auto,
            relay_service: true,
            relay_limits: RelayLimits::default(),
            upnp: false,
            mdns: false,
            transport: TransportKind::Os,
            gossip_heartbeat: net_defaults.gossip_heartbeat,
            ping_interval: net_defaults.ping_interval,
            idle_connection_timeout: net_defaults.idle_connection_timeout,
            #[cfg(feature = "adversary")]
            adversary: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot serve as a shard host: {0}")]
    Shard(String),
}

struct Inner {
    net: NetClient,
    keypair: Keypair,
    config: NodeConfig,
    started: Instant,
    table: Mutex<NodeTable>,
    metrics: NodeMetrics,
    registry: Registry,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    provider: Option<Arc<Provider>>,
    /// The member role of split models, once started.
    shard_host: std::sync::OnceLock<Arc<crate::shard::ShardHost>>,
    claims: ClaimBoard,
    /// This node's inference attempts in flight, per provider (for ranking).
    dispatched: Dispatched,
    /// The classes providers signed receipts for, checked against their heartbeats.
    builds: Mutex<crate::builds::BuildBook>,
    /// The random choices of routing (see [`NodeConfig::route_seed`]).
    route_rng: Mutex<rand::rngs::StdRng>,
    reputation: Mutex<Reputation>,
    results: ResultCache,
    /// Peers on the block list, with the end of their ban.
    blocked: Mutex<HashMap<PeerId, SystemTime>>,
    /// Sequence number of the latest heartbeat.
    heartbeat_seq: AtomicU64,
    /// Heartbeats published and accepted, for observers (see [`Node::heartbeat_events`]).
    heartbeat_events: broadcast::Sender<HeartbeatEvent>,
}

/// A heartbeat this node published or accepted from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// This node published its heartbeat `seq`, dated `timestamp_ms` (Unix ms).
    Published { seq: u64, timestamp_ms: u64 },
    /// This node accepted `from`'s heartbeat `seq` (dated `timestamp_ms` by its author) at
    /// `received_ms` (Unix ms).
    Accepted { from: PeerId, seq: u64, timestamp_ms: u64, received_ms: u64 },
}

/// Capacity of the heartbeat event channel; an observer that falls further behind loses events.
const HEARTBEAT_EVENTS: usize = 1024;

/// A running node. Cheap to clone; every clone drives the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// Starts a node: loads (or creates) its identity, starts the swarm, listens, joins through
    /// the bootstrap peers (retrying in the background), and starts publishing heartbeats.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let keypair = match &config.data_dir {
            Some(dir) => identity::load_or_create(dir)?,
            None => config.identity.clone().unwrap_or_else(Keypair::generate_ed25519),
        };
        let mut registry = Registry::default();
        let start_unix = (discovery::now_ms() / 1000) as i64;
        let metrics = NodeMetrics::register(&mut registry, start_unix);
        let net_config = NetConfig {
            listen_addrs: config.listen_addrs.clone(),
            quic: config.quic,
            bootstrap: config.bootstrap_peers.clone(),
            kad_mode: if config.dht_client_only {
                KadMode::Client
            } else if config.bootstrap_node {
                // Others join through it: it is reachable by definition.
                KadMode::Server
            } else {
                config.kad_mode
            },
            relay_service: config.relay_service,
            relay_limits: config.relay_limits.clone(),
            upnp: config.upnp,
            mdns: config.mdns,
            kad_bootstrap_interval: config.kad_bootstrap_interval,
            random_walk_interval: config.random_walk_interval,
            transport: config.transport,
            gossip_heartbeat: config.gossip_heartbeat,
            ping_interval: config.ping_interval,
            idle_connection_timeout: config.idle_connection_timeout,
            agent_version: AGENT_VERSION.to_owned(),
            ..NetConfig::default()
        };
        let (net, events, net_task) = quiver_net::spawn(keypair.clone(), net_config, &mut registry).await?;
        net.subscribe(NODES_TOPIC).await?;
        net.subscribe(REPUTATION_TOPIC).await?;
        let (listen_tx, listen_rx) = watch::channel(Vec::new());
        let reputation = open_reputation(config.data_dir.as_deref());
        // Clients' offences the provider sees (bounded; recorded by `record_client_offences`).
        let (offences_tx, offences_rx) = tokio::sync::mpsc::channel(256);
        let provider = match &config.provider {
            Some(p) if !p.engines.is_empty() => {
                let provider =
                    Provider::new(p.clone(), keypair.clone(), net.clone(), metrics.clone()).with_offences(offences_tx);
                #[cfg(feature = "adversary")]
                let provider = provider.with_adversary(config.adversary);
                let provider = Arc::new(provider);
                provider.announce().await?;
                Some(provider)
            }
            _ => None,
        };
        let route_seed = config.route_seed;
        let inner = Arc::new(Inner {
            net,
            keypair,
            table: Mutex::new(NodeTable::new(config.max_known_nodes, config.node_ttl)),
            config,
            started: Instant::now(),
            metrics,
            registry,
            listen_addrs: listen_rx,
            tasks: Mutex::new(Vec::new()),
            provider: provider.clone(),
            shard_host: std::sync::OnceLock::new(),
            claims: ClaimBoard::default(),
            dispatched: Dispatched::default(),
            builds: Mutex::new(crate::builds::BuildBook::default()),
            route_rng: Mutex::new(match route_seed {
                Some(seed) => rand::SeedableRng::seed_from_u64(seed),
                None => rand::SeedableRng::from_entropy(),
            }),
            reputation: Mutex::new(reputation),
            results: ResultCache::new(256, Duration::from_secs(600)),
            blocked: Mutex::new(HashMap::new()),
            heartbeat_seq: AtomicU64::new(0),
            heartbeat_events: broadcast::channel(HEARTBEAT_EVENTS).0,
        });
        let node = Node { inner };
        let mut tasks = vec![
            net_task,
            tokio::spawn(node.clone().handle_events(events, listen_tx)),
            tokio::spawn(node.clone().publish_heartbeats()),
            tokio::spawn(node.clone().accept_claims()),
            tokio::spawn(node.clone().maintain_reputation()),
            tokio::spawn(node.clone().publish_reputation_reports()),
            tokio::spawn(node.clone().say_when_alone()),
        ];
        if let Some(p) = provider {
            tasks.push(tokio::spawn(node.clone().republish_when_joined(p.clone())));
            tasks.push(tokio::spawn(p.serve()));
            tasks.push(tokio::spawn(node.clone().record_client_offences(offences_rx)));
        }
        if let Some(head) = node.inner.config.provider.as_ref().and_then(|p| p.shard_head.clone()) {
            tasks.push(tokio::spawn(head.run(node.clone())));
        }
        if let Some(cfg) = node.inner.config.shard_host.clone() {
            let host = crate::shard::ShardHost::start(node.inner.net.clone(), cfg).await.map_err(NodeError::Shard)?;
            let _ = node.inner.shard_host.set(host);
        }
        #[cfg(feature = "adversary")]
        if node.misbehaves(crate::adversary::Misbehaviour::IdleStreams) {
            tasks.push(tokio::spawn(node.clone().hold_idle_streams()));
        }
        *lock(&node.inner.tasks) = tasks;
        info!(peer_id = %node.peer_id(), "node started");
        Ok(node)
    }

    pub fn peer_id(&self) -> quiver_net::PeerId {
        self.inner.net.peer_id()
    }

    /// Kademlia bootstraps this node has finished: 0 while it is still joining the DHT.
    pub fn dht_bootstraps(&self) -> u64 {
        self.inner.net.dht_bootstraps()
    }

    /// The member role of split models, when this node has it.
    pub fn shard_host(&self) -> Option<Arc<crate::shard::ShardHost>> {
        self.inner.shard_host.get().cloned()
    }

    /// The handle to the network layer, for roles built on top of the node.
    pub fn net(&self) -> &NetClient {
        &self.inner.net
    }

    /// Full listen addresses (ending in `/p2p/<PeerId>`), updated as listeners come up.
    pub fn listen_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.inner.listen_addrs.clone()
    }

    /// The nodes heard of through heartbeats.
    pub fn known_nodes(&self) -> Vec<KnownNode> {
        lock(&self.inner.table).snapshot()
    }

    /// What the latest heartbeat of `peer` said, if it is still live.
    pub fn known_node(&self, peer: &PeerId) -> Option<KnownNode> {
        lock(&self.inner.table).get(peer)
    }

    /// Fetches `peer`'s node record from the DHT and checks it: a heartbeat signed by `peer`
    /// (what its latest heartbeat said when it last put its record). `None` when no valid record
    /// is found within 30 s.
    pub async fn lookup_node_record(&self, peer: &PeerId) -> Result<Option<Heartbeat>, NodeError> {
        let key = quiver_net::node_record_key(peer);
        let Ok(found) = tokio::time::timeout(NODE_RECORD_LOOKUP_TIMEOUT, self.inner.net.get_record(key.clone())).await
        else {
            return Ok(None);
        };
        let Some(value) = found? else { return Ok(None) };
        match quiver_proto::dht::verify_node_record(&key, &value) {
            Ok(record) => Ok(Some(record.heartbeat)),
            Err(e) => {
                debug!(%peer, error = %e, "invalid node record");
                Ok(None)
            }
        }
    }

    /// Puts this node's record (its current heartbeat, signed) in the DHT now, besides the
    /// periodic puts that follow heartbeats (e.g. once it has joined), and waits for the put to
    /// end: `true` when peers took it.
    pub async fn publish_node_record(&self) -> Result<bool, NodeError> {
        let seq = self.inner.heartbeat_seq.load(Ordering::Relaxed);
        let signed = self.heartbeat(seq).sign_and_encode(&self.inner.keypair);
        Ok(self.inner.net.put_record_and_wait(quiver_net::node_record_key(&self.peer_id()), signed).await?)
    }

    /// Every heartbeat this node publishes and every one it accepts from now on (a bounded
    /// channel: an observer that falls behind by more than a few thousand events loses the
    /// oldest). The simulator measures gossip delivery with it.
    pub fn heartbeat_events(&self) -> broadcast::Receiver<HeartbeatEvent> {
        self.inner.heartbeat_events.subscribe()
    }

    pub(crate) fn metrics(&self) -> &NodeMetrics {
        &self.inner.metrics
    }

    pub(crate) fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub(crate) fn verify_rate(&self) -> f64 {
        self.inner.config.verify_rate
    }

    pub(crate) fn result_cache(&self) -> &ResultCache {
        &self.inner.results
    }

    pub(crate) fn claim_board(&self) -> &ClaimBoard {
        &self.inner.claims
    }

    pub(crate) fn dispatched(&self) -> &Dispatched {
        &self.inner.dispatched
    }

    /// Remembers the class (engine build, threads) of a receipt `peer` signed, to be checked
    /// against its next heartbeat (see [`crate::builds`]).
    pub(crate) fn note_signed_class(&self, peer: PeerId, signed: crate::builds::Signed) {
        lock(&self.inner.builds).note_receipt(peer, signed);
    }

    /// Whether classes `peer` signed for wait for its next heartbeat.
    fn builds_waiting(&self, peer: PeerId) -> bool {
        lock(&self.inner.builds).waiting(&peer)
    }

    /// Checks the classes `peer` signed for against its heartbeat (already accepted).
    fn check_builds(&self, peer: PeerId, heartbeat: &Heartbeat) {
        let lie = lock(&self.inner.builds).check(peer, heartbeat);
        if let Some(lie) = lie {
            info!(%peer, %lie, "a provider's heartbeat announces another engine than its receipts");
            let node = self.clone();
            tokio::spawn(async move { node.record_offence(peer, Offence::HeartbeatLie, false).await });
        }
    }

    /// Runs `f` with routing's random number generator.
    pub(crate) fn with_route_rng<T>(&self, f: impl FnOnce(&mut rand::rngs::StdRng) -> T) -> T {
        f(&mut lock(&self.inner.route_rng))
    }

    /// Waits until this node knows whether others can reach it (and, behind a NAT, until a
    /// relay holds a slot for it, so peers can dial it back), or `limit` passes. Returns the
    /// reachability then.
    pub async fn wait_for_reachability(&self, limit: Duration) -> Reachability {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let now = match self.inner.net.status().await {
                Ok(s) => s.reachability,
                Err(_) => return Reachability::Unknown,
            };
            if matches!(now, Reachability::Public | Reachability::Relayed) || tokio::time::Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until at least `n` peers are connected, or `limit` passes; returns whether they are.
    pub async fn wait_for_peers(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(s) = self.inner.net.status().await
                && s.connected_peers.len() >= n
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a provider of `model` is known (heartbeat or DHT), or `limit` passes.
    pub async fn wait_for_provider(&self, model: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.known_nodes().iter().any(|n| n.models.iter().any(|m| m.name == model)) {
                return true;
            }
            let found = tokio::time::timeout(
                Duration::from_secs(3),
                self.inner.net.get_providers(crate::wire::model_name_key(model)),
            )
            .await;
            if let Ok(Ok(p)) = found
                && p.iter().any(|(peer, _)| *peer != self.peer_id())
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeError> {
        Ok(self.inner.net.peers().await?)
    }

    /// All metrics in the Prometheus/OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// What this node has observed of every peer it dealt with, best first.
    pub fn reputation(&self) -> Vec<PeerView> {
        self.with_reputation(|r, now| r.all(now))
    }

    /// Runs `f` on the reputation store with the current time.
    pub(crate) fn with_reputation<T>(&self, f: impl FnOnce(&mut Reputation, SystemTime) -> T) -> T {
        f(&mut lock(&self.inner.reputation), SystemTime::now())
    }

    /// Records an offence of `peer` (as a failed job when `job` is set, else as a penalty) and
    /// bans it when its score falls below the threshold.
    pub(crate) async fn record_offence(&self, peer: PeerId, offence: Offence, job: bool) {
        let ban = self.with_reputation(|r, now| {
            if job { r.record_failure(peer, offence, now) } else { r.penalize(peer, offence, now) }
        });
        if let Some(ban) = ban {
            warn!(%peer, offence = offence.as_str(), until = ?ban.until, bans = ban.ban_count, "banning a peer");
            lock(&self.inner.blocked).insert(peer, ban.until);
            let _ = self.inner.net.block(peer).await;
        }
    }

    /// Records the offences of clients that this node's provider saw (a stream held and never
    /// written, an unreadable request): penalties, so a client that keeps doing it is banned.
    async fn record_client_offences(self, mut offences: tokio::sync::mpsc::Receiver<(PeerId, Offence)>) {
        while let Some((peer, offence)) = offences.recv().await {
            self.record_offence(peer, offence, false).await;
        }
    }

    /// Persists reputation every 30 s, lifts bans that ended, and re-applies bans that a
    /// previous run decided.
    async fn maintain_reputation(self) {
        let banned = self.with_reputation(|r, now| r.banned(now));
        for (peer, until) in banned {
            lock(&self.inner.blocked).insert(peer, until);
            let _ = self.inner.net.block(peer).await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = lock(&self.inner.reputation).flush() {
                warn!(error = %e, "cannot save reputation");
            }
            let now = SystemTime::now();
            let ended: Vec<PeerId> = {
                let mut blocked = lock(&self.inner.blocked);
                let ended = blocked.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect::<Vec<_>>();
                for p in &ended {
                    blocked.remove(p);
                }
                ended
            };
            for peer in ended {
                info!(%peer, "ban ended");
                let _ = self.inner.net.unblock(peer).await;
            }
        }
    }

    /// Republishes the provider records when the routing table first has peers, and again when
    /// it has grown: the records published at start reached nobody (or only the bootstrap peer),
    /// and Kademlia's own republication comes ten minutes later.
    async fn republish_when_joined(self, provider: Arc<Provider>) {
        for wanted in gossip::REPUBLISH_AT_ROUTING_TABLE_SIZES {
            loop {
                match self.inner.net.status().await {
                    Ok(s) if s.routing_table.len() >= wanted => break,
                    Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    Err(_) => return,
                }
            }
            if provider.republish().await.is_err() {
                return;
            }
            debug!(routing_table = wanted, "provider records republished");
        }
    }

    /// Stops the node: background work ends and connections close.
    pub async fn shutdown(&self) {
        {
            let mut reputation = lock(&self.inner.reputation);
            if let Err(e) = reputation.flush() {
                warn!(error = %e, "cannot save reputation");
            }
            // Close the database file now (a clone of this handle may outlive the node).
            let config = reputation.config().clone();
            *reputation = Reputation::in_memory(config);
        }
        self.inner.net.shutdown().await;
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            t.abort();
        }
    }
}

/// The reputation store in `<data-dir>/reputation.redb`, or in memory for a node without a data
/// directory or when the file cannot be opened (then with a warning: history starts afresh).
fn open_reputation(data_dir: Option<&std::path::Path>) -> Reputation {
    let config = ReputationConfig::default();
    match data_dir {
        None => Reputation::in_memory(config),
        Some(dir) => {
            let path = dir.join("reputation.redb");
            Reputation::open(&path, config.clone()).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "cannot open the reputation store; keeping reputation in memory");
                Reputation::in_memory(config)
            })
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the table stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
