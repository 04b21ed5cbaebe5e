//! QUIVer's libp2p networking.
//!
//! One [`EventLoop`](event_loop::EventLoop) task owns the libp2p `Swarm`; the rest of the code
//! talks to it through a cloneable [`NetClient`] that sends commands over a bounded channel, and
//! receives [`NetEvent`]s from a bounded channel. This crate knows peers, addresses, topics and
//! records; it knows nothing of models or HTTP.

mod behaviour;
pub mod bootstrap;
mod client;
mod config;
mod event_loop;
mod gossip_idle;
mod kad_limit;
mod lan;
mod limits;
mod metrics;
mod reachability;
mod refresh;
pub mod size;
mod transport;

pub use behaviour::NODES_TOPIC;
pub use bootstrap::{BootstrapAddr, ParseBootstrapError};
pub use client::{NetClient, NetEvent, NetStatus, PeerInfo, RecordLookup, Validation};
pub use config::{AutoNatConfig, KadMode, NetConfig, RelayLimits, TransportKind, default_listen_addrs};
pub use event_loop::{MODEL_KEY_PREFIX, NODE_RECORD_PREFIX, node_record_key, spawn};
pub use libp2p::gossipsub::MessageId;
pub use libp2p::identity::{KeyType, Keypair};
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, multiaddr::Protocol};
pub use libp2p_stream::{Control as StreamControl, OpenStreamError};
pub use limits::PeerLimiter;
pub use reachability::{Reachability, is_relayed};
pub use transport::{TCP_UPGRADE_TIMEOUT, TCP_USER_TIMEOUT};

/// The Kademlia protocol of QUIVer's private DHT (not IPFS's).
pub const KAD_PROTOCOL: &str = "/quiver/kad/1.0.0";
/// Identify protocol version string: peers announcing another one are not QUIVer nodes.
pub const IDENTIFY_PROTOCOL: &str = "/quiver/id/1.0.0";

/// Errors of the networking layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("building the transport failed: {0}")]
    Transport(String),
    #[error("invalid protocol configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the network event loop has stopped")]
    Stopped,
    #[error("publishing failed: {0}")]
    Publish(String),
    #[error("dial failed: {0}")]
    Dial(String),
}

/// Strips a trailing `/p2p/<PeerId>` from an address, returning it and the PeerId.
pub fn split_peer_id(mut addr: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}
