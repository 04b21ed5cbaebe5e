//! Reachability and relays: AutoNAT probes and servers, the relay service, our reservations.

use super::swarm::is_quic;
use super::*;

impl EventLoop {
    pub(super) fn on_autonat(&mut self, event: autonat::Event) {
        match event {
            // AutoNAT's own verdict flips on a single answer; ours (`ReachabilityState`) is
            // drawn from the probe answers below.
            autonat::Event::StatusChanged { old, new } => debug!(?old, ?new, "AutoNAT status"),
            autonat::Event::OutboundProbe(autonat::OutboundProbeEvent::Response { peer, address, .. }) => {
                debug!(%peer, %address, "dialed back: reachable");
                self.net_metrics.autonat_probes.get_or_create(&ResultLabel { result: "public" }).inc();
                if self.reach.probe_answer(true) {
                    info!(%address, "reachable: a peer dialed us back");
                    self.apply_reachability();
                }
            }
            autonat::Event::OutboundProbe(autonat::OutboundProbeEvent::Error { peer, error, .. }) => {
                // Only a dial-back the server tried and failed counts. A probe that times out
                // does not: on a loaded host that happens to reachable nodes too.
                let failed = matches!(error, autonat::OutboundProbeError::Response(autonat::ResponseError::DialError));
                debug!(?peer, ?error, "reachability probe answered without a dial-back");
                let result = if failed { "private" } else { "error" };
                self.net_metrics.autonat_probes.get_or_create(&ResultLabel { result }).inc();
                if failed && self.reach.probe_answer(false) {
                    info!("unreachable: peers cannot dial us back (NAT or firewall)");
                    self.apply_reachability();
                }
            }
            autonat::Event::OutboundProbe(autonat::OutboundProbeEvent::Request { .. }) => {}
            autonat::Event::InboundProbe(autonat::InboundProbeEvent::Response { peer, address, .. }) => {
                // The dial-back connection has served its purpose: close it, so probes do not
                // pile up connections to one peer (they are limited per peer).
                let address = split_peer_id(address).0;
                if let Some(meta) = self.peers.get(&peer)
                    && meta.connections.len() > 1
                    && let Some(id) = meta
                        .connections
                        .iter()
                        .filter(|(_, (a, relayed))| !relayed && split_peer_id(a.clone()).0 == address)
                        .map(|(id, _)| *id)
                        .max()
                {
                    self.swarm.close_connection(id);
                }
            }
            autonat::Event::InboundProbe(e) => trace!(?e, "reachability probe for a peer"),
        }
    }

