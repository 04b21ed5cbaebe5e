//! Kademlia with per-peer limits on the requests other peers make of this node.
//!
//! libp2p's Kademlia answers every inbound request. [`LimitedKad`] wraps it as a behaviour of
//! its own: it sees each request a connection handler reports, lets it through while the peer
//! is within its GCRA budget, and otherwise answers at once that nothing is known here (the
//! asker's query moves on to other peers) and counts a strike. Every [`STRIKES_PER_REPORT`] strikes it
//! reports the peer, so the node can penalise a flooder.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

use crate::limits::PeerLimiter;

type Kad = kad::Behaviour<MemoryStore>;
/// What Kademlia's connection handler reports, and what it is told.
type KadHandlerEvent = THandlerOutEvent<Kad>;
type KadHandlerIn = THandlerInEvent<Kad>;

/// Inbound DHT requests one peer may make per second, sustained and in a burst. A lookup asks
/// each peer on its path once, so honest peers stay far below this.
pub(crate) const DHT_REQUESTS_PER_SEC: u32 = 20;
pub(crate) const DHT_REQUEST_BURST: u32 = 100;
/// Refused requests between two reports of the same peer.
pub(crate) const STRIKES_PER_REPORT: u32 = 50;
/// Peers whose strikes are remembered (the map is cleared when full).
const MAX_STRIKERS: usize = 1024;

// Kademlia's events are large; they are moved once on their way to the event loop, as in the
// behaviour enum libp2p derives, so they are not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum LimitedKadEvent {
    Kad(kad::Event),
    /// `peer` went over its DHT request budget another [`STRIKES_PER_REPORT`] times.
    OverLimit {
        peer: PeerId,
        refused: u32,
    },
}

pub(crate) struct LimitedKad {
    inner: Kad,
    limiter: PeerLimiter,
    strikes: HashMap<PeerId, u32>,
    pending: VecDeque<ToSwarm<LimitedKadEvent, KadHandlerIn>>,
}

impl LimitedKad {
    pub(crate) fn new(inner: Kad, per_sec: u32, burst: u32) -> Self {
        LimitedKad {
            inner,
            limiter: PeerLimiter::new(per_sec, burst),
            strikes: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    fn refuse(&mut self, peer: PeerId, connection: ConnectionId, answer: Option<KadHandlerIn>) {
        if let Some(answer) = answer {
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: answer,
            });
        }
        if self.strikes.len() >= MAX_STRIKERS && !self.strikes.contains_key(&peer) {
            self.strikes.clear();
        }
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        if strikes.is_multiple_of(STRIKES_PER_REPORT) {
            tracing::debug!(%peer, refused = *strikes, "DHT requests over the limit");
            let refused = *strikes;
            self.pending.push_back(ToSwarm::GenerateEvent(LimitedKadEvent::OverLimit { peer, refused }));
        }
    }
}

/// The answer a refused request gets: "nothing known here", which costs no lookup. Not a
/// stream reset: libp2p-kad's `Reset` closes the stream without waking the handler's task, so a
/// reset stream can stay parked in one of the connection's 32 inbound slots until something
/// else wakes it (at worst until the connection closes); a burst of refusals then stalls every
/// DHT request on that connection, later ones within budget included. A put is acknowledged as Kademlia acknowledges every put (stored or not); an
/// announcement expects no answer and is dropped.
fn empty_answer(request: KadHandlerEvent) -> Option<KadHandlerIn> {
    match request {
        KadHandlerEvent::FindNodeReq { request_id, .. } => {
            Some(KadHandlerIn::FindNodeRes { closer_peers: Vec::new(), request_id })
        }
        KadHandlerEvent::GetProvidersReq { request_id, .. } => {
            Some(KadHandlerIn::GetProvidersRes { closer_peers: Vec::new(), provider_peers: Vec::new(), request_id })
        }
        KadHandlerEvent::GetRecord { request_id, .. } => {
            Some(KadHandlerIn::GetRecordRes { record: None, closer_peers: Vec::new(), request_id })
        }
        KadHandlerEvent::PutRecord { record, request_id } => {
            Some(KadHandlerIn::PutRecordRes { key: record.key, value: record.value, request_id })
        }
        _ => None,
    }
}

impl Deref for LimitedKad {
    type Target = Kad;
    fn deref(&self) -> &Kad {
        &self.inner
    }
}

impl DerefMut for LimitedKad {
    fn deref_mut(&mut self) -> &mut Kad {
        &mut self.inner
    }
}

impl NetworkBehaviour for LimitedKad {
    type ConnectionHandler = THandler<Kad>;
    type ToSwarm = LimitedKadEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(connection_id, maybe_peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, connection: ConnectionId, event: KadHandlerEvent) {
        // Requests the peer makes of us; answers to our own queries always pass.
        let is_request = matches!(
            event,
            KadHandlerEvent::FindNodeReq { .. }
                | KadHandlerEvent::GetProvidersReq { .. }
                | KadHandlerEvent::GetRecord { .. }
                | KadHandlerEvent::PutRecord { .. }
                | KadHandlerEvent::AddProvider { .. }
        );
        if is_request && !self.limiter.allow(&peer) {
            self.refuse(peer, connection, empty_answer(event));
        } else {
            self.inner.on_connection_handler_event(peer, connection, event);
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(ev) = self.pending.pop_front() {
            return Poll::Ready(ev);
        }
        self.inner.poll(cx).map(|ev| ev.map_out(LimitedKadEvent::Kad))
    }
}
