//! Peers found on the local network by mDNS and not connected yet: a bounded book, fed by
//! libp2p's mDNS behaviour, from which the event loop dials at a bounded rate.
//!
//! Anyone on the LAN can answer mDNS with any PeerId and any address, as often as they like.
//! So: only addresses a LAN peer can really be dialed at are kept (IP, TCP or QUIC, a port, its
//! own PeerId), at most [`LanLimits::max_addrs`] per peer; at most [`LanLimits::max_pending`]
//! peers are kept (the least recently heard goes first, and anything unheard for
//! [`LanLimits::ttl`]); dials draw on a token bucket ([`LanLimits::dials_per_sec`],
//! [`LanLimits::dial_burst`]); a peer whose dial failed, or that turned out not to be a QUIVer
//! node, is not dialed again for [`LanLimits::quarantine`] (that memory is bounded too). The
//! book is pure: the caller passes the time, so tests drive it without a clock.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// The bounds of the book.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LanLimits {
    /// Peers kept while not connected.
    pub max_pending: usize,
    /// Addresses kept per peer.
    pub max_addrs: usize,
    /// A peer not heard of again for this long is forgotten.
    pub ttl: Duration,
    /// Dials started per second, sustained, and at once.
    pub dials_per_sec: f64,
    pub dial_burst: u32,
    /// A peer that could not be dialed, or was not a QUIVer node, is left alone this long.
    pub quarantine: Duration,
    /// Peers remembered as quarantined.
    pub max_quarantined: usize,
    /// Keep QUIC addresses (off when the node speaks TCP only).
    pub quic: bool,
}

impl Default for LanLimits {
    fn default() -> Self {
        LanLimits {
            max_pending: 64,
            max_addrs: 4,
            ttl: Duration::from_secs(120),
            dials_per_sec: 4.0,
            dial_burst: 8,
            quarantine: Duration::from_secs(600),
            max_quarantined: 256,
            quic: true,
        }
    }
}

/// Why an announced peer or address was not kept (the label of `quiver_mdns_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Not an IP address with a TCP or QUIC port naming the announced peer.
    InvalidAddress,
    /// More addresses than a peer may have kept.
    TooManyAddresses,
    /// On this node's block list.
    Banned,
    /// Its last dial failed, or it was not a QUIVer node, a short while ago.
    Quarantined,
    /// Pushed out by a newer announcement while the book was full.
    Evicted,
    /// Not heard of again within the time to live.
    Expired,
    /// The dial failed.
    Unreachable,
}

impl Dropped {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::InvalidAddress => "invalid_address",
            Dropped::TooManyAddresses => "too_many_addresses",
            Dropped::Banned => "banned",
            Dropped::Quarantined => "quarantined",
            Dropped::Evicted => "evicted",
            Dropped::Expired => "expired",
            Dropped::Unreachable => "unreachable",
        }
    }
}

/// What became of one announced `(peer, address)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offered {
    /// A peer new to the book; `evicted` was pushed out to make room.
    Added {
        evicted: Option<PeerId>,
    },
    /// A peer already in the book: heard again (and the address added if new).
    Refreshed,
    Dropped(Dropped),
}

#[derive(Debug)]
struct Pending {
    addrs: Vec<Multiaddr>,
    last_heard: Instant,
    /// The dial under way, if any.
    dialing: Option<ConnectionId>,
}

/// The bounded book of LAN peers not connected yet; see the module documentation.
#[derive(Debug)]
pub(crate) struct LanPeers {
    limits: LanLimits,
    pending: HashMap<PeerId, Pending>,
    /// Peers not to dial before the given time.
    quarantined: HashMap<PeerId, Instant>,
    tokens: f64,
    refilled: Instant,
    /// The most peers the book has held at once.
    peak: usize,
}

impl LanPeers {
    pub(crate) fn new(limits: LanLimits, now: Instant) -> Self {
        let tokens = f64::from(limits.dial_burst);
        LanPeers { limits, pending: HashMap::new(), quarantined: HashMap::new(), tokens, refilled: now, peak: 0 }
    }

    /// Peers in the book now.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// The most peers the book has held at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Peers remembered as quarantined now.
    pub(crate) fn quarantined(&self) -> usize {
        self.quarantined.len()
    }

    /// Takes in one announcement of `peer` at `addr` (a peer we are not connected to and have
    /// not banned: the caller checks those).
    pub(crate) fn offer(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) -> Offered {
        if !usable_lan_addr(&addr, &peer, self.limits.quic) {
            return Offered::Dropped(Dropped::InvalidAddress);
        }
        if self.quarantined.get(&peer).is_some_and(|until| now < *until) {
            return Offered::Dropped(Dropped::Quarantined);
        }
        if let Some(p) = self.pending.get_mut(&peer) {
            p.last_heard = now;
            if p.addrs.contains(&addr) {
                return Offered::Refreshed;
            }
            if p.addrs.len() >= self.limits.max_addrs {
                return Offered::Dropped(Dropped::TooManyAddresses);
            }
            p.addrs.push(addr);
            return Offered::Refreshed;
        }
        let evicted = if self.pending.len() >= self.limits.max_pending { self.evict_one() } else { None };
        self.pending.insert(peer, Pending { addrs: vec![addr], last_heard: now, dialing: None });
        self.peak = self.peak.max(self.pending.len());
        Offered::Added { evicted }
    }

