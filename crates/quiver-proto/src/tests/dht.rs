//! Unit tests of `dht.rs`.

use super::*;
use crate::Heartbeat;
use libp2p_identity::Keypair;

#[test]
fn node_records_must_be_signed_by_the_peer_they_name() {
    let kp = Keypair::generate_ed25519();
    let peer = kp.public().to_peer_id();
    let hb = Heartbeat { peer_id: peer.to_bytes(), agent_version: "t".into(), timestamp_ms: 1, ..Default::default() };
    let value = hb.sign_and_encode(&kp);
    assert_eq!(verify_node_record(&node_record_key(&peer), &value).unwrap().peer_id, peer);
    let other = PeerId::random();
    assert!(matches!(verify_node_record(&node_record_key(&other), &value), Err(ProtoError::PeerMismatch { .. })));
    assert!(matches!(verify_node_record(b"/other/key", &value), Err(ProtoError::Invalid { field: "key", .. })));
    assert!(matches!(verify_node_record(b"/quiver/node/xyz", &value), Err(ProtoError::Invalid { field: "key", .. })));
    assert!(verify_node_record(&node_record_key(&peer), &[1, 2, 3]).is_err());
}

#[test]
fn provider_keys() {
    assert!(valid_provider_key(b"/quiver/model/sha256/00"));
    assert!(!valid_provider_key(b"/quiver/node/x"));
    assert!(!valid_provider_key(&[MODEL_KEY_PREFIX, &[b'a'; MAX_PROVIDER_KEY_LEN]].concat()));
}
