//! `quiver-sim`: many real QUIVer nodes in one process, over libp2p's memory transport.
//!
//! Every simulated node is a [`quiver_node::Node`], the same code a `quiver node` process runs:
//! the same swarm and behaviours (Kademlia, GossipSub, Identify, Ping, the stream protocols,
//! connection and request limits), the same Noise and yamux upgrade, the same heartbeats, node
//! records, provider and client roles. What differs is the transport (`/memory/<n>` instead of
//! TCP and QUIC, [`quiver_net::TransportKind::Memory`]) and the periods of some timers
//! ([`ClusterConfig`]), which are ordinary `NodeConfig` fields set for a run of hundreds of
//! nodes on two cores. On the memory transport a node runs no AutoNAT probes (a dial-back needs
//! an IP address; in one process everyone can dial everyone). For the largest runs
//! `--security plaintext` ([`cluster::Security`], [`quiver_net::TransportKind::MemoryPlaintext`])
//! replaces Noise with libp2p's plaintext handshake: identities are still exchanged and checked,
//! nothing is encrypted. The binary uses mimalloc as its allocator, and the nodes are dealt
//! over single-threaded runtimes, one per core ([`runtimes::NodeRuntimes`]).
//!
//! The one stand-in is the model: [`engine::PacedEngine`] is a real
//! [`quiver_engine::Engine`] that emits deterministic tokens at a set rate. It is used where a
//! real model's cost would hide what is measured (the load scenario runs several providers on
//! the same two cores); everything around it — admission, queues, claims, rate limits, signed
//! receipts and their verification by the client — is the real provider and client code.
//!
//! Scenarios ([`scenario`]): `dht` (lookup cost and latency, routing tables), `gossip`
//! (heartbeat delivery and latency, bytes sent), `churn` (node records after a part of the
//! network leaves), `load` (requests spread over providers). Each returns a typed result that
//! [`report::Report`] writes as JSON and as a Markdown table with the same numbers. The seed
//! fixes the node keys (so the DHT layout), which nodes churn, which keys are looked up and
//! which client asks; timing still varies from run to run.

pub mod cluster;
pub mod engine;
pub mod report;
pub mod runtimes;
pub mod scenario;
pub mod stats;

pub use cluster::{Cluster, ClusterConfig};
pub use scenario::{Scenario, SimParams};

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("setting up the simulation failed: {0}")]
    Setup(String),
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error("writing the report failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding the report failed: {0}")]
    Json(#[from] serde_json::Error),
}
