//! How a split model's head reaches its members: where a member is (its heartbeats, else its
//! node record in the DHT) and one info probe of it over `/quiver/shard/1`.

use std::time::{Duration, Instant};

use quiver_net::{Multiaddr, PeerId, StreamProtocol};
use quiver_proto::shard::{MAX_SHARD_FRAME_BYTES, SHARD_PROTOCOL};
use quiver_proto::{ShardHello, ShardInfo, read_frame, shard_hello, write_frame};

use crate::Node;

/// Time one probe of a member may take.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An info hello naming no model.
pub(super) fn info_hello() -> ShardHello {
    ShardHello { kind: shard_hello::Kind::Info as i32, ..ShardHello::default() }
}

/// One info probe of `peer`: what it offers, and the round trip of the exchange; `found` says
/// how it was found when it had to be looked up.
pub(super) async fn probe(
    node: &Node,
    peer: PeerId,
    hello: ShardHello,
    found: &mut Option<Found>,
) -> Result<(ShardInfo, Duration), String> {
    let exchange = async {
        if let Some(how) = reach(node, peer).await {
            *found = Some(how);
        }
        let mut stream = node
            .net()
            .streams()
            .open_stream(peer, StreamProtocol::new(SHARD_PROTOCOL))
            .await
            .map_err(|e| e.to_string())?;
        let began = Instant::now();
        write_frame(&mut stream, &hello).await.map_err(|e| e.to_string())?;
        let info: ShardInfo = read_frame(&mut stream, MAX_SHARD_FRAME_BYTES).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((info, began.elapsed()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange).await.map_err(|_| "timed out".to_string())?
}

/// How the head found where a member is, the last time it had to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// From the member's heartbeats.
    Heartbeat,
    /// From its node record in the DHT (no heartbeat of it known).
    DhtRecord,
    /// Nowhere: no heartbeat, no record.
    Nowhere,
}

impl Found {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Found::Heartbeat => "heartbeat",
            Found::DhtRecord => "dht record",
            Found::Nowhere => "nowhere",
        }
    }
}

/// Makes sure the swarm knows where `peer` is: from its heartbeats, else from its node record
/// in the DHT, and dials it. `None` when already connected (nothing to look up).
async fn reach(node: &Node, peer: PeerId) -> Option<Found> {
    if node.net().peers().await.is_ok_and(|peers| peers.iter().any(|p| p.peer_id == peer)) {
        return None;
    }
    let (found, addrs): (Found, Vec<Multiaddr>) = match node.known_node(&peer) {
        Some(known) => (Found::Heartbeat, known.listen_addrs),
        None => match node.lookup_node_record(&peer).await {
            Ok(Some(hb)) => {
                (Found::DhtRecord, hb.listen_addrs.into_iter().filter_map(|a| Multiaddr::try_from(a).ok()).collect())
            }
            _ => (Found::Nowhere, Vec::new()),
        },
    };
    if !addrs.is_empty() {
        let _ = node.net().connect(peer, addrs).await;
    }
    Some(found)
}
