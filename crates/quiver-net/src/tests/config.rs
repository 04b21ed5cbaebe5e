//! Unit tests of `config.rs`: the user's limits reach libp2p unchanged.

use super::*;

#[test]
fn kad_mode_defaults_to_auto() {
    assert_eq!(KadMode::default(), KadMode::Auto);
    assert_eq!(NetConfig::default().kad_mode, KadMode::Auto);
    assert!(!NetConfig::default().upnp, "UPnP is opt-in");
}

#[test]
fn relay_limits_reach_the_relay_config() {
    let limits = RelayLimits {
        max_reservations: 3,
        max_reservations_per_peer: 1,
        reservation_duration: Duration::from_secs(60),
        max_circuits: 5,
        max_circuits_per_peer: 2,
        max_circuit_duration: Duration::from_secs(30),
        max_circuit_bytes: 1000,
        per_peer_per_minute: 7,
    };
    let c = limits.to_libp2p();
    assert_eq!(c.max_reservations, 3);
    assert_eq!(c.max_reservations_per_peer, 1);
    assert_eq!(c.reservation_duration, Duration::from_secs(60));
    assert_eq!(c.max_circuits, 5);
    assert_eq!(c.max_circuits_per_peer, 2);
    assert_eq!(c.max_circuit_duration, Duration::from_secs(30));
    assert_eq!(c.max_circuit_bytes, 1000);
    // One rate limiter per peer for reservations and one for circuits; none per IP (many
    // honest nodes share an address behind one NAT).
    assert_eq!(c.reservation_rate_limiters.len(), 1);
    assert_eq!(c.circuit_src_rate_limiters.len(), 1);
    let unlimited = RelayLimits { per_peer_per_minute: 0, ..limits }.to_libp2p();
    assert!(unlimited.reservation_rate_limiters.is_empty());
}

#[test]
fn relay_defaults_are_bounded() {
    let d = RelayLimits::default();
    assert!(d.max_reservations > 0 && d.max_reservations <= 1024);
    assert!(d.max_reservations_per_peer <= d.max_reservations);
    assert!(d.max_circuits_per_peer <= d.max_circuits);
    assert!(d.max_circuit_bytes > 0 && d.max_circuit_duration > Duration::ZERO);
}

#[test]
fn autonat_probes_any_address_and_is_throttled() {
    let a = AutoNatConfig { max_probes_per_peer: 1, max_probes_total: 9, ..AutoNatConfig::default() };
    let c = a.to_libp2p();
    assert!(!c.only_global_ips, "loopback and private networks must be probed for real");
    assert_eq!(c.throttle_clients_peer_max, 1);
    assert_eq!(c.throttle_clients_global_max, 9);
    assert_eq!(c.throttle_clients_period, a.probe_period);
    assert_eq!(c.boot_delay, a.boot_delay);
    assert_eq!(c.retry_interval, a.retry_interval);
    assert_eq!(c.confidence_max, a.confidence_max);
    assert!(!c.use_connected, "the event loop chooses the servers, not every connected peer");
}
