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

#[test]
fn a_higher_heartbeat_rate_is_approached_as_fast_as_a_delivery_counter_follows() {
    let mut rate = DeliveryRate::new();
    // The eighth node turns scoring on: nothing is judged against the full rate at once.
    let p = rate.set(7.0, Duration::from_secs(10));
    assert_eq!(rate.effective(), 0.0);
    assert_eq!(p.mesh_message_deliveries_weight, 0.0, "scoring starts from no expectation");
    // An honest mesh peer's counter, grafted at that moment and relaying a third of the traffic,
    // stays above the threshold second by second while the rate rises.
    let mut counter = 0.0;
    let mut applied = p;
    for second in 1..=60 {
        counter = counter * DELIVERY_DECAY + 7.0 / 3.0;
        if let Some(p) = rate.tick(Duration::from_secs(1)) {
            applied = p;
        }
        assert!(p3(&applied, counter) == 0.0, "second {second}: an honest relay is charged a deficit");
    }
    assert_eq!(rate.effective(), 7.0, "the target is reached");
    assert!(rate.tick(Duration::from_secs(1)).is_none(), "nothing more to apply at the target");
    assert_eq!(
        applied.mesh_message_deliveries_threshold,
        nodes_topic_params(7.0, Duration::ZERO).mesh_message_deliveries_threshold
    );
}

#[test]
fn a_heal_that_doubles_the_rate_does_not_charge_the_mesh_peers_of_either_half() {
    let mut rate = DeliveryRate::new();
    rate.set(3.0, Duration::from_secs(10));
    for _ in 0..120 {
        rate.tick(Duration::from_secs(1));
    }
    assert_eq!(rate.effective(), 3.0);
    // A mesh peer of the half, relaying a third, at its steady state.
    let mut counter = (3.0 / 3.0) / (1.0 - DELIVERY_DECAY);
    let mut applied = rate.set(7.0, Duration::from_secs(10));
    assert_eq!(rate.effective(), 3.0, "not raised at once");
    for second in 1..=60 {
        counter = counter * DELIVERY_DECAY + 7.0 / 3.0;
        if let Some(p) = rate.tick(Duration::from_secs(1)) {
            applied = p;
        }
        assert!(p3(&applied, counter) == 0.0, "second {second}: the half's mesh peer is charged a deficit");
    }
    // Stepped at once, as before, the same peer was charged right after the heal.
    let stepped = nodes_topic_params(7.0, Duration::from_secs(10));
    assert!(p3(&stepped, (3.0 / 3.0) / (1.0 - DELIVERY_DECAY)) < 0.0);
}

#[test]
fn a_lower_rate_applies_at_once_and_a_non_forwarder_is_still_caught_while_rising() {
    let mut rate = DeliveryRate::new();
    rate.set(9.0, Duration::from_secs(10));
    // Ten nodes; the non-forwarder delivers only its own heartbeat, 1 of the 9 a second.
    let mut own = 0.0;
    let mut caught = None;
    let mut applied = nodes_topic_params(0.0, Duration::ZERO);
    for second in 1..=30 {
        own = own * DELIVERY_DECAY + 1.0;
        if let Some(p) = rate.tick(Duration::from_secs(1)) {
            applied = p;
        }
        if caught.is_none() && p3(&applied, own) < 0.0 {
            caught = Some(second);
        }
    }
    assert!(caught.is_some_and(|s| s <= 10), "a non-forwarder is charged within seconds: {caught:?}");
    let p = rate.set(4.0, Duration::from_secs(10));
    assert_eq!(rate.effective(), 4.0);
    assert_eq!(
        p.mesh_message_deliveries_threshold,
        nodes_topic_params(4.0, Duration::ZERO).mesh_message_deliveries_threshold
    );
    let p = rate.set(f64::NAN, Duration::from_secs(10));
    assert_eq!(p.mesh_message_deliveries_weight, 0.0, "an unknown rate turns deficit scoring off");
}
