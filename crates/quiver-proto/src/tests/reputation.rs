use super::*;
use crate::Observation;

fn obs(peer: &PeerId, successes: u32, failures: u32) -> Observation {
    Observation { peer_id: peer.to_bytes(), successes, failures }
}

fn encode(observations: Vec<Observation>) -> Vec<u8> {
    prost::Message::encode_to_vec(&ReputationReport { timestamp_ms: 1, observations })
}

#[test]
fn a_well_formed_report_decodes() {
    let (a, b) = (PeerId::random(), PeerId::random());
    let (ts, got) = ReputationReport::decode_checked(&encode(vec![obs(&a, 3, 0), obs(&b, 0, 2)])).expect("valid");
    assert_eq!(ts, 1);
    assert_eq!(
        got,
        vec![
            CheckedObservation { peer: a, successes: 3, failures: 0 },
            CheckedObservation { peer: b, successes: 0, failures: 2 }
        ]
    );
}

#[test]
fn malformed_reports_are_refused() {
    let a = PeerId::random();
    let bad = [
        encode(Vec::new()),
        encode(vec![obs(&a, 0, 0)]),
        encode(vec![obs(&a, 1, 0), obs(&a, 0, 1)]),
        encode(vec![obs(&a, MAX_JOBS_PER_OBSERVATION + 1, 0)]),
        encode(vec![Observation { peer_id: vec![1, 2, 3], successes: 1, failures: 0 }]),
        encode((0..=MAX_OBSERVATIONS).map(|_| obs(&PeerId::random(), 1, 0)).collect()),
        vec![0xff; 64],
        vec![0; MAX_REPORT_BYTES + 1],
    ];
    for (i, bytes) in bad.iter().enumerate() {
        assert!(ReputationReport::decode_checked(bytes).is_err(), "case {i} was accepted");
    }
}
