//! Dialing: bootstrap peers with backoff, and the dials `connect` callers wait on.

use super::*;

impl EventLoop {
    /// Dials every bootstrap peer we are not connected to, with exponential backoff per peer,
    /// while the node needs them: its routing table holds fewer than K peers, or it has no
    /// connection at all.
    pub(super) fn redial_bootstrap(&mut self) {
        // Bootstrap peers are for joining and rejoining, not a connection to hold: once the
        // routing table is full and some peer is connected, the DHT keeps the node in the
        // network. (Redialing whenever the idle connection closed cost every node a handshake
        // per idle timeout, and a popular bootstrap peer one per idle timeout per node.)
        if self.known_dht_peers() >= REBOOTSTRAP_BELOW && self.swarm.network_info().num_peers() > 0 {
            return;
        }
        let now = Instant::now();
        for i in 0..self.bootstrap.len() {
            let b = &self.bootstrap[i];
            let connected = b.peer_id.is_some_and(|p| self.swarm.is_connected(&p));
            if connected || b.dialing.is_some() || now < b.next_attempt {
                continue;
            }
            let opts = match b.peer_id {
                Some(p) => DialOpts::peer_id(p).addresses(vec![b.target.addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(b.target.addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstrap[i].dialing = Some(id),
                // Another dial to it is under way (a caller's, Kademlia's) or it is connected by
                // now: not a failure, and nothing to warn about; look again shortly.
                Err(DialError::DialPeerConditionFalse(_)) => {
                    debug!(bootstrap = %self.bootstrap[i].target, "bootstrap peer already being dialed");
                    self.bootstrap[i].next_attempt = now + BOOTSTRAP_RECHECK;
                }
                Err(e) => self.bootstrap_failed(i, &e.to_string()),
            }
        }
    }

    /// Dials `peer` for `connect` callers: at `addrs` and whatever else the swarm knows of it.
    pub(super) fn dial_for_callers(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<ConnectionId, DialError> {
        let opts = DialOpts::peer_id(peer).addresses(addrs).extend_addresses_through_behaviour().build();
        let id = opts.connection_id();
        self.swarm.dial(opts).map(|()| id)
    }

    /// The dial `peer`'s callers waited on failed. Addresses they gave that it was not started
    /// with get a dial of our own (a caller with a provider's fresh address must not fail on
    /// Kademlia's dial of a stale one); with none left, every caller gets the error.
    pub(super) fn dial_failed_for_callers(&mut self, peer: PeerId, error: &DialError) {
        let Some(mut c) = self.connecting.remove(&peer) else { return };
        let untried = std::mem::take(&mut c.untried);
        if !untried.is_empty() {
            match self.dial_for_callers(peer, untried.clone()) {
                Ok(id) => {
                    debug!(%peer, addrs = untried.len(), "dial failed; trying the callers' other addresses");
                    c.ours = Some(id);
                    c.tried = untried;
                    self.connecting.insert(peer, c);
                    return;
                }
                // Yet another dial is under way: they wait for it, their addresses kept.
                Err(DialError::DialPeerConditionFalse(_)) => {
                    c.ours = None;
                    c.untried = untried;
                    self.connecting.insert(peer, c);
                    return;
                }
                Err(e) => debug!(%peer, error = %e, "second dial not started"),
            }
        }
        for reply in c.waiting {
            let _ = reply.send(Err(NetError::Dial(error.to_string())));
        }
    }

    pub(super) fn bootstrap_failed(&mut self, i: usize, error: &str) {
        let b = &mut self.bootstrap[i];
        b.dialing = None;
        b.failures += 1;
        b.next_attempt = Instant::now() + b.backoff;
        // Warn on the first failures, then only when the backoff doubles, so a dead bootstrap
        // peer does not flood the log while the node keeps serving its other peers.
        if b.failures <= 3 || b.failures.is_power_of_two() {
            warn!(bootstrap = %b.target, failures = b.failures, retry_in = ?b.backoff, %error, "bootstrap peer unreachable");
        }
        b.backoff = (b.backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
    }
}
