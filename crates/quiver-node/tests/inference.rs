//! Inference through real in-process nodes with the real default model: the Rust API, both
//! routes (gossip claim and direct), admission (busy), and cancellation.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quiver_engine::llama::LlamaEngine;
use quiver_engine::{Engine, GenEvent, GenerateRequest, Input, SamplingParams};

use crate::common::{listen_addr, load_engine, loopback_config, tcp_addr};
use quiver_node::{InferError, InferenceRequest, Node, NodeConfig, ProviderConfig, Route, StreamEvent};

fn engine() -> Arc<LlamaEngine> {
    static ENGINE: OnceLock<Arc<LlamaEngine>> = OnceLock::new();
    ENGINE.get_or_init(|| load_engine(2, 2048)).clone()
}

/// A provider (also the bootstrap node) and a client that knows it.
async fn provider_and_client(max_concurrent: usize, queue: usize) -> (Node, Node) {
    let provider = Node::start(NodeConfig {
        bootstrap_node: true,
        provider: Some(ProviderConfig::new(vec![engine()], max_concurrent, queue)),
        ..loopback_config()
    })
    .await
    .expect("provider starts");
    let client = client_of(&provider).await;
    (provider, client)
}

/// A second provider of the same engine (1 slot, queue 4) that joins through `first`.
async fn second_provider(first: &Node) -> Node {
    Node::start(NodeConfig {
        bootstrap_peers: vec![tcp_addr(first).await],
        provider: Some(ProviderConfig::new(vec![engine()], 1, 4)),
        ..loopback_config()
    })
    .await
    .expect("second provider starts")
}

/// A client (a DHT client only) that joins through `provider` and knows it as a provider.
async fn client_of(provider: &Node) -> Node {
    let client = Node::start(NodeConfig {
        bootstrap_peers: vec![tcp_addr(provider).await],
        dht_client_only: true,
        ..loopback_config()
    })
    .await
    .expect("client starts");
    assert!(client.wait_for_peers(1, Duration::from_secs(10)).await);
    assert!(client.wait_for_provider("smollm2-135m", Duration::from_secs(30)).await);
    client
}

/// What `client` holds on `provider`.
fn view_of(client: &Node, provider: &Node) -> quiver_reputation::PeerView {
    let id = provider.peer_id().to_string();
    client.reputation().into_iter().find(|v| v.peer == id).expect("a reputation record of the provider")
}

