//! The node's events and its gossip: what the network layer reports, heartbeats (published,
//! received and checked) and reputation reports.

use super::*;

impl Node {
    pub(super) async fn handle_events(
        self,
        mut events: mpsc::Receiver<NetEvent>,
        listen_tx: watch::Sender<Vec<Multiaddr>>,
    ) {
        while let Some(event) = events.recv().await {
            match event {
                NetEvent::Gossip { topic, author, propagation_source, id, data } => {
                    self.inner.metrics.gossip(&topic);
                    let verdict = if topic == NODES_TOPIC {
                        self.on_heartbeat(&data, author)
                    } else if topic == REPUTATION_TOPIC {
                        self.on_reputation_report(&data, author)
                    } else if let (Some(p), true) =
                        (&self.inner.provider, topic.starts_with(quiver_proto::infer::INFER_TOPIC_PREFIX))
                    {
                        match p.on_announcement(&topic, &data, author) {
                            Ok(()) => Validation::Accept,
                            Err(e) => {
                                debug!(?author, error = %e, "rejected a job announcement");
                                Validation::Reject
                            }
                        }
                    } else {
                        Validation::Ignore
                    };
                    // A non-forwarder reads everything and relays nothing (tests only).
                    #[cfg(feature = "adversary")]
                    let verdict = if self.misbehaves(crate::adversary::Misbehaviour::NonForwarder) {
                        Validation::Ignore
                    } else {
                        verdict
                    };
                    if let Err(e) = self.inner.net.report_validation(id, propagation_source, verdict).await {
                        debug!(error = %e, "validation not reported");
                    }
                }
                NetEvent::NewListenAddr(addr) => {
                    listen_tx.send_if_modified(|v| {
                        if v.contains(&addr) || v.len() >= MAX_LISTEN_ADDRS {
                            return false;
                        }
                        info!(%addr, "listening");
                        v.push(addr);
                        true
                    });
                }
                NetEvent::ExpiredListenAddr(addr) => {
                    listen_tx.send_if_modified(|v| {
                        let before = v.len();
                        v.retain(|a| *a != addr);
                        before != v.len()
                    });
                }
                NetEvent::PeerConnected(_) => {
                    self.inner.metrics.connected_peers.inc();
                }
                NetEvent::PeerDisconnected(_) => {
                    self.inner.metrics.connected_peers.dec();
                }
                NetEvent::OverLimit { peer, what, refused } => {
                    // Flooding this node is a protocol violation: repeated, it ends in a ban.
                    info!(%peer, what, refused, "a peer keeps exceeding its rate limit");
                    self.record_offence(peer, Offence::ProtocolViolation, false).await;
                }
            }
        }
    }

    fn on_heartbeat(&self, data: &[u8], author: Option<quiver_net::PeerId>) -> Validation {
        let decoded = quiver_proto::heartbeat::SignedHeartbeat::decode(data);
        // Kept for the check of the engine classes its author signed for, when some wait.
        let held = match (&decoded, author) {
            (Ok(s), Some(a)) if self.builds_waiting(a) => Some(s.heartbeat.clone()),
            _ => None,
        };
        let mut table = lock(&self.inner.table);
        let accepted = decoded.map_err(Into::into).and_then(|s| table.accept(s, author, self.peer_id()));
        let (verdict, outcome) = match accepted {
            Ok(HeartbeatVerdict::Accepted) => {
                if let Some(a) = author {
                    self.with_reputation(|r, now| r.heartbeat(a, now));
                    if let Some(hb) = &held {
                        self.check_builds(a, hb);
                    }
                    if self.inner.heartbeat_events.receiver_count() > 0
                        && let Some((seq, timestamp_ms)) = table.seq_and_timestamp(&a)
                    {
                        let received_ms = discovery::now_ms();
                        let _ = self.inner.heartbeat_events.send(HeartbeatEvent::Accepted {
                            from: a,
                            seq,
                            timestamp_ms,
                            received_ms,
                        });
                    }
                }
                (Validation::Accept, "accepted")
            }
            Ok(HeartbeatVerdict::Stale) => (Validation::Ignore, "stale"),
            Err(e) => {
                debug!(?author, error = %e, "rejected a heartbeat");
                (Validation::Reject, "rejected")
            }
        };
        self.inner.metrics.known_nodes.set(table.len() as i64);
        self.inner.metrics.heartbeats_received.get_or_create(&OutcomeLabel { outcome }).inc();
        verdict
    }

