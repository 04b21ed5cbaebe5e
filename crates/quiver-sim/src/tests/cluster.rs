//! Unit tests of `cluster.rs`: reading a node's counters out of its OpenMetrics text.

use super::*;

const METRICS: &str = r#"# HELP libp2p_bandwidth_bytes Bandwidth usage by direction and transport protocols.
# TYPE libp2p_bandwidth_bytes counter
libp2p_bandwidth_bytes_total{protocols="/memory",direction="Outbound"} 1200
libp2p_bandwidth_bytes_total{protocols="/memory",direction="Inbound"} 999999
libp2p_bandwidth_bytes_total{protocols="/ip4/tcp",direction="Outbound"} 34
# TYPE libp2p_libp2p_swarm_connections_established counter
libp2p_libp2p_swarm_connections_established_total{role="Dialer",protocols="/memory"} 7
libp2p_libp2p_swarm_connections_established_total{role="Listener",protocols="/memory"} 5
libp2p_libp2p_swarm_connections_establishment_duration_sum{role="Dialer"} 3.5
quiver_connected_peers 12
# EOF
"#;

#[test]
fn outbound_bytes_sum_only_outbound_series() {
    assert_eq!(outbound_bytes(METRICS), 1234);
}

#[test]
fn connections_established_sums_dialer_and_listener() {
    assert_eq!(connections_established(METRICS), 12);
}

#[test]
fn missing_or_malformed_series_count_nothing() {
    assert_eq!(connections_established("# EOF\n"), 0);
    assert_eq!(outbound_bytes("libp2p_bandwidth_bytes_total{direction=\"Outbound\"} not-a-number\n"), 0);
}

#[test]
fn ideal_size_estimates_of_the_seeded_key_sets() {
    // What the key sets of the bench runs (seed 1) give with ideal routing tables
    // (bench/SIM.md), and the 60-node test's (seed 11).
    for (seed, n) in [(1u64, 100usize), (1, 300), (1, 1000), (11, 60)] {
        let ids = seeded_peer_ids(seed, n).expect("keys");
        let ideal = crate::scenario::dht::ideal_size_estimate(&ids).expect("an estimate");
        println!("seed {seed}, {n} nodes: ideal median {ideal}");
        let off = (ideal as f64 - n as f64).abs() / n as f64;
        assert!(off < 0.15, "seed {seed}, {n} nodes: {ideal}");
    }
}
