//! The relay service's per-circuit limits hold end to end: real nodes on 127.0.0.1 (TCP), a
//! relay, a node that listens only through it, and a node that reaches that one only through the
//! relay. A circuit that carries more than `max_circuit_bytes`, or lives longer than
//! `max_circuit_duration`, is cut by the relay, which counts why
//! (`quiver_relay_service_circuits_closed_total{reason}`).
//!
//! Neither end listens on a direct address, so a DCUtR hole punch has nothing to reach and the
//! connection stays relayed (on loopback a punch would otherwise succeed at once).

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use prometheus_client::registry::Registry;
use quiver_net::{
    KadMode, Keypair, Multiaddr, NetClient, NetConfig, NetEvent, PeerId, Protocol, RelayLimits, Stream, StreamProtocol,
    default_listen_addrs, spawn,
};
use tokio::sync::mpsc;

use crate::metric_lines;

const BULK: StreamProtocol = StreamProtocol::new("/quiver-test/bulk/1");
/// Bound on every wait for the network.
const WAIT: Duration = Duration::from_secs(30);

struct TestNode {
    net: NetClient,
    events: mpsc::Receiver<NetEvent>,
    registry: Registry,
}

async fn start(cfg: NetConfig) -> TestNode {
    let mut registry = Registry::default();
    let (net, events, _task) = spawn(Keypair::generate_ed25519(), cfg, &mut registry).await.expect("starts");
    TestNode { net, events, registry }
}

