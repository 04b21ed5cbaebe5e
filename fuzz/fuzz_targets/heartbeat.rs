//! Heartbeats as gossip delivers them (`SignedHeartbeat::decode`), and, so the fuzzer reaches
//! the field checks behind the signature, any decodable `Heartbeat` re-signed with the fixed key:
//! it must be accepted exactly when `validate` accepts it and it fits the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_proto::{Heartbeat, MAX_HEARTBEAT_BYTES, SignedHeartbeat};

fuzz_target!(|data: &[u8]| {
    if let Ok(got) = SignedHeartbeat::decode(data) {
        assert!(got.heartbeat.validate().is_ok());
        assert_eq!(got.peer_id.to_bytes(), got.heartbeat.peer_id);
    }
    let Ok(mut hb) = Heartbeat::decode(data) else { return };
    let valid = hb.validate().is_ok();
    let kp = quiver_fuzz_seeds::key();
    hb.peer_id = kp.public().to_peer_id().to_bytes();
    let signed = hb.sign_and_encode(&kp);
    match SignedHeartbeat::decode(&signed) {
        Ok(got) => {
            assert!(valid && signed.len() <= MAX_HEARTBEAT_BYTES);
            assert_eq!(got.heartbeat.encode_to_vec(), hb.encode_to_vec());
        }
        Err(e) => assert!(!valid || signed.len() > MAX_HEARTBEAT_BYTES, "valid heartbeat refused: {e}"),
    }
});
