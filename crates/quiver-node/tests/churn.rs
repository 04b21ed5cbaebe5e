//! Churn: 30 real nodes in one process on loopback, then a third of them shut down at once: the
//! bootstrap node, two of the three providers (one of them in the middle of a stream), and the
//! nodes closest to the keys of the records that matter (the nodes holding them). Afterwards
//! every surviving node's record still resolves through the DHT, so do the records of the nodes
//! that are gone (replicated on the closest nodes, their publisher cannot republish them), the
//! surviving provider's provider record is found, and the client's requests, those in flight
//! during the shutdowns included, all succeed on the surviving provider. Prints the times to
//! resolve (Kademlia does not report hops).
//!
//! The client runs the DHT as a client only (like `quiver ask`): it stores no one's records,
//! so every record it resolves comes from other nodes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, load_engine, loopback_config, tcp_addr};
use quiver_engine::llama::LlamaEngine;
use quiver_node::wire::{model_name_key, model_sha_key};
use quiver_node::{InferenceRequest, InferenceResult, Node, NodeConfig, PeerId, ProviderConfig, StreamEvent};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, timeout};

const NODES: usize = 30;
const KILLED: usize = 10;
const MODEL: &str = "smollm2-135m";
/// Indices in the node list: 0 the bootstrap node, 1..=3 providers, 4 the client, the rest plain.
const PROVIDERS: [usize; 3] = [1, 2, 3];
const CLIENT: usize = 4;

fn provider(engine: &Arc<LlamaEngine>) -> Option<ProviderConfig> {
    Some(ProviderConfig {
        requests_per_sec: 1000,
        request_burst: 1000,
        ..ProviderConfig::new(vec![engine.clone()], 1, 4)
    })
}

