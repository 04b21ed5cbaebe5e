//! One peer's record and the math on it. Times are unix milliseconds (`u64`).

use crate::config::ReputationConfig;
use crate::offence::Offence;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Samples kept per timing ring (latency, TTFT) for the p95.
pub const RING_SIZE: usize = 64;

/// `t` as unix milliseconds (0 before the epoch, saturating far in the future).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Unix milliseconds back to a `SystemTime`.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// `value · 2^(−(to − from)/half_life)`. Time going backwards does not grow the value; a zero
/// half-life forgets at once.
pub(crate) fn decay(value: f64, from_ms: u64, to_ms: u64, half_life: Duration) -> f64 {
    if value == 0.0 {
        return 0.0;
    }
    let dt = to_ms.saturating_sub(from_ms) as f64;
    if dt == 0.0 {
        return value;
    }
    let hl = half_life.as_secs_f64() * 1000.0;
    if hl <= 0.0 {
        return 0.0;
    }
    value * (-dt / hl).exp2()
}

fn finite_or(v: f64, d: f64) -> f64 {
    if v.is_finite() { v } else { d }
}

/// A quantity that halves every half-life; decayed lazily when read or added to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decaying {
    /// Value at `at_ms`.
    pub value: f64,
    /// Unix ms of the last update.
    pub at_ms: u64,
}

impl Decaying {
    /// The value at `now_ms`.
    pub fn at(&self, now_ms: u64, half_life: Duration) -> f64 {
        decay(self.value, self.at_ms, now_ms, half_life)
    }

    /// Adds `amount` at `now_ms`.
    pub fn add(&mut self, amount: f64, now_ms: u64, half_life: Duration) {
        let now_ms = now_ms.max(self.at_ms);
        self.value = self.at(now_ms, half_life) + amount;
        self.at_ms = now_ms;
    }
}

/// EWMA plus a ring of the last [`RING_SIZE`] samples for percentiles (bounded memory; the p95
/// follows the recent behaviour, which is what routing and hedging want).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    /// EWMA in milliseconds; `None` before the first sample.
    pub ewma_ms: Option<f64>,
    /// Last samples in milliseconds, a ring of at most [`RING_SIZE`].
    pub samples: Vec<u32>,
    /// Next slot of the ring to overwrite once it is full.
    pub next: usize,
}

impl Timing {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration, alpha: f64) {
        let ms = d.as_secs_f64() * 1000.0;
        self.ewma_ms = Some(match self.ewma_ms {
            Some(old) => (1.0 - alpha) * old + alpha * ms,
            None => ms,
        });
        let sample = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        if self.samples.len() < RING_SIZE {
            self.samples.push(sample);
        } else {
            let i = self.next % RING_SIZE;
            self.samples[i] = sample;
            self.next = (i + 1) % RING_SIZE;
        }
    }

    /// The q-quantile (0 < q ≤ 1) of the ring by nearest rank, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut s = self.samples.clone();
        s.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, s.len()) - 1;
        Some(f64::from(s[idx]))
    }

    /// The 95th percentile in milliseconds.
    pub fn p95_ms(&self) -> Option<f64> {
        self.quantile_ms(0.95)
    }

    fn sanitize(&mut self) {
        self.samples.truncate(RING_SIZE);
        if self.next >= RING_SIZE {
            self.next = 0;
        }
        if let Some(v) = self.ewma_ms
            && !(v.is_finite() && v >= 0.0)
        {
            self.ewma_ms = None;
        }
    }
}

/// Decayed counters of heartbeats seen and expected (see [`PeerRecord::uptime`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UptimeState {
    pub seen: f64,
    pub expected: f64,
    /// Unix ms the counters were last brought up to date (the last counted heartbeat).
    pub at_ms: u64,
}

