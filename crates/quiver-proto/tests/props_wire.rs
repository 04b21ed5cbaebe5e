//! Property tests of the wire encoding: every message survives encode → decode unchanged, frames
//! survive write → read for any payload under the limit and are refused above it, the LEB128
//! length prefix's edge cases are refused with the right error, and no decoder or validator
//! panics on any input.

use std::fmt::Debug;

use crate::common::*;
use futures::executor::block_on;
use futures::io::Cursor;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use quiver_proto::infer::{MAX_CLAIM_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use quiver_proto::*;

/// encode → decode gives the same message, and encoding that again gives the same bytes.
fn round_trip<M: Message + Default + PartialEq + Debug>(m: &M) -> Result<(), TestCaseError> {
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, m);
    prop_assert_eq!(back.encode_to_vec(), bytes);
    Ok(())
}

/// The unsigned LEB128 encoding of `n`, written independently of the crate's writer.
fn leb128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

fn read<M: Message + Default>(bytes: Vec<u8>, max: usize) -> (Result<M, FrameError>, u64) {
    let mut r = Cursor::new(bytes);
    let got = block_on(read_frame::<_, M>(&mut r, max));
    (got, r.position())
}

fn write(m: &impl Message) -> Vec<u8> {
    let mut w = Cursor::new(Vec::new());
    block_on(write_frame(&mut w, m)).expect("writing to memory");
    w.into_inner()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn every_message_round_trips(
        rec in signed_record(),
        hb in heartbeat(),
        req in infer_request(),
        resp in infer_response(),
        ann in job_announcement(),
        claim in claim(),
        chosen in any::<bool>(),
        receipt in receipt(),
        report in reputation_report(),
    ) {
        round_trip(&rec)?;
        round_trip(&hb)?;
        round_trip(&req)?;
        round_trip(&resp)?;
        round_trip(&ann)?;
        round_trip(&claim)?;
        round_trip(&ClaimAck { chosen })?;
        round_trip(&receipt)?;
        round_trip(&report)?;
        if let Some(input) = &req.input {
            round_trip(input)?;
        }
        if let Some(params) = &req.params {
            round_trip(params)?;
        }
    }

    #[test]
    fn nan_floats_keep_their_bits(hb in heartbeat_with(any_float()), req in infer_request_with(any_float())) {
        let bytes = hb.encode_to_vec();
        prop_assert_eq!(Heartbeat::decode(bytes.as_slice()).unwrap().encode_to_vec(), bytes);
        let bytes = req.encode_to_vec();
        prop_assert_eq!(InferRequest::decode(bytes.as_slice()).unwrap().encode_to_vec(), bytes);
    }

    #[test]
    fn frames_round_trip_at_and_under_the_limit(payload in bytes(4096), domain in text(20), slack in 0usize..64) {
        let msg = SignedRecord { domain, payload, ..Default::default() };
        let len = msg.encoded_len();
        let bytes = write(&msg);
        let prefix = leb128(len as u64);
        prop_assert_eq!(&bytes[..bytes.len() - len], prefix.as_slice());
        for max in [len, len + slack] {
            let (got, pos) = read::<SignedRecord>(bytes.clone(), max);
            prop_assert_eq!(got.unwrap(), msg.clone());
            prop_assert_eq!(pos as usize, bytes.len());
        }
    }

    #[test]
    fn frames_over_the_limit_are_refused_before_the_body(payload in bytes(4096), under in 1usize..300) {
        let msg = SignedRecord { payload, ..Default::default() };
        let len = msg.encoded_len();
        prop_assume!(len >= under);
        let bytes = write(&msg);
        let prefix = leb128(len as u64).len();
        let (got, pos) = read::<SignedRecord>(bytes, len - under);
        prop_assert!(
            matches!(got, Err(FrameError::TooLarge { len: l, max }) if l == len as u64 && max == len - under),
            "{:?}", got
        );
        prop_assert_eq!(pos as usize, prefix, "the body must not be read");
    }

    #[test]
    fn a_huge_declared_length_is_refused_without_allocating(len in (MAX_REQUEST_BYTES as u64 + 1).., tail in bytes(8)) {
        let mut bytes = leb128(len);
        bytes.extend(tail);
        let (got, _) = read::<InferRequest>(bytes, MAX_REQUEST_BYTES);
        prop_assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{:?}", got);
    }

    #[test]
    fn sequences_of_frames_read_back_in_order(msgs in vec(infer_response(), 0..12)) {
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(write(m));
        }
        let mut r = Cursor::new(bytes);
        for m in &msgs {
            let got: InferResponse = block_on(read_frame(&mut r, MAX_RESPONSE_BYTES)).unwrap();
            prop_assert_eq!(&got, m);
        }
        let end = block_on(read_frame::<_, InferResponse>(&mut r, MAX_RESPONSE_BYTES));
        prop_assert!(matches!(end, Err(FrameError::Closed)), "{:?}", end);
    }

    #[test]
    fn a_truncated_length_prefix_is_malformed(len in 128u64..1 << 40) {
        let mut prefix = leb128(len);
        prefix.pop();
        for cut in 1..=prefix.len() {
            let (got, _) = read::<ClaimAck>(prefix[..cut].to_vec(), usize::MAX);
            prop_assert!(matches!(got, Err(FrameError::BadLength)), "{:?}", got);
        }
    }

    #[test]
    fn a_truncated_body_is_an_error(payload in bytes(600), cut in any::<prop::sample::Index>()) {
        let bytes = write(&SignedRecord { payload, ..Default::default() });
        let end = cut.index(bytes.len());
        let (got, _) = read::<SignedRecord>(bytes[..end].to_vec(), usize::MAX);
        prop_assert!(got.is_err(), "{} of {} bytes read as a frame", end, bytes.len());
    }

    #[test]
    fn non_minimal_prefixes_in_range_are_read(payload in bytes(300), pad in 1usize..4) {
        let msg = SignedRecord { payload, ..Default::default() };
        let len = msg.encoded_len() as u64;
        let mut prefix = leb128(len);
        let prefix_len = prefix.len();
        // Pad with zero groups, keeping the encoding within 10 bytes (the longest u64 varint).
        let pad = pad.min(10 - prefix_len);
        if let Some(last) = prefix.last_mut() {
            *last |= 0x80;
        }
        prefix.extend(std::iter::repeat_n(0x80, pad - 1));
        prefix.push(0);
        let mut bytes = prefix;
        bytes.extend(msg.encode_to_vec());
        let (got, _) = read::<SignedRecord>(bytes, usize::MAX);
        prop_assert_eq!(got.unwrap(), msg);
    }

    #[test]
    fn any_bytes_on_a_stream_never_panic(bytes in bytes(2048), max in prop_oneof![Just(MAX_CLAIM_BYTES), Just(MAX_RESPONSE_BYTES), 0usize..64]) {
        let mut r = Cursor::new(bytes.clone());
        // Every frame read consumes bytes, so this loop ends.
        loop {
            let before = r.position();
            match block_on(read_frame::<_, InferResponse>(&mut r, max)) {
                Ok(_) => prop_assert!(r.position() > before),
                Err(_) => break,
            }
        }
        let mut r = Cursor::new(bytes);
        let _ = block_on(read_frame::<_, InferRequest>(&mut r, MAX_REQUEST_BYTES));
    }

    #[test]
    fn decoders_and_validators_never_panic_on_bytes(bytes in bytes(1024)) {
        if let Ok(m) = InferRequest::decode(bytes.as_slice()) { let _ = m.validate(); }
        if let Ok(m) = JobAnnouncement::decode(bytes.as_slice()) { let _ = m.validate(); }
        if let Ok(m) = Claim::decode(bytes.as_slice()) { let _ = m.validate(); }
        if let Ok(m) = Heartbeat::decode(bytes.as_slice()) { let _ = m.validate(); }
        if let Ok(m) = InferResponse::decode(bytes.as_slice())
            && let Some(infer_response::Kind::Receipt(r)) = m.kind
        {
            let _ = Receipt::verify(r, &libp2p_identity::PeerId::random());
        }
        let _ = ClaimAck::decode(bytes.as_slice());
        let _ = ReputationReport::decode_checked(&bytes);
        let _ = SignedHeartbeat::decode(&bytes);
    }

    #[test]
    fn validators_never_panic_on_any_message(req in infer_request_with(any_float()), ann in job_announcement(), claim in claim()) {
        let _ = req.validate();
        let _ = ann.validate();
        let _ = claim.validate();
        if let Some(input) = &req.input {
            let _ = input.validate();
            let _ = input.hash();
        }
        let _ = infer::validate_model_name(&req.model);
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Reports are accepted exactly when they hold 1..=32 observations of distinct valid PeerIds,
    /// none empty and none counting more than 100,000 jobs (the limits restated here).
    #[test]
    fn reputation_reports_are_accepted_exactly_within_their_limits(report in reputation_report()) {
        use quiver_proto::reputation::{MAX_JOBS_PER_OBSERVATION, MAX_OBSERVATIONS, MAX_REPORT_BYTES};
        let bytes = report.encode_to_vec();
        let obs = &report.observations;
        let peers: Vec<_> = obs.iter().filter_map(|o| libp2p_identity::PeerId::from_bytes(&o.peer_id).ok()).collect();
        let distinct = peers.iter().enumerate().all(|(i, p)| !peers[..i].contains(p));
        let valid = bytes.len() <= MAX_REPORT_BYTES
            && (1..=MAX_OBSERVATIONS).contains(&obs.len())
            && peers.len() == obs.len()
            && distinct
            && obs.iter().all(|o| {
                (o.successes, o.failures) != (0, 0)
                    && o.successes <= MAX_JOBS_PER_OBSERVATION
                    && o.failures <= MAX_JOBS_PER_OBSERVATION
            });
        match ReputationReport::decode_checked(&bytes) {
            Ok((timestamp_ms, checked)) => {
                prop_assert!(valid, "accepted: {:?}", report);
                prop_assert_eq!(timestamp_ms, report.timestamp_ms);
                prop_assert_eq!(checked.len(), obs.len());
                for (c, o) in checked.iter().zip(obs) {
                    prop_assert_eq!(c.peer.to_bytes(), o.peer_id.clone());
                    prop_assert_eq!((c.successes, c.failures), (o.successes, o.failures));
                }
            }
            Err(e) => prop_assert!(!valid, "refused ({}): {:?}", e, report),
        }
    }
}

