//! Per-peer reputation kept by each QUIVer node about the providers and peers it deals with.
//!
//! The node reports what it observes — a verified job ([`Reputation::record_success`]), a failed
//! one ([`Reputation::record_failure`]), misbehaviour outside a job ([`Reputation::penalize`]),
//! heartbeats ([`Reputation::heartbeat`]), others' opinions ([`Reputation::record_hearsay`]) —
//! and reads back a score per peer, bans to put on the swarm's block list, and whether a newcomer
//! may get the next job. Every method takes the current time explicitly, so the model is
//! deterministic and testable without sleeping.
//!
//! # The score
//!
//! ```text
//! α = α0 + s + h⁺          β = β0 + f + h⁻          (Beta posterior of the job success rate)
//! mean  = α / (α + β)
//! sd    = sqrt(αβ / ((α+β)² (α+β+1)))
//! lower = clamp(mean − k·sd, 0, 1)
//! quality = lower · (1 − w_u · (1 − uptime))         (uptime unknown ⇒ 1)
//! score   = quality − penalty(now)                  ∈ (−∞, 1]
//! penalty(now) = Σ weight(offence) · 2^(−(now − t)/half_life)
//! ```
//!
//! `s`, `f` are own successes and failures (scaled to sum at most `evidence_window`, so recent
//! behaviour stays visible), `h⁺`, `h⁻` weighted hearsay (at most `hearsay_max_total` in all).
//! With the defaults (Beta(1, 1), k = 1, w_u = 0.5): an unknown peer scores 0.21, one with 5
//! successes 0.73, 100 successes 0.98; one failure alone 0.10. The score measures trust and
//! reliability; speed (latency, TTFT, tokens/s EWMAs and p95s) is reported beside it for the
//! router to combine with load.
//!
//! # Bans
//!
//! A new offence that leaves the score strictly below `ban_threshold` (−1.0) bans the peer for
//! `ban_base · 2^ban_count` (10 min, 20 min, 40 min, … capped at 24 h); `ban_count` persists. At
//! the ban the penalty is reset so that the score sits exactly at the threshold, and while the ban
//! lasts offences add no penalty: a released peer is not re-banned by penalties already paid for,
//! only by a new offence (and then for twice as long).
//!
//! # Newcomers
//!
//! A peer with fewer than `newcomer_jobs` own successful jobs is a newcomer: its score is low
//! because the posterior is wide, and [`Reputation::newcomer_quota_available`] caps the share of
//! jobs all newcomers together get at `newcomer_share`. Trust is earned by served work, not by
//! existing; hearsay never makes a newcomer established.
//!
//! # Persistence
//!
//! [`Reputation::open`] loads a redb file (one table, `PeerId` bytes → version byte + JSON
//! record) into memory; changes are written behind by [`Reputation::flush`] in one transaction,
//! and on drop. A record that cannot be decoded is logged and skipped, never fatal.

mod config;
mod error;
mod offence;
mod record;
mod store;

pub use config::ReputationConfig;
pub use error::ReputationError;
pub use offence::{Offence, OffenceWeights};
pub use record::{Decaying, Hearsay, PeerRecord, RING_SIZE, Timing, UptimeState, from_unix_ms, unix_ms};
pub use store::{Ban, FORMAT_VERSION, JobStats, MIN_TOKENS_FOR_SPEED, PEERS_TABLE, PeerView, Reputation};

#[cfg(test)]
#[path = "tests/lib.rs"]
mod tests;
