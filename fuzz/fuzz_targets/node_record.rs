//! The check on DHT node records peers ask us to store (`quiver_proto::dht::verify_node_record`,
//! called by quiver-net on every inbound PutRecord) and on provider keys. Input: one byte of key
//! length, the key, then the value; the key is tried as given and under the node-record prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_proto::dht::{NODE_RECORD_PREFIX, node_record_key, valid_provider_key, verify_node_record};

fuzz_target!(|data: &[u8]| {
    let (key, value) = quiver_fuzz_seeds::split_node_record(data);
    for key in [key.to_vec(), [NODE_RECORD_PREFIX, key].concat()] {
        if let Ok(hb) = verify_node_record(&key, value) {
            // Accepted only under the key of the peer that signed it.
            assert_eq!(key, node_record_key(&hb.peer_id));
        }
        let _ = valid_provider_key(&key);
    }
});
