//! The node's own Prometheus metrics (libp2p's are registered beside them by quiver-net), and
//! the ring of recent jobs the status page shows.
//!
//! Names follow Prometheus' conventions: a `quiver_` prefix, units in the name (`_seconds`),
//! counters ending in `_total` (the encoder appends it). Gauges that mirror state held elsewhere
//! (routing table, queue, reputation) are read at scrape time by [`Node::refresh_metrics`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::discovery::now_ms;
use crate::node::Node;

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
    /// The client went away before the end: generation stopped.
    Cancelled,
}

impl JobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Served => "served",
            JobOutcome::Failed => "failed",
            JobOutcome::Busy => "busy",
            JobOutcome::Invalid => "invalid",
            JobOutcome::RateLimited => "rate_limited",
            JobOutcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabel {
    pub topic: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GatewayLabel {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenKindLabel {
    pub kind: &'static str,
}

/// Most jobs kept in the recent-jobs ring.
pub const RECENT_JOBS: usize = 100;

/// Which side of a job this node was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobRole {
    /// This node asked the network (for `quiver ask`, the gateway, or the library).
    Client,
    /// This node generated the answer.
    Provider,
}

/// One finished job, as the status page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// When it ended, Unix milliseconds.
    pub finished_ms: u64,
    pub role: JobRole,
    pub model: String,
    /// The other side: the provider (client role) or the client (provider role).
    pub peer: Option<String>,
    /// `ok`/`served`, or why it did not end well.
    pub outcome: String,
    pub completion_tokens: u32,
    /// Until the first token; `None` when no token came.
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    /// Completion tokens per second after the first token.
    pub tokens_per_sec: f64,
}

/// The scores of known peers, encoded as a histogram on each scrape.
#[derive(Debug, Default)]
struct ReputationScores(Mutex<Vec<f64>>);

impl Collector for ReputationScores {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = Histogram::new(linear_buckets(0.1, 0.1, 10));
        for s in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.observe(*s);
        }
        let m = encoder.encode_descriptor(
            "peer_reputation_score",
            "Reputation scores (0 to 1) of the peers this node has a record of",
            None,
            h.metric_type(),
        )?;
        h.encode(m)
    }
}

#[derive(Clone)]
pub(crate) struct NodeMetrics {
    /// Jobs this node served as a provider, by outcome.
    pub jobs: Family<JobLabel, Counter>,
    pub tokens_generated: Counter,
    /// Prompt tokens of served jobs, and those of them the engine took from its prompt cache.
    prompt_tokens: Counter,
    prompt_tokens_cached: Counter,
    /// Requests this node made as a client, by outcome.
    pub requests: Family<RequestLabel, Counter>,
    pub known_nodes: Gauge,
    pub connected_peers: Gauge,
    pub heartbeats_published: Counter,
    pub heartbeats_received: Family<OutcomeLabel, Counter>,
    pub gossip_received: Family<TopicLabel, Counter>,
    routing_table: Gauge,
    /// DHT servers in the network: the median of this node's estimate and those in heartbeats
    /// (0: unknown); this node's own estimate alone is `quiver_network_size_estimate`.
    network_size: Gauge,
    queue_depth: Gauge,
    free_slots: Gauge,
    banned_peers: Gauge,
    provider_ttft: Histogram,
    provider_duration: Histogram,
    client_ttft: Histogram,
    client_duration: Histogram,
    client_tokens: Counter,
    gateway_requests: Family<GatewayLabel, Counter>,
    gateway_tokens: Family<TokenKindLabel, Counter>,
    gateway_in_flight: Gauge,
    reputation: Arc<ReputationScores>,
    recent: Arc<Mutex<VecDeque<JobRecord>>>,
}

/// Seconds, for latency histograms: 10 ms to about 80 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 14)
}

