//! Property tests of signed records: sign → verify gives back the payload and signer, any single
//! flipped bit of a signed record makes it fail, heartbeats are accepted exactly when every field
//! is within its limit, receipts verify only for their provider, and DHT node records only under
//! their signer's key.

use crate::common::*;
use libp2p_identity::{Keypair, PeerId};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use quiver_proto::dht::{node_record_key, verify_node_record};
use quiver_proto::heartbeat::{
    MAX_ADDR_BYTES, MAX_AGENT_LEN, MAX_LISTEN_ADDRS, MAX_MODEL_NAME, MAX_MODELS, MAX_NETWORK_SIZE_ESTIMATE,
};
use quiver_proto::infer::RECEIPT_DOMAIN;
use quiver_proto::*;

/// Fixed keys: the tests are deterministic.
fn key(n: u8) -> Keypair {
    Keypair::ed25519_from_bytes([n; 32]).expect("32 bytes are an Ed25519 secret")
}

fn flip(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// The heartbeat limits, restated here rather than taken from `Heartbeat::validate`.
fn within_limits(hb: &Heartbeat) -> bool {
    hb.agent_version.len() <= MAX_AGENT_LEN
        && hb.listen_addrs.len() <= MAX_LISTEN_ADDRS
        && hb.listen_addrs.iter().all(|a| (1..=MAX_ADDR_BYTES).contains(&a.len()))
        && hb.models.len() <= MAX_MODELS
        && hb.models.iter().all(|m| (1..=MAX_MODEL_NAME).contains(&m.name.len()) && m.sha256.len() == 32)
        && hb.cpu_load.is_finite()
        && (0.0..=1024.0).contains(&hb.cpu_load)
        && hb.tokens_per_sec.is_finite()
        && (0.0..=1e6).contains(&hb.tokens_per_sec)
        && hb.batch_tokens_per_sec.is_finite()
        && (0.0..=1e6).contains(&hb.batch_tokens_per_sec)
        && hb.network_size_estimate <= MAX_NETWORK_SIZE_ESTIMATE
        && hb.timestamp_ms != 0
}

/// Heartbeats whose every field is within its limit (most of them; sizes can still add up
/// past the encoded limit).
fn bounded_heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        "[ -~]{0,128}",
        vec(
            bytes(MAX_ADDR_BYTES - 1).prop_map(|mut a| {
                a.push(4);
                a
            }),
            0..=8,
        ),
        vec(
            ("[a-z0-9.-]{1,128}", vec(any::<u8>(), 32)).prop_map(|(name, sha256)| ModelInfo {
                name,
                sha256,
                ..Default::default()
            }),
            0..=6,
        ),
        (0.0f32..=1024.0, 0.0f32..=1e6, 1u64.., any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>(), 0.0f32..=1e6),
        0..=MAX_NETWORK_SIZE_ESTIMATE,
    )
        .prop_map(
            |(
                agent_version,
                listen_addrs,
                models,
                (
                    cpu_load,
                    tokens_per_sec,
                    timestamp_ms,
                    seq,
                    free_slots,
                    queue_depth,
                    uptime_secs,
                    batch_tokens_per_sec,
                ),
                network_size_estimate,
            )| Heartbeat {
                peer_id: Vec::new(),
                agent_version,
                listen_addrs,
                models,
                cpu_load,
                free_slots,
                uptime_secs,
                timestamp_ms,
                seq,
                queue_depth,
                tokens_per_sec,
                batch_tokens_per_sec,
                network_size_estimate,
            },
        )
}

/// One field pushed just past its limit.
#[derive(Debug, Clone)]
enum OutOfLimit {
    AgentTooLong,
    TooManyAddrs,
    EmptyAddr,
    AddrTooLong,
    TooManyModels,
    EmptyModelName,
    ModelNameTooLong,
    ShortSha,
    CpuLoad(f32),
    TokensPerSec(f32),
    BatchTokensPerSec(f32),
    NetworkSize(u64),
    NoTimestamp,
}

fn out_of_limit() -> impl Strategy<Value = OutOfLimit> {
    use OutOfLimit::*;
    let bad_float =
        |max: f32| prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-0.5f32), Just(max * 1.01), -1e9f32..-1e-3];
    prop_oneof![
        Just(AgentTooLong),
        Just(TooManyAddrs),
        Just(EmptyAddr),
        Just(AddrTooLong),
        Just(TooManyModels),
        Just(EmptyModelName),
        Just(ModelNameTooLong),
        Just(ShortSha),
        bad_float(1024.0).prop_map(CpuLoad),
        bad_float(1e6).prop_map(TokensPerSec),
        bad_float(1e6).prop_map(BatchTokensPerSec),
        (MAX_NETWORK_SIZE_ESTIMATE + 1..).prop_map(NetworkSize),
        Just(NoTimestamp),
    ]
}

