//! The one task that owns the `Swarm`: commands, swarm and behaviour events, status. Building the
//! swarm (`swarm.rs`), dialing (`dialing.rs`), reachability and relays (`relays.rs`) and Kademlia
//! queries (`queries.rs`), LAN discovery (`mdns.rs`) and the status with the network size estimate
//! (`status.rs`) are in the modules below.

mod dialing;
mod mdns;
mod queries;
mod relays;
mod status;
mod swarm;

pub use swarm::spawn;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::kad::{self, store::RecordStore};

use crate::kad_limit::LimitedKadEvent;
use libp2p::core::transport::{ListenerId, MemoryTransport, Transport as _};
use libp2p::core::upgrade;
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, autonat, dcutr, identify, noise, ping, plaintext, relay, tls, upnp, yamux,
};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, timeout};
use tracing::{debug, info, trace, warn};

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::client::{Command, NetClient, NetEvent, PeerInfo, RecordLookup, Validation};
use crate::metrics::{NetMetrics, ReasonLabel, RefusedLabel, ResultLabel, circuit_close_reason};
use crate::reachability::{ReachabilityState, circuit_listen_addr, is_relayed};
use crate::refresh::{self, Refresh};
use crate::{BootstrapAddr, IDENTIFY_PROTOCOL, KAD_PROTOCOL, NetConfig, NetError, TransportKind, split_peer_id};

pub use quiver_proto::dht::{MODEL_KEY_PREFIX, NODE_RECORD_PREFIX, node_record_key};
/// Most addresses taken from one peer's Identify into the routing table.
const MAX_IDENTIFY_ADDRS: usize = 8;
const BOOTSTRAP_BACKOFF_MIN: Duration = Duration::from_secs(1);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// When a bootstrap peer is already being dialed by someone else, how soon to look again.
const BOOTSTRAP_RECHECK: Duration = Duration::from_secs(1);
/// Reconnecting to a bootstrap peer starts a Kademlia bootstrap only while the routing table
/// holds fewer peers than this (Kademlia's K).
const REBOOTSTRAP_BELOW: usize = 20;

struct BootstrapState {
    target: BootstrapAddr,
    /// Learned on connect when the user gave no `/p2p/<PeerId>`.
    peer_id: Option<PeerId>,
    dialing: Option<ConnectionId>,
    next_attempt: Instant,
    backoff: Duration,
    failures: u32,
}

#[derive(Default)]
struct PeerMeta {
    agent_version: Option<String>,
    rtt: Option<Duration>,
    addresses: HashSet<Multiaddr>,
    /// Open connections: remote address and whether it goes through a relay.
    connections: HashMap<ConnectionId, (Multiaddr, bool)>,
    /// The peer offers a relay (announces the circuit relay HOP protocol).
    relay: bool,
    /// Direct listen addresses from its Identify (at most [`MAX_IDENTIFY_ADDRS`]).
    listen_addrs: Vec<Multiaddr>,
    /// Some connection to it (while connected) went through a relay: it may be behind a NAT,
    /// and it may have punched a hole to us (see [`EventLoop::update_autonat_server`]).
    reached_through_relay: bool,
}

impl PeerMeta {
    /// Whether AutoNAT may ask this peer to dial us back: connected directly, and never through
    /// a relay (see [`EventLoop::update_autonat_server`]).
    fn may_probe_reachability(&self) -> bool {
        !self.reached_through_relay && self.connections.values().any(|(_, relayed)| !relayed)
    }

