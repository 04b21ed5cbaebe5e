//! Kademlia: provider and record lookups answered to their callers, and Kademlia events.

use super::*;

impl EventLoop {
    /// Replies to a provider lookup with what it found, ending the query if it still runs.
    pub(super) fn answer_provider_query(&mut self, id: kad::QueryId) {
        let Some(q) = self.provider_queries.remove(&id) else { return };
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        let with_addrs = q.found.into_iter().map(|p| (p, self.known_addresses(&p))).collect();
        let _ = q.reply.send(with_addrs);
    }

    /// A lookup that has found providers but still waits (on peers that routing tables list
    /// but that are gone) answers with what it has after a moment.
    pub(super) fn answer_slow_provider_queries(&mut self) {
        let slow: Vec<kad::QueryId> = self
            .provider_queries
            .iter()
            .filter(|(_, q)| !q.found.is_empty() && q.started.elapsed() >= PROVIDER_LOOKUP_PATIENCE)
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            self.answer_provider_query(id);
        }
    }

    /// Replies to a record lookup, ending the query if it still runs.
    pub(super) fn answer_record_query(
        &mut self,
        id: kad::QueryId,
        value: Option<Vec<u8>>,
        stats: Option<&kad::QueryStats>,
    ) {
        let Some(q) = self.record_queries.remove(&id) else { return };
        let (mut peers_asked, mut peers_answered) = stats.map_or((0, 0), |s| (s.num_requests(), s.num_successes()));
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            if stats.is_none() {
                (peers_asked, peers_answered) = (query.stats().num_requests(), query.stats().num_successes());
            }
            query.finish();
        }
        let _ = q.reply.send(RecordLookup { value, peers_asked, peers_answered });
    }

    /// Record lookups still waiting (on peers that are gone) after the limit find nothing.
    pub(super) fn end_slow_record_queries(&mut self) {
        let slow: Vec<kad::QueryId> = self
            .record_queries
            .iter()
            .filter(|(_, q)| q.started.elapsed() >= RECORD_LOOKUP_LIMIT || q.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            self.answer_record_query(id, None, None);
        }
    }

    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord { source, record: Some(record), .. } => {
                    if valid_node_record(&record) {
                        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                            debug!(error = %e, "DHT record not stored");
                        }
                    } else {
                        debug!(%source, "refused an invalid DHT record");
                    }
                }
                kad::InboundRequest::AddProvider { record: Some(record) } => {
                    if quiver_proto::dht::valid_provider_key(record.key.as_ref()) {
                        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().add_provider(record) {
                            debug!(error = %e, "provider record not stored");
                        }
                    } else {
                        debug!(provider = %record.provider, "refused a provider record for a foreign key");
                    }
                }
                _ => {}
            },
            kad::Event::OutboundQueryProgressed {
                id, result: kad::QueryResult::GetProviders(result), step, ..
            } => {
                if let Some(q) = self.provider_queries.get_mut(&id) {
                    match result {
                        Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                            for p in providers {
                                if q.found.len() < MAX_PROVIDERS && !q.found.contains(&p) {
                                    q.found.push(p);
                                }
                            }
                        }
                        Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                        Err(e) => debug!(error = %e, "provider lookup ended"),
                    }
                }
                if step.last {
                    self.answer_provider_query(id);
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                step,
                stats,
                ..
            } => {
                let Some(q) = self.record_queries.get(&id) else { return };
                match result {
                    Ok(kad::GetRecordOk::FoundRecord(kad::PeerRecord { peer, record })) => {
                        // Only what we would store ourselves is an answer: the right key and a
                        // record that passes validation.
                        if record.key == q.key && valid_node_record(&record) {
                            debug!(from = ?peer, peers_asked = stats.num_requests(), "DHT record found");
                            self.answer_record_query(id, Some(record.value), Some(&stats));
                            return;
                        }
                        debug!(from = ?peer, "ignored an invalid DHT record");
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => debug!(error = %e, peers_asked = stats.num_requests(), "record lookup ended"),
                }
                if step.last {
                    self.answer_record_query(id, None, Some(&stats));
                }
            }
            kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::PutRecord(result), .. } => {
                if let Some(reply) = self.put_queries.remove(&id) {
                    let _ = reply.send(result.is_ok());
                }
            }
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } => {
                debug!(%peer, "added to routing table");
            }
            kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::Bootstrap(_), step, .. } => {
                trace!(step = step.count, last = step.last, "kademlia bootstrap step");
                let kad = &mut self.swarm.behaviour_mut().kad;
                if self.refresh.on_bootstrap_step(kad, id, &step) == refresh::Progress::Finished {
                    self.refresh_finished();
                }
            }
            kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::GetClosestPeers(_), step, .. } => {
                if self.refresh.on_closest_peers(id, &step) == refresh::Progress::Finished {
                    self.refresh_finished();
                }
            }
            _ => {}
        }
    }
}