/// What the bare engine answers.
async fn bare(input: Input, params: SamplingParams) -> String {
    let mut g = engine().generate(GenerateRequest::new(input, params)).expect("generates");
    let mut text = String::new();
    while let Some(ev) = g.next().await {
        match ev.expect("no error") {
            GenEvent::Token { text: t, .. } => text.push_str(&t),
            GenEvent::Logprob(_) => {}
            GenEvent::Done { .. } => return text,
        }
    }
    panic!("no Done event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_inference_request_returns_the_bare_engines_greedy_answer_with_a_verified_receipt() {
    let _shared = crate::common::light().await;
    let (provider, client) = provider_and_client(1, 4).await;
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        client.send_inference_request("smollm2-135m", "Hello, world!", 32),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    let request = InferenceRequest::chat("smollm2-135m", "Hello, world!", 32);
    assert_eq!(result.text, bare(request.input.clone(), request.params.clone()).await);
    assert!(!result.text.is_empty());
    assert_eq!(result.provider, provider.peer_id());
    assert_eq!(result.route, Route::Claim);
    assert!(result.receipt.verified);
    assert_eq!(result.receipt.model_sha256, engine().model().sha256_hex());
    assert_eq!(result.usage.completion_tokens, result.receipt.completion_tokens);

    // The direct path (DHT provider records), streamed.
    let mut direct = InferenceRequest::completion("smollm2-135m", "The three primary colours are", 24);
    direct.broadcast = false;
    let mut stream = client.infer_stream(direct.clone()).expect("starts");
    let mut streamed = String::new();
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match stream.next().await.expect("an event").expect("no error") {
                StreamEvent::Token(t) => streamed.push_str(&t),
                StreamEvent::Done(r) => return r,
            }
        }
    })
    .await
    .expect("answered in time");
    assert_eq!(done.route, Route::Direct);
    assert_eq!(streamed, done.text);
    assert_eq!(done.text, bare(direct.input, direct.params).await);

    let metrics = provider.metrics_text();
    assert!(metrics.contains("quiver_provider_jobs_total{outcome=\"served\"} 2"), "{metrics}");

    // The same greedy request again: answered from the client's cache, with the original receipt.
    let again = client.send_inference_request("smollm2-135m", "Hello, world!", 32).await.expect("answered");
    assert!(again.cached);
    assert_eq!((again.text.as_str(), &again.receipt.signed), (result.text.as_str(), &result.receipt.signed));
    let mut fresh = InferenceRequest::chat("smollm2-135m", "Hello, world!", 32);
    fresh.use_cache = false;
    let fresh =
        tokio::time::timeout(Duration::from_secs(120), client.infer(fresh)).await.expect("in time").expect("ok");
    assert!(!fresh.cached);
    assert_eq!(fresh.text, result.text);
    let metrics = provider.metrics_text();
    assert!(metrics.contains("quiver_provider_jobs_total{outcome=\"served\"} 3"), "{metrics}");
    client.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_provider_answers_busy_instead_of_queueing() {
    let _shared = crate::common::light().await;
    let (provider, client) = provider_and_client(1, 0).await;
    let mut long = InferenceRequest::completion("smollm2-135m", "1, 2, 3, 4, 5, 6, 7, 8,", 1500);
    long.broadcast = false;
    let mut first = client.infer_stream(long).expect("starts");
    // Once the first job is generating, the only slot is taken and the queue holds nothing.
    match tokio::time::timeout(Duration::from_secs(60), first.next()).await.expect("first token in time") {
        Some(Ok(StreamEvent::Token(_))) => {}
        other => panic!("expected a token, got {other:?}"),
    }
    let mut second = InferenceRequest::chat("smollm2-135m", "Hi", 8);
    second.broadcast = false;
    let err = tokio::time::timeout(Duration::from_secs(60), client.infer(second))
        .await
        .expect("refused in time")
        .expect_err("the provider is full");
    match err {
        InferError::AllProvidersFailed { failures, .. } => {
            assert!(failures.iter().all(|f| f.ends_with("busy")), "{failures:?}")
        }
        other => panic!("expected busy, got {other}"),
    }
    // Dropping the stream cancels the first job: the slot frees without the job being served.
    drop(first);
    let freed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = provider.status().await.expect("status");
            if s.provider.as_ref().is_some_and(|p| p.free_slots == 1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the slot was not freed after the client went away");
    let metrics = provider.metrics_text();
    assert!(!metrics.contains("quiver_provider_jobs_total{outcome=\"served\"}"), "{metrics}");
    assert!(metrics.contains("quiver_provider_jobs_total{outcome=\"busy\"} 1"), "{metrics}");
    client.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_feed_the_clients_reputation_which_survives_a_restart() {
    let _shared = crate::common::light().await;
    let (provider, _) = provider_and_client(1, 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client_config = || NodeConfig {
        bootstrap_peers: vec![],
        data_dir: Some(dir.path().to_owned()),
        dht_client_only: true,
        ..loopback_config()
    };
    let boot = tcp_addr(&provider).await;
    let client =
        Node::start(NodeConfig { bootstrap_peers: vec![boot.clone()], ..client_config() }).await.expect("starts");
    assert!(client.wait_for_provider("smollm2-135m", Duration::from_secs(30)).await);
    for prompt in ["Hi", "Hello"] {
        tokio::time::timeout(Duration::from_secs(120), client.send_inference_request("smollm2-135m", prompt, 8))
            .await
            .expect("in time")
            .expect("answered");
    }
    let view = view_of(&client, &provider);
    assert_eq!(view.successes, 2);
    assert_eq!(view.failures, 0);
    assert!(view.latency_ewma_ms.is_some_and(|l| l > 0.0));
    let score_before = view.score;

    // The provider goes away while the client still lists it (from its heartbeats): the next
    // request fails, and counts against it.
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        while !client.known_nodes().iter().any(|k| k.peer_id == provider.peer_id()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(heard.is_ok(), "no heartbeat from the provider");
    provider.shutdown().await;
    let mut req = InferenceRequest::chat("smollm2-135m", "Hi", 8);
    req.broadcast = false;
    req.use_cache = false;
    let err = tokio::time::timeout(Duration::from_secs(120), client.infer(req)).await.expect("in time");
    assert!(err.is_err());
    let view = view_of(&client, &provider);
    assert_eq!(view.failures, 1);
    assert!(view.score < score_before);
    client.shutdown().await;

    // A restart with the same data directory remembers all of it.
    let again = Node::start(NodeConfig { bootstrap_peers: vec![boot], ..client_config() }).await.expect("restarts");
    let view = view_of(&again, &provider);
    assert_eq!((view.successes, view.failures), (2, 1));
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_refused_while_another_client_is_served() {
    let _shared = crate::common::light().await;
    let (provider, flooder) = provider_and_client(1, 4).await;
    let other = client_of(&provider).await;
    // Ten times the burst the provider allows one peer, all at once.
    let flood = futures::future::join_all((0..100).map(|_| {
        let mut r = InferenceRequest::chat("smollm2-135m", "Hi", 4);
        r.broadcast = false;
        r.max_attempts = 1;
        flooder.infer(r)
    }));
    let mut polite = InferenceRequest::chat("smollm2-135m", "What is 2+2?", 8);
    polite.broadcast = false;
    let (flooded, answered) =
        tokio::time::timeout(Duration::from_secs(300), async { tokio::join!(flood, other.infer(polite)) })
            .await
            .expect("all settled in time");
    assert!(answered.is_ok(), "the other client was refused: {answered:?}");
    let refused = flooded.iter().filter(|r| r.is_err()).count();
    assert!(refused >= 80, "only {refused} of 100 flooding requests were refused");
    let metrics = provider.metrics_text();
    assert!(metrics.contains("quiver_provider_jobs_total{outcome=\"rate_limited\"}"), "{metrics}");
    // Refusals are load, not faults: the flooder holds none of them against the provider. Some
    // of the burst's streams are dropped on arrival (libp2p-stream takes one at a time); they
    // are opened again, and do not count as stalls either.
    let view = view_of(&flooder, &provider);
    assert!(view.offence_counts.keys().all(|k| k == "busy"), "{view:?}");
    other.shutdown().await;
    flooder.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_quic_count_as_load_not_faults() {
    let _shared = crate::common::light().await;
    // QUIC only: a provider that refuses before reading the request closes the stream, and
    // QUIC then fails the client's write of the request.
    let quic = || NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")],
        ..loopback_config()
    };
    let provider = Node::start(NodeConfig {
        bootstrap_node: true,
        provider: Some(ProviderConfig {
            requests_per_sec: 1,
            request_burst: 1,
            ..ProviderConfig::new(vec![engine()], 1, 4)
        }),
        ..quic()
    })
    .await
    .expect("provider starts");
    let client = Node::start(NodeConfig {
        bootstrap_peers: vec![listen_addr(&provider, "/quic-v1").await],
        dht_client_only: true,
        ..quic()
    })
    .await
    .expect("client starts");
    assert!(client.wait_for_provider("smollm2-135m", Duration::from_secs(30)).await);
    let asks = (0..20).map(|i| {
        let mut r = InferenceRequest::chat("smollm2-135m", &format!("Hi {i}"), 2);
        r.broadcast = false;
        r.max_attempts = 1;
        client.infer(r)
    });
    let results =
        tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(asks)).await.expect("settled in time");
    let refused = results.iter().filter(|r| r.is_err()).count();
    assert!(refused >= 15, "only {refused} of 20 were refused");
    let view = view_of(&client, &provider);
    assert!(view.offence_counts.keys().all(|k| k == "busy"), "{view:?}");
    assert_eq!(view.failures, 0, "{view:?}");
    client.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_may_fill_the_queue_and_a_second_client_still_gets_a_place() {
    let _shared = crate::common::light().await;
    // One slot and four queue places.
    let (provider, gateway) = provider_and_client(1, 4).await;
    let ask = |node: &Node, i: usize, tokens: u32| {
        let mut r = InferenceRequest::completion("smollm2-135m", &format!("Item {i}: a list of colours:"), tokens);
        r.broadcast = false;
        r.max_attempts = 1;
        r.use_cache = false;
        let node = node.clone();
        async move { tokio::time::timeout(Duration::from_secs(180), node.infer(r)).await.expect("settled in time") }
    };
    // One client (a gateway, say) with five requests at once: one runs, four wait; none is
    // refused while the provider has room.
    let burst = futures::future::join_all((0..5).map(|i| ask(&gateway, i, 16))).await;
    for (i, r) in burst.iter().enumerate() {
        assert!(r.is_ok(), "request {i} of a lone client's burst failed: {r:?}");
    }

    // The same client fills the queue again, with long jobs; then another client asks.
    let other = client_of(&provider).await;
    let heavy = tokio::spawn(futures::future::join_all((10..15).map(|i| ask(&gateway, i, 300))));
    tokio::time::timeout(Duration::from_secs(60), async {
        while provider.status().await.ok().and_then(|s| s.provider).is_none_or(|p| p.queue_depth < 4) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first client's jobs fill the queue");
    // The queue is full, but the other client has no job here: the first client's newest
    // queued job gives up its place.
    let answered = ask(&other, 99, 8).await;
    assert!(answered.is_ok(), "the second client was refused: {answered:?}");
    let heavy = heavy.await.expect("joins");
    let refused: Vec<_> = heavy.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "exactly one place was given away: {refused:?}");
    assert!(
        matches!(refused[0], InferError::AllProvidersFailed { failures, .. } if failures.iter().all(|f| f.ends_with("busy")))
    );
    let metrics = provider.metrics_text();
    assert!(metrics.contains("quiver_provider_jobs_total{outcome=\"busy\"} 1"), "{metrics}");
    other.shutdown().await;
    gateway.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reruns_a_greedy_request_on_a_second_provider_of_the_same_build() {
    let _shared = crate::common::light().await;
    let (first, client) = provider_and_client(1, 4).await;
    let second = second_provider(&first).await;
    let both = [first.peer_id(), second.peer_id()];
    let known = tokio::time::timeout(Duration::from_secs(60), async {
        while !both.iter().all(|p| client.known_nodes().iter().any(|k| k.peer_id == *p)) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(known.is_ok(), "the client did not hear both providers");
    let mut request = InferenceRequest::chat("smollm2-135m", "Name a colour.", 12);
    request.verify = true;
    let result = tokio::time::timeout(Duration::from_secs(180), client.infer(request))
        .await
        .expect("in time")
        .expect("answered and verified");
    assert_eq!(result.verified_by.len(), 1, "{result:?}");
    let checker = result.verified_by[0];
    assert!(both.contains(&checker) && checker != result.provider);
    client.shutdown().await;
    second.shutdown().await;
    first.shutdown().await;
}

/// Once fresh heartbeats decide (an established provider whose heartbeat of the last seconds
/// shows free slots to spare, nobody cheaper), a request goes straight to it without being
/// announced; a newcomer's jobs, and requests that insist, are announced and claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_heartbeats_send_a_request_direct_once_they_decide() {
    let _shared = crate::common::light().await;
    let (provider, client) = provider_and_client(4, 4).await;
    let ask = async |r: InferenceRequest| {
        tokio::time::timeout(Duration::from_secs(120), client.infer(r))
            .await
            .expect("answered in time")
            .expect("answered")
    };
    let request = |i: usize| {
        let mut r = InferenceRequest::completion("smollm2-135m", &format!("Direct {i}:"), 4);
        r.use_cache = false;
        r
    };
    // A newcomer: its jobs are announced, whatever its heartbeats say.
    let id = provider.peer_id().to_string();
    let newcomer = || client.reputation().into_iter().find(|v| v.peer == id).is_none_or(|v| v.newcomer);
    let mut i = 0;
    while newcomer() {
        assert!(i < 10, "still a newcomer after {i} jobs");
        assert_eq!(ask(request(i)).await.route, Route::Claim, "job {i} to a newcomer");
        i += 1;
    }
    // Established, idle and heard within the last second: straight there.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ask(request(100)).await.route, Route::Direct, "decided by a fresh heartbeat");
    let mut insist = request(101);
    insist.always_announce = true;
    assert_eq!(ask(insist).await.route, Route::Claim, "announced when asked to");
    for n in [&provider, &client] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_of_one_model_are_one_row_of_the_network_view() {
    let _shared = crate::common::light().await;
    let (first, client) = provider_and_client(2, 4).await;
    let second = second_provider(&first).await;
    let row_of_two = async |node: &Node| {
        node.network().await.is_ok_and(|v| v.models.iter().any(|m| m.name == "smollm2-135m" && m.providers == 2))
    };
    crate::common::eventually(Duration::from_secs(60), "the client counts both providers", async || {
        row_of_two(&client).await
    })
    .await;
    // A provider counts itself beside the other.
    crate::common::eventually(Duration::from_secs(60), "the second provider counts both", async || {
        row_of_two(&second).await
    })
    .await;
    let view = client.network().await.expect("network view");
    assert_eq!(view.models.len(), 1, "{view:?}");
    let row = &view.models[0];
    // No job has run: every slot of both is free.
    let free = |n: &Node| {
        let n = n.clone();
        async move { n.status().await.expect("status").provider.expect("a provider").free_slots }
    };
    assert_eq!(row.free_slots, u64::from(free(&first).await + free(&second).await), "{row:?}");
    assert_eq!(row.queue_depth, 0);
    // Three nodes: too few DHT peers for anyone to estimate the size, and the view says so.
    assert_eq!(view.size.estimate, None, "{view:?}");
    assert!(view.size.summary.contains("too few to estimate"), "{}", view.size.summary);
    // The status carries the same view.
    let status = client.status().await.expect("status");
    assert_eq!(status.network.models, view.models);
    client.shutdown().await;
    second.shutdown().await;
    first.shutdown().await;
}