    /// Direct addresses to reach this peer at: those it announced on an IP we are connected to
    /// it on (its other transports on the same host), then the addresses of our connections.
    /// Announced addresses on other IPs (its loopback, other networks) may not route from here.
    fn direct_addrs(&self) -> Vec<Multiaddr> {
        let ips: HashSet<Multiaddr> =
            self.connections.values().filter(|(_, relayed)| !relayed).filter_map(|(a, _)| ip_of(a)).collect();
        let mut out: Vec<Multiaddr> = Vec::new();
        let announced = self.listen_addrs.iter().filter(|a| ip_of(a).is_some_and(|ip| ips.contains(&ip)));
        for a in announced.chain(self.addresses.iter()) {
            if !is_relayed(a) && is_dialable(a) && !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

/// The `/ip4/…` or `/ip6/…` part of an address.
fn ip_of(addr: &Multiaddr) -> Option<Multiaddr> {
    match addr.iter().next()? {
        p @ (Protocol::Ip4(_) | Protocol::Ip6(_)) => Some(Multiaddr::empty().with(p)),
        _ => None,
    }
}

/// Where a relay reservation of ours stands.
struct RelayListener {
    relay: PeerId,
}

/// A relay that refused or lost our reservation is asked again after this long.
const RELAY_RETRY: Duration = Duration::from_secs(60);

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    cfg: NetConfig,
    bootstrap: Vec<BootstrapState>,
    peers: HashMap<PeerId, PeerMeta>,
    metrics: Metrics,
    /// Provider lookups in flight, with the providers found so far.
    provider_queries: HashMap<kad::QueryId, ProviderQuery>,
    /// Record lookups in flight.
    record_queries: HashMap<kad::QueryId, RecordQuery>,
    /// Record puts whose caller waits for the outcome.
    put_queries: HashMap<kad::QueryId, oneshot::Sender<bool>>,
    /// `connect` calls waiting for a dial to a peer. All of a peer's callers are answered by its
    /// next connection, or once the dial they wait on failed with none of their addresses left
    /// untried. At most [`MAX_CONNECT_WAITERS`] in all; given-up callers are swept on the tick.
    connecting: HashMap<PeerId, Connecting>,
    /// Reachability (AutoNAT's verdict, relay reservations) and what follows from it.
    reach: ReachabilityState,
    /// Our listeners on relays (reservations asked for or held).
    relay_listeners: HashMap<ListenerId, RelayListener>,
    /// Relays not to ask again before the given time.
    relay_retry: HashMap<PeerId, Instant>,
    /// Whether Kademlia and the relay service currently serve (as last applied).
    kad_server: bool,
    relay_on: bool,
    net_metrics: NetMetrics,
    hole_punches: (u64, u64),
    /// The heartbeat rate the delivery threshold follows, raised step by step on `last_tick`.
    delivery_rate: crate::behaviour::DeliveryRate,
    last_tick: Instant,
    /// Tell connected peers our protocols (after a DHT mode change) at the next tick. Identify
    /// pushes protocol changes by itself only on connections where the first exchange is done.
    push_identify: bool,
    /// Reservations our relay service holds, per peer. libp2p's relay reports a closed
    /// connection of a peer as `ReservationClosed` whether or not it held the reservation, so a
    /// peer's count is dropped when it has no connection left.
    relay_reserved: HashMap<PeerId, u32>,
    /// The routing-table refresh in progress (our join walk, in place of libp2p-kad's).
    refresh: Refresh,
    /// Relays we opened a QUIC connection to (besides the one we reserve on), so that the
    /// address they observe gives a hole punch a QUIC candidate.
    quic_to_relay: HashSet<PeerId>,
    /// Peers AutoNAT may ask to dial us back (see [`EventLoop::update_autonat_server`]).
    autonat_servers: HashSet<PeerId>,
    /// Peers found on the LAN and not connected yet (`None`: mDNS is off).
    lan: Option<crate::lan::LanPeers>,
    /// Peers from `lan` connected and not identified as DHT servers yet (see `mdns.rs`).
    lan_joining: HashSet<PeerId>,
    /// Peers heard from mDNS since the last tick, expired in libp2p's list again then.
    mdns_recheck: HashSet<PeerId>,
}

struct ProviderQuery {
    started: Instant,
    found: Vec<PeerId>,
    reply: oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>>,
}

struct RecordQuery {
    started: Instant,
    key: kad::RecordKey,
    reply: oneshot::Sender<RecordLookup>,
}

/// Longest a record lookup runs before it answers that nothing was found.
const RECORD_LOOKUP_LIMIT: Duration = Duration::from_secs(20);
/// Most record lookups in flight; more are answered `None` at once.
const MAX_RECORD_QUERIES: usize = 256;

/// How long a provider lookup that already found providers may keep looking for more.
const PROVIDER_LOOKUP_PATIENCE: Duration = Duration::from_secs(2);

/// Most `connect` callers waiting for dials at once; more are refused at once.
const MAX_CONNECT_WAITERS: usize = 1024;

/// `connect` callers waiting for one peer (see `EventLoop::connecting`).
#[derive(Default)]
struct Connecting {
    /// The dial they wait on when it is ours; `None`: one already under way (Kademlia's, or a
    /// caller's that failed over to another's), started with addresses of its own.
    ours: Option<ConnectionId>,
    waiting: Vec<oneshot::Sender<Result<(), NetError>>>,
    /// Addresses our dial was started with.
    tried: Vec<Multiaddr>,
    /// Addresses callers gave that the dial they wait on was not started with: tried in a dial
    /// of our own when that one fails (at most [`MAX_UNTRIED_ADDRS`]).
    untried: Vec<Multiaddr>,
}

/// Addresses kept per peer for that second dial (a caller gives a provider's few addresses).
const MAX_UNTRIED_ADDRS: usize = 16;

impl Connecting {
    fn add_untried(&mut self, addrs: Vec<Multiaddr>) {
        for a in addrs {
            if self.untried.len() < MAX_UNTRIED_ADDRS && !self.untried.contains(&a) && !self.tried.contains(&a) {
                self.untried.push(a);
            }
        }
    }
}

/// Most providers returned by one lookup.
const MAX_PROVIDERS: usize = 64;

/// Most peers AutoNAT chooses among when it probes our reachability.
const MAX_AUTONAT_SERVERS: usize = 32;

impl EventLoop {
    async fn run(mut self) {
        let mut tick = interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut random_walk = interval(self.cfg.random_walk_interval);
        random_walk.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The periodic refresh; the first one is the join's (started on reaching a bootstrap peer).
        let period = self.cfg.kad_bootstrap_interval;
        let mut refresh = interval_at(Instant::now() + period, period);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    self.refresh.cut_foreign(&mut self.swarm.behaviour_mut().kad);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some(params) = self.delivery_rate.tick(now - std::mem::replace(&mut self.last_tick, now)) {
                        debug!(rate = self.delivery_rate.effective(), "heartbeat delivery threshold raised");
                        self.set_nodes_topic_params(params);
                    }
                    self.redial_bootstrap();
                    if self.refresh.retry_due(now) && !self.refresh.start(&mut self.swarm.behaviour_mut().kad) {
                        self.refresh.retry_later(now);
                    }
                    self.maintain_relays();
                    self.lan_tick(now);
                    if std::mem::take(&mut self.push_identify) {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        self.swarm.behaviour_mut().identify.push(peers);
                    }
                    self.update_size_estimate();
                    self.answer_slow_provider_queries();
                    self.end_slow_record_queries();
                    self.connecting.retain(|_, c| {
                        c.waiting.retain(|reply| !reply.is_closed());
                        !c.waiting.is_empty()
                    });
                }
                _ = refresh.tick() => {
                    self.refresh.start(&mut self.swarm.behaviour_mut().kad);
                }
                _ = random_walk.tick() => {
                    if self.swarm.behaviour_mut().kad.kbuckets().next().is_some() {
                        self.swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
                    }
                }
            }
        }
        info!("network event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe { topic, reply } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&IdentTopic::new(topic))
                    .map(|_| ())
                    .map_err(|e| NetError::Config(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Publish { topic, data, reply } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), data)
                    .map(|_| ())
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = reply.send(r);
            }
            Command::ReportValidation { id, source, validation } => {
                let acceptance = match validation {
                    Validation::Accept => MessageAcceptance::Accept,
                    Validation::Reject => MessageAcceptance::Reject,
                    Validation::Ignore => MessageAcceptance::Ignore,
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::PutRecord { key, value, stored } => {
                let record = kad::Record::new(key, value);
                match self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        if let Some(reply) = stored {
                            if self.put_queries.len() < MAX_RECORD_QUERIES {
                                self.put_queries.insert(id, reply);
                            } else {
                                // Too many waiting: the put goes on, the caller is not told.
                                let _ = reply.send(false);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot store DHT record locally");
                        if let Some(reply) = stored {
                            let _ = reply.send(false);
                        }
                    }
                }
            }
            Command::StartProviding { key } => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&key)) {
                    warn!(error = %e, "cannot record a provided key");
                }
            }
            Command::StopProviding { key } => {
                self.swarm.behaviour_mut().kad.stop_providing(&kad::RecordKey::new(&key));
            }
            Command::GetProviders { key, reply } => {
                let key = kad::RecordKey::new(&key);
                // Our own provider records count too (a node may ask for a model it serves).
                let local: Vec<PeerId> = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .providers(&key)
                    .into_iter()
                    .map(|r| r.provider)
                    .collect();
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_queries.insert(id, ProviderQuery { started: Instant::now(), found: local, reply });
            }
            Command::GetRecord { key, reply } => {
                if self.record_queries.len() >= MAX_RECORD_QUERIES {
                    debug!("too many record lookups in flight; refusing one");
                    let _ = reply.send(RecordLookup { value: None, peers_asked: 0, peers_answered: 0 });
                    return;
                }
                let key = kad::RecordKey::new(&key);
                let id = self.swarm.behaviour_mut().kad.get_record(key.clone());
                self.record_queries.insert(id, RecordQuery { started: Instant::now(), key, reply });
            }
            Command::Connect { peer, addrs, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if self.connecting.values().map(|c| c.waiting.len()).sum::<usize>() >= MAX_CONNECT_WAITERS {
                    let _ = reply.send(Err(NetError::Dial("too many connections being made".into())));
                    return;
                }
                for a in &addrs {
                    self.swarm.add_peer_address(peer, a.clone());
                }
                match self.dial_for_callers(peer, addrs.clone()) {
                    Ok(id) => {
                        let c = self.connecting.entry(peer).or_default();
                        c.ours = Some(id);
                        c.tried = addrs.into_iter().take(MAX_UNTRIED_ADDRS).collect();
                        c.waiting.push(reply);
                    }
                    // A dial to it is already under way (another request to the same provider,
                    // or Kademlia's), perhaps with other addresses: this caller waits for it, and
                    // its addresses get a dial of their own if that one fails.
                    Err(DialError::DialPeerConditionFalse(_)) => {
                        let c = self.connecting.entry(peer).or_default();
                        c.waiting.push(reply);
                        c.add_untried(addrs);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial(e.to_string())));
                    }
                }
            }
            Command::Block { peer } => {
                if self.swarm.behaviour_mut().blocked.block_peer(peer) {
                    info!(%peer, "peer blocked");
                }
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
            }
            Command::Unblock { peer } => {
                if self.swarm.behaviour_mut().blocked.unblock_peer(peer) {
                    info!(%peer, "peer unblocked");
                }
                self.swarm.behaviour_mut().gossipsub.remove_blacklisted_peer(&peer);
            }
            Command::SetApplicationScore { peer, score } => {
                self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, score);
            }
            Command::NodesTopicTraffic { expected_per_sec, activation } => {
                let params = self.delivery_rate.set(expected_per_sec, activation);
                self.set_nodes_topic_params(params);
            }
            Command::Shutdown => {}
        }
    }

    fn set_nodes_topic_params(&mut self, params: gossipsub::TopicScoreParams) {
        let topic = IdentTopic::new(crate::NODES_TOPIC);
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.set_topic_params(topic, params) {
            warn!(error = e, "cannot update gossip scoring");
        }
    }

    /// Addresses we know for `peer`: from the routing table and from open connections.
    fn known_addresses(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                if entry.node.key.preimage() == peer {
                    addrs.extend(entry.node.value.iter().cloned());
                }
            }
        }
        if let Some(meta) = self.peers.get(peer) {
            addrs.extend(meta.addresses.iter().cloned());
        }
        addrs.sort();
        addrs.dedup();
        addrs.truncate(MAX_IDENTIFY_ADDRS);
        addrs
    }

    /// A refresh of the routing table has finished: count it, and schedule the next one while
    /// the table is short of peers.
    fn refresh_finished(&mut self) {
        self.net_metrics.dht_bootstraps.inc();
        let table = self.known_dht_peers();
        self.refresh.finished(table, Instant::now());
    }

    /// Peers in the Kademlia routing table.
    fn known_dht_peers(&mut self) -> usize {
        self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum()
    }

    fn peer_infos(&mut self) -> Vec<PeerInfo> {
        let in_table: HashSet<PeerId> = self.routing_table().into_iter().collect();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        connected
            .into_iter()
            .map(|peer_id| {
                let meta = self.peers.get(&peer_id);
                let direct_addrs: Vec<Multiaddr> = meta
                    .map(|m| m.connections.values().filter(|(_, relayed)| !relayed).map(|(a, _)| a.clone()).collect())
                    .unwrap_or_default();
                PeerInfo {
                    peer_id,
                    addresses: meta.map(|m| m.addresses.iter().cloned().collect()).unwrap_or_default(),
                    agent_version: meta.and_then(|m| m.agent_version.clone()),
                    rtt_ms: meta.and_then(|m| m.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    gossip_score: self.swarm.behaviour().gossipsub.peer_score(&peer_id),
                    in_routing_table: in_table.contains(&peer_id),
                    direct: !direct_addrs.is_empty(),
                    relayed: meta.is_some_and(|m| m.connections.values().any(|(_, relayed)| *relayed)),
                    direct_addrs,
                }
            })
            .collect()
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                if let Some(l) = self.relay_listeners.get(&listener_id) {
                    info!(relay = %l.relay, %address, "relay reservation accepted; reachable through it");
                    self.reach.reservation_accepted(l.relay, address.clone());
                    self.relay_retry.remove(&l.relay);
                    self.apply_reachability();
                }
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                let _ = self.events.try_send(NetEvent::NewListenAddr(full));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                let _ = self.events.try_send(NetEvent::ExpiredListenAddr(full));
            }
            SwarmEvent::ListenerClosed { listener_id, reason, addresses } => {
                if let Some(l) = self.relay_listeners.remove(&listener_id) {
                    match reason {
                        Ok(()) => debug!(relay = %l.relay, "relay reservation ended"),
                        Err(e) => info!(relay = %l.relay, error = %e, "relay reservation refused or lost"),
                    }
                    if !self.relay_listeners.values().any(|o| o.relay == l.relay) {
                        self.reach.reservation_lost(&l.relay);
                    }
                    self.relay_retry.insert(l.relay, Instant::now() + RELAY_RETRY);
                    self.apply_reachability();
                }
                for address in addresses {
                    let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                    let _ = self.events.try_send(NetEvent::ExpiredListenAddr(full));
                }
            }
            // Relayed addresses arrive as listen addresses; this is a direct one (AutoNAT's
            // dial-back or a UPnP mapping) that may differ from every listen address.
            SwarmEvent::ExternalAddrConfirmed { address } if !is_relayed(&address) => {
                info!(%address, "external address confirmed");
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                let _ = self.events.try_send(NetEvent::NewListenAddr(full));
            }
            SwarmEvent::ExternalAddrExpired { address }
                if !is_relayed(&address) && !self.swarm.listeners().any(|l| *l == address) =>
            {
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                let _ = self.events.try_send(NetEvent::ExpiredListenAddr(full));
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                debug!(%peer_id, addr = %endpoint.get_remote_address(), relayed = endpoint.is_relayed(), "connected");
                let meta = self.peers.entry(peer_id).or_default();
                meta.addresses.insert(endpoint.get_remote_address().clone());
                meta.connections.insert(connection_id, (endpoint.get_remote_address().clone(), endpoint.is_relayed()));
                meta.reached_through_relay |= endpoint.is_relayed();
                self.update_autonat_server(peer_id);
                if let Some(i) = self.bootstrap.iter().position(|b| b.dialing == Some(connection_id)) {
                    let b = &mut self.bootstrap[i];
                    b.dialing = None;
                    b.failures = 0;
                    b.backoff = BOOTSTRAP_BACKOFF_MIN;
                    b.peer_id = Some(peer_id);
                    info!(bootstrap = %b.target, %peer_id, "joined through bootstrap peer");
                    let addr = b.target.addr.clone();
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    // Join (or rejoin while the routing table is small) with a refresh: a
                    // lookup of our own key, then of the farther buckets still short of peers
                    // (`refresh`). Only while the table is small: the connection to a bootstrap
                    // peer closes when idle and is redialed, and walking at every reconnect made
                    // every node connect to every other.
                    if self.known_dht_peers() < REBOOTSTRAP_BELOW {
                        self.refresh.start(&mut self.swarm.behaviour_mut().kad);
                    }
                }
                self.lan_peer_connected(peer_id);
                for reply in self.connecting.remove(&peer_id).unwrap_or_default().waiting {
                    let _ = reply.send(Ok(()));
                }
                if num_established.get() == 1 {
                    let _ = self.events.try_send(NetEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } if num_established > 0 => {
                if let Some(meta) = self.peers.get_mut(&peer_id) {
                    meta.connections.remove(&connection_id);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.peers.remove(&peer_id);
                self.lan_joining.remove(&peer_id);
                self.update_autonat_server(peer_id);
                if self.relay_reserved.remove(&peer_id).is_some() {
                    let held: u32 = self.relay_reserved.values().sum();
                    self.net_metrics.relay_service_reservations.set(i64::from(held));
                }
                let _ = self.events.try_send(NetEvent::PeerDisconnected(peer_id));
                let now = Instant::now();
                for b in self.bootstrap.iter_mut().filter(|b| b.peer_id == Some(peer_id)) {
                    b.next_attempt = now + b.backoff;
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, error, peer_id } => {
                // The dial its callers wait on failed: ours, or any when we have none of our own.
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                    && self.connecting.get(&peer).is_some_and(|c| c.ours.is_none_or(|id| id == connection_id))
                {
                    self.dial_failed_for_callers(peer, &error);
                }
                if let Some(peer) = peer_id {
                    self.lan_dial_failed(peer, connection_id);
                }
                if let Some(i) = self.bootstrap.iter().position(|b| b.dialing == Some(connection_id)) {
                    self.bootstrap_failed(i, &error.to_string());
                } else {
                    debug!(?peer_id, %error, "outgoing connection failed");
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                // Garbage on the port, a failed handshake or a connection over the limits.
                debug!(%send_back_addr, %error, "incoming connection refused");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                self.metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identify(peer_id, info);
                }
            }
            BehaviourEvent::Ping(event) => {
                self.metrics.record(&event);
                match event.result {
                    Ok(rtt) => {
                        self.peers.entry(event.peer).or_default().rtt = Some(rtt);
                    }
                    // A peer that stopped answering pings (hung, or cut off: no reset crosses a
                    // cut link) is disconnected, so bootstrap redial, Kademlia and gossip react;
                    // libp2p leaves this to us. Over TCP the graceful close can wait on a send
                    // buffer the peer never drains; TCP_USER_TIMEOUT ends that (transport.rs).
                    Err(ping::Failure::Unsupported) => {}
                    Err(error) => {
                        debug!(peer = %event.peer, %error, "ping failed; closing the connection");
                        self.swarm.close_connection(event.connection);
                    }
                }
            }
            BehaviourEvent::Kad(LimitedKadEvent::Kad(event)) => {
                self.metrics.record(&event);
                self.on_kad(event);
            }
            BehaviourEvent::Kad(LimitedKadEvent::OverLimit { peer, refused }) => {
                let _ = self.events.try_send(NetEvent::OverLimit { peer, what: "dht", refused });
            }
            BehaviourEvent::Gossipsub(event) => {
                self.metrics.record(&event);
                if let gossipsub::Event::Message { propagation_source, message_id, message } = event {
                    let ev = NetEvent::Gossip {
                        topic: message.topic.to_string(),
                        author: message.source,
                        propagation_source,
                        id: message_id.clone(),
                        data: message.data,
                    };
                    if self.events.try_send(ev).is_err() {
                        // The application is behind: drop the message without blaming the sender.
                        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                    }
                }
            }
            BehaviourEvent::Limits(never) | BehaviourEvent::Blocked(never) => match never {},
            BehaviourEvent::Stream(()) => {}
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::Relay(event) => self.on_relay_service(event),
            BehaviourEvent::RelayClient(event) => match event {
                relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. } => {
                    debug!(relay = %relay_peer_id, renewal, "relay reservation confirmed");
                }
                relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                    debug!(relay = %relay_peer_id, "connected to a peer through a relay");
                }
                relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                    debug!(peer = %src_peer_id, "a peer connected to us through a relay");
                }
            },
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(connection) => {
                    let addr = self
                        .peers
                        .get(&remote_peer_id)
                        .and_then(|m| m.connections.get(&connection))
                        .map(|(a, _)| a.to_string())
                        .unwrap_or_default();
                    info!(peer = %remote_peer_id, %addr, "hole punch succeeded: direct connection");
                    self.hole_punches.0 += 1;
                    self.net_metrics.hole_punches.get_or_create(&ResultLabel { result: "success" }).inc();
                }
                Err(e) => {
                    info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying relayed");
                    self.hole_punches.1 += 1;
                    self.net_metrics.hole_punches.get_or_create(&ResultLabel { result: "failure" }).inc();
                }
            },
            BehaviourEvent::Mdns(event) => self.on_mdns(event),
            BehaviourEvent::Upnp(event) => match event {
                upnp::Event::NewExternalAddr { local_addr, external_addr } => {
                    info!(%local_addr, %external_addr, "UPnP port mapping made")
                }
                upnp::Event::ExpiredExternalAddr { local_addr, external_addr } => {
                    info!(%local_addr, %external_addr, "UPnP port mapping expired")
                }
                upnp::Event::GatewayNotFound => info!("UPnP: no gateway found; no port mapping"),
                upnp::Event::NonRoutableGateway => info!("UPnP: the gateway is not on the public internet"),
            },
        }
    }

    fn on_identify(&mut self, peer_id: PeerId, info: identify::Info) {
        if info.protocol_version != IDENTIFY_PROTOCOL {
            // Not a QUIVer node (e.g. an IPFS peer that found our port): keep our network private.
            debug!(%peer_id, version = %info.protocol_version, "disconnecting a peer of another network");
            let _ = self.swarm.disconnect_peer_id(peer_id);
            self.lan_peer_identified(peer_id, false, false);
            return;
        }
        let mut agent = info.agent_version;
        agent.truncate(128);
        let direct: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(|a| is_dialable(a) && !is_relayed(a))
            .take(MAX_IDENTIFY_ADDRS)
            .map(|a| split_peer_id(a).0)
            .collect();
        let meta = self.peers.entry(peer_id).or_default();
        meta.agent_version = Some(agent);
        meta.relay = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        meta.listen_addrs = direct.clone();
        // Only peers that serve the DHT enter the routing table, and only with direct addresses:
        // a node in client mode (unreachable, or a short-lived client) does not announce the
        // Kademlia protocol.
        let serves_dht = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
        if serves_dht {
            for addr in direct {
                let (addr, _) = split_peer_id(addr);
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        self.lan_peer_identified(peer_id, true, serves_dht);
    }
}

/// A node record must name the peer that signed it, under that peer's key (the check itself is
/// the pure [`quiver_proto::dht::verify_node_record`], which the fuzz targets exercise).
fn valid_node_record(record: &kad::Record) -> bool {
    quiver_proto::dht::verify_node_record(record.key.as_ref(), &record.value).is_ok()
}

/// A connected peer that may probe our reachability and is not yet one of `servers`.
fn next_autonat_server(peers: &HashMap<PeerId, PeerMeta>, servers: &HashSet<PeerId>) -> Option<PeerId> {
    peers.iter().find(|(p, m)| !servers.contains(*p) && m.may_probe_reachability()).map(|(p, _)| *p)
}

fn kad_mode(server: bool) -> kad::Mode {
    if server { kad::Mode::Server } else { kad::Mode::Client }
}

/// Addresses worth putting in the routing table: not unspecified, with a transport we dial.
fn is_dialable(addr: &Multiaddr) -> bool {
    let mut ip_ok = false;
    let mut transport = false;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) => ip_ok = !ip.is_unspecified(),
            Protocol::Ip6(ip) => ip_ok = !ip.is_unspecified(),
            Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) => ip_ok = true,
            // In-process memory transport: the port is the whole address.
            Protocol::Memory(port) => {
                ip_ok = true;
                transport = port != 0;
            }
            Protocol::Tcp(port) => transport = port != 0,
            Protocol::QuicV1 => transport = true,
            _ => {}
        }
    }
    ip_ok && transport
}

#[cfg(test)]
#[path = "../tests/event_loop.rs"]
mod tests;
