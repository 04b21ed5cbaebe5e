//! A node joining a network of DHT servers fills its routing table and makes itself known
//! without walking every bucket through the whole network: its own-key lookup asks each peer
//! at most once and each lookup of a farther bucket short of peers asks a few, where
//! libp2p-kad's bucket walk asked about the whole network again for every bucket.

use std::time::Duration;

use prometheus_client::registry::Registry;
use quiver_net::{BootstrapAddr, KadMode, Keypair, NetClient, NetConfig, spawn};

use crate::{first_listen_addr, loopback_config};

/// Nodes in the network the late node joins (the bootstrap node among them).
const NETWORK: usize = 24;
/// Kademlia's bucket size.
const K: usize = 20;

fn server(bootstrap: Vec<BootstrapAddr>) -> NetConfig {
    NetConfig { kad_mode: KadMode::Server, ..loopback_config(bootstrap) }
}

async fn joined(net: &NetClient) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while net.dht_bootstraps() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the join's refresh finishes");
}

/// Kademlia requests the node's own queries sent, and the queries that reported them, for
/// queries of `kind` (libp2p's query type label), from its OpenMetrics text.
fn kad_requests_sent(registry: &Registry, kind: &str) -> (u64, u64) {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("metrics encode");
    let label = format!("type=\"{kind}\"");
    let read = |suffix: &str| {
        text.lines()
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (name, labels) = series.split_once('{')?;
                (name.ends_with(suffix) && labels.contains(&label)).then(|| value.parse::<f64>().ok())?
            })
            .sum::<f64>() as u64
    };
    (read("kad_query_result_num_requests_sum"), read("kad_query_result_num_requests_count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_fills_its_table_and_is_known_asking_each_peer_about_once() {
    let (first, mut first_events, _first_task) =
        spawn(Keypair::generate_ed25519(), server(Vec::new()), &mut Registry::default()).await.expect("starts");
    let boot: BootstrapAddr = first_listen_addr(&mut first_events).await.to_string().parse().expect("address parses");
    let mut network = vec![first];
    let mut tasks = Vec::new();
    for _ in 1..NETWORK {
        let (net, events, task) =
            spawn(Keypair::generate_ed25519(), server(vec![boot.clone()]), &mut Registry::default())
                .await
                .expect("starts");
        joined(&net).await;
        network.push(net);
        tasks.push((task, events));
    }

    let mut registry = Registry::default();
    let (late, _late_events, _late_task) =
        spawn(Keypair::generate_ed25519(), server(vec![boot]), &mut registry).await.expect("starts");
    joined(&late).await;
    let (own_key, _) = kad_requests_sent(&registry, "Bootstrap");
    let (buckets, bucket_lookups) = kad_requests_sent(&registry, "GetClosestPeers");

    // Its table fills to K peers (every bucket it has room in), whether by the join or by the
    // retries of a table still short of K.
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = late.status().await.expect("the late node answers");
            if status.routing_table_size >= K {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the late node's routing table reaches K peers");
    assert!(status.routing_table.iter().all(|p| network.iter().any(|n| n.peer_id() == *p)));

    // It made itself known: the peers it asked added it to their tables.
    let mut knowing = 0;
    for net in &network {
        let table = net.status().await.expect("a node answers").routing_table;
        knowing += usize::from(table.contains(&late.peer_id()));
    }
    assert!(knowing >= K / 2, "{knowing} of {NETWORK} nodes have the late node in their routing table");

    // The own-key lookup (libp2p-kad's bootstrap query, its bucket walk cut) asks each peer at
    // most once; a few more may go out in the first poll of a bootstrap libp2p-kad starts by
    // itself before it is cut. libp2p-kad's walk went on with a lookup of K answers per farther
    // bucket, each asking about the whole network again here (128 to 191 requests in all, measured).
    let own_key_bound = (NETWORK + 10) as u64;
    assert!(own_key > 0, "the join asked someone");
    assert!(
        own_key <= own_key_bound,
        "the own-key lookup sent {own_key} requests in a network of {NETWORK} (at most {own_key_bound} expected)"
    );
    // Each bucket lookup ends at 5 answers: it asks a few peers, not the network.
    assert!(
        buckets <= bucket_lookups * 20,
        "{bucket_lookups} bucket lookups sent {buckets} requests (at most 20 each expected)"
    );
    eprintln!(
        "late joiner: {own_key} requests of the own-key lookup, {buckets} of {bucket_lookups} bucket lookups, {} peers in its table, known by {knowing}",
        status.routing_table_size
    );
}
