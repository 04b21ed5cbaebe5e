//! The scenarios. Each starts a [`Cluster`](crate::Cluster), drives it, measures, stops it, and
//! returns a typed result (an [`Outcome`](crate::report::Outcome)).

pub mod churn;
pub mod dht;
pub mod gossip;
pub mod load;

use std::time::Duration;

use serde::Serialize;

use crate::{ClusterConfig, SimError};

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// DHT record lookups: peers asked, latency, greedy routing hops, routing-table sizes.
    Dht,
    /// Heartbeat gossip: delivery ratio and latency, bytes sent per node per minute.
    Gossip,
    /// Node records after a fraction of the nodes leaves.
    Churn,
    /// Requests served by several providers with the paced engine; load fairness.
    Load,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Dht => "dht",
            Scenario::Gossip => "gossip",
            Scenario::Churn => "churn",
            Scenario::Load => "load",
        }
    }
}

/// Parameters of a run; each scenario uses the ones it needs.
#[derive(Debug, Clone, Serialize)]
pub struct SimParams {
    pub cluster: ClusterConfig,
    /// DHT lookups made (dht, churn).
    pub lookups: usize,
    /// Lookups or status queries in flight at once.
    pub concurrency: usize,
    /// Routing-table size every node must reach before measuring.
    pub min_routing_table: usize,
    /// Longest wait for that.
    pub join_limit: Duration,
    /// Pause after the node records are put, before lookups.
    pub settle: Duration,
    /// Measurement window (gossip).
    pub window: Duration,
    /// Fraction of nodes stopped (churn).
    pub churn_fraction: f64,
    /// Providers with the paced engine, clients, and requests (load).
    pub providers: usize,
    pub clients: usize,
    pub requests: usize,
    pub tokens_per_sec: f64,
    pub max_tokens: u32,
    /// After the lookups (dht): wait this long without traffic, then count connections again;
    /// only connections something keeps alive remain. `None` skips it.
    pub idle_check: Option<Duration>,
}

impl SimParams {
    /// Defaults for `nodes` nodes of `scenario` with `seed`.
    pub fn new(scenario: Scenario, nodes: usize, seed: u64) -> SimParams {
        let mut cluster = ClusterConfig::for_nodes(nodes, seed);
        match scenario {
            // Heartbeats are what is measured: every few seconds, spaced so the CPU keeps up
            // (each copy of each heartbeat is signature-checked by every node).
            Scenario::Gossip => cluster.heartbeat_interval = Duration::from_secs_f64((nodes as f64 / 10.0).max(5.0)),
            // Clients learn of providers from heartbeats.
            Scenario::Load => cluster.heartbeat_interval = Duration::from_secs(5),
            Scenario::Dht | Scenario::Churn => {}
        }
        // libp2p looks at a connection's keep-alive only when something happens on it: at the
        // latest the next ping.
        let idle_check = cluster.ping_interval + cluster.idle_connection_timeout + Duration::from_secs(5);
        SimParams {
            cluster,
            lookups: nodes.clamp(20, 1000),
            concurrency: 32,
            min_routing_table: (nodes.saturating_sub(1)).min(8),
            join_limit: Duration::from_secs(300),
            settle: Duration::from_secs(3),
            window: Duration::from_secs(60),
            churn_fraction: 1.0 / 3.0,
            providers: 4,
            clients: 8,
            requests: 200,
            tokens_per_sec: 50.0,
            max_tokens: 32,
            idle_check: Some(idle_check),
        }
    }

    pub(crate) fn check(&self) -> Result<(), SimError> {
        let n = self.cluster.nodes;
        if n < 2 {
            return Err(SimError::Params("at least 2 nodes".into()));
        }
        if !(0.0..1.0).contains(&self.churn_fraction) {
            return Err(SimError::Params("the churn fraction must be in [0, 1)".into()));
        }
        Ok(())
    }
}
