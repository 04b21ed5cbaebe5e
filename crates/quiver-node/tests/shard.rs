//! A split model's head finds a member it has no heartbeat of and no connection to through the
//! member's node record in the DHT, reaches it and probes it. (The split itself, loaded and
//! serving, runs across processes in `quiver-cli`'s `split` process test.)

use std::time::Duration;

use crate::common::{eventually, light, loopback_config, tcp_addr};
use quiver_node::engine::{ModelId, models};
use quiver_node::shard::{ShardHead, ShardHeadConfig, ShardHostConfig};
use quiver_node::{Node, NodeConfig, ProviderConfig};

/// A member serving the heads `allow`, its cache and models under `dir`.
fn member_config(allow: Vec<quiver_node::PeerId>, dir: &std::path::Path) -> ShardHostConfig {
    ShardHostConfig { allow, cache_dir: dir.join("member-cache"), threads: 1, models_dir: dir.join("member-models") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_finds_a_member_known_only_by_its_dht_record() {
    let _shared = light().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let head_dir = dir.path().join("head");
    let head_id = quiver_node::identity::load_or_create(&head_dir).expect("head key").public().to_peer_id();
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("boot starts");
    let boot_addr = tcp_addr(&boot).await;

    // The member: one heartbeat, at its start (before the head exists); no DHT walks of its own
    // that could dial the head; a DHT client, in no one's routing table, so the head's walks
    // never dial it either.
    let quiet = Duration::from_secs(3600);
    let member = Node::start(NodeConfig {
        bootstrap_peers: vec![boot_addr.clone()],
        dht_client_only: true,
        heartbeat_interval: quiet,
        random_walk_interval: quiet,
        kad_bootstrap_interval: quiet,
        shard_host: Some(member_config(vec![head_id], dir.path())),
        ..loopback_config()
    })
    .await
    .expect("member starts");
    eventually(Duration::from_secs(30), "the member's node record is stored on the DHT", async || {
        member.publish_node_record().await.unwrap_or(false)
    })
    .await;

    let model_dir = std::env::var("QUIVER_MODEL_DIR")
        .unwrap_or_else(|_| format!("{}/../../target/models", env!("CARGO_MANIFEST_DIR")));
    let path = std::path::Path::new(&model_dir).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let layout = models::gguf_layout(&path).expect("the default model's layout");
    let sha256 = models::sha256_file(&path, &mut |_, _| {}).expect("hash");
    let head = ShardHead::new(ShardHeadConfig {
        path: path.clone(),
        id: ModelId { name: "smollm2-135m".into(), gguf_name: "smollm2-135m".into(), sha256 },
        blocks: layout.offloadable_layers().saturating_sub(1),
        file_bytes: layout.file_bytes,
        members: vec![member.peer_id()],
        weights: None,
        threads: 1,
        context_size: 512,
        slots: 1,
        // Finding members comes before loading; no engine worker is needed to show it (the
        // load fails, and is retried, without one).
        worker_program: dir.path().join("no-engine-worker-here"),
        load_timeout: Duration::from_secs(10),
    });
    let engines = vec![head.engine()];
    let node = Node::start(NodeConfig {
        bootstrap_peers: vec![boot_addr],
        data_dir: Some(head_dir),
        provider: Some(ProviderConfig { shard_head: Some(head), ..ProviderConfig::new(engines, 1, 4) }),
        ..loopback_config()
    })
    .await
    .expect("head starts");
    assert_eq!(node.peer_id(), head_id);

    eventually(Duration::from_secs(90), "the head finds the member through its DHT record and probes it", async || {
        let status = node.status().await.expect("status");
        let Some(m) = status.shard_head.and_then(|h| h.members.into_iter().next()) else { return false };
        m.up && m.found_by.as_deref() == Some("dht record")
    })
    .await;
    let status = node.status().await.expect("status");
    let m = &status.shard_head.expect("a head").members[0];
    assert!(m.rtt_ms.is_some() && m.memory_available.is_some_and(|b| b > 0), "the member answered its probe: {m:?}");
    assert!(node.known_node(&member.peer_id()).is_none(), "the head never heard a heartbeat of the member");
}

/// Opens an RPC tunnel from `head` to `member` and says HELLO to the RPC server behind it;
/// returns the stream (kept open) and the protocol major version the server answered.
async fn rpc_hello(head: &Node, member: quiver_node::PeerId) -> (quiver_net::Stream, u8) {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use quiver_node::engine::split::wire;
    use quiver_node::proto::{ShardHello, shard::SHARD_PROTOCOL, shard_hello, write_frame};

    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        head.net().streams().open_stream(member, quiver_net::StreamProtocol::new(SHARD_PROTOCOL)),
    )
    .await
    .expect("opened in time")
    .expect("the member accepts the stream");
    write_frame(&mut stream, &ShardHello { kind: shard_hello::Kind::Rpc as i32, ..ShardHello::default() })
        .await
        .expect("hello sent");
    stream.write_all(&wire::hello_request()).await.expect("RPC HELLO sent");
    stream.flush().await.expect("flushed");
    let mut head_bytes = [0u8; wire::RESPONSE_HEADER];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head_bytes))
        .await
        .expect("the RPC server answers in time")
        .expect("an answer");
    let size = wire::response_size(&head_bytes).expect("a size") as usize;
    assert!(size >= 1 && size <= 64, "a HELLO answer of {size} bytes");
    let mut answer = vec![0u8; size];
    stream.read_exact(&mut answer).await.expect("the answer's payload");
    let mut frame = head_bytes.to_vec();
    frame.extend_from_slice(&answer);
    (stream, wire::hello_major(&frame).expect("a version"))
}

/// ggml's RPC server serves one client at a time; a member gives each of its heads a server of
/// its own, so two heads are both answered while both hold their connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_serves_each_of_its_heads_at_once() {
    let _shared = light().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let boot = Node::start(NodeConfig { bootstrap_node: true, ..loopback_config() }).await.expect("boot starts");
    let boot_addr = tcp_addr(&boot).await;
    let mut heads = Vec::new();
    for name in ["h1", "h2"] {
        let cfg = NodeConfig {
            bootstrap_peers: vec![boot_addr.clone()],
            data_dir: Some(dir.path().join(name)),
            ..loopback_config()
        };
        heads.push(Node::start(cfg).await.expect("head starts"));
    }
    let member = Node::start(NodeConfig {
        bootstrap_peers: vec![boot_addr],
        shard_host: Some(member_config(heads.iter().map(Node::peer_id).collect(), dir.path())),
        ..loopback_config()
    })
    .await
    .expect("member starts");
    for head in &heads {
        let addrs = member.listen_addrs().borrow().clone();
        head.net().connect(member.peer_id(), addrs).await.expect("the head reaches the member");
    }
    let (first, major) = rpc_hello(&heads[0], member.peer_id()).await;
    assert_eq!(major, quiver_node::engine::split::wire::PROTO_MAJOR);
    // The first head's connection is still open: the second is answered all the same.
    let (second, major) = rpc_hello(&heads[1], member.peer_id()).await;
    assert_eq!(major, quiver_node::engine::split::wire::PROTO_MAJOR);
    let status = member.status().await.expect("status").shard_host.expect("a member");
    assert_eq!(status.tunnels, 2, "both tunnels open at once: {status:?}");
    drop((first, second));
}
