//! `load`: requests served by several providers running the paced engine.
//!
//! `providers` nodes serve [`SIM_MODEL`](crate::engine::SIM_MODEL) with the paced engine
//! (real provider role: admission, queue, per-client limits, claims, signed receipts);
//! `clients` other nodes each send their share of `requests`, one after another, all clients
//! at once; which client sends each request is drawn from the seed, and every other request is
//! announced on gossip (claim route) while the rest are asked directly. Every answer is checked
//! against the text the paced engine derives from the prompt. Fairness: the Gini coefficient of
//! the requests served per provider, over all providers (a provider that served none counts as
//! zero) and over those that served.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quiver_node::{InferenceRequest, PeerId, ProviderConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracing::{info, warn};

use crate::cluster::{Cluster, ProcessCost};
use crate::engine::{PacedConfig, PacedEngine, SIM_MODEL, natural_length, token_text};
use crate::report::{Outcome, Row, spread};
use crate::stats::{Summary, gini};
use crate::{SimError, SimParams};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct ProviderLoad {
    pub node: usize,
    pub peer_id: String,
    pub served: usize,
    pub tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub nodes: usize,
    pub providers: usize,
    pub clients: usize,
    pub requests: usize,
    pub served: usize,
    pub failed: usize,
    /// Answers equal to what the paced engine derives from the prompt.
    pub outputs_correct: usize,
    pub per_provider: Vec<ProviderLoad>,
    /// Gini of requests served over all providers.
    pub gini_all: Option<f64>,
    /// Gini over the providers that served at least one request.
    pub gini_served: Option<f64>,
    pub claim_route: usize,
    pub direct_route: usize,
    pub latency_ms: Summary,
    pub ttft_ms: Summary,
    pub attempts: Summary,
    pub phase_secs: f64,
    pub cost: ProcessCost,
}

impl Outcome for LoadResult {
    fn rows(&self) -> Vec<Row> {
        let dist: Vec<String> = self.per_provider.iter().map(|p| p.served.to_string()).collect();
        let fmt = |g: Option<f64>| g.map_or("n/a".into(), |g| format!("{g:.3}"));
        vec![
            ("nodes (providers / clients)".into(), format!("{} ({} / {})", self.nodes, self.providers, self.clients)),
            ("requests served".into(), format!("{} of {} ({} failed)", self.served, self.requests, self.failed)),
            ("answers matching the engine's text".into(), format!("{} of {}", self.outputs_correct, self.served)),
            ("requests per provider".into(), dist.join(", ")),
            ("Gini, all providers".into(), fmt(self.gini_all)),
            ("Gini, providers that served".into(), fmt(self.gini_served)),
            ("route claim / direct".into(), format!("{} / {}", self.claim_route, self.direct_route)),
            ("request latency p50 / p90 / p99 / max".into(), spread(&self.latency_ms, "ms")),
            ("time to first token p50 / p90 / p99 / max".into(), spread(&self.ttft_ms, "ms")),
            (
                "providers tried per request p50 / max".into(),
                format!("{:.0} / {:.0}", self.attempts.p50, self.attempts.max),
            ),
            ("request phase".into(), format!("{:.1} s", self.phase_secs)),
            (
                "process CPU / peak RSS".into(),
                format!("{:.1} s / {:.0} MiB", self.cost.cpu_secs, self.cost.peak_rss_mib),
            ),
        ]
    }
}

/// The text the paced engine answers `prompt` with, cut at `max_tokens`.
fn expected_text(prompt: &str, max_tokens: u32) -> String {
    (0..natural_length(prompt).min(max_tokens)).map(|i| token_text(prompt, 0, i)).collect()
}