    pub(super) fn on_relay_service(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, renewed } => {
                debug!(peer = %src_peer_id, renewed, "relay: reservation accepted");
                if !renewed {
                    *self.relay_reserved.entry(src_peer_id).or_default() += 1;
                }
            }
            relay::Event::ReservationReqDenied { src_peer_id, status } => {
                info!(peer = %src_peer_id, ?status, "relay: reservation refused");
                self.net_metrics.relay_service_refused.get_or_create(&RefusedLabel { what: "reservation" }).inc();
            }
            relay::Event::ReservationTimedOut { src_peer_id } => {
                if let Some(n) = self.relay_reserved.get_mut(&src_peer_id) {
                    *n = n.saturating_sub(1);
                }
            }
            relay::Event::ReservationClosed { src_peer_id } => {
                if !self.swarm.is_connected(&src_peer_id) {
                    self.relay_reserved.remove(&src_peer_id);
                }
            }
            relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit opened");
                self.net_metrics.relay_service_circuits.inc();
            }
            relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, status } => {
                info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit refused");
                self.net_metrics.relay_service_refused.get_or_create(&RefusedLabel { what: "circuit" }).inc();
            }
            relay::Event::CircuitClosed { src_peer_id, dst_peer_id, error } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay: circuit closed");
                let reason = circuit_close_reason(error.as_ref());
                self.net_metrics.relay_service_circuits_closed.get_or_create(&ReasonLabel { reason }).inc();
                if self.net_metrics.relay_service_circuits.get() > 0 {
                    self.net_metrics.relay_service_circuits.dec();
                }
            }
            other => debug!(?other, "relay service event"),
        }
        self.relay_reserved.retain(|_, n| *n > 0);
        let held: u32 = self.relay_reserved.values().sum();
        self.net_metrics.relay_service_reservations.set(i64::from(held));
    }

    /// Makes the DHT mode, the relay service and the relay reservations follow reachability.
    pub(super) fn apply_reachability(&mut self) {
        let server = self.reach.kad_server();
        if server != self.kad_server || self.swarm.behaviour().kad.mode() != kad_mode(server) {
            info!(server, reachability = self.reach.reachability().as_str(), "DHT mode follows reachability");
            self.kad_server = server;
            self.swarm.behaviour_mut().kad.set_mode(Some(kad_mode(server)));
            self.push_identify = true;
            if server && self.swarm.behaviour_mut().kad.kbuckets().next().is_some() {
                // Tell the closest peers about us now rather than at the next refresh.
                self.refresh.start(&mut self.swarm.behaviour_mut().kad);
            }
        }
        let relay_on = self.reach.offers_relay();
        if relay_on != self.relay_on {
            info!(relay_on, "relay service follows reachability");
            self.relay_on = relay_on;
            let status = if relay_on { relay::Status::Enable } else { relay::Status::Disable };
            if let Some(relay) = self.swarm.behaviour_mut().relay.as_mut() {
                relay.set_status(Some(status));
            }
        }
        // Reservations are kept when a node turns public again: they end with the connection
        // to the relay. (libp2p's relay client panics when a listener is removed while the
        // relay's answer to its reservation is on the way.)
        self.net_metrics.set_reachability(self.reach.reachability());
        self.net_metrics.relay_reservations.set(self.reach.relays().len() as i64);
    }

    /// While unreachable, keeps a reservation on each of up to `max_relay_reservations` relays
    /// among the connected peers that offer one, bootstrap peers first. One per relay: libp2p's
    /// relay client makes a reservation on the connection it already has to the relay, and
    /// keeps one per connection.
    pub(super) fn maintain_relays(&mut self) {
        if self.reach.reachability() != crate::Reachability::Public {
            self.quic_to_relays();
        }
        if !self.reach.wants_relays() || self.relay_listeners.len() >= self.cfg.max_relay_reservations {
            return;
        }
        let now = Instant::now();
        self.relay_retry.retain(|_, t| *t > now);
        let in_use: HashSet<PeerId> = self.relay_listeners.values().map(|l| l.relay).collect();
        let bootstrap: HashSet<PeerId> = self.bootstrap.iter().filter_map(|b| b.peer_id).collect();
        let mut candidates: Vec<(PeerId, Multiaddr)> = self
            .peers
            .iter()
            .filter(|(p, m)| {
                m.relay && !in_use.contains(p) && !self.relay_retry.contains_key(p) && self.swarm.is_connected(p)
            })
            .filter_map(|(p, m)| Some((*p, m.direct_addrs().iter().find_map(|a| circuit_listen_addr(a, *p))?)))
            .collect();
        candidates.sort_by_key(|(p, _)| (!bootstrap.contains(p), *p));
        let wanted = self.cfg.max_relay_reservations - self.relay_listeners.len();
        for (relay, addr) in candidates.into_iter().take(wanted) {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    debug!(%relay, %addr, "asking a relay for a reservation");
                    self.relay_listeners.insert(id, RelayListener { relay });
                }
                Err(e) => {
                    debug!(%relay, %addr, error = %e, "cannot listen through a relay");
                    self.relay_retry.insert(relay, now + RELAY_RETRY);
                }
            }
        }
    }

    /// While not known to be public, holds a QUIC connection to each connected relay we reached
    /// over TCP: the relay then observes our QUIC address, and a hole punch (DCUtR) tries QUIC
    /// beside TCP. Once per relay.
    pub(super) fn quic_to_relays(&mut self) {
        if !self.cfg.quic {
            return;
        }
        let relays: Vec<PeerId> = self.peers.iter().filter(|(_, m)| m.relay).map(|(p, _)| *p).take(4).collect();
        for relay in relays {
            let Some(meta) = self.peers.get(&relay) else { continue };
            if self.quic_to_relay.contains(&relay) || meta.connections.values().any(|(a, _)| is_quic(a)) {
                continue;
            }
            let Some(addr) = meta.direct_addrs().into_iter().find(is_quic) else { continue };
            self.quic_to_relay.insert(relay);
            let opts = DialOpts::peer_id(relay).condition(PeerCondition::Always).addresses(vec![addr.clone()]).build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%relay, %addr, error = %e, "cannot open a QUIC connection to the relay");
            }
        }
    }

    /// Which peers AutoNAT may ask to dial us back: those we are connected to directly and have
    /// never been connected to through a relay (at most [`MAX_AUTONAT_SERVERS`]). A peer that
    /// reached us through a relay may be behind a NAT and punch a hole to us (DCUtR); libp2p's
    /// AutoNAT server counts any outbound connection it makes to us at a probed address as the
    /// dial-back, and its hole-punch dial, from the port our NAT now lets in, is one: it would
    /// confirm an address that only it can reach, and we would serve the DHT unreachable.
    pub(super) fn update_autonat_server(&mut self, peer: PeerId) {
        // Nothing to do without AutoNAT (the simulator's memory transport): checked first, as this
        // runs at every connection.
        let Some(autonat) = self.swarm.behaviour_mut().autonat.as_mut() else { return };
        let eligible = self.peers.get(&peer).is_some_and(PeerMeta::may_probe_reachability);
        if eligible {
            if self.autonat_servers.len() < MAX_AUTONAT_SERVERS && self.autonat_servers.insert(peer) {
                autonat.add_server(peer, None);
            }
        } else if self.autonat_servers.remove(&peer) {
            autonat.remove_server(&peer);
            // The freed place goes to another peer we are connected to, if one may probe: with
            // more eligible peers than places it would otherwise wait for a new connection.
            if let Some(next) = next_autonat_server(&self.peers, &self.autonat_servers) {
                self.autonat_servers.insert(next);
                autonat.add_server(next, None);
            }
        }
    }
}