impl UptimeState {
    /// The counters at `now_ms`: both decay with the half-life, `expected` also grows by one
    /// per heartbeat period (the exact solution of `dE/dt = −λE + 1/period`).
    pub(crate) fn advanced(&self, now_ms: u64, cfg: &ReputationConfig) -> UptimeState {
        let now_ms = now_ms.max(self.at_ms);
        let dt = (now_ms - self.at_ms) as f64;
        let hl = cfg.uptime_half_life.as_secs_f64() * 1000.0;
        let period = (cfg.heartbeat_period.as_secs_f64() * 1000.0).max(1.0);
        let (seen, expected) = if hl > 0.0 {
            let d = (-dt / hl).exp2();
            let steady = hl / std::f64::consts::LN_2 / period;
            (self.seen * d, self.expected * d + steady * (1.0 - d))
        } else {
            (0.0, dt / period)
        };
        UptimeState { seen, expected, at_ms: now_ms }
    }
}

/// Others' opinions about this peer (already weighted; see
/// [`crate::Reputation::record_hearsay`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hearsay {
    /// Pseudo-successes added to α.
    pub positive: f64,
    /// Pseudo-failures added to β.
    pub negative: f64,
    /// Weight used so far by each source (base58 PeerId), at most `hearsay_max_sources` entries.
    pub sources: BTreeMap<String, f64>,
}

impl Hearsay {
    pub fn total(&self) -> f64 {
        self.positive + self.negative
    }
}

/// Everything a node remembers about one peer. Serialized (JSON, behind a format-version byte)
/// into the redb table; the API shows the derived [`crate::PeerView`] instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerRecord {
    /// Unix ms of the first observation of any kind.
    pub first_seen_ms: u64,
    /// Unix ms of the latest own observation (job, offence, heartbeat).
    pub last_seen_ms: u64,
    /// Own successful jobs, all time.
    pub successes: u64,
    /// Own failed jobs, all time.
    pub failures: u64,
    /// Successes in the posterior (equal to `successes` until `evidence_window` is reached).
    pub evidence_success: f64,
    /// Failures in the posterior.
    pub evidence_failure: f64,
    pub hearsay: Hearsay,
    /// Whole-job latency.
    pub latency: Timing,
    /// Time to first token.
    pub ttft: Timing,
    /// Tokens/s EWMA.
    pub tokens_per_sec: Option<f64>,
    /// Tokens received in successful jobs, all time.
    pub tokens_total: u64,
    /// Heartbeats counted for uptime, all time.
    pub heartbeats_seen: u64,
    /// Unix ms of the last heartbeat counted for uptime.
    pub last_heartbeat_ms: Option<u64>,
    /// Uptime counters; `None` until the first heartbeat.
    pub uptime: Option<UptimeState>,
    /// Penalty points (decaying with the penalty half-life).
    pub penalty: Decaying,
    /// Offences with a positive weight, all time.
    pub offences: u64,
    /// Count per kind, including weightless ones (`Busy`).
    pub offence_counts: BTreeMap<Offence, u64>,
    /// Unix ms the current or last ban ends.
    pub banned_until_ms: Option<u64>,
    /// Bans so far; the next one lasts `ban_base · 2^ban_count`, capped.
    pub ban_count: u32,
}

impl PeerRecord {
    pub(crate) fn new(now_ms: u64) -> Self {
        Self { first_seen_ms: now_ms, last_seen_ms: now_ms, ..Self::default() }
    }

    pub(crate) fn touch(&mut self, now_ms: u64) {
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }

    /// Adds one own observation to the posterior, keeping at most `evidence_window` of them.
    pub(crate) fn add_evidence(&mut self, success: bool, cfg: &ReputationConfig) {
        if success {
            self.successes = self.successes.saturating_add(1);
            self.evidence_success += 1.0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.evidence_failure += 1.0;
        }
        let total = self.evidence_success + self.evidence_failure;
        if cfg.evidence_window > 0.0 && total > cfg.evidence_window {
            let f = cfg.evidence_window / total;
            self.evidence_success *= f;
            self.evidence_failure *= f;
            // Hearsay ages as own observations do: each new one makes older opinions weigh less,
            // and the weight a source used shrinks with them, so it may speak again about what
            // the peer does now instead of holding its old verdict for ever.
            self.hearsay.positive *= f;
            self.hearsay.negative *= f;
            for used in self.hearsay.sources.values_mut() {
                *used *= f;
            }
        }
    }

