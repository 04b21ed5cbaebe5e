//! Every scenario at a small scale, in bounded time, checked against the invariants its report
//! must hold. Real nodes over the memory transport; no timing thresholds.

use std::time::Duration;

use quiver_sim::scenario::{self, Scenario, SimParams};

/// Bound on one whole scenario run.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One scenario at a time: each is a whole network sharing the machine's cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn small(scenario: Scenario, nodes: usize, seed: u64) -> SimParams {
    let mut p = SimParams::new(scenario, nodes, seed);
    p.cluster.joins_per_sec = 50.0;
    p.settle = Duration::from_secs(3);
    p.join_limit = Duration::from_secs(120);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_every_lookup_resolves() {
    let _one = exclusive();
    let mut p = small(Scenario::Dht, 30, 7);
    p.lookups = 60;
    // Connections nothing keeps alive close 4 s after their last use. (libp2p looks at a
    // connection's keep-alive only when something happens on it; pings every 2 s see to that.)
    p.cluster.idle_connection_timeout = Duration::from_secs(4);
    p.cluster.ping_interval = Duration::from_secs(2);
    p.idle_check = Some(Duration::from_secs(12));
    let r = tokio::time::timeout(RUN_LIMIT, scenario::dht::run(&p)).await.expect("in time").expect("runs");
    println!("{r:#?}");
    assert!(r.joined, "routing tables did not fill");
    assert_eq!(r.records_stored, 30, "every node record was taken by peers");
    assert_eq!(r.lookups, 60);
    assert_eq!(r.resolved, r.lookups, "every record lookup resolves");
    assert_eq!(r.latency_ms.count, r.lookups);
    assert!(r.routing_table.min >= p.min_routing_table as f64);
    assert!(r.routing_table.max <= 29.0, "a routing table holds only other nodes");
    assert_eq!(r.greedy_hops.count, r.lookups);
    // A lookup asks at least one peer unless the querier holds the record itself.
    assert!(r.peers_asked.max >= 1.0);
    assert!(r.bytes_sent_per_node.min > 0.0, "every node sent bytes over the transport");
    // Right after the lookups every node is connected to nearly every other; once idle, only
    // gossip mesh peers (at most 12 per topic, two topics) keep their connections.
    assert!(r.connections.p50 >= 20.0, "lookups connect widely: {:?}", r.connections);
    let (_, idle) = r.connections_idle.expect("measured after the idle wait");
    assert!(idle.max <= 24.0 && idle.p50 < 20.0, "idle connections were not closed: {idle:?}");
    let idle_cpu = r.idle_cpu_ms_per_node_sec.expect("idle CPU measured");
    assert!(idle_cpu.is_finite() && idle_cpu >= 0.0, "idle CPU per node is a figure: {idle_cpu}");
}

