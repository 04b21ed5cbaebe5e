//! The node's own Prometheus metrics (libp2p's are registered beside them by quiver-net).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum JobOutcome {
    Served,
    Failed,
    Busy,
    Invalid,
    RateLimited,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Default)]
pub(crate) struct NodeMetrics {
    /// Jobs this node served as a provider, by outcome.
    pub jobs: Family<JobLabel, Counter>,
    pub tokens_generated: Counter,
    /// Requests this node made as a client, by outcome.
    pub requests: Family<RequestLabel, Counter>,
    pub known_nodes: Gauge,
    pub connected_peers: Gauge,
    pub heartbeats_published: Counter,
    pub heartbeats_received: Family<OutcomeLabel, Counter>,
}

impl NodeMetrics {
    pub fn register(registry: &mut Registry, start_unix_secs: i64) -> Self {
        let m = NodeMetrics::default();
        let q = registry.sub_registry_with_prefix("quiver");
        q.register("known_nodes", "Nodes heard of through heartbeats and not expired", m.known_nodes.clone());
        q.register("connected_peers", "Peers with at least one open connection", m.connected_peers.clone());
        q.register("heartbeats_published", "Heartbeats this node published", m.heartbeats_published.clone());
        q.register(
            "heartbeats_received",
            "Heartbeats received by gossip, by outcome (accepted, stale, rejected)",
            m.heartbeats_received.clone(),
        );
        q.register("provider_jobs", "Inference jobs handled as a provider, by outcome", m.jobs.clone());
        q.register("tokens_generated", "Tokens generated for the network", m.tokens_generated.clone());
        q.register("client_requests", "Inference requests made as a client, by outcome", m.requests.clone());
        q.register("build", "Version of this node", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        let start: Gauge = Gauge::default();
        start.set(start_unix_secs);
        registry.register("process_start_time_seconds", "Start time of the process since the Unix epoch", start);
        m
    }

    pub fn job(&self, outcome: JobOutcome) {
        let outcome = match outcome {
            JobOutcome::Served => "served",
            JobOutcome::Failed => "failed",
            JobOutcome::Busy => "busy",
            JobOutcome::Invalid => "invalid",
            JobOutcome::RateLimited => "rate_limited",
        };
        self.jobs.get_or_create(&JobLabel { outcome }).inc();
    }
}
