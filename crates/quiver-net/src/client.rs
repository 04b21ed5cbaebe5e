//! The cloneable handle the rest of QUIVer uses to talk to the network event loop.

use std::collections::BTreeMap;

use libp2p::gossipsub::MessageId;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::NetError;

/// What the application decided about a gossip message it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Valid: deliver and forward.
    Accept,
    /// Invalid: drop, do not forward, and lower the score of the peer that sent it.
    Reject,
    /// Not for us (e.g. stale): drop without penalty.
    Ignore,
}

/// Events the network hands to the application.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message waiting for validation: answer with [`NetClient::report_validation`].
    Gossip {
        topic: String,
        /// Author of the message (verified by gossipsub's signature check).
        author: Option<PeerId>,
        /// The peer that forwarded it to us; it is the one penalised if the message is invalid.
        propagation_source: PeerId,
        id: MessageId,
        data: Vec<u8>,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    /// A new full address others can dial us on, ending in `/p2p/<our PeerId>`: a listen
    /// address, a relayed address (`…/p2p/<relay>/p2p-circuit/p2p/<us>`) once a relay holds a
    /// reservation for us, or an external address confirmed by a dial-back or a port mapping.
    NewListenAddr(Multiaddr),
    /// An address given by [`NetEvent::NewListenAddr`] no longer works (listener closed,
    /// reservation lost, mapping expired).
    ExpiredListenAddr(Multiaddr),
    /// `peer` keeps asking more of this node (`what`, e.g. `dht`) than its rate limit allows:
    /// `refused` requests so far. Reported every few dozen refusals.
    OverLimit {
        peer: PeerId,
        what: &'static str,
        refused: u32,
    },
}

/// One connected peer as the swarm sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addresses: Vec<Multiaddr>,
    pub agent_version: Option<String>,
    pub rtt_ms: Option<f64>,
    pub gossip_score: Option<f64>,
    pub in_routing_table: bool,
    /// At least one connection to the peer is direct.
    pub direct: bool,
    /// At least one connection to the peer goes through a relay.
    pub relayed: bool,
    /// The remote address of each direct connection (its transport shows how a hole punch
    /// went: `/tcp/` or `/udp/…/quic-v1`).
    pub direct_addrs: Vec<Multiaddr>,
}

/// A snapshot of the swarm's state.
#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    pub peer_id: PeerId,
    /// Full listen addresses, each ending in `/p2p/<PeerId>`.
    pub listen_addrs: Vec<Multiaddr>,
    pub connected_peers: Vec<PeerId>,
    pub routing_table_size: usize,
    pub routing_table: Vec<PeerId>,
    pub kad_mode: String,
    /// Topic → number of mesh peers.
    pub gossip_mesh: BTreeMap<String, usize>,
    /// How others can reach this node.
    pub reachability: crate::Reachability,
    /// Direct addresses confirmed by a dial-back (or a port mapping), with `/p2p/`.
    pub public_addrs: Vec<Multiaddr>,
    /// Addresses through the relays that hold a reservation for us, with `/p2p/`.
    pub relayed_addrs: Vec<Multiaddr>,
    /// Relays holding a reservation for us.
    pub relays: Vec<PeerId>,
    /// This node offers the relay service now.
    pub relay_service: bool,
    /// Hole punches (DCUtR) that gave a direct connection, and that failed.
    pub hole_punches_succeeded: u64,
    pub hole_punches_failed: u64,
    /// Routing-table refreshes finished (the own-key lookup, then the farther buckets short of peers).
    pub dht_bootstraps: u64,
    /// This node looks for peers on the local network (mDNS).
    pub mdns: bool,
    /// DHT servers in the network, estimated from the routing table's density.
    pub size: crate::size::SizeEstimate,
}

/// What a DHT record lookup found, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLookup {
    /// The first valid record, or `None` when the lookup ended without one.
    pub value: Option<Vec<u8>>,
    /// Peers asked so far when the lookup answered (Kademlia's `QueryStats::num_requests`; 0
    /// when the record was in the local store).
    pub peers_asked: u32,
    /// Of those, the peers that answered.
    pub peers_answered: u32,
}

pub(crate) enum Command {
    Subscribe { topic: String, reply: oneshot::Sender<Result<(), NetError>> },
    Publish { topic: String, data: Vec<u8>, reply: oneshot::Sender<Result<(), NetError>> },
    ReportValidation { id: MessageId, source: PeerId, validation: Validation },
    Status { reply: oneshot::Sender<NetStatus> },
    Peers { reply: oneshot::Sender<Vec<PeerInfo>> },
    PutRecord { key: Vec<u8>, value: Vec<u8>, stored: Option<oneshot::Sender<bool>> },
    StartProviding { key: Vec<u8> },
    StopProviding { key: Vec<u8> },
    GetProviders { key: Vec<u8>, reply: oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>> },
    GetRecord { key: Vec<u8>, reply: oneshot::Sender<RecordLookup> },
    Connect { peer: PeerId, addrs: Vec<Multiaddr>, reply: oneshot::Sender<Result<(), NetError>> },
    Block { peer: PeerId },
    Unblock { peer: PeerId },
    SetApplicationScore { peer: PeerId, score: f64 },
    NodesTopicTraffic { expected_per_sec: f64, activation: std::time::Duration },
    Shutdown,
}

