//! Unit tests of `event_loop.rs`.

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