/// Kademlia's distance between a peer and a key: XOR of their SHA-256 (compared as big-endian
/// 256-bit numbers, which byte-wise comparison of the arrays is).
fn distance(peer: &PeerId, key: &[u8]) -> [u8; 32] {
    let a = Sha256::digest(peer.to_bytes());
    let b = Sha256::digest(key);
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Resolves the node record of each of `peers` from `from` (the client, or a survivor for the
/// client's own record); panics on any that does not resolve. Returns the time each took.
async fn resolve_all(from: &Node, peers: &[PeerId]) -> Vec<Duration> {
    let mut took = Vec::new();
    for peer in peers {
        took.push(resolve(from, peer).await);
    }
    took
}

/// Resolves one node record (bounded by `lookup_node_record`'s own limit) and checks it.
async fn resolve(from: &Node, peer: &PeerId) -> Duration {
    let start = Instant::now();
    let hb = from.lookup_node_record(peer).await.expect("the network runs");
    let took = start.elapsed();
    let hb = hb.unwrap_or_else(|| panic!("the node record of {peer} does not resolve"));
    assert_eq!(hb.peer_id, peer.to_bytes(), "the record names its node");
    assert!(!hb.listen_addrs.is_empty(), "the record of {peer} carries addresses");
    took
}

fn request(i: usize, max_tokens: u32) -> InferenceRequest {
    let mut r = InferenceRequest::completion(MODEL, &format!("Churn {i}: 1, 2, 3, 4,"), max_tokens);
    r.broadcast = i.is_multiple_of(2);
    r.use_cache = false;
    r.claim_window = Duration::from_millis(500);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_requests_survive_the_loss_of_a_third_of_the_network() {
    let _alone = crate::common::heavy().await;
    let test_start = Instant::now();
    let engine = load_engine(1, 512);
    // Node records are put every 4 heartbeats (2 s) instead of every 30, so the records are
    // placed on the closest nodes soon after the routing tables are complete.
    let config = || NodeConfig { node_record_every: 4, ..loopback_config() };
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..config() }).await.expect("bootstrap starts");
    let boot_addr = tcp_addr(&boot).await;
    let mut nodes = vec![boot];
    for i in 1..NODES {
        let cfg = NodeConfig {
            bootstrap_peers: vec![boot_addr.clone()],
            provider: if PROVIDERS.contains(&i) { provider(&engine) } else { None },
            dht_client_only: i == CLIENT,
            ..config()
        };
        nodes.push(Node::start(cfg).await.expect("node starts"));
    }
    let ids: Vec<PeerId> = nodes.iter().map(Node::peer_id).collect();
    let client = nodes[CLIENT].clone();

    // Every DHT server knows every other one, and the client has heard of every provider.
    let servers: Vec<usize> = (0..NODES).filter(|i| *i != CLIENT).collect();
    let took = eventually(Duration::from_secs(90), "every routing table holds every other DHT server", async || {
        for &i in &servers {
            let table: HashSet<String> = nodes[i].status().await.expect("status").routing_table.into_iter().collect();
            if servers.iter().any(|&j| j != i && !table.contains(&ids[j].to_string())) {
                return false;
            }
        }
        true
    })
    .await;
    println!("{NODES} nodes: routing tables complete after {took:?}");
    eventually(Duration::from_secs(60), "the client hears every provider", async || {
        client.known_nodes().iter().filter(|n| n.models.iter().any(|m| m.name == MODEL)).count() == PROVIDERS.len()
    })
    .await;
    // Two more record periods: every node has put its record with a complete routing table,
    // so it sits on the K closest nodes, not only on those the node knew at its start.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != ids[CLIENT]).collect();
    let before = futures::future::join_all(others.iter().map(|p| resolve(&client, p))).await;
    println!(
        "before churn: {} node records resolved by the client (all at once), median {:?}, max {:?}",
        before.len(),
        median(before.clone()),
        before.iter().max().copied().unwrap_or_default()
    );

    // A long request, streaming when the shutdowns hit: its provider is among the killed.
    let asked = Instant::now();
    let mut long = client.infer_stream(request(1, 160)).expect("valid request");
    let first = timeout(Duration::from_secs(60), long.next()).await.expect("a first token in time");
    let ttft_before = asked.elapsed();
    let Some(Ok(StreamEvent::Token(mut text))) = first else { panic!("the long request streams: {first:?}") };
    let mut busy = Vec::new();
    for &p in &PROVIDERS {
        let status = nodes[p].status().await.expect("status");
        if status.provider.is_some_and(|s| s.free_slots == 0) {
            busy.push(p);
        }
    }
    assert_eq!(busy.len(), 1, "exactly one provider serves the long request");
    let serving = busy[0];
    let survivor = PROVIDERS.iter().copied().find(|p| *p != serving).expect("another provider");
    let mut doomed: Vec<usize> = vec![0];
    doomed.extend(PROVIDERS.iter().copied().filter(|p| *p != survivor));
    // The rest of the doomed: the plain nodes closest to the keys of the records that must
    // survive (the surviving provider's provider records, its node record and the client's),
    // taken in turn, so the nodes that held those records are gone.
    let targets: Vec<Vec<u8>> = vec![
        model_name_key(MODEL),
        quiver_net::node_record_key(&ids[survivor]),
        model_sha_key(&engine_sha(&engine)),
        quiver_net::node_record_key(&ids[CLIENT]),
    ];
    let mut plain: Vec<usize> = (CLIENT + 1..NODES).collect();
    let mut t = 0;
    while doomed.len() < KILLED {
        let key = &targets[t % targets.len()];
        plain.sort_by_key(|&i| distance(&ids[i], key));
        doomed.push(plain.remove(0));
        t += 1;
    }
    let survivors: Vec<usize> = (0..NODES).filter(|i| !doomed.contains(i)).collect();
    println!(
        "killing {KILLED}: the bootstrap node, 2 providers (one streaming), and the {} nodes closest to {} record keys",
        KILLED - 3,
        targets.len()
    );

    // A short request started with the shutdowns, then the shutdowns all at once.
    let during = {
        let client = client.clone();
        tokio::spawn(async move { timeout(Duration::from_secs(120), client.infer(request(2, 8))).await })
    };
    let killed_at = Instant::now();
    futures::future::join_all(doomed.iter().map(|&i| nodes[i].shutdown())).await;
    println!("{KILLED} nodes shut down in {:?}", killed_at.elapsed());

    // The long request fails over and ends on the surviving provider, its text unbroken.
    let long: InferenceResult = timeout(Duration::from_secs(120), async {
        loop {
            match long.next().await.expect("the stream ends with a result").expect("the long request succeeds") {
                StreamEvent::Token(t) => text.push_str(&t),
                StreamEvent::Done(r) => return *r,
            }
        }
    })
    .await
    .expect("the long request ends in time");
    assert_eq!(long.text, text, "the caller saw every token once");
    assert_eq!(long.provider, ids[survivor], "the long request ends on the surviving provider");
    assert!(long.attempts >= 2, "the long request failed over: {} attempt(s)", long.attempts);
    println!(
        "in flight during the shutdowns: first token {ttft_before:?} after asking (before the churn), {} tokens, \
         {} attempts, ended {:?} after the shutdowns began",
        long.usage.completion_tokens,
        long.attempts,
        killed_at.elapsed()
    );
    let during =
        during.await.expect("task").expect("in time").expect("the request started with the shutdowns succeeds");
    println!(
        "started with the shutdowns: served by {} after {} attempt(s)",
        if during.provider == ids[survivor] { "the surviving provider" } else { "a provider before it went" },
        during.attempts
    );

    // Every survivor's node record resolves: from the client, and the client's own from a
    // survivor (the client holds its own record).
    let surviving_others: Vec<PeerId> = survivors.iter().filter(|&&i| i != CLIENT).map(|&i| ids[i]).collect();
    let after = resolve_all(&client, &surviving_others).await;
    let own = resolve_all(&nodes[survivors[survivors.len() - 1]], &[ids[CLIENT]]).await;
    println!(
        "after churn: {} node records of survivors resolved by the client, median {:?}, max {:?}; the client's own in {:?}",
        after.len(),
        median(after.clone()),
        after.iter().max().copied().unwrap_or_default(),
        own[0]
    );

    // The records of the nodes that are gone outlive their publishers: replicated, not
    // republished.
    let gone: Vec<PeerId> = doomed.iter().map(|&i| ids[i]).collect();
    let orphans = resolve_all(&client, &gone).await;
    println!(
        "records of the {} nodes that are gone still resolve: median {:?}, max {:?}",
        orphans.len(),
        median(orphans.clone()),
        orphans.iter().max().copied().unwrap_or_default()
    );

    let lookup = Instant::now();
    let providers = timeout(Duration::from_secs(30), client.net().get_providers(model_name_key(MODEL)))
        .await
        .expect("provider lookup in time")
        .expect("the network runs");
    assert!(
        providers.iter().any(|(p, _)| *p == ids[survivor]),
        "the surviving provider's provider record is found: {providers:?}"
    );
    println!("provider record of the survivor found in {:?} ({} providers listed)", lookup.elapsed(), providers.len());

    // Requests after the churn, announced and direct: all served by the surviving provider.
    let mut attempts = Vec::new();
    let mut ttft = Vec::new();
    for i in 0..10 {
        let r = timeout(Duration::from_secs(120), client.infer(request(100 + i, 8)))
            .await
            .expect("answered in time")
            .unwrap_or_else(|e| panic!("request {i} after the churn failed: {e}"));
        assert_eq!(r.provider, ids[survivor], "only the surviving provider serves");
        attempts.push(r.attempts);
        ttft.push(Duration::from_secs_f64(r.timing.ttft_ms / 1000.0));
    }
    println!(
        "10 requests after the churn (announced and direct): all served by the surviving provider, attempts \
         {attempts:?}, median time to first token {:?}",
        median(ttft)
    );
    println!("churn test took {:?}", test_start.elapsed());

    for &i in &survivors {
        nodes[i].shutdown().await;
    }
}

fn engine_sha(engine: &Arc<LlamaEngine>) -> [u8; 32] {
    use quiver_engine::Engine;
    engine.model().sha256
}
