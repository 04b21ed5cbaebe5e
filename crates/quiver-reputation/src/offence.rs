//! Kinds of misbehaviour and their default penalty weights.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Something a peer did wrong (or, for [`Offence::Busy`], something worth counting that is not
/// wrong).
///
/// Each kind has a penalty weight in score units ([`OffenceWeights`]): the weight is subtracted
/// from the peer's score and decays with the penalty half-life. With the default ban threshold
/// of −1.0 a peer in good standing (score ≈ 0.9) is banned after about two offences of weight 1.0
/// (lies), four of weight 0.5, or a run of timeouts, all within a few half-lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Offence {
    /// An undecodable or oversized frame. Default weight 0.5: broken or hostile software, but
    /// could be a transport corruption.
    GarbageFrame,
    /// A receipt or record whose signature does not verify. Default weight 1.0: a forgery.
    BadSignature,
    /// The model hash differs from the one asked for or announced. Default weight 0.7: serving a
    /// cheaper model than promised.
    WrongModel,
    /// The output differs from the cross-check majority. Default weight 1.5: a lie about the work,
    /// which bans at once a peer whose quality is below 0.5 (a newcomer, a fresh identity), while
    /// an established provider outvoted once is shut out for a while, not banned.
    FailedVerification,
    /// No answer in time (connect, accept, first token). Default weight 0.1: often the network.
    Timeout,
    /// Stopped sending mid-stream. Default weight 0.2.
    Stall,
    /// Claimed a job, was chosen, then did not serve it. Default weight 0.3: claim-squatting
    /// starves clients of honest providers.
    ClaimNotServed,
    /// A heartbeat claimed tokens/s or free slots far from what was measured. Default weight 0.3.
    HeartbeatLie,
    /// Refused with "busy". Weight 0: honest back-pressure is not an offence. It is counted per
    /// kind (see `PeerView::offence_counts`) but is neither a posterior failure nor a penalty.
    Busy,
    /// Frames out of order, missing fields, a message of the wrong kind, token counts the text
    /// cannot hold. Default weight 0.3.
    ProtocolViolation,
    /// Accepted a job and then broke the promise: refused it after `Accepted`, or streamed text
    /// and ended without a receipt. Default weight 0.5: the client's time and the text already
    /// delivered are lost, and a failover may no longer match it.
    Reneged,
}

impl Offence {
    /// Every kind, in declaration order.
    pub const ALL: [Offence; 11] = [
        Offence::GarbageFrame,
        Offence::BadSignature,
        Offence::WrongModel,
        Offence::FailedVerification,
        Offence::Timeout,
        Offence::Stall,
        Offence::ClaimNotServed,
        Offence::HeartbeatLie,
        Offence::Busy,
        Offence::ProtocolViolation,
        Offence::Reneged,
    ];

    /// Stable snake_case name (logs, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Offence::GarbageFrame => "garbage_frame",
            Offence::BadSignature => "bad_signature",
            Offence::WrongModel => "wrong_model",
            Offence::FailedVerification => "failed_verification",
            Offence::Timeout => "timeout",
            Offence::Stall => "stall",
            Offence::ClaimNotServed => "claim_not_served",
            Offence::HeartbeatLie => "heartbeat_lie",
            Offence::Busy => "busy",
            Offence::ProtocolViolation => "protocol_violation",
            Offence::Reneged => "reneged",
        }
    }

    /// Whether [`crate::Reputation::record_failure`] counts this kind as a failed job in the
    /// success posterior. Everything but [`Offence::Busy`] does.
    pub fn is_job_failure(self) -> bool {
        !matches!(self, Offence::Busy)
    }
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Penalty weight of each [`Offence`], in score units (see the crate docs for the score).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OffenceWeights {
    pub garbage_frame: f64,
    pub bad_signature: f64,
    pub wrong_model: f64,
    pub failed_verification: f64,
    pub timeout: f64,
    pub stall: f64,
    pub claim_not_served: f64,
    pub heartbeat_lie: f64,
    pub busy: f64,
    pub protocol_violation: f64,
    pub reneged: f64,
}

impl Default for OffenceWeights {
    fn default() -> Self {
        Self {
            garbage_frame: 0.5,
            bad_signature: 1.0,
            wrong_model: 0.7,
            failed_verification: 1.5,
            timeout: 0.1,
            stall: 0.2,
            claim_not_served: 0.3,
            heartbeat_lie: 0.3,
            busy: 0.0,
            protocol_violation: 0.3,
            reneged: 0.5,
        }
    }
}

impl OffenceWeights {
    /// The weight of `offence`; negative or non-finite configured values count as 0.
    pub fn get(&self, offence: Offence) -> f64 {
        let w = match offence {
            Offence::GarbageFrame => self.garbage_frame,
            Offence::BadSignature => self.bad_signature,
            Offence::WrongModel => self.wrong_model,
            Offence::FailedVerification => self.failed_verification,
            Offence::Timeout => self.timeout,
            Offence::Stall => self.stall,
            Offence::ClaimNotServed => self.claim_not_served,
            Offence::HeartbeatLie => self.heartbeat_lie,
            Offence::Busy => self.busy,
            Offence::ProtocolViolation => self.protocol_violation,
            Offence::Reneged => self.reneged,
        };
        if w.is_finite() && w > 0.0 { w } else { 0.0 }
    }
}

#[cfg(test)]
#[path = "tests/offence.rs"]
mod tests;
