use super::*;

/// P3 of a mesh peer whose delivery counter sits at `delivered` (the score formula of the
/// gossipsub v1.1 spec, with the topic weight of 1).
fn p3(p: &TopicScoreParams, delivered: f64) -> f64 {
    let deficit = (p.mesh_message_deliveries_threshold - delivered).max(0.0);
    p.mesh_message_deliveries_weight * deficit * deficit
}

#[test]
fn delivery_scoring_is_off_until_the_traffic_is_known() {
    let p = nodes_topic_params(0.0, Duration::from_secs(20));
    assert_eq!(p.mesh_message_deliveries_weight, 0.0);
    assert_eq!(p.mesh_failure_penalty_weight, 0.0);
    assert!(p.validate().is_ok());
    assert_eq!(nodes_topic_params(f64::NAN, Duration::ZERO).mesh_message_deliveries_weight, 0.0);
}

#[test]
fn a_non_forwarder_goes_negative_and_an_honest_relay_does_not() {
    for nodes in [8.0f64, 10.0, 50.0, 1000.0] {
        for period in [0.5f64, 2.0, 10.0] {
            let rate = (nodes - 1.0) / period;
            let p = nodes_topic_params(rate, Duration::from_secs(20));
            assert!(p.validate().is_ok(), "{nodes} nodes, {period} s");
            let steady = |per_sec: f64| per_sec / (1.0 - p.mesh_message_deliveries_decay);
            // Positive terms such a peer earns at most: P1 at its cap, P2 for its own
            // heartbeats (each first-delivered by it).
            let p1 = p.time_in_mesh_weight * p.time_in_mesh_cap;
            let own = steady(1.0 / period);
            let p2 = p.first_message_deliveries_weight
                * ((1.0 / period) / (1.0 - p.first_message_deliveries_decay)).min(p.first_message_deliveries_cap);
            // Receives all, forwards none: only its own heartbeats count as delivered.
            let non_forwarder = p1 + p2 + p3(&p, own);
            assert!(non_forwarder < 0.0, "{nodes} nodes, {period} s: non-forwarder scores {non_forwarder}");
            // An honest relay delivers about half of the others' heartbeats; a slow one a third.
            let honest = p3(&p, steady(rate / 3.0));
            assert_eq!(honest, 0.0, "{nodes} nodes, {period} s: honest relay penalised");
        }
    }
}
