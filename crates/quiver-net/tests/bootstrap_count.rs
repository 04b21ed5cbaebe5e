//! A node joining through a bootstrap peer reports the Kademlia bootstrap it finished, through the
//! client's counter read and through its status alike; the simulator paces joins on this figure.

use std::time::Duration;

use prometheus_client::registry::Registry;
use quiver_net::{Keypair, spawn};

use crate::{first_listen_addr, loopback_config as config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_counts_its_finished_bootstrap() {
    let (a, mut a_events, _a_task) =
        spawn(Keypair::generate_ed25519(), config(Vec::new()), &mut Registry::default()).await.expect("A starts");
    let addr = first_listen_addr(&mut a_events).await;

    let mut registry = Registry::default();
    let bootstrap = vec![addr.to_string().parse().expect("address parses")];
    let (b, _b_events, _b_task) =
        spawn(Keypair::generate_ed25519(), config(bootstrap), &mut registry).await.expect("B starts");
    tokio::time::timeout(Duration::from_secs(30), async {
        while b.dht_bootstraps() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("B finishes a bootstrap through A");

    let status = b.status().await.expect("B answers");
    assert!(status.routing_table.contains(&a.peer_id()), "A is in B's routing table after the bootstrap");
    assert!(status.dht_bootstraps >= 1);
    assert!(status.dht_bootstraps <= b.dht_bootstraps(), "the counter only grows");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics encode");
    let exported = text
        .lines()
        .find_map(|l| l.strip_prefix("quiver_dht_bootstraps_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the counter is exported");
    assert!(exported >= status.dht_bootstraps, "the exported counter is the one read");
}
