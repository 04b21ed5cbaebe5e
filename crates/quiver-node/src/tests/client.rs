use std::time::Duration;

use super::{DEFAULT_TOKENS_PER_SEC, expected_completion};

const IDLE: Option<(u32, u32, f32, f32)> = Some((1, 0, 0.0, 100.0));

#[test]
fn an_idle_provider_costs_its_job_and_one_round_trip() {
    let cost = expected_completion(IDLE, None, Some(Duration::from_millis(20)), 100);
    assert!((cost - (1.0 + 0.02)).abs() < 1e-9, "{cost}");
}

#[test]
fn a_farther_provider_costs_more() {
    let near = expected_completion(IDLE, None, Some(Duration::from_millis(1)), 100);
    let far = expected_completion(IDLE, None, Some(Duration::from_millis(300)), 100);
    assert!(far > near);
    assert!((far - near - 0.299).abs() < 1e-9, "the difference is the extra round trip: {}", far - near);
}

#[test]
fn a_provider_not_connected_counts_at_a_typical_round_trip() {
    let typical = expected_completion(IDLE, None, Some(super::UNKNOWN_RTT), 100);
    assert!((expected_completion(IDLE, None, None, 100) - typical).abs() < 1e-9);
}

#[test]
fn queue_missing_slots_and_cpu_load_lengthen_the_wait() {
    let rtt = Some(Duration::ZERO);
    let idle = expected_completion(IDLE, None, rtt, 100);
    assert!((expected_completion(Some((1, 2, 0.0, 100.0)), None, rtt, 100) - 3.0 * idle).abs() < 1e-9);
    assert!((expected_completion(Some((0, 0, 0.0, 100.0)), None, rtt, 100) - 2.0 * idle).abs() < 1e-9);
    assert!((expected_completion(Some((1, 0, 2.0, 100.0)), None, rtt, 100) - 1.5 * idle).abs() < 1e-9);
}

#[test]
fn own_measurement_wins_over_the_advertised_speed() {
    let rtt = Some(Duration::ZERO);
    let claimed_fast = expected_completion(Some((1, 0, 0.0, 1000.0)), Some(10.0), rtt, 100);
    assert!((claimed_fast - 10.0).abs() < 1e-9, "measured 10 tok/s: {claimed_fast}");
}

#[test]
fn without_a_heartbeat_a_provider_counts_as_busy_at_the_default_speed() {
    let cost = expected_completion(None, None, Some(Duration::ZERO), 100);
    let job = 100.0 / DEFAULT_TOKENS_PER_SEC;
    assert!((cost - 3.0 * job).abs() < 1e-9, "{cost}");
}

#[test]
fn nonsense_figures_from_a_peer_do_not_poison_the_cost() {
    for load in [(1, 0, f32::NAN, f32::NAN), (1, 0, f32::INFINITY, f32::INFINITY), (1, 0, -5.0, -1.0)] {
        let cost = expected_completion(Some(load), Some(f64::NAN), None, u32::MAX);
        assert!(cost.is_finite() && cost > 0.0, "{load:?}: {cost}");
    }
    assert!(expected_completion(IDLE, None, None, 0) > 0.0);
}
