//! Route choice: the providers known for a model, the claim round on gossip, and their ranking.

use super::*;
use crate::dispatch::Dispatched;

/// Expected seconds until a job of `max_tokens` is done at a provider: the wait for its queue
/// (and for a slot when none is free) to drain at its batched throughput, then the job's length
/// at one job's speed, slowed by its CPU load, plus the round trips to reach it. Without `load` (a DHT record only, no fresh heartbeat)
/// the provider may be gone and counts as busy. `measured` is this node's own measurement of its
/// speed, which wins over the advertised one. `rtt` is the Ping round trip of a connected
/// provider, `None` when not connected (then [`UNKNOWN_RTT`]).
pub(super) fn expected_completion(
    load: Option<Load>,
    measured: Option<f64>,
    rtt: Option<Duration>,
    max_tokens: u32,
) -> f64 {
    let load = load.unwrap_or(Load::UNSEEN);
    let speed = [measured.unwrap_or(0.0), f64::from(load.tokens_per_sec)]
        .into_iter()
        .find(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_TOKENS_PER_SEC);
    let job = f64::from(max_tokens.max(1)) / speed;
    let waiting = f64::from(load.queue_depth) + if load.free_slots == 0 { 1.0 } else { 0.0 };
    // The jobs ahead drain at the provider's batched throughput (its sequences together), not
    // one at a time. Its word, so bounded: no slower than one job, at most MAX_BATCH_GAIN × one.
    let batch = f64::from(load.batch_tokens_per_sec);
    let drain = if batch.is_finite() && batch > 0.0 { batch.clamp(speed, speed * MAX_BATCH_GAIN) } else { speed };
    let wait = waiting * f64::from(max_tokens.max(1)) / drain;
    let cpu = if load.cpu_load.is_finite() { f64::from(load.cpu_load.clamp(0.0, 4.0)) } else { 0.0 };
    let network = rtt.unwrap_or(UNKNOWN_RTT).as_secs_f64() * REQUEST_ROUND_TRIPS;
    (wait + job) * (1.0 + cpu * 0.25) + network
}

/// Whether the claims in hand already hold the best choice, so that gathering more cannot improve
/// it: every known provider of the model has claimed, or one claim has a free slot and costs no
/// more than any known provider that has not claimed (their cost from heartbeats).
pub(super) fn gathered_enough<A, B>(
    claims: &[(PeerId, Claim, A, B)],
    known_costs: &[(PeerId, f64)],
    max_tokens: u32,
    measured: &HashMap<PeerId, f64>,
) -> bool {
    let claimed = |peer: &PeerId| claims.iter().any(|(p, ..)| p == peer);
    let unclaimed = || known_costs.iter().filter(|(p, _)| !claimed(p));
    if unclaimed().next().is_none() {
        return true;
    }
    let others = unclaimed().map(|(_, cost)| *cost).fold(f64::INFINITY, f64::min);
    claims.iter().any(|(peer, claim, ..)| {
        let load = Some(
            Load::new(claim.free_slots, claim.queue_depth, 0.0, claim.tokens_per_sec)
                .batched(claim.batch_tokens_per_sec),
        );
        claim.free_slots > 0 && expected_completion(load, measured.get(peer).copied(), None, max_tokens) <= others
    })
}

/// Most a provider's batched throughput may count over one job's speed when its queue is
/// weighed: the figure is the provider's word.
const MAX_BATCH_GAIN: f64 = 8.0;

/// Free slots a provider's fresh heartbeat must show, after our own jobs sent since, for the
/// client to skip the announcement: one for this job and one for whoever else asks meanwhile.
const DECIDING_FREE_SLOTS: u32 = 2;