    /// Takes another node's reputation report as hearsay: each observation counts only if the
    /// author is in good standing here, and never as much as an own observation (see
    /// `Reputation::record_hearsay`).
    fn on_reputation_report(&self, data: &[u8], author: Option<PeerId>) -> Validation {
        let Some(author) = author else { return Validation::Reject };
        let (timestamp_ms, observations) = match ReputationReport::decode_checked(data) {
            Ok(r) => r,
            Err(e) => {
                debug!(%author, error = %e, "rejected a reputation report");
                return Validation::Reject;
            }
        };
        let now = discovery::now_ms();
        if timestamp_ms > now + REPORT_MAX_SKEW.as_millis() as u64
            || timestamp_ms.saturating_add(REPORT_MAX_AGE.as_millis() as u64) < now
        {
            return Validation::Ignore;
        }
        let me = self.peer_id();
        let counted = self.with_reputation(|r, now| {
            observations
                .iter()
                .filter(|o| o.peer != me && o.peer != author)
                .filter(|o| r.record_hearsay(o.peer, author, o.successes > o.failures, now))
                .count()
        });
        if counted > 0 {
            debug!(%author, counted, "hearsay taken from a reputation report");
        }
        Validation::Accept
    }

    /// Publishes, every `reputation_report_interval`, what this node saw of the peers it dealt
    /// with since its previous report (most active first, at most `MAX_OBSERVATIONS`).
    pub(super) async fn publish_reputation_reports(self) {
        let mut reported: HashMap<PeerId, (u64, u64)> = HashMap::new();
        let mut tick = tokio::time::interval(self.inner.config.reputation_report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let views = self.reputation();
            let mut observations: Vec<(u64, Observation)> = Vec::new();
            let mut seen = HashMap::with_capacity(views.len());
            for v in views {
                let Ok(peer) = v.peer.parse::<PeerId>() else { continue };
                let (s0, f0) = reported.get(&peer).copied().unwrap_or((0, 0));
                let (ds, df) = (v.successes.saturating_sub(s0), v.failures.saturating_sub(f0));
                if ds + df > 0 {
                    let cap = u64::from(quiver_proto::reputation::MAX_JOBS_PER_OBSERVATION);
                    observations.push((
                        ds + df,
                        Observation {
                            peer_id: peer.to_bytes(),
                            successes: ds.min(cap) as u32,
                            failures: df.min(cap) as u32,
                        },
                    ));
                }
                seen.insert(peer, (v.successes, v.failures));
            }
            // Only peers the store still holds are remembered: bounded like the store.
            reported = seen;
            if observations.is_empty() {
                continue;
            }
            observations.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
            observations.truncate(quiver_proto::reputation::MAX_OBSERVATIONS);
            let report = ReputationReport {
                timestamp_ms: discovery::now_ms(),
                observations: observations.into_iter().map(|(_, o)| o).collect(),
            };
            match self.inner.net.publish(REPUTATION_TOPIC, prost::Message::encode_to_vec(&report)).await {
                Ok(()) => debug!(peers = report.observations.len(), "reputation report published"),
                Err(NetError::Publish(e)) => debug!(error = %e, "reputation report not published"),
                Err(_) => return,
            }
        }
    }

