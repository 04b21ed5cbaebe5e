//! Real nodes in one process on loopback: discovery through the DHT alone, heartbeats heard by
//! everyone, garbage gossip penalised, identity kept across restarts.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{eventually, loopback_config, tcp_addr};
use quiver_net::default_listen_addrs;
use quiver_node::{BootstrapAddr, NODES_TOPIC, Node, NodeConfig};

async fn start_network(n: usize) -> Vec<Node> {
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("bootstrap starts");
    let boot_addr = tcp_addr(&boot).await;
    let mut nodes = vec![boot];
    for _ in 1..n {
        let cfg = NodeConfig { bootstrap_peers: vec![boot_addr.clone()], ..loopback_config() };
        nodes.push(Node::start(cfg).await.expect("node starts"));
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_nodes_find_each_other_through_the_dht_and_hear_every_heartbeat() {
    let _shared = crate::common::light().await;
    let nodes = start_network(12).await;
    let ids: Vec<_> = nodes.iter().map(|n| n.peer_id().to_string()).collect();

    let took = eventually(Duration::from_secs(120), "every routing table holds every other node", async || {
        for (i, node) in nodes.iter().enumerate() {
            let status = node.status().await.expect("status");
            let table: HashSet<_> = status.routing_table.into_iter().collect();
            if ids.iter().enumerate().any(|(j, id)| j != i && !table.contains(id)) {
                return false;
            }
        }
        true
    })
    .await;
    println!("DHT discovery complete after {took:?}");

    let took = eventually(Duration::from_secs(60), "every node heard every other's heartbeat", async || {
        nodes.iter().enumerate().all(|(i, node)| {
            let known: HashSet<_> = node.known_nodes().into_iter().map(|k| k.peer_id.to_string()).collect();
            ids.iter().enumerate().all(|(j, id)| j == i || known.contains(id))
        })
    })
    .await;
    println!("heartbeats from all nodes heard after {took:?}");

    // What a heartbeat says is what the node is.
    let first = nodes[1].known_nodes();
    let boot = first.iter().find(|k| k.peer_id == nodes[0].peer_id()).expect("bootstrap known");
    assert_eq!(boot.agent_version, quiver_node::AGENT_VERSION);
    assert!(boot.listen_addrs.iter().any(|a| a.to_string().starts_with("/ip4/127.0.0.1/tcp/")));
    assert!(boot.cpu_load >= 0.0);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_heartbeats_lower_the_senders_score_and_honest_peers_stay() {
    let _shared = crate::common::light().await;
    let nodes = start_network(3).await;
    let (boot, honest, bad) = (&nodes[0], &nodes[1], &nodes[2]);
    eventually(Duration::from_secs(60), "bootstrap hears both", async || boot.known_nodes().len() == 2).await;

    for i in 0..3u8 {
        bad.net().publish(NODES_TOPIC, vec![0xde, 0xad, i]).await.expect("garbage is published");
    }
    eventually(Duration::from_secs(30), "bad peer's gossip score below zero at the bootstrap", async || {
        let peers = boot.peers().await.expect("peers");
        peers.iter().any(|p| p.peer_id == bad.peer_id() && p.gossip_score.is_some_and(|s| s < 0.0))
    })
    .await;
    // The honest peer is unaffected and still heard.
    let peers = boot.peers().await.expect("peers");
    let h = peers.iter().find(|p| p.peer_id == honest.peer_id()).expect("honest peer still connected");
    assert!(h.gossip_score.is_some_and(|s| s >= 0.0), "honest score {:?}", h.gossip_score);
    assert!(boot.known_nodes().iter().any(|k| k.peer_id == honest.peer_id()));
    let metrics = boot.metrics_text();
    assert!(metrics.contains("quiver_heartbeats_received_total{outcome=\"rejected\"}"), "{metrics}");
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_gossip_is_dropped_and_penalised() {
    let _shared = crate::common::light().await;
    let node = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("node starts");
    let addr = tcp_addr(&node).await;
    // A peer whose own limit lets it send far larger messages than QUIVer accepts.
    let mut registry = prometheus_client::registry::Registry::default();
    let cfg = quiver_net::NetConfig {
        listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), 0, false),
        bootstrap: vec![addr],
        gossip_max_message: 1024 * 1024,
        gossip_topic_limits: Vec::new(),
        ..quiver_net::NetConfig::default()
    };
    let (bad, _events, _task) =
        quiver_net::spawn(quiver_net::Keypair::generate_ed25519(), cfg, &mut registry).await.expect("peer starts");
    bad.subscribe(NODES_TOPIC).await.expect("subscribe");
    let bad_id = bad.peer_id();
    eventually(Duration::from_secs(30), "node sees the peer subscribed", async || {
        bad.publish(NODES_TOPIC, vec![7u8; 20 * 1024]).await.is_ok()
    })
    .await;
    eventually(Duration::from_secs(30), "oversized sender's score below zero", async || {
        // Errors are expected: the same bytes twice are a duplicate.
        let _ = bad.publish(NODES_TOPIC, vec![8u8; 20 * 1024]).await;
        let peers = node.peers().await.expect("peers");
        peers.iter().any(|p| p.peer_id == bad_id && p.gossip_score.is_some_and(|s| s < 0.0))
    })
    .await;
    assert!(node.known_nodes().is_empty());
    node.shutdown().await;
    bad.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_retrying_an_unreachable_bootstrap_peer_until_it_answers() {
    let _shared = crate::common::light().await;
    // A free port, with nobody listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let target: BootstrapAddr = format!("127.0.0.1:{port}").parse().expect("host:port");
    let joiner = Node::start(NodeConfig { bootstrap_peers: vec![target], ..loopback_config() }).await.expect("starts");
    // Several failed attempts (backoff 1 s, 2 s, ...) while the node keeps running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(joiner.status().await.expect("status").connected_peers == 0);
    let boot = Node::start(NodeConfig {
        bootstrap_node: true,
        listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), port, true),
        ..loopback_config()
    })
    .await
    .expect("bootstrap starts on the port the joiner was told");
    eventually(Duration::from_secs(60), "joiner reaches the bootstrap node once it is up", async || {
        joiner.known_nodes().iter().any(|k| k.peer_id == boot.peer_id())
            && boot.known_nodes().iter().any(|k| k.peer_id == joiner.peer_id())
    })
    .await;
    joiner.shutdown().await;
    boot.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_the_peer_id() {
    let _shared = crate::common::light().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = NodeConfig { data_dir: Some(dir.path().to_owned()), ..loopback_config() };
    let a = Node::start(cfg.clone()).await.expect("first start");
    let first = a.peer_id();
    a.shutdown().await;
    let b = Node::start(cfg).await.expect("second start");
    assert_eq!(b.peer_id(), first);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_peer_is_disconnected_and_refused_until_unblocked() {
    let _shared = crate::common::light().await;
    let nodes = start_network(2).await;
    let (boot, other) = (&nodes[0], &nodes[1]);
    let connected =
        async |a: &Node, b: &Node| a.status().await.expect("status").peers.contains(&b.peer_id().to_string());
    eventually(Duration::from_secs(30), "connected", async || connected(boot, other).await).await;
    boot.net().block(other.peer_id()).await.expect("block");
    eventually(Duration::from_secs(30), "disconnected after the ban", async || !connected(boot, other).await).await;
    // The banned peer keeps trying (the bootstrap is in its list) and is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!connected(boot, other).await, "a blocked peer got back in");
    assert!(!boot.status().await.expect("status").routing_table.contains(&other.peer_id().to_string()));
    boot.net().unblock(other.peer_id()).await.expect("unblock");
    eventually(Duration::from_secs(60), "reconnected after the ban ends", async || connected(boot, other).await).await;
    for n in &nodes {
        n.shutdown().await;
    }
}