/// Whether fresh heartbeats already decide where a job goes, so that announcing it could not
/// improve the choice: the first-ranked candidate is `established`, its load was observed
/// within [`FRESH_HEARTBEAT_SECS`] and shows [`DECIDING_FREE_SLOTS`] free once `unseen` (our own
/// jobs sent since) are taken, and no other candidate costs clearly less (`costs`, the first
/// one's first; within the ranking's tolerance the pick among equals stands). A claim could
/// only tell what such a heartbeat already says.
pub(super) fn decided_by_heartbeats(
    first: Option<(Option<Load>, Option<Duration>, u32)>,
    established: bool,
    costs: &[f64],
) -> bool {
    let Some((Some(load), Some(age), unseen)) = first else { return false };
    let least = costs.iter().copied().fold(f64::INFINITY, f64::min);
    let cheapest = costs.first().is_some_and(|c| *c <= least * (1.0 + COST_TOLERANCE));
    established
        && age.as_secs_f64() < FRESH_HEARTBEAT_SECS
        && load.free_slots.saturating_sub(unseen) >= DECIDING_FREE_SLOTS
        && cheapest
}

impl Candidate {
    /// Its [`expected_completion`], with our own jobs sent there since its load was observed on
    /// top (they take its free slots first).
    fn expected(&self, dispatched: &Dispatched, measured: Option<f64>, rtt: Option<Duration>, max_tokens: u32) -> f64 {
        let load = with_unseen(self.load, dispatched.unseen(self.peer, self.load_seen));
        expected_completion(load, measured, rtt, max_tokens)
    }
}

impl ClaimBoard {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, ClaimSender>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a candidate stands in the ranking, before cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Established,
    Newcomer,
    /// Negative score: it failed this client lately.
    Failing,
}

impl Node {
    /// Penalises a provider whose heartbeats claim far more speed than its jobs show: the claim
    /// would draw traffic it cannot serve.
    pub(super) async fn check_speed_claim(&self, peer: PeerId) {
        let Some(claimed) = self.known_node(&peer).map(|n| f64::from(n.tokens_per_sec)) else { return };
        let measured = self.with_reputation(|r, now| {
            r.snapshot(peer, now).filter(|v| v.successes >= SPEED_LIE_MIN_JOBS).and_then(|v| v.tokens_per_sec)
        });
        if let Some(measured) = measured
            && claimed > SPEED_LIE_FACTOR * measured + 1.0
        {
            info!(%peer, claimed, measured, "heartbeat claims a speed its jobs do not show");
            self.record_offence(peer, Offence::HeartbeatLie, false).await;
        }
    }

    /// Providers of the model known from heartbeats and from DHT provider records, best first.
    pub(super) async fn provider_candidates(&self, request: &InferenceRequest) -> Vec<Candidate> {
        let me = self.peer_id();
        let sha = request.model_sha256.map(|s| hex(&s));
        let nodes: Vec<_> = self
            .known_nodes()
            .into_iter()
            .filter(|n| n.peer_id != me)
            .filter(|n| n.models.iter().any(|m| m.name == request.model && sha.as_ref().is_none_or(|s| *s == m.sha256)))
            .collect();
        let mut out: Vec<Candidate> = nodes
            .into_iter()
            .map(|n| Candidate {
                advertised_sha256: advertised_sha(&n, &request.model),
                load_seen: Some(n.heard_at()),
                peer: n.peer_id,
                addrs: n.listen_addrs,
                route: Route::Direct,
                load: Some(
                    Load::new(n.free_slots, n.queue_depth, n.cpu_load, n.tokens_per_sec)
                        .batched(n.batch_tokens_per_sec),
                ),
            })
            .collect();
        let key = match &request.model_sha256 {
            Some(s) => wire::model_sha_key(s),
            None => wire::model_name_key(&request.model),
        };
        // With providers already known from heartbeats the DHT only adds to them: a lookup held
        // up by departed peers must not delay the request long.
        let dht_wait = if out.is_empty() { DHT_TIMEOUT } else { DHT_TIMEOUT_WHEN_KNOWN };
        if let Ok(Ok(found)) = tokio::time::timeout(dht_wait, self.net().get_providers(key)).await {
            for (peer, addrs) in found {
                if peer != me && !out.iter().any(|c| c.peer == peer) {
                    let advertised_sha256 = request.model_sha256.map(|s| s.to_vec());
                    out.push(Candidate {
                        peer,
                        addrs,
                        route: Route::Direct,
                        load: None,
                        load_seen: None,
                        advertised_sha256,
                    });
                }
            }
        }
        self.rank(out, request.params.max_tokens).await
    }