#[test]
fn a_zero_length_frame_is_the_empty_message() {
    let (got, pos) = read::<ClaimAck>(vec![0], 16);
    assert_eq!(got.unwrap(), ClaimAck::default());
    assert_eq!(pos, 1);
    let (got, _) = read::<InferRequest>(vec![0], 0);
    assert_eq!(got.unwrap(), InferRequest::default());
    // ... which is then refused by validation, not by the framing.
    assert!(InferRequest::default().validate().is_err());
}

#[test]
fn an_empty_stream_is_closed() {
    let (got, _) = read::<ClaimAck>(Vec::new(), 16);
    assert!(matches!(got, Err(FrameError::Closed)), "{got:?}");
}

#[test]
fn overlong_varints_are_malformed() {
    // Eleven bytes with the continuation bit: longer than any u64 varint.
    let (got, _) = read::<ClaimAck>(vec![0x80; 11], usize::MAX);
    assert!(matches!(got, Err(FrameError::BadLength)), "{got:?}");
    // Ten bytes whose last carries bits beyond 64: a length that does not fit in u64 must not
    // wrap around to a small (here zero) length.
    for last in [0x02u8, 0x04, 0x7e, 0x7f] {
        let mut prefix = vec![0x80; 9];
        prefix.push(last);
        let (got, _) = read::<ClaimAck>(prefix, usize::MAX);
        assert!(matches!(got, Err(FrameError::BadLength)), "{last:#x}: {got:?}");
    }
    // u64::MAX itself, the longest valid varint, is a length over any limit.
    let (got, _) = read::<ClaimAck>(leb128(u64::MAX), MAX_REQUEST_BYTES);
    assert!(matches!(got, Err(FrameError::TooLarge { len: u64::MAX, .. })), "{got:?}");
}