    /// Removes the least recently heard peer.
    fn evict_one(&mut self) -> Option<PeerId> {
        let victim = self.pending.iter().min_by_key(|(_, p)| p.last_heard).map(|(peer, _)| *peer)?;
        self.pending.remove(&victim);
        Some(victim)
    }

    /// The peers to dial now (not being dialed, most recently heard first), as many as the
    /// token bucket allows, each taking a token. The caller starts each dial at once and says
    /// how it went: [`LanPeers::dialing`], or [`LanPeers::forget`] when it could not start.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.limits.dials_per_sec).min(f64::from(self.limits.dial_burst));
        let mut idle: Vec<(&PeerId, &Pending)> = self.pending.iter().filter(|(_, p)| p.dialing.is_none()).collect();
        idle.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_heard));
        let n = idle.len().min(self.tokens.floor() as usize);
        let chosen: Vec<(PeerId, Vec<Multiaddr>)> =
            idle.into_iter().take(n).map(|(peer, p)| (*peer, p.addrs.clone())).collect();
        self.tokens -= chosen.len() as f64;
        chosen
    }

    /// The dial of `peer` started as `id`.
    pub(crate) fn dialing(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(p) = self.pending.get_mut(peer) {
            p.dialing = Some(id);
        }
    }

    /// The dial `id` of `peer` failed: the peer leaves the book and is quarantined. Whether it
    /// was our dial.
    pub(crate) fn dial_failed(&mut self, peer: &PeerId, id: ConnectionId, now: Instant) -> bool {
        if self.pending.get(peer).is_none_or(|p| p.dialing != Some(id)) {
            return false;
        }
        self.pending.remove(peer);
        self.quarantine(*peer, now);
        true
    }

    /// `peer` is connected (by our dial or any other way): it leaves the book. Whether it was
    /// in it.
    pub(crate) fn connected(&mut self, peer: &PeerId) -> bool {
        self.quarantined.remove(peer);
        self.pending.remove(peer).is_some()
    }

    /// `peer` is not to be dialed for a while (not a QUIVer node, or banned meanwhile).
    pub(crate) fn reject(&mut self, peer: PeerId, now: Instant) {
        self.pending.remove(&peer);
        self.quarantine(peer, now);
    }

    /// Forgets `peer` (its dial could not even start, e.g. one to it is under way already).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.pending.remove(peer);
    }

    fn quarantine(&mut self, peer: PeerId, now: Instant) {
        if self.quarantined.len() >= self.limits.max_quarantined && !self.quarantined.contains_key(&peer) {
            // Full: the entry that ends first makes room.
            if let Some(first) = self.quarantined.iter().min_by_key(|(_, until)| **until).map(|(p, _)| *p) {
                self.quarantined.remove(&first);
            }
        }
        self.quarantined.insert(peer, now + self.limits.quarantine);
    }

    /// Forgets peers not heard of within the time to live (unless being dialed) and ended
    /// quarantines. Returns how many peers were forgotten.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.limits.ttl;
        let before = self.pending.len();
        self.pending.retain(|_, p| p.dialing.is_some() || now.saturating_duration_since(p.last_heard) < ttl);
        self.quarantined.retain(|_, until| now < *until);
        before - self.pending.len()
    }
}

/// An address a peer on the LAN can be dialed at: a unicast IP address (not unspecified,
/// loopback, multicast or broadcast), then a TCP port or a UDP port with QUIC-v1 (when
/// `quic`), then nothing but `/p2p/<peer>` naming the announced peer.
pub(crate) fn usable_lan_addr(addr: &Multiaddr, peer: &PeerId, quic: bool) -> bool {
    let mut it = addr.iter();
    let ip_ok = match it.next() {
        Some(Protocol::Ip4(ip)) => !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()),
        Some(Protocol::Ip6(ip)) => !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast()),
        _ => false,
    };
    if !ip_ok {
        return false;
    }
    let transport_ok = match it.next() {
        Some(Protocol::Tcp(port)) => port != 0,
        Some(Protocol::Udp(port)) => quic && port != 0 && matches!(it.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    if !transport_ok {
        return false;
    }
    match it.next() {
        None => true,
        Some(Protocol::P2p(p)) => p == *peer && it.next().is_none(),
        Some(_) => false,
    }
}

#[cfg(test)]
#[path = "tests/lan.rs"]
mod tests;
