//! Unit tests of `signed.rs`.

use super::*;

#[test]
fn round_trip_and_tamper() {
    let kp = Keypair::generate_ed25519();
    let rec = sign(&kp, "test/1", b"hello".to_vec());
    let bytes = rec.encode_to_vec();
    let ok = SignedRecord::decode_verified(&bytes, "test/1", 1024).unwrap();
    assert_eq!(ok.signer, kp.public().to_peer_id());
    assert_eq!(ok.payload, b"hello");

    // Another domain is refused.
    assert!(matches!(SignedRecord::decode_verified(&bytes, "test/2", 1024), Err(ProtoError::WrongDomain { .. })));
    // A changed payload is refused.
    let mut bad = rec.clone();
    bad.payload = b"hellO".to_vec();
    assert!(matches!(bad.verify("test/1"), Err(ProtoError::BadSignature)));
    // A key swapped for another's is refused.
    let mut bad = rec.clone();
    bad.public_key = Keypair::generate_ed25519().public().encode_protobuf();
    assert!(matches!(bad.verify("test/1"), Err(ProtoError::BadSignature)));
    // Garbage key bytes are a typed error.
    let mut bad = rec;
    bad.public_key = vec![1, 2, 3];
    assert!(matches!(bad.verify("test/1"), Err(ProtoError::BadKey)));
    // Oversized input is refused before decoding.
    assert!(matches!(SignedRecord::decode_verified(&bytes, "test/1", 4), Err(ProtoError::TooLarge { .. })));
}

#[test]
fn long_domain_with_multibyte_char_at_the_cut_is_refused_without_panic() {
    // 63 ASCII bytes, then a 2-byte character across the 64-byte cut: truncating the domain for
    // the error message must not split the character.
    let kp = Keypair::generate_ed25519();
    let mut rec = sign(&kp, "test/1", b"x".to_vec());
    rec.domain = format!("{}é{}", "a".repeat(63), "b".repeat(10));
    match rec.verify("test/1") {
        Err(ProtoError::WrongDomain { found, .. }) => assert_eq!(found, "a".repeat(63)),
        other => panic!("expected WrongDomain, got {other:?}"),
    }
}