impl NodeMetrics {
    pub fn register(registry: &mut Registry, start_unix_secs: i64) -> Self {
        let m = NodeMetrics {
            jobs: Family::default(),
            tokens_generated: Counter::default(),
            prompt_tokens: Counter::default(),
            prompt_tokens_cached: Counter::default(),
            requests: Family::default(),
            known_nodes: Gauge::default(),
            connected_peers: Gauge::default(),
            heartbeats_published: Counter::default(),
            heartbeats_received: Family::default(),
            gossip_received: Family::default(),
            routing_table: Gauge::default(),
            network_size: Gauge::default(),
            queue_depth: Gauge::default(),
            free_slots: Gauge::default(),
            banned_peers: Gauge::default(),
            provider_ttft: Histogram::new(latency_buckets()),
            provider_duration: Histogram::new(latency_buckets()),
            client_ttft: Histogram::new(latency_buckets()),
            client_duration: Histogram::new(latency_buckets()),
            client_tokens: Counter::default(),
            gateway_requests: Family::default(),
            gateway_tokens: Family::default(),
            gateway_in_flight: Gauge::default(),
            reputation: Arc::default(),
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_JOBS))),
        };
        let q = registry.sub_registry_with_prefix("quiver");
        q.register("known_nodes", "Nodes heard of through heartbeats and not expired", m.known_nodes.clone());
        q.register("connected_peers", "Peers with at least one open connection", m.connected_peers.clone());
        q.register("dht_routing_table_peers", "Peers in the Kademlia routing table", m.routing_table.clone());
        q.register(
            "network_size",
            "DHT servers in the network: median of this node's estimate and those heard in heartbeats (0: unknown)",
            m.network_size.clone(),
        );
        q.register("heartbeats_published", "Heartbeats this node published", m.heartbeats_published.clone());
        q.register(
            "heartbeats_received",
            "Heartbeats received by gossip, by outcome (accepted, stale, rejected)",
            m.heartbeats_received.clone(),
        );
        q.register(
            "gossip_messages_received",
            "GossipSub messages received, by topic kind (nodes, infer, reputation, other)",
            m.gossip_received.clone(),
        );
        q.register("provider_jobs", "Inference jobs handled as a provider, by outcome", m.jobs.clone());
        q.register("tokens_generated", "Tokens generated for the network", m.tokens_generated.clone());
        q.register("provider_prompt_tokens", "Prompt tokens of jobs served as a provider", m.prompt_tokens.clone());
        q.register(
            "provider_prompt_tokens_cached",
            "Prompt tokens of served jobs that the engine's prompt cache held (not decoded again)",
            m.prompt_tokens_cached.clone(),
        );
        q.register("provider_queue_depth", "Jobs waiting for a slot at this provider", m.queue_depth.clone());
        q.register("provider_free_slots", "Job slots free at this provider", m.free_slots.clone());
        q.register(
            "provider_time_to_first_token_seconds",
            "Time from accepting a job to its first generated token, as a provider",
            m.provider_ttft.clone(),
        );
        q.register(
            "provider_job_duration_seconds",
            "Time from accepting a job to its last token, as a provider (served jobs)",
            m.provider_duration.clone(),
        );
        q.register("client_requests", "Inference requests made as a client, by outcome", m.requests.clone());
        q.register(
            "client_time_to_first_token_seconds",
            "Time from making a request to its first token, as a client",
            m.client_ttft.clone(),
        );
        q.register(
            "client_request_duration_seconds",
            "Time from making a request to its verified result, as a client",
            m.client_duration.clone(),
        );
        q.register("client_tokens_received", "Completion tokens received as a client", m.client_tokens.clone());
        q.register("peers_banned", "Peers banned by this node now", m.banned_peers.clone());
        q.register(
            "gateway_requests",
            "Requests to the OpenAI-compatible gateway, by endpoint and HTTP status",
            m.gateway_requests.clone(),
        );
        q.register(
            "gateway_tokens",
            "Tokens of answered gateway requests, by kind (prompt, completion)",
            m.gateway_tokens.clone(),
        );
        q.register(
            "gateway_requests_in_flight",
            "Requests the OpenAI-compatible gateway is answering now (streams included)",
            m.gateway_in_flight.clone(),
        );
        q.register_collector(Box::new(m.reputation.clone()));
        q.register("build", "Version of this node", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        let start: Gauge = Gauge::default();
        start.set(start_unix_secs);
        registry.register("process_start_time_seconds", "Start time of the process since the Unix epoch", start);
        m
    }

    pub fn job(&self, outcome: JobOutcome) {
        self.jobs.get_or_create(&JobLabel { outcome: outcome.as_str() }).inc();
    }

    /// Counts a gossip message by the kind of its topic (a bounded label set).
    pub fn gossip(&self, topic: &str) {
        let topic = if topic == crate::discovery::NODES_TOPIC {
            "nodes"
        } else if topic.starts_with(quiver_proto::infer::INFER_TOPIC_PREFIX) {
            "infer"
        } else if topic == quiver_proto::reputation::REPUTATION_TOPIC {
            "reputation"
        } else {
            "other"
        };
        self.gossip_received.get_or_create(&TopicLabel { topic }).inc();
    }

    /// Counts a job this provider finished serving, or that ended early with `outcome` (then
    /// `tokens` is 0), and keeps it in the recent-jobs ring.
    /// The prompt of a served job: its tokens, and how many the engine had cached.
    pub fn provider_prompt(&self, usage: &quiver_engine::Usage) {
        self.prompt_tokens.inc_by(u64::from(usage.prompt_tokens));
        self.prompt_tokens_cached.inc_by(u64::from(usage.cached_tokens.min(usage.prompt_tokens)));
    }

    pub fn provider_job(
        &self,
        model: &str,
        client: quiver_net::PeerId,
        outcome: JobOutcome,
        ttft: Option<Duration>,
        total: Duration,
        tokens: u32,
    ) {
        self.job(outcome);
        if let Some(t) = ttft {
            self.provider_ttft.observe(t.as_secs_f64());
        }
        if outcome == JobOutcome::Served {
            self.provider_duration.observe(total.as_secs_f64());
        }
        self.push(JobRecord {
            finished_ms: now_ms(),
            role: JobRole::Provider,
            model: model.to_owned(),
            peer: Some(client.to_string()),
            outcome: outcome.as_str().to_owned(),
            completion_tokens: tokens,
            ttft_ms: ttft.map(|t| t.as_secs_f64() * 1000.0),
            duration_ms: total.as_secs_f64() * 1000.0,
            tokens_per_sec: crate::Timing::measure(ttft.unwrap_or_default(), total, tokens).tokens_per_sec,
        });
    }

    /// A request this node made as a client that produced a verified result.
    pub fn client_done(&self, model: &str, result: &crate::InferenceResult) {
        let t = result.timing;
        self.client_ttft.observe(t.ttft_ms / 1000.0);
        self.client_duration.observe(t.total_ms / 1000.0);
        self.client_tokens.inc_by(u64::from(result.usage.completion_tokens));
        self.push(JobRecord {
            finished_ms: now_ms(),
            role: JobRole::Client,
            model: model.to_owned(),
            peer: Some(result.provider.to_string()),
            outcome: if result.cached { "cached".into() } else { "ok".into() },
            completion_tokens: result.usage.completion_tokens,
            ttft_ms: Some(t.ttft_ms),
            duration_ms: t.total_ms,
            // A cached answer took no generation: a rate would be meaningless.
            tokens_per_sec: if result.cached { 0.0 } else { t.tokens_per_sec },
        });
    }

    /// A request this node made as a client that failed (`outcome` says how).
    pub fn client_failed(&self, model: &str, outcome: &str, total: Duration) {
        self.push(JobRecord {
            finished_ms: now_ms(),
            role: JobRole::Client,
            model: model.to_owned(),
            peer: None,
            outcome: outcome.to_owned(),
            completion_tokens: 0,
            ttft_ms: None,
            duration_ms: total.as_secs_f64() * 1000.0,
            tokens_per_sec: 0.0,
        });
    }

    fn push(&self, job: JobRecord) {
        let mut ring = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= RECENT_JOBS {
            ring.pop_front();
        }
        ring.push_back(job);
    }
}

