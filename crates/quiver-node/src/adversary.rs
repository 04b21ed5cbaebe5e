//! Deliberate misbehaviour, for tests only: compiled with the `adversary` feature, which no
//! release build enables. Each mode is one way a dishonest or broken peer can hurt clients; the
//! tests in `crates/quiver-adversary` show that honest nodes notice it, penalise the peer and
//! keep serving every request through honest providers.

use std::fmt;
use std::str::FromStr;

/// One kind of misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// Answers an inference request with an undecodable frame.
    GarbageFrames,
    /// Streams text the model did not produce, with a receipt that matches the lie (only
    /// verification by re-running can catch it).
    WrongOutput,
    /// Serves honestly but signs the receipt with a key that is not its own.
    BadSignature,
    /// Says it runs another model file than the one it advertises.
    WrongModel,
    /// Accepts, then drips one token every few seconds.
    SlowLoris,
    /// Accepts, streams a few tokens, then closes the stream.
    DropMidStream,
    /// Reads every request, then closes the stream without a word: what a stream dropped on
    /// arrival looks like to the client, which opens it again a bounded number of times.
    CloseUnanswered,
    /// Claims every announced job (whatever its load) and never answers the request.
    ClaimNeverServe,
    /// Serves honestly but advertises a speed and free slots it does not have.
    LyingHeartbeats,
    /// Receives gossip but never forwards any of it.
    NonForwarder,
}

impl Misbehaviour {
    pub const ALL: [Misbehaviour; 10] = [
        Misbehaviour::GarbageFrames,
        Misbehaviour::WrongOutput,
        Misbehaviour::BadSignature,
        Misbehaviour::WrongModel,
        Misbehaviour::SlowLoris,
        Misbehaviour::DropMidStream,
        Misbehaviour::CloseUnanswered,
        Misbehaviour::ClaimNeverServe,
        Misbehaviour::LyingHeartbeats,
        Misbehaviour::NonForwarder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Misbehaviour::GarbageFrames => "garbage-frames",
            Misbehaviour::WrongOutput => "wrong-output",
            Misbehaviour::BadSignature => "bad-signature",
            Misbehaviour::WrongModel => "wrong-model",
            Misbehaviour::SlowLoris => "slow-loris",
            Misbehaviour::DropMidStream => "drop-mid-stream",
            Misbehaviour::CloseUnanswered => "close-unanswered",
            Misbehaviour::ClaimNeverServe => "claim-never-serve",
            Misbehaviour::LyingHeartbeats => "lying-heartbeats",
            Misbehaviour::NonForwarder => "non-forwarder",
        }
    }
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown misbehaviour {0:?}; one of: garbage-frames, wrong-output, bad-signature, wrong-model, slow-loris, drop-mid-stream, close-unanswered, claim-never-serve, lying-heartbeats, non-forwarder"
)]
pub struct UnknownMisbehaviour(String);

impl FromStr for Misbehaviour {
    type Err = UnknownMisbehaviour;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Misbehaviour::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| UnknownMisbehaviour(s.to_owned()))
    }
}

/// How a node misbehaves: `mode`, after serving `honest_jobs` jobs honestly (to earn trust
/// first, as a patient attacker would). With `lure`, its heartbeats also advertise a speed and
/// free slots it does not have, to draw traffic (always so in [`Misbehaviour::LyingHeartbeats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adversary {
    pub mode: Misbehaviour,
    pub honest_jobs: u32,
    pub lure: bool,
}

impl Adversary {
    /// `mode` from the first job on, with lying heartbeats to draw traffic.
    pub fn new(mode: Misbehaviour) -> Self {
        Adversary { mode, honest_jobs: 0, lure: true }
    }

    pub(crate) fn lies_in_heartbeats(&self) -> bool {
        self.lure || self.mode == Misbehaviour::LyingHeartbeats
    }
}

/// Tokens a drop-mid-stream provider sends before it hangs up.
pub(crate) const DROP_AFTER_CHUNKS: usize = 3;
/// Pause before each token of a slow-loris provider.
pub(crate) const SLOW_LORIS_PAUSE: std::time::Duration = std::time::Duration::from_secs(4);
/// Speed advertised by a lying provider.
pub(crate) const LIED_TOKENS_PER_SEC: f32 = 5000.0;

/// The text a wrong-output provider sends instead of `real`: same length class, other bytes.
pub(crate) fn falsify(real: &str) -> String {
    real.chars().rev().collect::<String>() + "~"
}
