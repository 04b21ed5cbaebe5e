//! Unit tests of `metrics.rs`.

use super::*;

fn encoded(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encoding into a String");
    out
}

#[test]
fn names_follow_prometheus_conventions() {
    let mut registry = Registry::default();
    let m = NodeMetrics::register(&mut registry, 1);
    m.job(JobOutcome::Served);
    m.gossip(crate::discovery::NODES_TOPIC);
    m.gossip("quiver/1/infer/smollm2-135m");
    m.gossip(quiver_proto::reputation::REPUTATION_TOPIC);
    m.gossip("something/else");
    *m.reputation.0.lock().expect("not poisoned") = vec![0.05, 0.55, 1.0];
    let text = encoded(&registry);
    for line in [
        "# TYPE quiver_provider_jobs counter",
        "quiver_provider_jobs_total{outcome=\"served\"} 1",
        "# TYPE quiver_tokens_generated counter",
        "# TYPE quiver_dht_routing_table_peers gauge",
        "# TYPE quiver_provider_queue_depth gauge",
        "# TYPE quiver_provider_time_to_first_token_seconds histogram",
        "# TYPE quiver_provider_job_duration_seconds histogram",
        "# TYPE quiver_client_time_to_first_token_seconds histogram",
        "# TYPE quiver_client_request_duration_seconds histogram",
        "quiver_gossip_messages_received_total{topic=\"nodes\"} 1",
        "quiver_gossip_messages_received_total{topic=\"infer\"} 1",
        "quiver_gossip_messages_received_total{topic=\"reputation\"} 1",
        "quiver_gossip_messages_received_total{topic=\"other\"} 1",
        "# TYPE quiver_peer_reputation_score histogram",
        "quiver_peer_reputation_score_count 3",
        "quiver_peer_reputation_score_bucket{le=\"0.1\"} 1",
        "quiver_peer_reputation_score_bucket{le=\"+Inf\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn recent_jobs_ring_is_bounded_and_keeps_the_newest() {
    let mut registry = Registry::default();
    let m = NodeMetrics::register(&mut registry, 1);
    let peer = quiver_net::PeerId::random();
    for i in 0..(RECENT_JOBS as u32 + 5) {
        m.provider_job("m", peer, JobOutcome::Served, Some(Duration::from_millis(10)), Duration::from_secs(1), i);
    }
    let ring = m.recent.lock().expect("not poisoned");
    assert_eq!(ring.len(), RECENT_JOBS);
    assert_eq!(ring.front().map(|j| j.completion_tokens), Some(5));
    assert_eq!(ring.back().map(|j| j.completion_tokens), Some(RECENT_JOBS as u32 + 4));
    drop(ring);
    let text = encoded(&registry);
    let served = format!("quiver_provider_jobs_total{{outcome=\"served\"}} {}", RECENT_JOBS + 5);
    assert!(text.lines().any(|l| l == served), "{text}");
    assert!(text.contains(&format!("quiver_provider_job_duration_seconds_count {}", RECENT_JOBS + 5)), "{text}");
}

#[test]
fn a_cancelled_job_counts_as_cancelled_without_a_duration() {
    let mut registry = Registry::default();
    let m = NodeMetrics::register(&mut registry, 1);
    m.provider_job("m", quiver_net::PeerId::random(), JobOutcome::Cancelled, None, Duration::from_secs(1), 0);
    let text = encoded(&registry);
    assert!(text.contains("quiver_provider_jobs_total{outcome=\"cancelled\"} 1"), "{text}");
    assert!(text.contains("quiver_provider_job_duration_seconds_count 0"), "{text}");
    assert!(text.contains("quiver_provider_time_to_first_token_seconds_count 0"), "{text}");
}
