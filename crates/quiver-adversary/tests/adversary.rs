//! One misbehaving provider beside honest ones, for each kind of misbehaviour: the client's
//! every request succeeds through honest providers, the bad peer's score goes negative, and it
//! gets no more jobs after a bounded number.
//!
//! Unless a test says otherwise the adversary lures traffic with heartbeats that promise far
//! more speed than anyone has, so a fresh client ranks it first and its misbehaviour is met on
//! the very first request.

#[path = "../../quiver-node/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, load_engine, loopback_config, tcp_addr};
use quiver_engine::llama::LlamaEngine;
use quiver_node::adversary::{Adversary, Misbehaviour};
use quiver_node::reputation::PeerView;
use quiver_node::{InferenceRequest, InferenceResult, Node, NodeConfig, PeerId, ProviderConfig};

const MODEL: &str = "smollm2-135m";

struct Net {
    nodes: Vec<Node>,
    honest: Vec<PeerId>,
    bad: PeerId,
    client: Node,
}

impl Net {
    async fn start(honest: usize, adversary: Adversary) -> Net {
        Net::start_with(honest, adversary, provider).await
    }

    /// As `start`, with the adversary's provider set up by `bad_provider`.
    async fn start_with(
        honest: usize,
        adversary: Adversary,
        bad_provider: impl Fn(&Arc<LlamaEngine>) -> Option<ProviderConfig>,
    ) -> Net {
        let engine = load_engine(1, 1024);
        let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("boot starts");
        let addr = tcp_addr(&boot).await;
        let provider = |adversary| NodeConfig {
            bootstrap_peers: vec![addr.clone()],
            provider: provider(&engine),
            adversary,
            ..loopback_config()
        };
        let mut nodes = vec![boot];
        let mut honest_ids = Vec::new();
        for _ in 0..honest {
            let n = Node::start(provider(None)).await.expect("provider starts");
            honest_ids.push(n.peer_id());
            nodes.push(n);
        }
        let bad = Node::start(NodeConfig { provider: bad_provider(&engine), ..provider(Some(adversary)) })
            .await
            .expect("adversary starts");
        let bad_id = bad.peer_id();
        nodes.push(bad);
        let client = Node::start(NodeConfig { bootstrap_peers: vec![addr.clone()], ..loopback_config() })
            .await
            .expect("client starts");
        // The client has heard every provider's heartbeat (the adversary's lure included).
        eventually(Duration::from_secs(60), "the client hears every provider", async || {
            client.known_nodes().iter().filter(|n| !n.models.is_empty()).count() == honest + 1
        })
        .await;
        Net { nodes, honest: honest_ids, bad: bad_id, client }
    }

    /// The client's view of the adversary.
    fn bad_view(&self) -> PeerView {
        let id = self.bad.to_string();
        self.client.reputation().into_iter().find(|v| v.peer == id).expect("the client has a record of the adversary")
    }

    fn bad_jobs(&self) -> u64 {
        let v = self.bad_view();
        v.successes + v.failures
    }

    async fn ask(&self, request: InferenceRequest) -> InferenceResult {
        let result = tokio::time::timeout(Duration::from_secs(180), self.client.infer(request))
            .await
            .expect("answered in time")
            .expect("the request succeeds");
        assert!(self.honest.contains(&result.provider), "served by {}, not an honest provider", result.provider);
        result
    }

    /// After the adversary has been caught: its score is negative, it has the expected offence,
    /// and `more` further requests never reach it.
    async fn assert_shut_out(&self, offence: &str, request: impl Fn(usize) -> InferenceRequest, more: usize) {
        let view = self.bad_view();
        println!("adversary after being caught: {view:?}");
        assert!(view.score < 0.0, "score {} is not negative", view.score);
        assert!(
            view.offence_counts.get(offence).copied().unwrap_or(0) >= 1,
            "no {offence} recorded: {:?}",
            view.offence_counts
        );
        let jobs = self.bad_jobs();
        for i in 0..more {
            self.ask(request(1000 + i)).await;
        }
        assert_eq!(self.bad_jobs(), jobs, "the adversary got jobs after it was caught");
    }

    async fn stop(self) {
        for n in self.nodes.iter().chain([&self.client]) {
            n.shutdown().await;
        }
    }
}

