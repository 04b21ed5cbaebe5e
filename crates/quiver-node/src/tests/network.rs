//! Unit tests of `network.rs`.

use super::*;

fn offer(peer: &str, models: &[&str], free: u32, batch: f32, single: f32) -> Offer {
    Offer {
        peer: peer.into(),
        models: models.iter().map(|m| (m.to_string(), false)).collect(),
        free_slots: free,
        queue_depth: 1,
        tokens_per_sec: single,
        batch_tokens_per_sec: batch,
    }
}

#[test]
fn providers_of_one_model_are_one_row() {
    let rows = aggregate(&[
        offer("a", &["m"], 2, 100.0, 40.0),
        offer("b", &["m", "e"], 3, 0.0, 30.0),
        offer("c", &["e"], 1, 0.0, 0.0),
    ]);
    assert_eq!(rows.len(), 2);
    let e = &rows[0];
    assert_eq!((e.name.as_str(), e.providers, e.free_slots, e.measured_providers), ("e", 2, 4, 1));
    assert_eq!(e.tokens_per_sec, 30.0);
    let m = &rows[1];
    assert_eq!((m.name.as_str(), m.providers, m.free_slots, m.queue_depth), ("m", 2, 5, 2));
    // The batched figure where there is one, else the single-job speed.
    assert_eq!(m.tokens_per_sec, 130.0);
    assert_eq!(m.measured_providers, 2);
}

#[test]
fn a_node_listing_a_name_twice_is_one_provider() {
    let rows = aggregate(&[offer("a", &["m", "m"], 2, 10.0, 0.0)]);
    assert_eq!((rows[0].providers, rows[0].free_slots), (1, 2));
    assert!(aggregate(&[]).is_empty());
}

#[test]
fn speeds_that_are_not_figures_count_for_nothing() {
    let rows = aggregate(&[offer("a", &["m"], 0, f32::NAN, f32::INFINITY)]);
    assert_eq!((rows[0].tokens_per_sec, rows[0].measured_providers), (0.0, 0));
}

#[test]
fn size_is_the_median_of_estimates_and_at_least_the_nodes_heard_of() {
    let local = SizeEstimate::Nodes { nodes: 1_000, peers_used: 20 };
    let s = NetworkSize::new(local, &[900, 0, 1_100, 5_000_000], 40);
    assert_eq!((s.sources, s.known_nodes), (4, 41));
    assert_eq!(s.estimate, Some(1_050));
    assert_eq!(s.summary, "about 1050 nodes (median of 4 estimates; 41 heard of)");
    // Every estimate below the count heard of: the count.
    let s = NetworkSize::new(SizeEstimate::Nodes { nodes: 10, peers_used: 9 }, &[12], 30);
    assert_eq!(s.estimate, Some(31));
}

#[test]
fn without_any_estimate_the_size_is_unknown_and_says_why() {
    let s = NetworkSize::new(SizeEstimate::TooFewPeers { peers: 2 }, &[0, 0], 2);
    assert_eq!((s.estimate, s.sources, s.known_nodes), (None, 0, 3));
    let text = s.describe();
    assert!(text.starts_with("unknown: 2 DHT peers known, too few"), "{text}");
    // Others' estimates are enough.
    let s = NetworkSize::new(SizeEstimate::TooFewPeers { peers: 2 }, &[50], 2);
    assert_eq!(s.estimate, Some(50));
}