impl TestNode {
    /// The first address announced that satisfies `want`.
    async fn address(&mut self, what: &str, want: impl Fn(&Multiaddr) -> bool) -> Multiaddr {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(NetEvent::NewListenAddr(a)) if want(&a) => return a,
                    Some(_) => {}
                    None => panic!("the node stopped before {what}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
    }

    async fn connected_to(&self, peer: PeerId) -> bool {
        let peers = tokio::time::timeout(WAIT, self.net.peers()).await.expect("peers in time").expect("peers");
        peers.iter().any(|p| p.peer_id == peer)
    }

    /// The circuits this relay closed, by reason, once it has closed one (the count may come a
    /// moment after the circuit's ends see it end).
    async fn circuits_closed(&self) -> Vec<String> {
        tokio::time::timeout(WAIT, async {
            loop {
                let closed = metric_lines(&self.registry, "quiver_relay_service_circuits_closed_total");
                if !closed.is_empty() {
                    return closed;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the relay counted the circuit it closed")
    }
}

/// A relay with `limits`, a node `target` reserved on it (listening nowhere else), and a node
/// `source` connected to `target` through the relay with a stream open to it.
struct Relayed {
    relay: TestNode,
    source: TestNode,
    target: TestNode,
    /// `source`'s end of the stream.
    out: Stream,
    /// `target`'s end.
    inbound: Stream,
}

impl Relayed {
    async fn start(limits: RelayLimits) -> Relayed {
        let mut relay = start(NetConfig {
            kad_mode: KadMode::Server,
            relay_service: true,
            relay_limits: limits,
            listen_addrs: default_listen_addrs([127, 0, 0, 1].into(), 0, false),
            ..NetConfig::default()
        })
        .await;
        let relay_id = relay.net.peer_id();
        let relay_addr =
            relay.address("the relay's TCP address", |a| a.iter().any(|p| matches!(p, Protocol::Tcp(_)))).await;

        // The target listens only through the relay: a reservation, no socket of its own.
        let mut target = start(NetConfig {
            kad_mode: KadMode::Client,
            listen_addrs: vec![relay_addr.with(Protocol::P2pCircuit)],
            ..NetConfig::default()
        })
        .await;
        let target_id = target.net.peer_id();
        let circuit = target.address("a relayed address", |a| a.iter().any(|p| p == Protocol::P2pCircuit)).await;
        assert!(circuit.to_string().contains(&relay_id.to_string()), "reserved on our relay: {circuit}");
        let mut incoming = target.net.streams().accept(BULK).expect("accepts the test protocol once");

        // The source dials the target's relayed address and listens nowhere.
        let source =
            start(NetConfig { kad_mode: KadMode::Client, listen_addrs: Vec::new(), ..NetConfig::default() }).await;
        tokio::time::timeout(WAIT, source.net.connect(target_id, vec![circuit]))
            .await
            .expect("connects in time")
            .expect("connects through the relay");
        let peers = source.net.peers().await.expect("peers");
        let to_target = peers.iter().find(|p| p.peer_id == target_id).expect("connected to the target");
        assert!(to_target.relayed && !to_target.direct, "through the relay only: {to_target:?}");

        let out = tokio::time::timeout(WAIT, source.net.streams().open_stream(target_id, BULK))
            .await
            .expect("stream opens in time")
            .expect("stream opens over the circuit");
        let (from, inbound) = tokio::time::timeout(WAIT, incoming.next())
            .await
            .expect("stream arrives in time")
            .expect("an inbound stream");
        assert_eq!(from, source.net.peer_id());
        Relayed { relay, source, target, out, inbound }
    }
}

/// Waits until `source`'s relayed connection to `target` is gone.
async fn wait_disconnected(source: &TestNode, target: &TestNode) {
    let target = target.net.peer_id();
    tokio::time::timeout(WAIT, async {
        while source.connected_to(target).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the cut circuit's connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_cut_after_its_byte_limit() {
    const LIMIT: u64 = 64 * 1024;
    const SENT: usize = 1024 * 1024;
    let limits = RelayLimits { max_circuit_bytes: LIMIT, ..RelayLimits::default() };
    let Relayed { relay, source, target, mut out, mut inbound } = Relayed::start(limits).await;

    // Read everything the target gets until the circuit ends, telling the writer what arrived.
    let (arrived_tx, mut arrived) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut total = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match inbound.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => {
                    total += n;
                    let _ = arrived_tx.send(total);
                }
            }
        }
    });
    // Send 16 times the limit; the writes fail once the relay cuts the circuit. The first chunk
    // is read at the target before the rest is sent: data the target had not read yet when the
    // circuit was cut is lost with the connection, so on a busy machine a burst could be cut
    // with nothing read at all.
    let chunk = vec![7u8; 8 * 1024];
    out.write_all(&chunk).await.expect("the first chunk is written");
    out.flush().await.expect("the first chunk is flushed");
    tokio::time::timeout(WAIT, arrived.wait_for(|n| *n > 0))
        .await
        .expect("the first chunk arrives in time")
        .expect("the reader is running");
    let written = tokio::time::timeout(WAIT, async {
        let mut written = chunk.len();
        while written < SENT {
            if out.write_all(&chunk).await.is_err() || out.flush().await.is_err() {
                break;
            }
            written += chunk.len();
        }
        written
    })
    .await
    .expect("the writer finishes or fails in time");
    let received = tokio::time::timeout(WAIT, reader).await.expect("the reader ends in time").expect("reader task");
    println!("sent {written} bytes into the circuit, {received} arrived (limit {LIMIT} bytes per circuit)");
    assert!(received > 0, "the circuit carried data before it was cut");
    assert!(
        (received as u64) < LIMIT,
        "no more than the circuit's byte limit crosses the relay: {received} bytes arrived"
    );
    // The relay cut it for its byte limit, and the relayed connection is gone.
    assert_eq!(relay.circuits_closed().await, [r#"quiver_relay_service_circuits_closed_total{reason="byte_limit"} 1"#]);
    wait_disconnected(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_cut_after_its_time_limit() {
    const LIMIT: Duration = Duration::from_secs(2);
    let limits = RelayLimits { max_circuit_duration: LIMIT, ..RelayLimits::default() };
    let Relayed { relay, source, target, mut out, mut inbound } = Relayed::start(limits).await;

    // A trickle, far below any byte limit, keeps the stream busy until the relay ends it.
    let writer = tokio::spawn(async move {
        loop {
            if out.write_all(b"x").await.is_err() || out.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let received = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 64];
        let mut received = 0usize;
        loop {
            match inbound.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received += n,
            }
        }
    })
    .await
    .expect("the relay ends the circuit");
    writer.abort();
    assert!(received > 0, "the circuit carried the trickle before it ended");
    // The relay ended it for its time limit: not for bytes, not because an end closed or failed.
    assert_eq!(
        relay.circuits_closed().await,
        [r#"quiver_relay_service_circuits_closed_total{reason="duration_limit"} 1"#]
    );
    wait_disconnected(&source, &target).await;
}
