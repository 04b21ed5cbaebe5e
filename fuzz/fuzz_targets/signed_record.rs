//! SignedRecord decode + verify, for each domain the node verifies, with the size limits it uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_proto::infer::{MAX_RESPONSE_BYTES, RECEIPT_DOMAIN};
use quiver_proto::{HEARTBEAT_DOMAIN, MAX_HEARTBEAT_BYTES, SignedRecord};

fuzz_target!(|data: &[u8]| {
    let hb = SignedRecord::decode_verified(data, HEARTBEAT_DOMAIN, MAX_HEARTBEAT_BYTES);
    let receipt = SignedRecord::decode_verified(data, RECEIPT_DOMAIN, MAX_RESPONSE_BYTES);
    // Nothing verifies for both domains.
    assert!(hb.is_err() || receipt.is_err());
    // The domain check with the whole input as the domain: far more inputs reach it this way
    // than through a decodable record (this finds a domain cut inside a character in seconds).
    let domain = String::from_utf8_lossy(data).into_owned();
    let _ = SignedRecord { domain, ..Default::default() }.verify(HEARTBEAT_DOMAIN);
    if let Ok(record) = SignedRecord::decode(data) {
        let domain = record.domain.clone();
        if let Ok(payload) = record.clone().verify(HEARTBEAT_DOMAIN) {
            assert_eq!(domain, HEARTBEAT_DOMAIN);
            assert_eq!(payload.payload, record.payload);
            assert_eq!(payload.signer, payload.public_key.to_peer_id());
        }
    }
});
