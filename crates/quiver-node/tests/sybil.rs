//! Sybil resistance: twenty fresh identities serving beside one established provider get no
//! more than the newcomer share of a client's jobs, whether the client asks directly or takes
//! claims from gossip.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{load_engine, loopback_config, tcp_addr};
use quiver_engine::llama::LlamaEngine;
use quiver_node::{InferenceRequest, Node, NodeConfig, ProviderConfig, Route};

fn provider(engine: &Arc<LlamaEngine>) -> Option<ProviderConfig> {
    // A generous rate limit: this test is about who gets the jobs, not about floods.
    Some(ProviderConfig {
        requests_per_sec: 1000,
        request_burst: 1000,
        ..ProviderConfig::new(vec![engine.clone()], 1, 4)
    })
}

async fn ask(client: &Node, i: usize, broadcast: bool) -> quiver_node::PeerId {
    ask_route(client, i, broadcast).await.0
}

/// The provider that served, and how it was found.
async fn ask_route(client: &Node, i: usize, broadcast: bool) -> (quiver_node::PeerId, Route) {
    let mut r = InferenceRequest::completion("smollm2-135m", &format!("Item {i}:"), 2);
    r.broadcast = broadcast;
    r.always_announce = broadcast;
    r.use_cache = false;
    // Long enough that a provider slowed by a busy machine still claims in time: the window
    // closes as soon as a claim has come and waiting cannot improve the choice, so it costs
    // nothing when claims are quick (500 ms lost a third of the claims on a loaded machine).
    r.claim_window = Duration::from_secs(3);
    let result =
        tokio::time::timeout(Duration::from_secs(120), client.infer(r)).await.expect("in time").expect("answered");
    (result.provider, result.route)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_fresh_identities_get_no_more_than_the_newcomer_share() {
    let _alone = crate::common::heavy().await;
    let engine = load_engine(1, 512);
    let established =
        Node::start(NodeConfig { bootstrap_node: true, provider: provider(&engine), ..loopback_config() })
            .await
            .expect("provider starts");
    let boot = tcp_addr(&established).await;
    let client =
        Node::start(NodeConfig { bootstrap_peers: vec![boot.clone()], dht_client_only: true, ..loopback_config() })
            .await
            .expect("client starts");
    assert!(client.wait_for_provider("smollm2-135m", Duration::from_secs(30)).await);
    // The established provider earns its standing with served, verified work.
    for i in 0..6 {
        assert_eq!(ask(&client, i, false).await, established.peer_id());
    }

    let mut sybils = Vec::new();
    for _ in 0..20 {
        let cfg = NodeConfig { bootstrap_peers: vec![boot.clone()], provider: provider(&engine), ..loopback_config() };
        sybils.push(Node::start(cfg).await.expect("sybil starts"));
    }
    let all_heard = tokio::time::timeout(Duration::from_secs(60), async {
        while client.known_nodes().iter().filter(|k| !k.models.is_empty()).count() < 21 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(all_heard.is_ok(), "the client did not hear all 21 providers");

    let share = quiver_node::reputation::ReputationConfig::default().newcomer_share;
    let jobs = 40;
    let mut served: HashMap<quiver_node::PeerId, usize> = HashMap::new();
    let mut claimed = 0;
    for i in 0..jobs {
        // Half the jobs asked directly (ranking), half through gossip claims.
        let (provider, route) = ask_route(&client, 100 + i, i % 2 == 0).await;
        *served.entry(provider).or_default() += 1;
        claimed += usize::from(route == Route::Claim);
    }
    // The cap must hold on the claim route itself: a claim round that failed would fall back to
    // the direct route and show nothing about claims.
    println!("jobs served through a claim: {claimed} of {} announced", jobs / 2);
    assert!(claimed * 4 >= (jobs / 2) * 3, "only {claimed} of {} announced jobs went by a claim", jobs / 2);
    let to_sybils: usize = served.iter().filter(|(p, _)| **p != established.peer_id()).map(|(_, n)| n).sum();
    println!("jobs: {jobs}, to the established provider: {}, to the 20 newcomers: {to_sybils}", jobs - to_sybils);
    // The cap is a share of all jobs this client routed (the first six included), plus one.
    let cap = (share * (jobs + 6 + 1) as f64).ceil() as usize;
    assert!(to_sybils <= cap, "newcomers got {to_sybils} of {jobs} jobs; the cap is {cap}");
    for n in sybils.iter().chain([&client, &established]) {
        n.shutdown().await;
    }
}
