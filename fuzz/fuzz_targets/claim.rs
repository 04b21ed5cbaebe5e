//! The claim path: job announcements from gossip (size-checked, decoded, validated as a provider
//! does), claims and claim acknowledgements. Input byte 0 picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_proto::infer::{MAX_ANNOUNCEMENT_BYTES, MAX_CLAIM_BYTES};
use quiver_proto::{Claim, ClaimAck, JobAnnouncement, check_len};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % quiver_fuzz_seeds::CLAIM_KINDS {
        0 => {
            if check_len(body, MAX_ANNOUNCEMENT_BYTES).is_ok()
                && let Ok(job) = JobAnnouncement::decode(body)
                && job.validate().is_ok()
            {
                assert_eq!(job.job_id.len(), 16);
                let _ = quiver_proto::infer::infer_topic(&job.model);
            }
        }
        1 => {
            if body.len() <= MAX_CLAIM_BYTES
                && let Ok(claim) = Claim::decode(body)
                && claim.validate().is_ok()
            {
                assert!(claim.tokens_per_sec.is_finite());
            }
        }
        _ => {
            let _ = ClaimAck::decode(body);
        }
    }
});
