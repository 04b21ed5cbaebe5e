//! `churn`: node records after a part of the network leaves at once.
//!
//! Every node puts its node record once joined. Then a seeded random `churn_fraction` of the
//! nodes (the bootstrap node included when drawn) is stopped at once. After a pause for the
//! survivors to notice, live nodes drawn by the seed look up the records of departed nodes and
//! of survivors (up to `lookups` of each). A record survives when one of the nodes holding a
//! replica (the 20 closest to its key when it was put) is still up.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use serde::Serialize;
use tracing::info;

use crate::cluster::{Cluster, ProcessCost};
use crate::report::{Outcome, Row, range, spread};
use crate::stats::Summary;
use crate::{SimError, SimParams};

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct ChurnResult {
    pub nodes: usize,
    pub joined: bool,
    /// Node records put in the DHT that at least one peer took.
    pub records_stored: usize,
    pub killed: usize,
    pub survivors: usize,
    pub survivors_checked: usize,
    pub survivors_resolved: usize,
    pub departed_checked: usize,
    pub departed_resolved: usize,
    pub survivor_latency_ms: Summary,
    pub departed_latency_ms: Summary,
    /// Routing-table sizes of the survivors when the lookups start.
    pub routing_table_after: Summary,
    pub cost: ProcessCost,
}

impl Outcome for ChurnResult {
    fn rows(&self) -> Vec<Row> {
        vec![
            ("nodes".into(), self.nodes.to_string()),
            ("node records put (taken by peers)".into(), format!("{} of {}", self.records_stored, self.nodes)),
            ("stopped at once".into(), format!("{} ({} survive)", self.killed, self.survivors)),
            (
                "survivors' records resolved".into(),
                format!("{} of {}", self.survivors_resolved, self.survivors_checked),
            ),
            (
                "departed nodes' records resolved".into(),
                format!("{} of {}", self.departed_resolved, self.departed_checked),
            ),
            ("lookup latency, survivors p50 / p90 / p99 / max".into(), spread(&self.survivor_latency_ms, "ms")),
            ("lookup latency, departed p50 / p90 / p99 / max".into(), spread(&self.departed_latency_ms, "ms")),
            ("survivors' routing tables min / median / max".into(), range(&self.routing_table_after)),
            (
                "process CPU / peak RSS".into(),
                format!("{:.1} s / {:.0} MiB", self.cost.cpu_secs, self.cost.peak_rss_mib),
            ),
        ]
    }
}

pub async fn run(params: &SimParams) -> Result<ChurnResult, SimError> {
    params.check()?;
    let n = params.cluster.nodes;
    let mut cluster = Cluster::start(params.cluster.clone(), |_| None).await?;
    let (_, joined) = cluster.wait_joined(params.min_routing_table, params.join_limit).await;
    let records_stored = cluster.publish_node_records(params.concurrency).await;
    info!(records_stored, "node records put");
    tokio::time::sleep(params.settle).await;

    let mut rng = StdRng::seed_from_u64(params.cluster.seed.wrapping_add(2));
    let kill_count = ((n as f64 * params.churn_fraction).round() as usize).min(n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let (departed, survivors) = order.split_at(kill_count);
    let (departed, survivors) = (departed.to_vec(), survivors.to_vec());
    info!(killed = departed.len(), "stopping nodes");
    for i in &departed {
        cluster.kill(*i).await;
    }
    // Connections to the departed close at once over the memory transport; give the
    // survivors a moment to see it.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let ids = cluster.peer_ids();
    let check_departed: Vec<usize> = departed.iter().copied().choose_multiple(&mut rng, params.lookups);
    let check_survivors: Vec<usize> = survivors.iter().copied().choose_multiple(&mut rng, params.lookups);
    let mut asks: Vec<(bool, usize, usize)> = Vec::new();
    for (is_departed, targets) in [(true, &check_departed), (false, &check_survivors)] {
        for t in targets {
            let querier = survivors.iter().copied().filter(|q| q != t).choose(&mut rng).unwrap_or(survivors[0]);
            asks.push((is_departed, querier, *t));
        }
    }
    let statuses = cluster.statuses(params.concurrency).await;
    let tables: Vec<f64> = statuses.iter().map(|(_, s)| s.routing_table_size as f64).collect();
    let nodes: Vec<quiver_node::Node> = cluster.nodes.iter().map(|n| n.node.clone()).collect();
    let outcomes: Vec<(bool, Option<f64>)> = futures::stream::iter(asks)
        .map(|(is_departed, q, t)| {
            let node = nodes[q].clone();
            let peer = ids[t];
            async move {
                let start = Instant::now();
                let found = matches!(
                    tokio::time::timeout(LOOKUP_TIMEOUT, node.lookup_node_record(&peer)).await,
                    Ok(Ok(Some(hb))) if hb.peer_id == peer.to_bytes()
                );
                (is_departed, found.then(|| start.elapsed().as_secs_f64() * 1000.0))
            }
        })
        .buffered(params.concurrency.max(1))
        .collect()
        .await;
    let latencies = |departed: bool| -> Vec<f64> {
        outcomes.iter().filter(|(d, _)| *d == departed).filter_map(|(_, l)| *l).collect()
    };
    let (dl, sl) = (latencies(true), latencies(false));
    let result = ChurnResult {
        nodes: n,
        joined,
        records_stored,
        killed: departed.len(),
        survivors: survivors.len(),
        survivors_checked: check_survivors.len(),
        survivors_resolved: sl.len(),
        departed_checked: check_departed.len(),
        departed_resolved: dl.len(),
        survivor_latency_ms: Summary::of(&sl),
        departed_latency_ms: Summary::of(&dl),
        routing_table_after: Summary::of(&tables),
        cost: ProcessCost::now(),
    };
    cluster.shutdown().await;
    Ok(result)
}
