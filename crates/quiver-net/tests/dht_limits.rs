//! Per-peer limits on inbound DHT requests: a peer that floods a node with lookups is refused
//! beyond its budget and reported, while another peer is still answered.

use std::time::Duration;

use prometheus_client::registry::Registry;
use quiver_net::{BootstrapAddr, Keypair, NetClient, NetConfig, NetEvent, spawn};
use tokio::sync::mpsc;

use crate::{first_listen_addr, loopback_config};

/// A loopback node with a small DHT request budget.
fn config(bootstrap: Vec<BootstrapAddr>) -> NetConfig {
    NetConfig { dht_requests_per_sec: 2, dht_request_burst: 10, ..loopback_config(bootstrap) }
}

async fn start(bootstrap: Vec<BootstrapAddr>) -> (NetClient, mpsc::Receiver<NetEvent>) {
    let (net, events, _task) =
        spawn(Keypair::generate_ed25519(), config(bootstrap), &mut Registry::default()).await.expect("starts");
    (net, events)
}

async fn connected(net: &NetClient) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while net.status().await.map(|s| s.connected_peers.is_empty()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("connected to the bootstrap peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dht_flooder_is_refused_and_reported_while_others_are_answered() {
    let (a, mut a_events) = start(Vec::new()).await;
    let addr = first_listen_addr(&mut a_events).await;
    let key = [quiver_net::MODEL_KEY_PREFIX, b"name/demo"].concat();
    a.start_providing(key.clone()).await.expect("providing");

    let (flooder, _flooder_events) = start(vec![addr.to_string().parse().expect("address parses")]).await;
    connected(&flooder).await;
    // 120 lookups at once; each asks A, the only peer the flooder knows.
    let lookups = (0..120).map(|i| {
        let f = flooder.clone();
        async move { tokio::time::timeout(Duration::from_secs(15), f.get_providers(format!("k{i}").into_bytes())).await }
    });
    futures::future::join_all(lookups).await;
    let reported = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match a_events.recv().await {
                Some(NetEvent::OverLimit { peer, what, refused }) if peer == flooder.peer_id() => {
                    return (what, refused);
                }
                Some(_) => {}
                None => panic!("A stopped"),
            }
        }
    })
    .await
    .expect("the flooder was reported");
    assert_eq!(reported.0, "dht");
    assert!(reported.1 >= 50);

    // Refusals leave the connection usable: once its budget refills, the flooder is answered
    // again over the same connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = tokio::time::timeout(Duration::from_secs(15), flooder.get_providers(key.clone()))
        .await
        .expect("answered in time")
        .expect("lookup runs");
    assert!(
        again.iter().any(|(p, _)| *p == a.peer_id()),
        "the flooder is not served after its budget refilled: {again:?}"
    );

    // Another peer has its own budget: its lookup is answered.
    let (honest, _honest_events) = start(vec![addr.to_string().parse().expect("address parses")]).await;
    connected(&honest).await;
    let found = tokio::time::timeout(Duration::from_secs(15), honest.get_providers(key))
        .await
        .expect("answered in time")
        .expect("lookup runs");
    assert!(found.iter().any(|(p, _)| *p == a.peer_id()), "A's provider record was not found: {found:?}");
    for n in [a, flooder, honest] {
        n.shutdown().await;
    }
}
