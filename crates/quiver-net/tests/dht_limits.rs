//! Per-peer limits on inbound DHT requests: a peer that floods a node with lookups is refused
//! beyond its budget and reported, while another peer asking during the flood is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use quiver_net::{BootstrapAddr, Keypair, NetClient, NetConfig, NetEvent, spawn};
use tokio::sync::{mpsc, watch};

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
    // A's reports of the flooder: how many of its requests A has refused so far.
    let (refused_tx, refused) = watch::channel(0u32);
    let (flooder, _flooder_events) = start(vec![addr.to_string().parse().expect("address parses")]).await;
    let flooder_id = flooder.peer_id();
    tokio::spawn(async move {
        while let Some(event) = a_events.recv().await {
            if let NetEvent::OverLimit { peer, what: "dht", refused } = event
                && peer == flooder_id
            {
                let _ = refused_tx.send(refused);
            }
        }
    });
    let (honest, _honest_events) = start(vec![addr.to_string().parse().expect("address parses")]).await;
    connected(&flooder).await;
    connected(&honest).await;

    // The flood: 32 lookups at a time, each asking A (the only peer the flooder knows), for as
    // long as the honest peer's lookup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..32)
        .map(|w| {
            let (f, stop) = (flooder.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{w}-{i}").into_bytes();
                    let _ = tokio::time::timeout(Duration::from_secs(15), f.get_providers(key)).await;
                    i += 1;
                }
            })
        })
        .collect();
    let reported = |at_least: u32| {
        let mut refused = refused.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), refused.wait_for(|n| *n >= at_least))
                .await
                .expect("the flooder was reported in time")
                .map(|n| *n)
                .expect("A stopped")
        }
    };
    // The flooder is over its budget now, and stays over it while the honest peer asks: with
    // one budget for all peers, the honest lookup would be refused too.
    let before = reported(50).await;
    let found = tokio::time::timeout(Duration::from_secs(15), honest.get_providers(key.clone()))
        .await
        .expect("answered in time")
        .expect("lookup runs");
    let after = reported(before + 50).await;
    assert!(found.iter().any(|(p, _)| *p == a.peer_id()), "A's provider record was not found: {found:?}");
    println!("A refused {before} of the flooder's requests before the honest lookup, {after} by after it");
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("the flood stops").expect("flood task");
    }

    // Refusals leave the connection usable: once its budget refills, the flooder is answered
    // again over the same connection. (Asked again a few times: on a loaded machine the flood's
    // last requests may still be spending its budget when the first lookup goes out.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut again = Vec::new();
    for _ in 0..10 {
        again = tokio::time::timeout(Duration::from_secs(15), flooder.get_providers(key.clone()))
            .await
            .expect("answered in time")
            .expect("lookup runs");
        if again.iter().any(|(p, _)| *p == a.peer_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        again.iter().any(|(p, _)| *p == a.peer_id()),
        "the flooder is not served after its budget refilled: {again:?}"
    );
    for n in [a, flooder, honest] {
        n.shutdown().await;
    }
}
