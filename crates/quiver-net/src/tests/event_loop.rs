//! Unit tests of `event_loop/`.

use super::*;

#[test]
fn dialable_addresses() {
    assert!(is_dialable(&"/ip4/127.0.0.1/tcp/4001".parse().unwrap()));
    assert!(is_dialable(&"/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap()));
    assert!(!is_dialable(&"/ip4/0.0.0.0/tcp/4001".parse().unwrap()));
    assert!(!is_dialable(&"/ip4/127.0.0.1/tcp/0".parse().unwrap()));
    assert!(!is_dialable(&"/ip4/127.0.0.1/udp/4001".parse().unwrap()));
    assert!(is_dialable(&"/memory/1234".parse().unwrap()));
    assert!(!is_dialable(&"/memory/0".parse().unwrap()));
}

#[test]
fn node_records_must_be_signed_by_the_peer_they_name() {
    let kp = libp2p::identity::Keypair::generate_ed25519();
    let peer = kp.public().to_peer_id();
    let hb = quiver_proto::Heartbeat {
        peer_id: peer.to_bytes(),
        agent_version: "t".into(),
        timestamp_ms: 1,
        ..Default::default()
    };
    let value = hb.sign_and_encode(&kp);
    assert!(valid_node_record(&kad::Record::new(node_record_key(&peer), value.clone())));
    let other = PeerId::random();
    assert!(!valid_node_record(&kad::Record::new(node_record_key(&other), value.clone())));
    assert!(!valid_node_record(&kad::Record::new(b"/other/key".to_vec(), value)));
    assert!(!valid_node_record(&kad::Record::new(node_record_key(&peer), vec![1, 2, 3])));
}

#[test]
fn routing_table_takes_only_direct_addresses() {
    let relay = PeerId::random();
    let circuit: Multiaddr = format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}/p2p-circuit").parse().unwrap();
    // Dialable, but relayed: `on_identify` keeps such addresses out of the routing table.
    assert!(is_dialable(&circuit) && is_relayed(&circuit));
    let addr = |s: &str| s.parse::<Multiaddr>().unwrap();
    let mut meta = PeerMeta {
        listen_addrs: vec![
            circuit,
            addr("/ip4/127.0.0.1/udp/4001/quic-v1"),
            addr("/ip4/198.18.0.1/udp/4001/quic-v1"),
            addr("/ip4/198.18.0.1/tcp/4001"),
        ],
        ..PeerMeta::default()
    };
    meta.addresses.insert(addr("/ip4/0.0.0.0/tcp/1"));
    // Not connected: no announced address is known to route from here.
    assert!(meta.direct_addrs().is_empty());
    meta.addresses.insert(addr("/ip4/198.18.0.1/tcp/4001"));
    meta.connections.insert(ConnectionId::new_unchecked(1), (addr("/ip4/198.18.0.1/tcp/4001"), false));
    // Its QUIC address on the IP we reached it on; never its loopback, never a relayed one.
    assert_eq!(meta.direct_addrs(), vec![addr("/ip4/198.18.0.1/udp/4001/quic-v1"), addr("/ip4/198.18.0.1/tcp/4001")]);
}

#[test]
fn only_peers_never_met_through_a_relay_probe_our_reachability() {
    let addr = |s: &str| s.parse::<Multiaddr>().unwrap();
    let relay = PeerId::random();
    let mut meta = PeerMeta::default();
    // Not connected: nobody to ask.
    assert!(!meta.may_probe_reachability());
    meta.connections.insert(ConnectionId::new_unchecked(1), (addr("/ip4/198.18.0.1/tcp/4001"), false));
    assert!(meta.may_probe_reachability(), "a peer we reached directly may dial us back");

    // A peer that first reached us through a relay, then directly after a hole punch: its
    // punch opened our NAT to it alone, so its word on our reachability is worthless.
    let mut punched = PeerMeta::default();
    let circuit = addr(&format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}/p2p-circuit"));
    punched.connections.insert(ConnectionId::new_unchecked(2), (circuit, true));
    punched.reached_through_relay = true;
    assert!(!punched.may_probe_reachability());
    punched.connections.insert(ConnectionId::new_unchecked(3), (addr("/ip4/198.18.0.3/udp/5000/quic-v1"), false));
    assert!(!punched.may_probe_reachability(), "still not after its direct connection");
    punched.connections.remove(&ConnectionId::new_unchecked(2));
    assert!(!punched.may_probe_reachability(), "nor once the relayed connection has closed");
}

#[test]
fn a_freed_autonat_place_goes_to_another_eligible_peer() {
    let addr = |s: &str| s.parse::<Multiaddr>().unwrap();
    let direct = |n: u64| {
        let mut m = PeerMeta::default();
        m.connections
            .insert(ConnectionId::new_unchecked(n as usize), (addr(&format!("/ip4/198.18.0.{n}/tcp/4001")), false));
        m
    };
    let (server, waiting, punched) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut peers: HashMap<PeerId, PeerMeta> = HashMap::new();
    peers.insert(server, direct(1));
    let mut p = direct(3);
    p.reached_through_relay = true;
    peers.insert(punched, p);
    let servers: HashSet<PeerId> = [server].into_iter().collect();
    // Only a peer met through a relay is left: nobody takes the place.
    assert_eq!(next_autonat_server(&peers, &servers), None);
    peers.insert(waiting, direct(2));
    assert_eq!(next_autonat_server(&peers, &servers), Some(waiting), "a directly connected peer takes it");
    // Not one that is already a server.
    let servers: HashSet<PeerId> = [server, waiting].into_iter().collect();
    assert_eq!(next_autonat_server(&peers, &servers), None);
}