/// Cloneable handle to the network event loop. Every call is bounded by the command channel.
#[derive(Clone)]
pub struct NetClient {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) peer_id: PeerId,
    pub(crate) streams: libp2p_stream::Control,
    /// The event loop's counter of finished Kademlia bootstraps, read without a round trip.
    pub(crate) dht_bootstraps: prometheus_client::metrics::counter::Counter,
    /// The event loop's estimate of the network's size (0: none), read without a round trip.
    pub(crate) size_estimate: prometheus_client::metrics::gauge::Gauge,
}

impl std::fmt::Debug for NetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetClient").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

impl NetClient {
    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Routing-table refreshes this node has finished so far: 0 while it is still joining the DHT.
    /// A plain read of a counter, no round trip through the event loop.
    pub fn dht_bootstraps(&self) -> u64 {
        self.dht_bootstraps.get()
    }

    /// This node's own estimate of the number of DHT servers (routing-table density, refreshed
    /// every second; `None` while the table holds too few peers). A plain read, no round trip.
    pub fn local_size_estimate(&self) -> Option<u64> {
        u64::try_from(self.size_estimate.get()).ok().filter(|n| *n > 0)
    }

    async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.send(cmd).await.map_err(|_| NetError::Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Subscribes to a gossip topic; its messages arrive as [`NetEvent::Gossip`].
    pub async fn subscribe(&self, topic: impl Into<String>) -> Result<(), NetError> {
        let topic = topic.into();
        self.ask(|reply| Command::Subscribe { topic, reply }).await?
    }

    /// Publishes `data` on `topic`, signed with this node's key.
    pub async fn publish(&self, topic: impl Into<String>, data: Vec<u8>) -> Result<(), NetError> {
        let topic = topic.into();
        self.ask(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Reports the application's verdict on a gossip message (exactly once per message).
    pub async fn report_validation(
        &self,
        id: MessageId,
        source: PeerId,
        validation: Validation,
    ) -> Result<(), NetError> {
        self.send(Command::ReportValidation { id, source, validation }).await
    }

    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Stores a record in the DHT (locally and on the closest peers). Only keys and values that
    /// pass the event loop's record validation are accepted by other nodes.
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::PutRecord { key, value, stored: None }).await
    }

    /// [`NetClient::put_record`], answering once the put has ended: `true` when at least one
    /// peer took the record (the others it was sent to get it at the same moment), `false` when
    /// none did or it could not even be stored locally.
    pub async fn put_record_and_wait(&self, key: Vec<u8>, value: Vec<u8>) -> Result<bool, NetError> {
        self.ask(|reply| Command::PutRecord { key, value, stored: Some(reply) }).await
    }

    /// Announces in the DHT that this node provides `key` (republished by Kademlia).
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::StartProviding { key }).await
    }

    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::StopProviding { key }).await
    }

    /// Looks up the providers of `key` in the DHT, with the addresses we know for each.
    pub async fn get_providers(&self, key: Vec<u8>) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, NetError> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
    }

    /// Looks up the record under `key` in the DHT: this node's store first, then the peers
    /// closest to the key. Answers with the first record that passes the same validation as
    /// records peers ask us to store, or `None` once the lookup ends without one (the event loop
    /// bounds the wait).
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, NetError> {
        Ok(self.lookup_record(key).await?.value)
    }

    /// [`NetClient::get_record`] with the lookup's cost (peers asked and answering).
    pub async fn lookup_record(&self, key: Vec<u8>) -> Result<RecordLookup, NetError> {
        self.ask(|reply| Command::GetRecord { key, reply }).await
    }

    /// Makes sure there is a connection to `peer`, dialing `addrs` (and any address the DHT
    /// knows) if there is none yet.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        self.ask(|reply| Command::Connect { peer, addrs, reply }).await?
    }

    /// A handle for opening and accepting application streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Bans `peer`: its connections are closed and refused, it leaves the routing table and
    /// its gossip is ignored, until [`NetClient::unblock`].
    pub async fn block(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Block { peer }).await
    }

    pub async fn unblock(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Unblock { peer }).await
    }

    /// Feeds the application's opinion of `peer` into its gossipsub score.
    pub async fn set_application_score(&self, peer: PeerId, score: f64) -> Result<(), NetError> {
        self.send(Command::SetApplicationScore { peer, score }).await
    }

    /// Tells gossip scoring how many heartbeats per second the network publishes on
    /// [`crate::NODES_TOPIC`], so a mesh peer that delivers far fewer (it receives but does not
    /// forward) loses score. 0 turns delivery scoring off (too few nodes to expect anything).
    /// `activation` is the time in the mesh before a peer's deliveries are judged.
    pub async fn set_nodes_topic_traffic(
        &self,
        expected_per_sec: f64,
        activation: std::time::Duration,
    ) -> Result<(), NetError> {
        self.send(Command::NodesTopicTraffic { expected_per_sec, activation }).await
    }

    /// Stops the event loop; connections are closed.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }
}
