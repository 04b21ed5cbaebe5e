//! Unit tests of `reachability.rs`: the state machine and address helpers.

use super::*;

fn addr(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

#[test]
fn auto_serves_the_dht_only_when_dialed_back() {
    let mut r = ReachabilityState::new(KadMode::Auto, true);
    assert_eq!(r.reachability(), Reachability::Unknown);
    assert!(!r.kad_server() && !r.offers_relay() && !r.wants_relays());

    // One completed dial-back is proof.
    assert!(r.probe_answer(true));
    assert!(!r.probe_answer(true), "no change reported twice");
    assert_eq!(r.reachability(), Reachability::Public);
    assert!(r.kad_server() && r.offers_relay() && !r.wants_relays());

    // One failed dial-back may be a race; two in a row make the node private.
    assert!(!r.probe_answer(false));
    assert_eq!(r.reachability(), Reachability::Public);
    assert!(r.probe_answer(false));
    assert_eq!(r.reachability(), Reachability::Private);
    assert!(!r.kad_server() && !r.offers_relay() && r.wants_relays());

    // A success in between resets the count.
    assert!(r.probe_answer(true));
    assert!(!r.probe_answer(false));
    assert!(r.kad_server());
}

#[test]
fn a_nated_node_turns_private_from_unknown() {
    let mut r = ReachabilityState::new(KadMode::Auto, true);
    assert!(!r.probe_answer(false));
    assert_eq!(r.reachability(), Reachability::Unknown);
    assert!(!r.kad_server() && !r.wants_relays(), "no relay slot asked for on one failure");
    assert!(r.probe_answer(false));
    assert_eq!(r.reachability(), Reachability::Private);
}

#[test]
fn reservations_make_a_private_node_relayed() {
    let mut r = ReachabilityState::new(KadMode::Auto, true);
    r.probe_answer(false);
    r.probe_answer(false);
    let relay = PeerId::random();
    let a = addr(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}/p2p-circuit"));
    r.reservation_accepted(relay, a.clone());
    r.reservation_accepted(relay, a.clone());
    assert_eq!(r.reachability(), Reachability::Relayed);
    assert_eq!(r.relayed_addrs(), vec![a]);
    assert_eq!(r.relays(), vec![relay]);
    assert!(!r.kad_server(), "a relayed node is still no DHT server");
    assert!(r.wants_relays());
    r.reservation_lost(&relay);
    assert_eq!(r.reachability(), Reachability::Private);
    assert!(r.relayed_addrs().is_empty());
}

#[test]
fn forced_modes_win() {
    let mut server = ReachabilityState::new(KadMode::Server, true);
    server.probe_answer(false);
    server.probe_answer(false);
    assert!(server.kad_server() && server.offers_relay() && !server.wants_relays());

    let mut client = ReachabilityState::new(KadMode::Client, true);
    client.probe_answer(true);
    assert!(!client.kad_server());
    assert!(client.offers_relay(), "reachable, so it can relay even as a DHT client");
    client.probe_answer(false);
    client.probe_answer(false);
    assert!(client.wants_relays(), "a NATed DHT client still needs a relayed address");

    let mut no_relay = ReachabilityState::new(KadMode::Server, false);
    no_relay.probe_answer(true);
    assert!(!no_relay.offers_relay());
}

#[test]
fn relayed_address_helpers() {
    let relay = PeerId::random();
    let me = PeerId::random();
    let circuit = addr(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{me}"));
    assert!(is_relayed(&circuit));
    assert!(!is_relayed(&addr("/ip4/198.18.0.1/tcp/4001")));

    let want = addr(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}/p2p-circuit"));
    assert_eq!(circuit_listen_addr(&addr("/ip4/198.18.0.1/tcp/4001"), relay), Some(want.clone()));
    assert_eq!(circuit_listen_addr(&addr(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}")), relay), Some(want));
    let quic = circuit_listen_addr(&addr("/ip4/198.18.0.1/udp/4001/quic-v1"), relay).unwrap();
    assert!(quic.to_string().ends_with("/p2p-circuit"));
    // Not through another peer's address, not through a relay, not without a transport.
    assert_eq!(circuit_listen_addr(&addr(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{me}")), relay), None);
    assert_eq!(circuit_listen_addr(&circuit, relay), None);
    assert_eq!(circuit_listen_addr(&addr("/ip4/198.18.0.1"), relay), None);
}
