//! What the node knows of its own reachability, and what follows from it: the Kademlia mode,
//! whether it offers a relay, whether it needs relay reservations. Pure state, driven by the
//! event loop from AutoNAT's verdicts and the relay client's reservations.

use std::collections::BTreeMap;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

use crate::KadMode;

/// How others can reach this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Not probed yet, or no peer could answer a probe.
    Unknown,
    /// A peer dialed this node back on a new connection: it can be dialed directly.
    Public,
    /// Dial-backs failed and no relay holds a slot for this node: only outbound connections.
    Private,
    /// Dial-backs failed, but at least one relay holds a slot: reachable through the relay
    /// (`/p2p/<relay>/p2p-circuit/p2p/<this node>`), and directly after a hole punch.
    Relayed,
}

impl Reachability {
    pub const ALL: [Reachability; 4] =
        [Reachability::Unknown, Reachability::Public, Reachability::Private, Reachability::Relayed];

    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
            Reachability::Relayed => "relayed",
        }
    }
}

/// The verdict drawn from the answers to our reachability probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatVerdict {
    Unknown,
    Public,
    Private,
}

/// Failed dial-backs in a row (without a success between them) that make a node private.
///
/// A completed dial-back is proof of reachability, so one success makes a node public. A
/// failure is weaker evidence: libp2p's AutoNAT server also counts any other failed dial to the
/// same peer during the probe (e.g. a DHT dial refused because a connection already exists) as
/// the dial-back failing, so one failure may be a race, two in a row are not.
pub(crate) const PRIVATE_AFTER_FAILURES: u32 = 2;

#[derive(Debug)]
pub(crate) struct ReachabilityState {
    mode: KadMode,
    relay_service: bool,
    nat: NatVerdict,
    /// Failed dial-backs since the last success.
    failures: u32,
    /// Relays holding an accepted reservation for us, with the relayed address they give us.
    reservations: BTreeMap<PeerId, Vec<Multiaddr>>,
}

impl ReachabilityState {
    pub(crate) fn new(mode: KadMode, relay_service: bool) -> Self {
        ReachabilityState { mode, relay_service, nat: NatVerdict::Unknown, failures: 0, reservations: BTreeMap::new() }
    }

    /// Records the answer to one of our probes: a peer dialed us back (`true`) or could not
    /// (`false`). True when the verdict changed.
    pub(crate) fn probe_answer(&mut self, dialed_back: bool) -> bool {
        let before = self.nat;
        if dialed_back {
            self.failures = 0;
            self.nat = NatVerdict::Public;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= PRIVATE_AFTER_FAILURES {
                self.nat = NatVerdict::Private;
            }
        }
        before != self.nat
    }

    pub(crate) fn reachability(&self) -> Reachability {
        match self.nat {
            NatVerdict::Public => Reachability::Public,
            NatVerdict::Private if !self.reservations.is_empty() => Reachability::Relayed,
            NatVerdict::Private => Reachability::Private,
            NatVerdict::Unknown => Reachability::Unknown,
        }
    }

    /// Serve the DHT only when forced to, or when a dial-back proved others can reach us: a
    /// node others cannot dial must never sit in their routing tables.
    pub(crate) fn kad_server(&self) -> bool {
        match self.mode {
            KadMode::Server => true,
            KadMode::Client => false,
            KadMode::Auto => self.nat == NatVerdict::Public,
        }
    }

    /// Offer the relay service: only a node others can dial is of use as a relay.
    pub(crate) fn offers_relay(&self) -> bool {
        self.relay_service && (self.mode == KadMode::Server || self.nat == NatVerdict::Public)
    }

    /// A node found unreachable (and not declared a server) needs relay reservations.
    pub(crate) fn wants_relays(&self) -> bool {
        self.nat == NatVerdict::Private && self.mode != KadMode::Server
    }

    pub(crate) fn reservation_accepted(&mut self, relay: PeerId, addr: Multiaddr) {
        let addrs = self.reservations.entry(relay).or_default();
        if !addrs.contains(&addr) && addrs.len() < 4 {
            addrs.push(addr);
        }
    }

    pub(crate) fn reservation_lost(&mut self, relay: &PeerId) {
        self.reservations.remove(relay);
    }

    pub(crate) fn relays(&self) -> Vec<PeerId> {
        self.reservations.keys().copied().collect()
    }

    pub(crate) fn relayed_addrs(&self) -> Vec<Multiaddr> {
        self.reservations.values().flatten().cloned().collect()
    }
}

/// Whether `addr` goes through a relay (`…/p2p-circuit…`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The address to listen on for a reservation at `relay`, reached at `relay_addr` (a direct
/// address without `/p2p/`): `<relay_addr>/p2p/<relay>/p2p-circuit`. `None` for addresses that
/// are relayed themselves or have no transport.
pub(crate) fn circuit_listen_addr(relay_addr: &Multiaddr, relay: PeerId) -> Option<Multiaddr> {
    if is_relayed(relay_addr) {
        return None;
    }
    let mut base = Multiaddr::empty();
    for p in relay_addr.iter() {
        match p {
            Protocol::P2p(peer) if peer == relay => {}
            Protocol::P2p(_) => return None,
            p => base.push(p),
        }
    }
    let has_transport = base.iter().any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1 | Protocol::Memory(_)));
    has_transport.then(|| base.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit))
}

#[cfg(test)]
#[path = "tests/reachability.rs"]
mod tests;