pub async fn run(params: &SimParams) -> Result<LoadResult, SimError> {
    params.check()?;
    let n = params.cluster.nodes;
    if params.providers == 0 || params.clients == 0 || params.providers + params.clients + 1 > n {
        return Err(SimError::Params(format!(
            "{} providers and {} clients need at least {} nodes (node 0 is the bootstrap node)",
            params.providers,
            params.clients,
            params.providers + params.clients + 1
        )));
    }
    let engine = PacedEngine::new(PacedConfig { tokens_per_sec: params.tokens_per_sec, ..PacedConfig::default() });
    // Providers are nodes 1..=P, clients the next C; the rest only route and relay.
    let providers: Vec<usize> = (1..=params.providers).collect();
    let clients: Vec<usize> = (params.providers + 1..=params.providers + params.clients).collect();
    let mut cluster = Cluster::start(params.cluster.clone(), |i| {
        (1..=params.providers).contains(&i).then(|| {
            let e: std::sync::Arc<dyn quiver_node::engine::Engine> = engine.clone();
            ProviderConfig::new(vec![e], 2, 8)
        })
    })
    .await?;
    let (_, joined) = cluster.wait_joined(params.min_routing_table, params.join_limit).await;
    if !joined {
        warn!("not every routing table filled; carrying on");
    }
    // Every client hears every provider's heartbeat before asking.
    let deadline = Instant::now() + params.join_limit;
    for c in &clients {
        let node = &cluster.nodes[*c].node;
        while node.known_nodes().iter().filter(|k| k.models.iter().any(|m| m.name == SIM_MODEL)).count()
            < params.providers
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    info!(providers = params.providers, clients = params.clients, "sending requests");

    let mut rng = StdRng::seed_from_u64(params.cluster.seed.wrapping_add(3));
    let mut per_client: HashMap<usize, Vec<usize>> = HashMap::new();
    for r in 0..params.requests {
        per_client.entry(clients[rng.gen_range(0..clients.len())]).or_default().push(r);
    }
    let seed = params.cluster.seed;
    let max_tokens = params.max_tokens;
    let phase = Instant::now();
    let mut tasks = Vec::new();
    for (c, requests) in per_client {
        let node = cluster.nodes[c].node.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for r in requests {
                let prompt = format!("simulated request {r} of run {seed}");
                let mut req = InferenceRequest::completion(SIM_MODEL, &prompt, max_tokens);
                req.broadcast = r % 2 == 0;
                req.use_cache = false;
                req.claim_window = Duration::from_millis(500);
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, node.infer(req)).await;
                match answer {
                    Ok(Ok(res)) => {
                        let correct = res.text == expected_text(&prompt, max_tokens);
                        out.push(Some((res, correct)));
                    }
                    Ok(Err(e)) => {
                        warn!(request = r, error = %e, "request failed");
                        out.push(None);
                    }
                    Err(_) => {
                        warn!(request = r, "request timed out");
                        out.push(None);
                    }
                }
            }
            out
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => results.extend(r),
            Err(e) => return Err(SimError::Setup(format!("a client task failed: {e}"))),
        }
    }
    let phase_secs = phase.elapsed().as_secs_f64();
    let served: Vec<&(quiver_node::InferenceResult, bool)> = results.iter().flatten().collect();
    let ids = cluster.peer_ids();
    let mut count: HashMap<PeerId, (usize, u64)> = HashMap::new();
    for (r, _) in &served {
        let e = count.entry(r.provider).or_default();
        e.0 += 1;
        e.1 += u64::from(r.usage.completion_tokens);
    }
    let per_provider: Vec<ProviderLoad> = providers
        .iter()
        .map(|i| {
            let (served, tokens) = count.get(&ids[*i]).copied().unwrap_or((0, 0));
            ProviderLoad { node: *i, peer_id: ids[*i].to_string(), served, tokens }
        })
        .collect();
    let amounts: Vec<f64> = per_provider.iter().map(|p| p.served as f64).collect();
    let served_amounts: Vec<f64> = amounts.iter().copied().filter(|a| *a > 0.0).collect();
    let result = LoadResult {
        nodes: n,
        providers: params.providers,
        clients: params.clients,
        requests: params.requests,
        served: served.len(),
        failed: results.len() - served.len(),
        outputs_correct: served.iter().filter(|(_, ok)| *ok).count(),
        per_provider,
        gini_all: gini(&amounts),
        gini_served: gini(&served_amounts),
        claim_route: served.iter().filter(|(r, _)| r.route == quiver_node::Route::Claim).count(),
        direct_route: served.iter().filter(|(r, _)| r.route == quiver_node::Route::Direct).count(),
        latency_ms: Summary::of(&served.iter().map(|(r, _)| r.timing.total_ms).collect::<Vec<_>>()),
        ttft_ms: Summary::of(&served.iter().map(|(r, _)| r.timing.ttft_ms).collect::<Vec<_>>()),
        attempts: Summary::of(&served.iter().map(|(r, _)| f64::from(r.attempts)).collect::<Vec<_>>()),
        phase_secs,
        cost: ProcessCost::now(),
    };
    cluster.shutdown().await;
    Ok(result)
}
