//! A QUIVer node: identity, configuration, and node discovery through signed heartbeats, built
//! on the network layer of `quiver-net`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use quiver_node::{Node, NodeConfig};
//! let node = Node::start(NodeConfig {
//!     listen_addrs: vec!["/ip4/0.0.0.0/tcp/0".parse()?, "/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
//!     bootstrap_peers: vec!["bootstrap.example.org:4001".parse()?],
//!     ..NodeConfig::default()
//! })
//! .await?;
//! println!("{} knows {} nodes", node.peer_id(), node.known_nodes().len());
//! # Ok(()) }
//! ```

mod admission;
#[cfg(feature = "adversary")]
pub mod adversary;
mod builds;
mod cache;
mod client;
pub mod config;
pub mod discovery;
mod dispatch;
pub mod identity;
mod lonely;
mod metrics;
pub mod network;
mod node;
mod provider;
pub mod shard;
mod throughput;
pub mod wire;

pub use client::{
    EmbeddingRequest, EmbeddingResult, InferError, InferenceRequest, InferenceResult, InferenceStream, ReceiptInfo,
    Route, StreamEvent, Timing,
};
pub use discovery::{KnownNode, NODES_TOPIC};
pub use lonely::{NO_PEERS_LOOKING, NO_PEERS_NOT_LOOKING};
pub use metrics::{JobCounters, JobRecord, JobRole, RECENT_JOBS};
pub use node::{AGENT_VERSION, HeartbeatEvent, Node, NodeConfig, NodeError, NodeStatus, ProviderStatus};
pub use provider::{ProviderConfig, REQUEST_BURST, REQUESTS_PER_SEC};
pub use quiver_engine as engine;
pub use quiver_net::{BootstrapAddr, Multiaddr, PeerId, PeerInfo, TransportKind};
pub use quiver_proto as proto;
pub use quiver_reputation as reputation;