/// Tokens of the jobs this node took part in, as the status page's live counters.
#[derive(Debug, Clone, Serialize)]
pub struct JobCounters {
    /// Tokens generated here as a provider (counted as they are generated).
    pub tokens_generated: u64,
    /// Completion tokens of the verified results this node received as a client.
    pub tokens_received: u64,
}

impl Node {
    /// The most recent jobs this node took part in (at most [`RECENT_JOBS`]), newest first.
    pub fn recent_jobs(&self) -> Vec<JobRecord> {
        let ring = self.metrics().recent.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }

    /// Token counts since start, for rates.
    pub fn job_counters(&self) -> JobCounters {
        let m = self.metrics();
        JobCounters { tokens_generated: m.tokens_generated.get(), tokens_received: m.client_tokens.get() }
    }

    /// Counts a request to the OpenAI-compatible gateway by endpoint and HTTP status.
    pub fn record_gateway_request(&self, endpoint: &'static str, status: u16) {
        self.metrics().gateway_requests.get_or_create(&GatewayLabel { endpoint, status }).inc();
    }

    /// A gateway request started (`+1`) or ended (`-1`).
    pub fn record_gateway_in_flight(&self, delta: i64) {
        self.metrics().gateway_in_flight.inc_by(delta);
    }

    /// Counts the tokens of an answered gateway request (its usage).
    pub fn record_gateway_usage(&self, usage: quiver_engine::Usage) {
        let m = self.metrics();
        m.gateway_tokens.get_or_create(&TokenKindLabel { kind: "prompt" }).inc_by(u64::from(usage.prompt_tokens));
        m.gateway_tokens
            .get_or_create(&TokenKindLabel { kind: "completion" })
            .inc_by(u64::from(usage.completion_tokens));
    }

    /// Reads the state that gauges mirror (routing table, queue, free slots, reputation scores,
    /// bans) into the metrics; call before [`Node::metrics_text`] to scrape fresh values.
    pub async fn refresh_metrics(&self) {
        let m = self.metrics();
        if let Ok(s) = self.status().await {
            m.routing_table.set(s.routing_table_size as i64);
            m.network_size.set(s.network.size.estimate.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)));
            m.connected_peers.set(s.connected_peers as i64);
            if let Some(p) = s.provider {
                m.queue_depth.set(i64::from(p.queue_depth));
                m.free_slots.set(i64::from(p.free_slots));
            }
        }
        let views = self.reputation();
        let now = now_ms();
        m.banned_peers.set(views.iter().filter(|v| v.banned_until_ms.is_some_and(|u| u > now)).count() as i64);
        *m.reputation.0.lock().unwrap_or_else(|p| p.into_inner()) = views.iter().map(|v| v.score).collect();
    }
}

#[cfg(test)]
#[path = "tests/metrics.rs"]
mod tests;