    /// This node's addresses for others (without `/p2p/<us>`), at most `max`: relayed ones
    /// first, so a NATed node's only usable addresses are never cut off by its LAN ones.
    pub(crate) fn own_addrs(&self, max: usize) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self
            .inner
            .listen_addrs
            .borrow()
            .iter()
            .map(|a| quiver_net::split_peer_id(a.clone()).0)
            .filter(|a| !a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())))
            .collect();
        addrs.sort_by_key(|a| !quiver_net::is_relayed(a));
        addrs.dedup();
        addrs.truncate(max);
        addrs
    }

    pub(super) fn heartbeat(&self, seq: u64) -> Heartbeat {
        let listen_addrs = self.own_addrs(MAX_ADVERTISED_ADDRS).iter().map(|a| a.to_vec()).collect();
        #[allow(unused_mut)]
        let mut heartbeat = Heartbeat {
            peer_id: self.peer_id().to_bytes(),
            agent_version: AGENT_VERSION.to_owned(),
            listen_addrs,
            models: self.inner.provider.as_ref().map(|p| p.models()).unwrap_or_default(),
            cpu_load: discovery::cpu_load(),
            free_slots: self.inner.provider.as_ref().map_or(0, |p| p.free_slots()),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            timestamp_ms: discovery::now_ms(),
            seq,
            queue_depth: self.inner.provider.as_ref().map_or(0, |p| p.queue_depth()),
            tokens_per_sec: self.inner.provider.as_ref().map_or(0.0, |p| p.tokens_per_sec()),
            batch_tokens_per_sec: self.inner.provider.as_ref().map_or(0.0, |p| p.batch_tokens_per_sec()),
            network_size_estimate: self.inner.net.local_size_estimate().unwrap_or(0),
        };
        #[cfg(feature = "adversary")]
        if self.inner.config.adversary.is_some_and(|a| a.lies_in_heartbeats()) {
            heartbeat.tokens_per_sec = crate::adversary::LIED_TOKENS_PER_SEC;
            heartbeat.batch_tokens_per_sec = crate::adversary::LIED_TOKENS_PER_SEC;
            heartbeat.free_slots = heartbeat.free_slots.max(8);
            heartbeat.queue_depth = 0;
            heartbeat.cpu_load = 0.0;
        }
        heartbeat
    }

    #[cfg(feature = "adversary")]
    pub(super) fn misbehaves(&self, mode: crate::adversary::Misbehaviour) -> bool {
        self.inner.config.adversary.is_some_and(|a| a.mode == mode)
    }

    pub(super) async fn publish_heartbeats(self) {
        let mut tick = tokio::time::interval(self.inner.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scored_for = 0usize;
        loop {
            tick.tick().await;
            let seq = self.inner.heartbeat_seq.fetch_add(1, Ordering::Relaxed) + 1;
            // Gossip delivery scoring follows the network's heartbeat traffic.
            let nodes = lock(&self.inner.table).len() + 1;
            if nodes != scored_for {
                scored_for = nodes;
                let (rate, activation) = nodes_topic_traffic(nodes, self.inner.config.heartbeat_interval);
                if self.inner.net.set_nodes_topic_traffic(rate, activation).await.is_err() {
                    return;
                }
            }
            let heartbeat = self.heartbeat(seq);
            let timestamp_ms = heartbeat.timestamp_ms;
            let signed = heartbeat.sign_and_encode(&self.inner.keypair);
            match self.inner.net.publish(NODES_TOPIC, signed.clone()).await {
                Ok(()) => {
                    self.inner.metrics.heartbeats_published.inc();
                    let _ = self.inner.heartbeat_events.send(HeartbeatEvent::Published { seq, timestamp_ms });
                }
                // No peers yet: expected right after start.
                Err(NetError::Publish(e)) => debug!(error = %e, "heartbeat not published"),
                Err(_) => return,
            }
            // The signed heartbeat is also the node's record in the DHT, replicated to the
            // closest peers, so the node's card outlives its connections.
            let every = self.inner.config.node_record_every.max(1);
            if seq >= 3 && (seq - 3).is_multiple_of(every) {
                let key = quiver_net::node_record_key(&self.peer_id());
                if self.inner.net.put_record(key, signed).await.is_err() {
                    return;
                }
            }
            let expired = lock(&self.inner.table).expire();
            if expired > 0 {
                debug!(expired, "forgot silent nodes");
            }
        }
    }
}

/// Routing table sizes at which a provider republishes its records after joining. Routing
/// tables hold only peers confirmed reachable (DHT servers), and nodes that join together turn
/// servers over the first seconds: the records are put again once more of them are known, so
/// they land on the nodes that are really closest to the key.
pub(super) const REPUBLISH_AT_ROUTING_TABLE_SIZES: [usize; 3] = [1, 8, 20];

/// Reputation reports dated further ahead than this, or older than the age, are ignored.
const REPORT_MAX_SKEW: Duration = Duration::from_secs(60);
const REPORT_MAX_AGE: Duration = Duration::from_secs(600);

/// Fewest nodes for which delivery deficits on the heartbeat topic are scored: below it a
/// peer that forwards nothing cannot be told from an honest one with little to forward.
const MIN_NODES_FOR_DELIVERY_SCORING: usize = 8;

/// Heartbeats per second expected on the heartbeat topic from the other `nodes − 1` nodes (0
/// below [`MIN_NODES_FOR_DELIVERY_SCORING`]), and how long a peer stays in a mesh before its
/// deliveries are judged.
fn nodes_topic_traffic(nodes: usize, period: Duration) -> (f64, Duration) {
    let period = period.max(Duration::from_millis(100));
    let rate = if nodes >= MIN_NODES_FOR_DELIVERY_SCORING { (nodes - 1) as f64 / period.as_secs_f64() } else { 0.0 };
    (rate, (period * 10).max(Duration::from_secs(5)))
}