    /// Announces the job on gossip and returns the first provider that claims it in time.
    pub(super) async fn broadcast_and_wait_for_claim(
        &self,
        request: &InferenceRequest,
        known: &[Candidate],
    ) -> Option<Candidate> {
        // Gossip reaches providers through peers subscribed to the model's topic: connect to
        // the providers we know of so the announcement has a first hop.
        let connects = known
            .iter()
            .take(8)
            .map(|c| tokio::time::timeout(CONNECT_TIMEOUT, self.net().connect(c.peer, c.addrs.clone())));
        // Bounded: a dead provider in the list must not hold the announcement back.
        let _ = tokio::time::timeout(ANNOUNCE_CONNECT_WAIT, futures::future::join_all(connects)).await;

        let job_id = random_id();
        let (claims_tx, mut claims_rx) = mpsc::channel(16);
        {
            let mut jobs = self.claim_board().lock();
            if jobs.len() >= MAX_PENDING_JOBS {
                return None;
            }
            jobs.insert(job_id.clone(), claims_tx);
        }
        let announcement = JobAnnouncement {
            job_id: job_id.clone(),
            model: request.model.clone(),
            max_tokens: request.params.max_tokens,
            deadline_ms: now_ms() + request.claim_window.as_millis() as u64,
            client_addrs: self.dialable_addrs().iter().map(|a| a.to_vec()).collect(),
        };
        let topic = infer_topic(&request.model);
        let data = prost::Message::encode_to_vec(&announcement);
        // What the known providers are expected to cost, from their heartbeats and our own
        // measurements, to judge when the claims in hand are good enough.
        let dispatched = self.dispatched();
        let measured: HashMap<PeerId, f64> = self.with_reputation(|r, now| {
            known.iter().filter_map(|c| Some((c.peer, r.snapshot(c.peer, now)?.tokens_per_sec?))).collect()
        });
        let known_costs: Vec<(PeerId, f64)> = known
            .iter()
            .map(|c| (c.peer, c.expected(dispatched, measured.get(&c.peer).copied(), None, request.params.max_tokens)))
            .collect();
        let claimed = tokio::time::timeout(request.claim_window, async {
            // Subscriptions of freshly connected peers arrive within moments; retry briefly.
            for _ in 0..10 {
                match self.net().publish(topic.clone(), data.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        debug!(error = %e, "job announcement not published yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // Newcomers' claims count only while they are within their capped share of this
            // client's jobs, unless no established provider is known: earning trust takes
            // served work, not fast claiming.
            let established_known = self.with_reputation(|r, _| known.iter().any(|c| !r.is_newcomer(c.peer)));
            let acceptable = |peer: PeerId, claim: &Claim| {
                // A peer with a negative score (it failed us lately) does not get jobs by
                // claiming fast; it stays reachable as a last resort among the known providers.
                self.with_reputation(|r, now| {
                    r.is_banned(peer, now).is_none()
                        && r.score(peer, now) > 0.0
                        && (!r.is_newcomer(peer) || !established_known || r.newcomer_quota_available(now))
                }) && request.model_sha256.is_none_or(|s| s[..] == claim.model_sha256[..])
            };
            let mut claims = Vec::new();
            while let Some((peer, claim, ack)) = claims_rx.recv().await {
                if acceptable(peer, &claim) {
                    claims.push((peer, claim, ack, Instant::now()));
                    break;
                }
                let _ = ack.send(false);
            }
            // The first claim opens a short gathering window: claims carry each provider's
            // current load, so the choice among them is load-aware instead of a race. The window
            // closes as soon as waiting cannot improve the choice.
            if !gathered_enough(&claims, &known_costs, request.params.max_tokens, &measured) {
                let _ = tokio::time::timeout(CLAIM_GATHER, async {
                    while claims.len() < MAX_CLAIMS_CONSIDERED {
                        let Some((peer, claim, ack)) = claims_rx.recv().await else { break };
                        if acceptable(peer, &claim) {
                            claims.push((peer, claim, ack, Instant::now()));
                            if gathered_enough(&claims, &known_costs, request.params.max_tokens, &measured) {
                                break;
                            }
                        } else {
                            let _ = ack.send(false);
                        }
                    }
                })
                .await;
            }
            claims
        })
        .await
        .unwrap_or_default();
        self.claim_board().lock().remove(&job_id);
        let candidates: Vec<Candidate> = claimed
            .iter()
            .map(|(peer, claim, _, arrived)| {
                let known = known.iter().find(|c| c.peer == *peer);
                Candidate {
                    peer: *peer,
                    addrs: known.map(|c| c.addrs.clone()).unwrap_or_default(),
                    route: Route::Claim,
                    load: Some(
                        Load::new(claim.free_slots, claim.queue_depth, 0.0, claim.tokens_per_sec)
                            .batched(claim.batch_tokens_per_sec),
                    ),
                    load_seen: Some(*arrived),
                    // What it claimed with, unless it advertised something else before.
                    advertised_sha256: Some(
                        known.and_then(|c| c.advertised_sha256.clone()).unwrap_or_else(|| claim.model_sha256.clone()),
                    ),
                }
            })
            .collect();
        let chosen = self.rank(candidates, request.params.max_tokens).await.into_iter().next();
        for (peer, _, ack, _) in claimed {
            let _ = ack.send(chosen.as_ref().is_some_and(|c| c.peer == peer));
        }
        if let Some(c) = &chosen {
            debug!(peer = %c.peer, "job claimed");
        }
        chosen
    }

    /// Serves `/quiver/claim/1`: hands each valid claim to the job waiting for it.
    pub(crate) async fn accept_claims(self) {
        let mut control = self.net().streams();
        let Ok(mut incoming) = control.accept(StreamProtocol::new(CLAIM_PROTOCOL)) else {
            return;
        };
        let open = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let limiter = quiver_net::PeerLimiter::new(5, 20);
        while let Some((peer, mut stream)) = futures::StreamExt::next(&mut incoming).await {
            if !limiter.allow(&peer) {
                continue;
            }
            let Ok(permit) = open.clone().try_acquire_owned() else { continue };
            let node = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let read =
                    tokio::time::timeout(Duration::from_secs(5), read_frame::<_, Claim>(&mut stream, MAX_CLAIM_BYTES))
                        .await;
                let Ok(Ok(claim)) = read else { return };
                if claim.validate().is_err() {
                    debug!(%peer, "invalid claim");
                    return;
                }
                let waiting = node.claim_board().lock().get(&claim.job_id).cloned();
                let chosen = match waiting {
                    Some(tx) => {
                        let (ack_tx, ack_rx) = oneshot::channel();
                        if tx.try_send((peer, claim, ack_tx)).is_ok() {
                            tokio::time::timeout(Duration::from_secs(5), ack_rx)
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .unwrap_or(false)
                        } else {
                            false
                        }
                    }
                    None => false,
                };
                let _ = write_frame(&mut stream, &ClaimAck { chosen }).await;
                let _ = stream.close().await;
            });
        }
    }

    /// Orders candidates for a job of `max_tokens`: banned peers out; the others by expected
    /// completion time (queue, free slots, CPU load, measured speed, round-trip time; the load as
    /// last observed plus our own jobs sent there since) divided by a weight from their
    /// reputation; the first pick is the better of two drawn from the best three (power of two
    /// choices, so equal providers share the load); newcomers go last once they have had their
    /// capped share of this client's jobs.
    pub(super) async fn rank(&self, candidates: Vec<Candidate>, max_tokens: u32) -> Vec<Candidate> {
        // Round trips measured by Ping, for the providers this node is connected to.
        let rtts: HashMap<PeerId, Duration> = match tokio::time::timeout(PEERS_WAIT, self.net().peers()).await {
            Ok(Ok(peers)) => peers
                .into_iter()
                .filter_map(|p| Some((p.peer_id, Duration::try_from_secs_f64(p.rtt_ms? / 1000.0).ok()?)))
                .collect(),
            _ => HashMap::new(),
        };
        let dispatched = self.dispatched();
        let (mut scored, quota) = self.with_reputation(|r, now| {
            let scored: Vec<(Candidate, f64, Class)> = candidates
                .into_iter()
                .filter(|c| r.is_banned(c.peer, now).is_none())
                .map(|c| {
                    let view = r.snapshot(c.peer, now);
                    let score = view.as_ref().map_or_else(|| r.score(c.peer, now), |v| v.score);
                    let measured = view.as_ref().and_then(|v| v.tokens_per_sec);
                    let expected = c.expected(dispatched, measured, rtts.get(&c.peer).copied(), max_tokens);
                    let class = if score < 0.0 {
                        Class::Failing
                    } else if r.is_newcomer(c.peer) {
                        Class::Newcomer
                    } else {
                        Class::Established
                    };
                    // Good standing (score ≥ 0.6) weighs fully, so established providers compete
                    // on speed and load alone; lower scores make a provider look slower. Not a
                    // newcomer's low prior: the share cap governs its traffic, and weighed by it
                    // (cost ×1.3) a newcomer lost every pairing with an established provider, so
                    // one that arrived after two others were established never got a job.
                    let weight = if class == Class::Newcomer { 1.0 } else { ((score + 1.0) / 1.6).clamp(0.05, 1.0) };
                    (c, expected / weight, class)
                })
                .collect();
            (scored, r.newcomer_quota_available(now))
        });
        scored.sort_by(|a, b| a.1.total_cmp(&b.1));
        // Newcomers beyond their share wait behind established providers; peers that failed
        // lately (negative score) come last, as fallbacks only.
        let capped = !quota && scored.iter().any(|s| s.2 == Class::Established);
        scored.sort_by_key(|s| match s.2 {
            Class::Established => 0,
            Class::Newcomer if capped => 1,
            Class::Newcomer => 0,
            Class::Failing => 2,
        });
        // The random pick stays among the leading class, so it can undo neither the newcomer
        // cap nor the demotion of failing peers.
        let lead = scored.first().map(|s| s.2);
        let leading = scored
            .iter()
            .take_while(|s| Some(s.2) == lead || (!capped && s.2 != Class::Failing && lead != Some(Class::Failing)))
            .count();
        let best = leading.min(3);
        if best >= 2 {
            // The cheaper of the two, unless they are within the tolerance of each other: then
            // either, so equal providers share the load despite noise in their measurements.
            let pick = self.with_route_rng(|rng| {
                let a = rand::Rng::gen_range(rng, 0..best);
                let b = (a + rand::Rng::gen_range(rng, 1..best)) % best;
                let (ca, cb) = (scored[a].1, scored[b].1);
                if ca.max(cb) <= ca.min(cb) * (1.0 + COST_TOLERANCE) {
                    if rand::Rng::gen_bool(rng, 0.5) { a } else { b }
                } else if ca < cb {
                    a
                } else {
                    b
                }
            });
            scored.swap(0, pick);
        }
        scored.into_iter().map(|s| s.0).collect()
    }

    /// Whether fresh heartbeats already decide where the job goes (see
    /// [`decided_by_heartbeats`]); `known` is ranked, best first.
    pub(super) fn heartbeats_decide(&self, known: &[Candidate], max_tokens: u32) -> bool {
        let Some(first) = known.first() else { return false };
        let dispatched = self.dispatched();
        let unseen = dispatched.unseen(first.peer, first.load_seen);
        let (established, costs) = self.with_reputation(|r, now| {
            let established = !r.is_newcomer(first.peer) && r.score(first.peer, now) >= 0.0;
            let costs: Vec<f64> = known
                .iter()
                .map(|c| {
                    let measured = r.snapshot(c.peer, now).and_then(|v| v.tokens_per_sec);
                    c.expected(dispatched, measured, None, max_tokens)
                })
                .collect();
            (established, costs)
        });
        decided_by_heartbeats(Some((first.load, first.load_seen.map(|s| s.elapsed()), unseen)), established, &costs)
    }

    pub(crate) fn dialable_addrs(&self) -> Vec<Multiaddr> {
        // Relayed addresses first: a client behind a NAT is dialed back through its relay.
        self.own_addrs(8)
    }
}

/// The sha256 of `model` that a node advertised in its heartbeat, when it is a valid hex hash.
pub(super) fn advertised_sha(node: &crate::KnownNode, model: &str) -> Option<Vec<u8>> {
    let hex = &node.models.iter().find(|m| m.name == model)?.sha256;
    (hex.len() == 64)
        .then(|| (0..32).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>())
        .flatten()
}
