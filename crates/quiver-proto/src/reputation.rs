//! Reputation reports: each node's own observations of other peers, gossiped on
//! [`REPUTATION_TOPIC`] so others can weigh them as hearsay.

use libp2p_identity::PeerId;

use crate::{ProtoError, ReputationReport, check_len};

/// The gossip topic of reputation reports.
pub const REPUTATION_TOPIC: &str = "quiver/1/reputation";
/// Largest report accepted.
pub const MAX_REPORT_BYTES: usize = 4 * 1024;
/// Most peers one report may speak of.
pub const MAX_OBSERVATIONS: usize = 32;
/// Most jobs one observation may count (more in one report period is implausible).
pub const MAX_JOBS_PER_OBSERVATION: u32 = 100_000;

/// One observation of a report, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedObservation {
    pub peer: PeerId,
    pub successes: u32,
    pub failures: u32,
}

impl ReputationReport {
    /// Decodes and checks a report received by gossip: size, count, PeerIds, no empty or
    /// implausible entries, no peer twice.
    pub fn decode_checked(bytes: &[u8]) -> Result<(u64, Vec<CheckedObservation>), ProtoError> {
        check_len(bytes, MAX_REPORT_BYTES)?;
        let report: ReputationReport = prost::Message::decode(bytes)?;
        if report.observations.is_empty() || report.observations.len() > MAX_OBSERVATIONS {
            return Err(ProtoError::Invalid { field: "observations", reason: "none, or too many" });
        }
        let mut out: Vec<CheckedObservation> = Vec::with_capacity(report.observations.len());
        for o in report.observations {
            let peer = PeerId::from_bytes(&o.peer_id)
                .map_err(|_| ProtoError::Invalid { field: "peer_id", reason: "not a PeerId" })?;
            if o.successes == 0 && o.failures == 0 {
                return Err(ProtoError::Invalid { field: "observations", reason: "empty observation" });
            }
            if o.successes > MAX_JOBS_PER_OBSERVATION || o.failures > MAX_JOBS_PER_OBSERVATION {
                return Err(ProtoError::Invalid { field: "observations", reason: "implausible job count" });
            }
            if out.iter().any(|c| c.peer == peer) {
                return Err(ProtoError::Invalid { field: "observations", reason: "a peer twice" });
            }
            out.push(CheckedObservation { peer, successes: o.successes, failures: o.failures });
        }
        Ok((report.timestamp_ms, out))
    }
}

#[cfg(test)]
#[path = "tests/reputation.rs"]
mod tests;
