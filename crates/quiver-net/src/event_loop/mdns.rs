//! LAN discovery: what libp2p's mDNS hears goes into the bounded book of `lan.rs`, and the
//! book's peers are dialed at its rate. Once connected they are peers like any other: Identify
//! checks their protocol version, Kademlia and GossipSub take them in, bans and connection
//! limits apply to their dials.

use super::*;
use crate::lan::{Dropped, Offered};
use libp2p::mdns;

impl EventLoop {
    pub(super) fn on_mdns(&mut self, event: mdns::Event) {
        // Expiries are libp2p's list catching up with `expire_node` below; the book keeps its
        // own time to live.
        let mdns::Event::Discovered(found) = event else { return };
        let now = Instant::now();
        let mut heard: HashSet<PeerId> = HashSet::new();
        for (peer, addr) in found {
            self.net_metrics.mdns_discovered.inc();
            heard.insert(peer);
            let Some(lan) = self.lan.as_mut() else { continue };
            if self.swarm.is_connected(&peer) {
                continue;
            }
            if self.swarm.behaviour().blocked.blocked_peers().contains(&peer) {
                drop_lan(&self.net_metrics, Dropped::Banned);
                continue;
            }
            match lan.offer(peer, addr.clone(), now) {
                Offered::Added { evicted } => {
                    debug!(%peer, %addr, "peer found on the local network");
                    if evicted.is_some() {
                        drop_lan(&self.net_metrics, Dropped::Evicted);
                    }
                }
                Offered::Refreshed => {}
                Offered::Dropped(why) => {
                    trace!(%peer, %addr, reason = why.as_str(), "mDNS answer not kept");
                    drop_lan(&self.net_metrics, why);
                }
            }
        }
        // libp2p's own list of what mDNS found grows with every new (peer, address) in an answer
        // and shrinks only when the TTL the answer chose runs out: have it forget at once, so the
        // bounded book is the only memory of it. (Every answer heard again is then reported
        // again, which is what keeps the book's entries fresh.) An answer repeated before
        // libp2p acts on that extends the entry instead, so the same peers are expired once more
        // at the next tick.
        self.forget_in_mdns(&heard);
        for peer in heard {
            if self.mdns_recheck.len() < MAX_MDNS_RECHECK {
                self.mdns_recheck.insert(peer);
            }
        }
        self.dial_lan_peers(now);
    }

    /// Has libp2p's mDNS behaviour drop what it remembers of `peers`.
    fn forget_in_mdns(&mut self, peers: &HashSet<PeerId>) {
        if let Some(behaviour) = self.swarm.behaviour_mut().mdns.as_mut() {
            for peer in peers {
                #[allow(deprecated)] // Pinned libp2p-mdns 0.49; see `on_mdns`.
                behaviour.expire_node(peer);
            }
        }
    }

    /// Dials the peers of the book the token bucket allows now; every tick, and after answers.
    pub(super) fn dial_lan_peers(&mut self, now: Instant) {
        let Some(lan) = self.lan.as_mut() else { return };
        for (peer, addrs) in lan.due(now) {
            let opts =
                DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).addresses(addrs).build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    lan.dialing(&peer, id);
                    self.net_metrics.mdns_dials.inc();
                }
                // Connected or being dialed by now, banned, or over a connection limit.
                Err(e) => {
                    debug!(%peer, error = %e, "not dialing a peer found on the local network");
                    lan.forget(&peer);
                }
            }
        }
        self.net_metrics.mdns_pending.set(lan.len() as i64);
        self.net_metrics.mdns_pending_peak.set(lan.peak() as i64);
        self.net_metrics.mdns_quarantined.set(lan.quarantined() as i64);
    }

    /// Every tick: forget what was not heard again, dial what is due.
    pub(super) fn lan_tick(&mut self, now: Instant) {
        let recheck = std::mem::take(&mut self.mdns_recheck);
        self.forget_in_mdns(&recheck);
        let Some(lan) = self.lan.as_mut() else { return };
        let expired = lan.expire(now);
        if expired > 0 {
            self.net_metrics
                .mdns_dropped
                .get_or_create(&ReasonLabel { reason: Dropped::Expired.as_str() })
                .inc_by(expired as u64);
        }
        self.dial_lan_peers(now);
    }

    /// A connection to `peer` is up: a peer of the book leaves it, and once it has identified
    /// itself as a DHT server it may start our join ([`EventLoop::lan_peer_identified`]).
    pub(super) fn lan_peer_connected(&mut self, peer: PeerId) {
        let Some(lan) = self.lan.as_mut() else { return };
        if lan.connected(&peer) {
            info!(%peer, "connected to a peer found on the local network");
            self.net_metrics.mdns_connected.inc();
            // At most one entry per connected peer: removed on identify or disconnect.
            self.lan_joining.insert(peer);
        }
        self.net_metrics.mdns_pending.set(lan.len() as i64);
    }

    /// Our dial `id` of `peer` failed: a peer of the book is quarantined for a while.
    pub(super) fn lan_dial_failed(&mut self, peer: PeerId, id: ConnectionId) {
        let Some(lan) = self.lan.as_mut() else { return };
        if lan.dial_failed(&peer, id, Instant::now()) {
            debug!(%peer, "a peer found on the local network could not be dialed");
            drop_lan(&self.net_metrics, Dropped::Unreachable);
            self.net_metrics.mdns_pending.set(lan.len() as i64);
        }
    }

    /// `peer` identified itself. A peer of another network is not dialed again for a while;
    /// a LAN peer serving the DHT joins us to it, as a bootstrap peer does, while our routing
    /// table is small (a node with no bootstrap peer has no other way in).
    /// (A peer that becomes a DHT server later, once AutoNAT has confirmed it reachable, says so
    /// in a pushed Identify: it stays in `lan_joining` until then or until it disconnects.)
    pub(super) fn lan_peer_identified(&mut self, peer: PeerId, quiver: bool, serves_dht: bool) {
        if !quiver {
            self.lan_joining.remove(&peer);
            if let Some(lan) = self.lan.as_mut() {
                lan.reject(peer, Instant::now());
            }
            return;
        }
        if serves_dht
            && self.lan_joining.remove(&peer)
            && !self.refresh.running()
            && self.known_dht_peers() < REBOOTSTRAP_BELOW
        {
            self.refresh.start(&mut self.swarm.behaviour_mut().kad);
        }
    }
}

/// Most peers whose mDNS entries are expired again at the next tick.
const MAX_MDNS_RECHECK: usize = 4096;

fn drop_lan(metrics: &NetMetrics, why: Dropped) {
    metrics.mdns_dropped.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
}