/// Size estimates against the true count. At 60 nodes a routing table holds about 50 peers, so
/// an estimator that gave the routing table's size (+1) would be off by more than the tolerance,
/// which the test checks too. (Seed 11: the median of the estimates is 58, the tables' 50.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_size_estimate_is_near_the_true_count() {
    let _one = exclusive();
    const NODES: usize = 60;
    const TOLERANCE: f64 = 0.10;
    let mut p = small(Scenario::Dht, NODES, 11);
    p.lookups = 10;
    let r = tokio::time::timeout(RUN_LIMIT, scenario::dht::run(&p)).await.expect("in time").expect("runs");
    println!("{r:#?}");
    assert!(r.joined, "routing tables did not fill");
    assert_eq!(r.size_estimated, NODES, "every node had enough peers for an estimate");
    let off = |estimate: f64| (estimate - NODES as f64).abs() / NODES as f64;
    assert!(
        off(r.routing_table.p50 + 1.0) > TOLERANCE,
        "the routing tables hold nearly everyone ({:?}): the test would not tell the estimator from a count",
        r.routing_table
    );
    let combined = r.size_combined.expect("a combined estimate") as f64;
    assert!(off(combined) <= TOLERANCE, "median of the estimates {combined}, true {NODES}");
    assert_eq!(r.size_combined_error, Some(off(combined)));
    // Each node alone: about 15% off at the median (the estimator's spread over 20 peers).
    assert!(r.size_error.p50 <= 0.3, "{:?}", r.size_error);
    assert_eq!(r.size_estimate.count, NODES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_delivers_every_heartbeat() {
    let _one = exclusive();
    let mut p = small(Scenario::Gossip, 20, 8);
    // Far longer than a delivery takes: heartbeats of one node never overtake each other (an
    // older one arriving after a newer one is stale, not a delivery).
    p.cluster.heartbeat_interval = Duration::from_secs(3);
    p.window = Duration::from_secs(9);
    let r = tokio::time::timeout(RUN_LIMIT, scenario::gossip::run(&p)).await.expect("in time").expect("runs");
    println!("{r:#?}");
    assert_eq!(r.observer_lagged, 0, "the observer saw every event");
    assert!(r.heartbeats >= 20, "every node published in the window: {}", r.heartbeats);
    assert_eq!(r.expected_deliveries, r.heartbeats as u64 * 19);
    assert_eq!(r.deliveries, r.expected_deliveries, "without churn every heartbeat reaches every node");
    assert_eq!(r.delivery_ratio, 1.0);
    assert_eq!(r.latency_ms.count as u64, r.deliveries);
    assert!(r.bytes_sent_per_node_per_min.min > 0.0);
    assert!(r.mesh_peers.min >= 1.0, "every node is in a mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_survivors_records_resolve() {
    let _one = exclusive();
    let mut p = small(Scenario::Churn, 30, 9);
    p.lookups = 30;
    // The other scenarios run over Noise; this one over the plaintext handshake that the
    // largest runs use, so both stay working.
    p.cluster.security = quiver_sim::cluster::Security::Plaintext;
    let r = tokio::time::timeout(RUN_LIMIT, scenario::churn::run(&p)).await.expect("in time").expect("runs");
    println!("{r:#?}");
    assert_eq!(r.records_stored, 30, "every node record was taken by peers");
    assert_eq!(r.killed, 10);
    assert_eq!(r.survivors, 20);
    assert_eq!(r.survivors_checked, 20);
    assert_eq!(r.departed_checked, 10);
    assert_eq!(r.survivors_resolved, r.survivors_checked, "every survivor's record resolves");
    // With 20 replicas and a third gone, the departed nodes' records outlive them too.
    assert_eq!(r.departed_resolved, r.departed_checked, "the departed nodes' records resolve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_serves_every_request_and_spreads_it() {
    let _one = exclusive();
    let mut p = small(Scenario::Load, 12, 10);
    // Six clients asking at once fill the three providers' six slots (2 each, and 8 queue
    // places, so one provider could hold every request: nothing but the ranking spreads them).
    p.providers = 3;
    p.clients = 6;
    p.requests = 60;
    p.tokens_per_sec = 200.0;
    p.max_tokens = 16;
    p.cluster.heartbeat_interval = Duration::from_secs(1);
    let r = tokio::time::timeout(RUN_LIMIT, scenario::load::run(&p)).await.expect("in time").expect("runs");
    println!("{r:#?}");
    assert_eq!(r.served, 60, "every request is served");
    assert_eq!(r.failed, 0);
    assert_eq!(r.outputs_correct, r.served, "every answer is the engine's text");
    assert_eq!(r.per_provider.len(), 3);
    assert_eq!(r.per_provider.iter().map(|p| p.served).sum::<usize>(), r.served);
    assert_eq!(r.claim_route + r.direct_route, r.served);
    // Ranking by expected completion (the load a provider showed, plus each client's own
    // requests in flight there) spreads the requests: every provider serves a real part of an
    // equal share, and the Gini coefficient stays far from the 2/3 of all requests herding onto
    // one provider. (Over seeds 1-12: at least 10 of 60 each, Gini at most 0.27.)
    let served: Vec<usize> = r.per_provider.iter().map(|p| p.served).collect();
    let equal = r.served / served.len();
    assert!(served.iter().all(|&s| s * 4 >= equal), "a provider served under a quarter of an equal share: {served:?}");
    let g = r.gini_all.expect("Gini over the providers");
    assert!(g <= 0.4, "Gini {g} over {served:?}");
    assert_eq!(r.gini_served, Some(g), "every provider served");
}