fn provider(engine: &Arc<LlamaEngine>) -> Option<ProviderConfig> {
    // Generous rate limits: these tests are about misbehaviour, not floods.
    Some(ProviderConfig {
        requests_per_sec: 1000,
        request_burst: 1000,
        ..ProviderConfig::new(vec![engine.clone()], 1, 4)
    })
}

/// A greedy completion that runs for `max_tokens` tokens, asked directly (ranked candidates).
fn direct(i: usize, max_tokens: u32) -> InferenceRequest {
    let mut r = InferenceRequest::completion(MODEL, &format!("Count from {i}: {i}, {}, {},", i + 1, i + 2), max_tokens);
    r.broadcast = false;
    r.use_cache = false;
    r
}

/// The first request meets the adversary, fails over to the honest provider and succeeds; the
/// adversary is then shut out.
async fn caught_on_first_request(mode: Misbehaviour, offence: &str) {
    let net = Net::start(1, Adversary::new(mode)).await;
    let first = net.ask(direct(0, 16)).await;
    assert!(first.attempts >= 2, "the adversary was not tried first ({} attempts)", first.attempts);
    assert_eq!(net.bad_jobs(), 1, "one failed job with the adversary");
    net.assert_shut_out(offence, |i| direct(i, 16), 4).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_penalised_and_the_sender_shut_out() {
    caught_on_first_request(Misbehaviour::GarbageFrames, "garbage_frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_receipt_signature_is_penalised() {
    caught_on_first_request(Misbehaviour::BadSignature, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_another_model_than_advertised_is_penalised() {
    caught_on_first_request(Misbehaviour::WrongModel, "wrong_model").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_is_cut_off_and_the_answer_completed_elsewhere() {
    caught_on_first_request(Misbehaviour::SlowLoris, "stall").await;
}

/// A provider that reads each request and closes the stream unanswered looks, stream by stream,
/// like one whose inbound streams were dropped on arrival, which the client opens again. It
/// must do so a bounded number of times, then count a stall and go elsewhere: one failed job and
/// a `stall`. (Reopening without a bound went on until the adversary's rate limit refused it, a
/// refusal is load, and the adversary was charged nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_every_stream_unanswered_is_a_stall_after_bounded_reopens() {
    caught_on_first_request(Misbehaviour::CloseUnanswered, "stall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_token_counts_the_text_cannot_hold_are_a_protocol_violation() {
    caught_on_first_request(Misbehaviour::InflatedTokens, "protocol_violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_that_does_not_match_its_stream_is_penalised() {
    caught_on_first_request(Misbehaviour::ReceiptMismatch, "failed_verification").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_mid_stream_fails_over_without_losing_or_repeating_text() {
    fails_over_mid_stream(Misbehaviour::DropMidStream).await;
}

/// Refusing a job after streaming part of it is a broken promise with a weight, not a free
/// "invalid request" that fails the caller with nobody penalised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_after_streaming_is_reneging_and_the_request_completes_elsewhere() {
    fails_over_mid_stream(Misbehaviour::RefuseAfterStreaming).await;
}

/// The adversary streams some real text and then breaks off (`mode`): the request completes on
/// the honest provider with nothing repeated or lost, and the adversary, charged `reneged`, is
/// shut out.
async fn fails_over_mid_stream(mode: Misbehaviour) {
    let net = Net::start(1, Adversary::new(mode)).await;
    // Streamed, so the pieces the caller sees can be checked: the adversary's first tokens,
    // then the honest provider's continuation, with nothing repeated or lost.
    let mut stream = net.client.infer_stream(direct(0, 24)).expect("valid request");
    let mut seen = String::new();
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = stream.next().await {
            match ev.expect("the request succeeds") {
                quiver_node::StreamEvent::Token(t) => seen.push_str(&t),
                quiver_node::StreamEvent::Done(r) => return *r,
            }
        }
        panic!("stream ended without a result");
    })
    .await
    .expect("answered in time");
    assert!(result.attempts >= 2, "the adversary was not tried first");
    assert_eq!(seen, result.text, "the caller saw other text than the result");
    // The same greedy request served by the honest provider alone gives the same text.
    let reference = net.ask(direct(0, 24)).await;
    assert_eq!(reference.attempts, 1);
    assert_eq!(result.text, reference.text, "the failover changed the text");
    net.assert_shut_out("reneged", |i| direct(i, 16), 3).await;
    net.stop().await;
}

fn verified(i: usize) -> InferenceRequest {
    let mut r = direct(i, 12);
    r.verify = true;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_liar_serving_the_model_a_verified_request_fails_unverified() {
    let net = Net::start(0, Adversary::new(Misbehaviour::WrongOutput)).await;
    let mut stream = net.client.infer_stream(verified(0)).expect("valid request");
    let mut text = String::new();
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(quiver_node::StreamEvent::Token(t)) => text.push_str(&t),
                Ok(quiver_node::StreamEvent::Done(r)) => return Ok(*r),
                Err(e) => return Err(e),
            }
        }
        panic!("stream ended without an outcome");
    })
    .await
    .expect("in time");
    match outcome {
        Err(quiver_node::InferError::Unverified { .. }) => {}
        other => panic!("expected `could not verify`, got {other:?}"),
    }
    assert_eq!(text, "", "unverified text reached the caller");
    net.stop().await;
}

/// The bare engine's text for `request` (same model, threads and sampling as the providers).
async fn engine_text(request: &InferenceRequest) -> String {
    use quiver_engine::{Engine, GenEvent, GenerateRequest};
    let engine = load_engine(1, 1024);
    let mut generation = engine
        .generate(GenerateRequest {
            input: request.input.clone(),
            params: request.params.clone(),
            tools: Default::default(),
        })
        .expect("generation starts");
    let mut text = String::new();
    while let Some(event) = generation.next().await {
        match event.expect("generation runs") {
            GenEvent::Token { text: t, .. } => text.push_str(&t),
            GenEvent::Logprob(_) => {}
            GenEvent::Done { .. } => return text,
        }
    }
    panic!("the generation ended without Done");
}

/// A liar whose build string nobody else has cannot be refuted by providers of a build of its
/// own, and so is never confirmed: every verified answer is the honest providers', confirmed by
/// each other, although the lure puts the liar first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_build_string_never_gets_an_answer_through_verification() {
    let net = Net::start(2, Adversary::new(Misbehaviour::UniqueBuild)).await;
    let reference = engine_text(&verified(0)).await;
    for i in 0..4 {
        let r = net.ask(verified(0)).await;
        assert!(!r.verified_by.is_empty(), "request {i}: not confirmed");
        assert!(r.verified_by.iter().all(|p| net.honest.contains(p)), "confirmed by the liar: {:?}", r.verified_by);
        assert_eq!(r.text, reference, "request {i}: not the model's text");
    }
    // Its answers earn it nothing in the client's record (replaced, they are no success), so
    // that it took part is read from its own count of jobs served.
    let bad = net.nodes.last().expect("the adversary's node");
    let served = bad
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("quiver_provider_jobs_total{outcome=\"served\"} ")?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(served >= 1.0, "the liar never answered, so this showed nothing");
    // Its heartbeats announce the build its engine really has: the first one after a receipt
    // signed for another class, from the same process, gives the lie away.
    eventually(Duration::from_secs(30), "its heartbeat contradicts its receipts", async || {
        net.bad_view().offence_counts.contains_key("heartbeat_lie")
    })
    .await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_output_is_outvoted_in_verification_and_the_liar_shut_out() {
    let net = Net::start(2, Adversary::new(Misbehaviour::WrongOutput)).await;
    // Its heartbeats lure the client, so it usually answers the first request or checks it; the
    // ranking is not a certainty on a busy machine, so a few requests are allowed until it takes
    // part. Every answer is confirmed by a second provider; where the liar took part, two honest
    // providers agreed on other text and it lost the vote.
    let mut caught = None;
    for i in 0..6 {
        let r = net.ask(verified(i)).await;
        assert!(!r.verified_by.is_empty(), "request {i}: the answer was not confirmed");
        if let Some(n) = net.bad_view().offence_counts.get("failed_verification") {
            caught = Some((i, *n));
            break;
        }
    }
    let (i, n) = caught.expect("the liar took part in none of 6 verified requests");
    println!("the liar was outvoted on request {i}");
    assert_eq!(n, 1, "caught once, on the request it took part in");
    net.assert_shut_out("failed_verification", verified, 3).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_claims_jobs_and_never_serves_loses_them() {
    // Its claims promise the most speed, so the client picks it among the claimants.
    let net = Net::start(1, Adversary::new(Misbehaviour::ClaimNeverServe)).await;
    let claimed = |i| {
        let mut r = direct(i, 8);
        r.broadcast = true;
        r.claim_window = Duration::from_secs(2);
        r
    };
    // Claims are gathered for a moment and ranked; if the honest claim happens to arrive first
    // and alone, the adversary wins a later job.
    let mut asked = 0;
    while net.client.reputation().iter().all(|v| v.peer != net.bad.to_string() || v.failures == 0) {
        assert!(asked < 10, "the adversary never won a claim in 10 requests");
        net.ask(claimed(asked)).await;
        asked += 1;
    }
    println!("the adversary won a claim on request {asked}");
    assert!(net.bad_view().offence_counts.get("claim_not_served").is_some_and(|n| *n >= 1));
    net.assert_shut_out("claim_not_served", claimed, 6).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_that_promise_more_than_is_served_are_penalised() {
    let net = Net::start(1, Adversary::new(Misbehaviour::LyingHeartbeats)).await;
    // It serves honestly, so it keeps winning jobs until its measured speed shows the lie.
    let mut asked = 0;
    let mut served_by_liar = 0;
    while net.bad_view_opt().is_none_or(|v| v.score >= 0.0) {
        assert!(asked < 15, "still trusted after {asked} jobs: {:?}", net.bad_view_opt());
        let r = tokio::time::timeout(Duration::from_secs(120), net.client.infer(direct(asked, 24)))
            .await
            .expect("in time")
            .expect("the request succeeds");
        if r.provider == net.bad {
            served_by_liar += 1;
        }
        asked += 1;
    }
    println!("caught after {asked} jobs, {served_by_liar} of them served by the liar");
    // Its speed is judged on the jobs it served: the lie was seen in its own work, not guessed.
    assert!(served_by_liar >= 3, "caught after only {served_by_liar} jobs of its own");
    net.assert_shut_out("heartbeat_lie", |i| direct(i, 16), 4).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_right_after_advertising_free_slots_is_a_lie() {
    // One slot, no queue, and heartbeats that always show eight free slots: a second job while
    // one runs is refused, which its last heartbeat said could not happen.
    let one_slot = |engine: &Arc<LlamaEngine>| {
        Some(ProviderConfig {
            requests_per_sec: 1000,
            request_burst: 1000,
            ..ProviderConfig::new(vec![engine.clone()], 1, 0)
        })
    };
    let net = Net::start_with(1, Adversary::new(Misbehaviour::LyingHeartbeats), one_slot).await;
    let mut pairs = 0;
    while net.bad_view_opt().is_none_or(|v| !v.offence_counts.contains_key("heartbeat_lie")) {
        // It also lies about its speed, which the client judges once it has served three jobs:
        // the lie must be seen before that, from the refusal alone.
        assert!(
            net.bad_view_opt().is_none_or(|v| v.successes < 3),
            "no lie noticed before the speed check could see one: {:?}",
            net.bad_view_opt()
        );
        // Two at once: both go to the lure; the second finds its only slot taken.
        let (a, b) = tokio::join!(net.client.infer(direct(2 * pairs, 24)), net.client.infer(direct(2 * pairs + 1, 24)));
        a.expect("the first request succeeds");
        b.expect("the second request succeeds elsewhere");
        pairs += 1;
    }
    let view = net.bad_view();
    assert!(view.successes < 3, "noticed only once the speed check could: {view:?}");
    let offences = view.offence_counts;
    println!("lie noticed after {pairs} pairs: {offences:?}");
    // The lie seen is the refusal, not the speed claim (judged after three jobs).
    assert!(offences.contains_key("busy"), "{offences:?}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_token_later_than_usual_starts_a_hedge_that_wins() {
    // It serves honestly until the client knows its usual time to first token, then stalls
    // before every token.
    let net = Net::start(1, Adversary { honest_jobs: 3, lure: true, mode: Misbehaviour::SlowLoris }).await;
    let mut asked = 0;
    while net.bad_view_opt().is_none_or(|v| v.successes < 3) {
        assert!(asked < 10, "the adversary did not get its honest jobs");
        // Seven tokens: too short for the client to measure its speed, so the lure's advertised
        // speed ranks it first however busy the machine is.
        let r = tokio::time::timeout(Duration::from_secs(120), net.client.infer(direct(asked, 7)))
            .await
            .expect("in time")
            .expect("the request succeeds");
        assert_eq!(r.provider, net.bad, "the lure and its good record keep it first");
        asked += 1;
    }
    let p95 = net.bad_view().ttft_p95_ms.expect("its time to first token is known");
    // Now it is late: the hedge on the honest provider streams first and wins.
    let hedged = net.ask(direct(100, 8)).await;
    assert_eq!(hedged.attempts, 2);
    let view = net.bad_view();
    println!("usual first token {p95} ms; after the hedge: {view:?}");
    assert!(view.offence_counts.get("timeout").is_some_and(|n| *n >= 1), "the late provider was not penalised");
    net.stop().await;
}

impl Net {
    fn bad_view_opt(&self) -> Option<PeerView> {
        let id = self.bad.to_string();
        self.client.reputation().into_iter().find(|v| v.peer == id)
    }
}

/// The gossip score each of `observers` gives `peer` (`None` where not connected or unscored).
async fn gossip_scores(observers: &[Node], peer: PeerId) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for n in observers {
        let peers = n.peers().await.unwrap_or_default();
        out.push(peers.iter().find(|p| p.peer_id == peer).and_then(|p| p.gossip_score));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_peer_that_never_forwards_loses_its_score() {
    // Ten nodes, so heartbeat traffic is enough to expect relaying (delivery scoring starts at
    // eight); one of them reads everything and relays nothing.
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("boot starts");
    let addr = tcp_addr(&boot).await;
    let cfg = |adversary| NodeConfig { bootstrap_peers: vec![addr.clone()], adversary, ..loopback_config() };
    let mut honest = vec![boot];
    for _ in 0..8 {
        honest.push(Node::start(cfg(None)).await.expect("node starts"));
    }
    let bad = Node::start(cfg(Some(Adversary::new(Misbehaviour::NonForwarder)))).await.expect("node starts");
    let bad_id = bad.peer_id();
    eventually(Duration::from_secs(60), "every node hears the nine others", async || {
        honest.iter().all(|n| n.known_nodes().len() >= 9)
    })
    .await;
    let took =
        eventually(Duration::from_secs(90), "most honest nodes score the non-forwarder below zero", async || {
            let scores = gossip_scores(&honest, bad_id).await;
            let negative = scores.iter().filter(|s| s.is_some_and(|s| s < 0.0)).count();
            println!("non-forwarder's scores: {scores:?}");
            negative * 2 > honest.len()
        })
        .await;
    println!("non-forwarder below zero at most honest nodes after {took:?}");
    // Honest relays keep a non-negative score with each other.
    let a = honest[1].peer_id();
    let scores = gossip_scores(&honest, a).await;
    println!("an honest node's scores: {scores:?}");
    // Scored by most of the others (an empty list would pass the check below for nothing).
    let scored = scores.iter().flatten().count();
    assert!(scored * 2 > honest.len() - 1, "only {scored} nodes score the honest relay: {scores:?}");
    assert!(scores.iter().flatten().all(|s| *s >= 0.0), "an honest relay was penalised: {scores:?}");
    for n in honest.iter().chain([&bad]) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_bad_experience_reaches_others_as_hearsay() {
    // `witness` is a provider the client trusts (it served the client well) and also a client
    // itself; it meets the adversary, and its reputation report tells the client.
    let engine = load_engine(1, 1024);
    let fast_reports = || NodeConfig { reputation_report_interval: Duration::from_secs(1), ..loopback_config() };
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..fast_reports() }).await.expect("boot starts");
    let addr = tcp_addr(&boot).await;
    let witness =
        Node::start(NodeConfig { bootstrap_peers: vec![addr.clone()], provider: provider(&engine), ..fast_reports() })
            .await
            .expect("witness starts");
    let bad = Node::start(NodeConfig {
        bootstrap_peers: vec![addr.clone()],
        provider: provider(&engine),
        adversary: Some(Adversary::new(Misbehaviour::GarbageFrames)),
        ..fast_reports()
    })
    .await
    .expect("adversary starts");
    let client =
        Node::start(NodeConfig { bootstrap_peers: vec![addr.clone()], ..fast_reports() }).await.expect("client starts");
    // Every node hears the providers other than itself.
    for (n, providers) in [(&witness, 1), (&client, 2)] {
        eventually(Duration::from_secs(60), "every provider is heard", async || {
            n.known_nodes().iter().filter(|k| !k.models.is_empty()).count() >= providers
        })
        .await;
    }
    // The client's good experience with the witness: served through the witness only (the
    // adversary is asked first, fails, and the witness serves), until the witness is
    // established in the client's eyes.
    let standing = |peer: PeerId| {
        client.reputation().into_iter().find(|v| v.peer == peer.to_string()).map(|v| (v.newcomer, v.score))
    };
    let mut i = 0;
    while standing(witness.peer_id()).is_none_or(|(newcomer, score)| newcomer || score < 0.5) {
        assert!(i < 20, "the witness did not become established: {:?}", standing(witness.peer_id()));
        tokio::time::timeout(Duration::from_secs(120), client.infer(direct(i, 8)))
            .await
            .expect("in time")
            .expect("the request succeeds");
        i += 1;
    }
    let before = client.reputation().into_iter().find(|v| v.peer == bad.peer_id().to_string()).expect("known");
    // The witness, as a client, meets the adversary: the only other provider it knows, so its
    // request fails.
    let outcome = tokio::time::timeout(Duration::from_secs(120), witness.infer(direct(500, 8))).await.expect("in time");
    assert!(outcome.is_err(), "the adversary served the witness: {outcome:?}");
    eventually(Duration::from_secs(30), "the witness's report reaches the client", async || {
        client
            .reputation()
            .into_iter()
            .find(|v| v.peer == bad.peer_id().to_string())
            .is_some_and(|v| v.hearsay_negative > before.hearsay_negative)
    })
    .await;
    let after = client.reputation().into_iter().find(|v| v.peer == bad.peer_id().to_string()).expect("known");
    println!("the client's view of the adversary before the report: {before:?}\nafter: {after:?}");
    // Hearsay weighs less than the client's own observations.
    assert!(after.hearsay_negative <= 0.5);
    for n in [&boot, &witness, &bad, &client] {
        n.shutdown().await;
    }
}

/// A peer that opens inference streams and never writes a request takes only its own share of a
/// provider's stream places, is charged for each stream it let time out, and honest clients are
/// served at once with nothing held against the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_streams_without_writing_is_charged_not_the_provider() {
    let engine = load_engine(1, 1024);
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("boot starts");
    let addr = tcp_addr(&boot).await;
    let cfg = || NodeConfig { bootstrap_peers: vec![addr.clone()], ..loopback_config() };
    let honest = Node::start(NodeConfig { provider: provider(&engine), ..cfg() }).await.expect("provider starts");
    let idler = Node::start(NodeConfig { adversary: Some(Adversary::new(Misbehaviour::IdleStreams)), ..cfg() })
        .await
        .expect("idler starts");
    let client = Node::start(cfg()).await.expect("client starts");
    for n in [&idler, &client] {
        eventually(Duration::from_secs(60), "the provider is heard", async || {
            n.known_nodes().iter().any(|k| k.peer_id == honest.peer_id())
        })
        .await;
    }
    // The idler is over its share once the provider refuses its streams as busy: honest
    // requests made now, while it holds its places (before the provider's request timeout), are
    // served at once. (Without a bound per peer it held all 64 places and they were refused.)
    let refused = || {
        let text = honest.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix("quiver_provider_jobs_total{outcome=\"busy\"} ")?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually(Duration::from_secs(60), "the provider refuses the idler's extra streams", async || refused() >= 20.0)
        .await;
    for i in 0..4 {
        let r = tokio::time::timeout(Duration::from_secs(120), client.infer(direct(i, 8)))
            .await
            .expect("in time")
            .expect("the request succeeds");
        assert_eq!(r.provider, honest.peer_id());
        assert_eq!(r.attempts, 1, "request {i} needed {} attempts", r.attempts);
    }
    // Then the provider gives up on the idle streams after its request timeout and charges the
    // idler for them.
    let idler_id = idler.peer_id().to_string();
    eventually(Duration::from_secs(60), "the provider charges the idler", async || {
        honest.reputation().iter().any(|v| v.peer == idler_id && v.offence_counts.contains_key("timeout"))
    })
    .await;
    let view = client.reputation().into_iter().find(|v| v.peer == honest.peer_id().to_string()).expect("known");
    assert!(view.offence_counts.is_empty(), "the client holds offences against the provider: {view:?}");
    assert_eq!(view.failures, 0);
    for n in [&boot, &honest, &idler, &client] {
        n.shutdown().await;
    }
}

/// A ban end to end: a liar outvoted in verification is banned (a newcomer caught lying once is),
/// disconnected and kept out of the client's routing table, and still banned and shut out when
/// the client restarts from its data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outvoted_liar_is_banned_disconnected_and_still_banned_after_a_restart() {
    let engine = load_engine(1, 1024);
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("boot starts");
    let addr = tcp_addr(&boot).await;
    let cfg = || NodeConfig { bootstrap_peers: vec![addr.clone()], ..loopback_config() };
    let mut nodes = vec![boot];
    for _ in 0..2 {
        nodes.push(Node::start(NodeConfig { provider: provider(&engine), ..cfg() }).await.expect("provider starts"));
    }
    let liar = Node::start(NodeConfig {
        provider: provider(&engine),
        adversary: Some(Adversary::new(Misbehaviour::WrongOutput)),
        ..cfg()
    })
    .await
    .expect("liar starts");
    let liar_id = liar.peer_id();
    nodes.push(liar);
    let dir = tempfile::tempdir().expect("tempdir");
    let client_cfg = || NodeConfig { data_dir: Some(dir.path().to_owned()), ..cfg() };
    let hears_all = async |client: &Node| {
        eventually(Duration::from_secs(60), "the client hears every provider", async || {
            client.known_nodes().iter().filter(|n| !n.models.is_empty()).count() == 3
        })
        .await;
    };
    let client = Node::start(client_cfg()).await.expect("client starts");
    hears_all(&client).await;
    let view = |client: &Node| client.reputation().into_iter().find(|v| v.peer == liar_id.to_string());
    let mut i = 0;
    while view(&client).is_none_or(|v| v.banned_until_ms.is_none()) {
        assert!(i < 6, "the liar is not banned after {i} verified requests: {:?}", view(&client));
        let r = tokio::time::timeout(Duration::from_secs(180), client.infer(verified(i)))
            .await
            .expect("in time")
            .expect("answered");
        assert_ne!(r.provider, liar_id, "the liar's answer was returned");
        i += 1;
    }
    println!("banned after {i} verified requests: {:?}", view(&client));
    assert!(view(&client).is_some_and(|v| v.offence_counts.contains_key("failed_verification")));
    let connected = async |client: &Node| client.peers().await.unwrap_or_default().iter().any(|p| p.peer_id == liar_id);
    eventually(Duration::from_secs(10), "the client drops its connection to the liar", async || {
        !connected(&client).await
    })
    .await;
    let in_table =
        async |client: &Node| client.status().await.expect("status").routing_table.contains(&liar_id.to_string());
    assert!(!in_table(&client).await, "the banned liar is in the routing table");
    client.shutdown().await;

    // Restarted from the same data dir: the ban holds from the start.
    let client = Node::start(client_cfg()).await.expect("client restarts");
    assert!(view(&client).is_some_and(|v| v.banned_until_ms.is_some()), "the ban did not survive the restart");
    eventually(Duration::from_secs(60), "the restarted client hears the honest providers", async || {
        client.known_nodes().iter().filter(|n| !n.models.is_empty() && n.peer_id != liar_id).count() == 2
    })
    .await;
    let jobs = view(&client).map(|v| v.successes + v.failures);
    for j in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(180), client.infer(verified(100 + j)))
            .await
            .expect("in time")
            .expect("answered");
        assert_ne!(r.provider, liar_id);
    }
    assert_eq!(view(&client).map(|v| v.successes + v.failures), jobs, "the banned liar got jobs after a restart");
    assert!(!connected(&client).await, "the restarted client connected to the banned liar");
    assert!(!in_table(&client).await, "the banned liar is in the restarted client's routing table");
    client.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}