fn apply(hb: &mut Heartbeat, change: &OutOfLimit) {
    use OutOfLimit::*;
    let model = || ModelInfo { name: "m".into(), sha256: vec![1; 32], ..Default::default() };
    match change {
        AgentTooLong => hb.agent_version = "a".repeat(MAX_AGENT_LEN + 1),
        TooManyAddrs => hb.listen_addrs = vec![vec![4]; MAX_LISTEN_ADDRS + 1],
        EmptyAddr => hb.listen_addrs.push(Vec::new()),
        AddrTooLong => hb.listen_addrs.push(vec![4; MAX_ADDR_BYTES + 1]),
        TooManyModels => hb.models = vec![model(); MAX_MODELS + 1],
        EmptyModelName => hb.models.push(ModelInfo { name: String::new(), ..model() }),
        ModelNameTooLong => hb.models.push(ModelInfo { name: "n".repeat(MAX_MODEL_NAME + 1), ..model() }),
        ShortSha => hb.models.push(ModelInfo { sha256: vec![1; 31], ..model() }),
        CpuLoad(f) => hb.cpu_load = *f,
        TokensPerSec(f) => hb.tokens_per_sec = *f,
        BatchTokensPerSec(f) => hb.batch_tokens_per_sec = *f,
        NetworkSize(n) => hb.network_size_estimate = *n,
        NoTimestamp => hb.timestamp_ms = 0,
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn sign_then_verify_gives_back_payload_and_signer(n in 1u8..4, domain in "[ -~]{0,64}", payload in bytes(2048)) {
        let kp = key(n);
        let domain: &'static str = Box::leak(domain.into_boxed_str());
        let bytes = sign(&kp, domain, payload.clone()).encode_to_vec();
        let got = SignedRecord::decode_verified(&bytes, domain, bytes.len()).unwrap();
        prop_assert_eq!(got.signer, kp.public().to_peer_id());
        prop_assert_eq!(got.payload, payload);
        let short = SignedRecord::decode_verified(&bytes, domain, bytes.len() - 1);
        prop_assert!(matches!(short, Err(ProtoError::TooLarge { .. })), "{:?}", short);
    }

    #[test]
    fn any_single_flipped_bit_fails_verification(payload in bytes(300), bit in any::<prop::sample::Index>()) {
        let domain = "quiver/test/1";
        let mut bytes = sign(&key(1), domain, payload).encode_to_vec();
        let bit = bit.index(bytes.len() * 8);
        flip(&mut bytes, bit);
        prop_assert!(SignedRecord::decode_verified(&bytes, domain, usize::MAX).is_err());
    }

    #[test]
    fn any_single_flipped_bit_of_a_field_fails_verification(
        payload in bytes(300),
        field in 0usize..3,
        bit in any::<prop::sample::Index>(),
    ) {
        let domain = "quiver/test/1";
        let mut rec = sign(&key(2), domain, payload);
        let target = match field {
            0 => &mut rec.public_key,
            1 => &mut rec.signature,
            _ => &mut rec.payload,
        };
        prop_assume!(!target.is_empty());
        let n = target.len() * 8;
        flip(target, bit.index(n));
        prop_assert!(rec.verify(domain).is_err());
    }

    #[test]
    fn a_record_signed_for_one_domain_fails_for_any_other(payload in bytes(64), other in "[ -~]{0,70}") {
        prop_assume!(other != RECEIPT_DOMAIN);
        let other: &'static str = Box::leak(other.into_boxed_str());
        let rec = sign(&key(1), other, payload);
        let got = rec.verify(RECEIPT_DOMAIN);
        prop_assert!(matches!(got, Err(ProtoError::WrongDomain { .. })), "{:?}", got);
    }

    /// A record of arbitrary bytes is refused for every domain: for the wrong domain with
    /// `WrongDomain` naming the expected one and at most 64 bytes of the found one (cut on a
    /// character boundary), for the right domain by its key or its signature.
    #[test]
    fn any_domain_is_refused_without_panic(rec in signed_record(), right_domain in prop::bool::weighted(0.3)) {
        for expected in [RECEIPT_DOMAIN, HEARTBEAT_DOMAIN] {
            let mut rec = rec.clone();
            if right_domain {
                rec.domain = expected.to_owned();
            }
            let sent = rec.domain.clone();
            let got = rec.verify(expected);
            if sent == expected {
                prop_assert!(matches!(got, Err(ProtoError::BadKey | ProtoError::BadSignature)), "{:?}", got);
                continue;
            }
            match got {
                Err(ProtoError::WrongDomain { expected: named, found }) => {
                    prop_assert_eq!(named, expected);
                    prop_assert!(sent.starts_with(&found), "{:?} is not a prefix of {:?}", found, sent);
                    prop_assert!(found.len() <= 64, "{} bytes of domain kept", found.len());
                    // Cut at the last character boundary at or before 64 bytes: at most 3 short.
                    prop_assert!(found.len() + 3 >= sent.len().min(64), "{:?} cut to {:?}", sent, found);
                }
                other => prop_assert!(false, "domain {:?} checked for {:?}: {:?}", sent, expected, other),
            }
        }
    }

    #[test]
    fn heartbeats_are_accepted_exactly_within_their_limits(
        hb in prop_oneof![3 => bounded_heartbeat(), 1 => heartbeat_with(any_float())],
        own_peer_id in prop::bool::weighted(0.9),
        n in 1u8..4,
    ) {
        let kp = key(n);
        let mut hb = hb;
        if own_peer_id {
            hb.peer_id = kp.public().to_peer_id().to_bytes();
        }
        let bytes = hb.sign_and_encode(&kp);
        let got = SignedHeartbeat::decode(&bytes);
        let names_signer = PeerId::from_bytes(&hb.peer_id).is_ok_and(|p| p == kp.public().to_peer_id());
        if bytes.len() > MAX_HEARTBEAT_BYTES {
            prop_assert!(matches!(got, Err(ProtoError::TooLarge { .. })), "{:?}", got);
        } else if !names_signer {
            prop_assert!(got.is_err());
        } else if within_limits(&hb) {
            let got = got.unwrap();
            prop_assert_eq!(got.peer_id, kp.public().to_peer_id());
            prop_assert_eq!(got.heartbeat.encode_to_vec(), hb.encode_to_vec());
        } else {
            prop_assert!(matches!(got, Err(ProtoError::Invalid { .. })), "{:?}", got);
        }
    }

    #[test]
    fn one_field_past_its_limit_is_refused(hb in bounded_heartbeat(), change in out_of_limit()) {
        let kp = key(3);
        let mut hb = hb;
        hb.peer_id = kp.public().to_peer_id().to_bytes();
        hb.listen_addrs.truncate(2);
        apply(&mut hb, &change);
        let got = SignedHeartbeat::decode(&hb.sign_and_encode(&kp));
        prop_assert!(matches!(got, Err(ProtoError::Invalid { .. })), "{:?}: {:?}", change, got);
    }

    #[test]
    fn oversize_heartbeats_are_refused_before_decoding(extra in 1usize..4096, fill in any::<u8>()) {
        let bytes = vec![fill; MAX_HEARTBEAT_BYTES + extra];
        let got = SignedHeartbeat::decode(&bytes);
        prop_assert!(matches!(got, Err(ProtoError::TooLarge { .. })), "{:?}", got);
    }

    #[test]
    fn receipts_verify_for_their_provider_only(receipt in receipt(), n in 1u8..4, bit in any::<prop::sample::Index>()) {
        let kp = key(n);
        let me = kp.public().to_peer_id();
        let receipt = Receipt { provider: me.to_bytes(), ..receipt };
        let signed = receipt.sign(&kp);
        prop_assert_eq!(Receipt::verify(signed.clone(), &me).unwrap(), receipt.clone());
        // Through the wire: inside an InferResponse frame body.
        let resp = InferResponse { kind: Some(infer_response::Kind::Receipt(signed.clone())) };
        let Some(infer_response::Kind::Receipt(back)) = InferResponse::decode(resp.encode_to_vec().as_slice()).unwrap().kind else {
            return Err(TestCaseError::fail("not a receipt"));
        };
        prop_assert_eq!(Receipt::verify(back, &me).unwrap(), receipt.clone());
        // Another provider, a flipped bit anywhere in the signed record, a receipt naming someone else.
        let other = key(n + 1).public().to_peer_id();
        prop_assert!(Receipt::verify(signed.clone(), &other).is_err());
        let mut bytes = signed.encode_to_vec();
        let bit = bit.index(bytes.len() * 8);
        flip(&mut bytes, bit);
        if let Ok(rec) = SignedRecord::decode(bytes.as_slice()) {
            prop_assert!(Receipt::verify(rec, &me).is_err());
        }
        let naming_other = Receipt { provider: other.to_bytes(), ..receipt };
        prop_assert!(Receipt::verify(naming_other.sign(&kp), &me).is_err());
    }

    #[test]
    fn node_records_verify_only_under_their_signers_key(hb in bounded_heartbeat(), n in 1u8..4, junk_key in bytes(60)) {
        let kp = key(n);
        let me = kp.public().to_peer_id();
        let hb = Heartbeat { peer_id: me.to_bytes(), listen_addrs: Vec::new(), ..hb };
        let value = hb.sign_and_encode(&kp);
        prop_assert_eq!(verify_node_record(&node_record_key(&me), &value).unwrap().peer_id, me);
        let other = key(n + 1).public().to_peer_id();
        prop_assert!(verify_node_record(&node_record_key(&other), &value).is_err());
        prop_assume!(junk_key != node_record_key(&me));
        prop_assert!(verify_node_record(&junk_key, &value).is_err());
        let junk_under_prefix = [dht::NODE_RECORD_PREFIX, &junk_key].concat();
        if junk_under_prefix != node_record_key(&me) {
            prop_assert!(verify_node_record(&junk_under_prefix, &value).is_err());
        }
    }

    #[test]
    fn node_record_checks_never_panic(key in bytes(80), value in bytes(1024)) {
        let _ = verify_node_record(&key, &value);
        let _ = verify_node_record(&[dht::NODE_RECORD_PREFIX, &key].concat(), &value);
        let _ = dht::valid_provider_key(&key);
    }
}
