//! Receipt verification: any SignedRecord checked against the fixed provider, and, so the fuzzer
//! reaches past the signature, any decodable `Receipt` signed by that provider must verify and
//! come back with the same encoding exactly when it names that provider.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_proto::{Receipt, SignedRecord};

fuzz_target!(|data: &[u8]| {
    let kp = quiver_fuzz_seeds::key();
    let me = kp.public().to_peer_id();
    if let Ok(record) = SignedRecord::decode(data)
        && let Ok(receipt) = Receipt::verify(record, &me)
    {
        assert_eq!(receipt.provider, me.to_bytes());
    }
    let Ok(receipt) = Receipt::decode(data) else { return };
    let names_me = receipt.provider == me.to_bytes();
    match Receipt::verify(receipt.sign(&kp), &me) {
        Ok(back) => {
            assert!(names_me);
            assert_eq!(back.encode_to_vec(), receipt.encode_to_vec());
        }
        Err(e) => assert!(!names_me, "a receipt signed by its provider was refused: {e}"),
    }
});
