//! Sybil resistance: twenty fresh identities serving beside one established provider get no
//! more than the newcomer share of a client's jobs, whether the client asks directly or takes
//! claims from gossip.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{load_engine, loopback_config, tcp_addr};
use quiver_engine::llama::LlamaEngine;
use quiver_node::{InferenceRequest, Node, NodeConfig, ProviderConfig};

fn provider(engine: &Arc<LlamaEngine>) -> Option<ProviderConfig> {
    // A generous rate limit: this test is about who gets the jobs, not about floods.
    Some(ProviderConfig {
        requests_per_sec: 1000,
        request_burst: 1000,
        ..ProviderConfig::new(vec![engine.clone()], 1, 4)
    })
}

async fn ask(client: &Node, i: usize, broadcast: bool) -> quiver_node::PeerId {
    let mut r = InferenceRequest::completion("smollm2-135m", &format!("Item {i}:"), 2);
    r.broadcast = broadcast;
    r.use_cache = false;
    r.claim_window = Duration::from_millis(500);
    tokio::time::timeout(Duration::from_secs(120), client.infer(r)).await.expect("in time").expect("answered").provider
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
    for i in 0..jobs {
        // Half the jobs asked directly (ranking), half through gossip claims.
        *served.entry(ask(&client, 100 + i, i % 2 == 0).await).or_default() += 1;
    }
    let to_sybils: usize = served.iter().filter(|(p, _)| **p != established.peer_id()).map(|(_, n)| n).sum();
    println!("jobs: {jobs}, to the established provider: {}, to the 20 newcomers: {to_sybils}", jobs - to_sybils);
    // The cap is a share of all jobs this client routed (the first six included), plus one.
    let cap = (share * (jobs + 6 + 1) as f64).ceil() as usize;
    assert!(to_sybils <= cap, "newcomers got {to_sybils} of {jobs} jobs; the cap is {cap}");
    for n in sybils.iter().chain([&client, &established]) {
        n.shutdown().await;
    }
}
