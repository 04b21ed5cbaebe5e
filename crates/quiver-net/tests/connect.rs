//! `NetClient::connect` answers every caller: several at once for the same peer share one dial,
//! a dial that fails says so instead of leaving its caller waiting, and a caller whose addresses
//! that dial did not try gets a dial of its own.

use std::time::Duration;

use futures::future::join_all;
use prometheus_client::registry::Registry;
use quiver_net::{Keypair, Multiaddr, PeerId, spawn, split_peer_id};

use crate::{first_listen_addr, loopback_config as config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_to_one_peer_all_succeed() {
    let (a, mut a_events, _a_task) =
        spawn(Keypair::generate_ed25519(), config(Vec::new()), &mut Registry::default()).await.expect("A starts");
    let (addr, _) = split_peer_id(first_listen_addr(&mut a_events).await);
    let (b, _b_events, _b_task) =
        spawn(Keypair::generate_ed25519(), config(Vec::new()), &mut Registry::default()).await.expect("B starts");

    // Two requests to one provider at once each ask for a connection: the second must wait
    // for the first one's dial, not fail because a dial is under way.
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        join_all((0..8).map(|_| b.connect(a.peer_id(), vec![addr.clone()]))),
    )
    .await
    .expect("every caller is answered");
    for (i, r) in results.into_iter().enumerate() {
        assert!(r.is_ok(), "connect {i} failed: {r:?}");
    }
    let status = b.status().await.expect("B answers");
    assert!(status.connected_peers.contains(&a.peer_id()), "B is connected to A: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dial_answers_every_caller() {
    // A port on loopback that nobody listens on (bound, then freed).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let nowhere: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("address parses");
    let (b, _b_events, _b_task) =
        spawn(Keypair::generate_ed25519(), config(Vec::new()), &mut Registry::default()).await.expect("B starts");
    let ghost = PeerId::random();
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        join_all((0..3).map(|_| b.connect(ghost, vec![nowhere.clone()]))),
    )
    .await
    .expect("a failed dial is reported, not left waiting");
    for (i, r) in results.into_iter().enumerate() {
        assert!(r.is_err(), "connect {i} to a closed port succeeded");
    }
    // Nothing stays behind: a later connect dials afresh and fails the same way.
    let again = tokio::time::timeout(Duration::from_secs(30), b.connect(ghost, vec![nowhere])).await;
    assert!(matches!(again, Ok(Err(_))), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_good_address_is_not_failed_by_a_dial_to_a_stale_one() {
    let (a, mut a_events, _a_task) =
        spawn(Keypair::generate_ed25519(), config(Vec::new()), &mut Registry::default()).await.expect("A starts");
    let (addr, _) = split_peer_id(first_listen_addr(&mut a_events).await);
    // Where A is not (any more): something that takes TCP connections and never answers, so a
    // dial there is still under way when the second caller asks, and fails only on the upgrade
    // timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = silent.local_addr().expect("address").port();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let stale: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("address parses");
    let (b, _b_events, _b_task) =
        spawn(Keypair::generate_ed25519(), config(Vec::new()), &mut Registry::default()).await.expect("B starts");

    // The first caller's dial (to a stale address, as a DHT entry from before a restart would
    // be) is under way when the second caller, with A's real address, asks: the second waits for
    // that dial, and when it fails its own address is dialed. Before, both failed with the first.
    let (stale_caller, fresh_caller) = tokio::time::timeout(
        quiver_net::TCP_UPGRADE_TIMEOUT + Duration::from_secs(30),
        futures::future::join(b.connect(a.peer_id(), vec![stale]), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.connect(a.peer_id(), vec![addr]).await
        }),
    )
    .await
    .expect("both callers are answered");
    assert!(fresh_caller.is_ok(), "the caller with A's address failed: {fresh_caller:?}");
    assert!(stale_caller.is_ok(), "A is connected, so the first caller's connect succeeds too: {stale_caller:?}");
    let status = b.status().await.expect("B answers");
    assert!(status.connected_peers.contains(&a.peer_id()), "B is connected to A: {status:?}");
}
