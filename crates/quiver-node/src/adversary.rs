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
    /// Streams a few real tokens, then refuses the job it accepted (`invalid_request`): a free
    /// way to fail a request, unless a refusal after `Accepted` costs something.
    RefuseAfterStreaming,
    /// Serves the real text but claims far more tokens in each chunk than it sent.
    InflatedTokens,
    /// Streams text the model did not produce under an engine build string nobody else has, so
    /// no provider of its build can refute it.
    UniqueBuild,
    /// Serves honestly, then signs a receipt that does not match the stream (one token more).
    ReceiptMismatch,
    /// A client, not a provider: opens inference streams to every provider it knows and never
    /// writes a request on them.
    IdleStreams,
}

impl Misbehaviour {
    pub const ALL: [Misbehaviour; 15] = [
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
        Misbehaviour::RefuseAfterStreaming,
        Misbehaviour::InflatedTokens,
        Misbehaviour::UniqueBuild,
        Misbehaviour::ReceiptMismatch,
        Misbehaviour::IdleStreams,
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
            Misbehaviour::RefuseAfterStreaming => "refuse-after-streaming",
            Misbehaviour::InflatedTokens => "inflated-tokens",
            Misbehaviour::UniqueBuild => "unique-build",
            Misbehaviour::ReceiptMismatch => "receipt-mismatch",
            Misbehaviour::IdleStreams => "idle-streams",
        }
    }
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown misbehaviour {given:?}; one of: {}", Misbehaviour::ALL.map(Misbehaviour::as_str).join(", "), given = .0)]
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
/// Tokens an inflated-tokens provider claims for each chunk.
pub(crate) const INFLATED_TOKENS: u32 = 1000;
/// Streams an idle-streams client holds open to each provider (more than any per-peer bound).
pub(crate) const IDLE_STREAMS_PER_PROVIDER: usize = 200;
/// Speed advertised by a lying provider.
pub(crate) const LIED_TOKENS_PER_SEC: f32 = 5000.0;

/// The text a wrong-output provider sends instead of `real`: same length class, other bytes.
pub(crate) fn falsify(real: &str) -> String {
    real.chars().rev().collect::<String>() + "~"
}

/// How long an idle-streams client keeps a stream before opening another in its place (the
/// provider gives up on it after its request timeout).
const IDLE_STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(11);
/// Providers an idle-streams client targets at once.
const IDLE_STREAM_TARGETS: usize = 8;
/// Streams an idle-streams client opens to each provider per tick (every 500 ms): a steady
/// stream of new ones, so that however the provider times them out, it holds about
/// 8/s × its request timeout of them at every moment.
const IDLE_STREAMS_PER_TICK: usize = 4;

impl crate::Node {
    /// [`Misbehaviour::IdleStreams`]: keeps [`IDLE_STREAMS_PER_PROVIDER`] inference streams open
    /// to each provider it knows, writing nothing on them, until the node stops.
    pub(crate) async fn hold_idle_streams(self) {
        let protocol = quiver_net::StreamProtocol::new(quiver_proto::infer::INFER_PROTOCOL);
        let mut held: Vec<(std::time::Instant, quiver_net::PeerId, quiver_net::Stream)> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            held.retain(|(opened, ..)| opened.elapsed() < IDLE_STREAM_LIFETIME);
            let providers: Vec<_> = self
                .known_nodes()
                .into_iter()
                .filter(|n| !n.models.is_empty() && n.peer_id != self.peer_id())
                .take(IDLE_STREAM_TARGETS)
                .collect();
            for node in providers {
                let peer = node.peer_id;
                let wait = std::time::Duration::from_secs(2);
                if !matches!(tokio::time::timeout(wait, self.net().connect(peer, node.listen_addrs)).await, Ok(Ok(())))
                {
                    continue;
                }
                let mut control = self.net().streams();
                let mut opened = 0;
                while opened < IDLE_STREAMS_PER_TICK
                    && held.iter().filter(|(_, p, _)| *p == peer).count() < IDLE_STREAMS_PER_PROVIDER
                {
                    opened += 1;
                    match tokio::time::timeout(wait, control.open_stream(peer, protocol.clone())).await {
                        Ok(Ok(stream)) => {
                            held.push((std::time::Instant::now(), peer, stream));
                            // One at a time: libp2p-stream drops an inbound stream that arrives
                            // while the provider's accept loop has not taken the previous one.
                            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                        }
                        _ => break,
                    }
                }
            }
        }
    }
}