    /// (α, β) of the success posterior: prior + own evidence + weighted hearsay.
    pub fn posterior(&self, cfg: &ReputationConfig) -> (f64, f64) {
        (
            cfg.prior_success + self.evidence_success + self.hearsay.positive,
            cfg.prior_failure + self.evidence_failure + self.hearsay.negative,
        )
    }

    /// Posterior mean α/(α+β).
    pub fn posterior_mean(&self, cfg: &ReputationConfig) -> f64 {
        let (a, b) = self.posterior(cfg);
        a / (a + b)
    }

    /// `mean − k·sd` of the posterior, clamped to [0, 1]; sd² = αβ / ((α+β)²(α+β+1)).
    pub fn posterior_lower(&self, cfg: &ReputationConfig) -> f64 {
        let (a, b) = self.posterior(cfg);
        let n = a + b;
        let mean = a / n;
        let sd = (a * b / (n * n * (n + 1.0))).sqrt();
        (mean - cfg.lower_bound_sds * sd).clamp(0.0, 1.0)
    }

    /// Heartbeats seen ÷ expected, both decaying with `uptime_half_life`, with one period of
    /// grace (`(seen + 1) / expected`, so a heartbeat that is merely not due yet is not missing),
    /// capped to 1. `None` before the first heartbeat (no information: neutral in the score).
    pub fn uptime(&self, cfg: &ReputationConfig, now_ms: u64) -> Option<f64> {
        let u = self.uptime?.advanced(now_ms, cfg);
        if u.expected <= 0.0 {
            return Some(1.0);
        }
        Some(((u.seen + 1.0) / u.expected).clamp(0.0, 1.0))
    }

    /// Decayed penalty points at `now_ms`.
    pub fn penalty_at(&self, cfg: &ReputationConfig, now_ms: u64) -> f64 {
        self.penalty.at(now_ms, cfg.penalty_half_life)
    }

    /// The score without penalties: `lower · (1 − w·(1 − uptime))`, in [0, 1].
    pub fn quality(&self, cfg: &ReputationConfig, now_ms: u64) -> f64 {
        let uptime = self.uptime(cfg, now_ms).unwrap_or(1.0);
        self.posterior_lower(cfg) * (1.0 - cfg.uptime_weight * (1.0 - uptime))
    }

    /// `quality − penalty`, in (−∞, 1].
    pub fn score(&self, cfg: &ReputationConfig, now_ms: u64) -> f64 {
        self.quality(cfg, now_ms) - self.penalty_at(cfg, now_ms)
    }

    /// Whether a ban is in force at `now_ms`.
    pub fn banned_at(&self, now_ms: u64) -> bool {
        self.banned_until_ms.is_some_and(|u| u > now_ms)
    }

    /// Whether fewer than `newcomer_jobs` own jobs succeeded.
    pub fn is_newcomer(&self, cfg: &ReputationConfig) -> bool {
        self.successes < cfg.newcomer_jobs
    }

    /// Repairs values no honest writer produces (non-finite numbers, oversize rings), so a record
    /// from disk can never make a score NaN or memory unbounded.
    pub(crate) fn sanitize(&mut self, cfg: &ReputationConfig) {
        let nonneg = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        self.evidence_success = nonneg(self.evidence_success);
        self.evidence_failure = nonneg(self.evidence_failure);
        self.hearsay.positive = nonneg(self.hearsay.positive);
        self.hearsay.negative = nonneg(self.hearsay.negative);
        while self.hearsay.sources.len() > cfg.hearsay_max_sources {
            self.hearsay.sources.pop_last();
        }
        for v in self.hearsay.sources.values_mut() {
            *v = nonneg(*v);
        }
        self.latency.sanitize();
        self.ttft.sanitize();
        self.tokens_per_sec = self.tokens_per_sec.filter(|v| v.is_finite() && *v >= 0.0);
        if let Some(u) = &mut self.uptime {
            u.seen = nonneg(u.seen);
            u.expected = nonneg(u.expected);
        }
        self.penalty.value = nonneg(finite_or(self.penalty.value, 0.0));
        self.last_seen_ms = self.last_seen_ms.max(self.first_seen_ms);
    }
}

#[cfg(test)]
#[path = "tests/record.rs"]
mod tests;
