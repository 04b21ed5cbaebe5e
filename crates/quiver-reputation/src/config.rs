//! Tunables of the reputation model.

use crate::offence::OffenceWeights;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Tunables. `Default` gives the values documented on each field; the crate docs show how they
/// combine into the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReputationConfig {
    /// α0 of the Beta prior of the job success rate. Default 1.0.
    pub prior_success: f64,
    /// β0 of the Beta prior. Default 1.0. With Beta(1, 1) a peer with no history has mean 0.5
    /// and standard deviation 0.29, so a lower bound of 0.21: modest, and very uncertain.
    pub prior_failure: f64,
    /// k in the lower credible bound `mean − k·sd` of the posterior. Default 1.0.
    pub lower_bound_sds: f64,
    /// Own observations kept in the posterior: once successes + failures exceed this, both are
    /// scaled down so they sum to it, so each new job weighs at least 1/window and a peer that
    /// turns bad after a long good run is noticed. Default 200. 0 disables the scaling.
    pub evidence_window: f64,
    /// EWMA factor for latency, time to first token and tokens/s: `new = (1−a)·old + a·sample`.
    /// Default 0.2.
    pub ewma_alpha: f64,
    /// How much uptime weighs in the score: the quality is multiplied by
    /// `1 − uptime_weight·(1 − uptime)`. Default 0.5 (a peer never heard halves its quality).
    pub uptime_weight: f64,
    /// Period at which peers publish heartbeats (the network's `heartbeat_interval`).
    /// Default 10 s.
    pub heartbeat_period: Duration,
    /// Half-life of the uptime counters (heartbeats seen and expected decay alike, so uptime
    /// reflects the last few half-lives). Default 6 h.
    pub uptime_half_life: Duration,
    /// Half-life of penalty points. Default 10 min.
    pub penalty_half_life: Duration,
    /// Penalty weight of each offence.
    pub weights: OffenceWeights,
    /// A new offence that leaves the score strictly below this bans the peer. Default −1.0.
    pub ban_threshold: f64,
    /// First ban duration; each further ban doubles it. Default 10 min.
    pub ban_base: Duration,
    /// Longest ban. Default 24 h.
    pub ban_max: Duration,
    /// Own successful jobs before a peer stops being a newcomer. Default 5.
    pub newcomer_jobs: u64,
    /// Largest fraction of this node's routed jobs that all newcomers together may get (see
    /// [`crate::Reputation::newcomer_quota_available`]). Default 0.2.
    pub newcomer_share: f64,
    /// Half-life of the routed-jobs counters behind the newcomer share. Default 30 min.
    pub newcomer_share_half_life: Duration,
    /// Weight of one piece of hearsay relative to one own observation. Default 0.1.
    pub hearsay_weight: f64,
    /// Least score a source needs for its hearsay to count (it must also not be a newcomer nor
    /// banned). Default 0.5.
    pub hearsay_min_score: f64,
    /// Most hearsay weight one source can add about one peer, ever. Default 0.5 (5 reports).
    pub hearsay_per_source: f64,
    /// Most hearsay weight about one peer from all sources together. Default 2.0: two own
    /// observations outweigh all hearsay.
    pub hearsay_max_total: f64,
    /// Most distinct sources remembered per peer (bounds the record). Default 16.
    pub hearsay_max_sources: usize,
    /// Most peers kept. When full, the least recently seen peers are evicted (1% at a time):
    /// first those known only from heartbeats or hearsay, then those with own history, banned
    /// peers last. Default 10,000.
    pub max_peers: usize,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            prior_success: 1.0,
            prior_failure: 1.0,
            lower_bound_sds: 1.0,
            evidence_window: 200.0,
            ewma_alpha: 0.2,
            uptime_weight: 0.5,
            heartbeat_period: Duration::from_secs(10),
            uptime_half_life: Duration::from_secs(6 * 3600),
            penalty_half_life: Duration::from_secs(600),
            weights: OffenceWeights::default(),
            ban_threshold: -1.0,
            ban_base: Duration::from_secs(600),
            ban_max: Duration::from_secs(24 * 3600),
            newcomer_jobs: 5,
            newcomer_share: 0.2,
            newcomer_share_half_life: Duration::from_secs(1800),
            hearsay_weight: 0.1,
            hearsay_min_score: 0.5,
            hearsay_per_source: 0.5,
            hearsay_max_total: 2.0,
            hearsay_max_sources: 16,
            max_peers: 10_000,
        }
    }
}

impl ReputationConfig {
    /// A copy with out-of-range values replaced by safe ones (priors > 0, factors in [0, 1],
    /// non-finite numbers back to their defaults), so a bad config file cannot produce NaN scores.
    pub fn sanitized(mut self) -> Self {
        let d = Self::default();
        let pos = |v: f64, dv: f64| if v.is_finite() && v > 0.0 { v } else { dv };
        let unit = |v: f64, dv: f64| if v.is_finite() { v.clamp(0.0, 1.0) } else { dv };
        let nonneg = |v: f64, dv: f64| if v.is_finite() && v >= 0.0 { v } else { dv };
        self.prior_success = pos(self.prior_success, d.prior_success);
        self.prior_failure = pos(self.prior_failure, d.prior_failure);
        self.lower_bound_sds = nonneg(self.lower_bound_sds, d.lower_bound_sds);
        self.evidence_window = nonneg(self.evidence_window, d.evidence_window);
        self.ewma_alpha =
            if self.ewma_alpha.is_finite() && self.ewma_alpha > 0.0 { self.ewma_alpha.min(1.0) } else { d.ewma_alpha };
        self.uptime_weight = unit(self.uptime_weight, d.uptime_weight);
        if self.heartbeat_period.is_zero() {
            self.heartbeat_period = d.heartbeat_period;
        }
        if !self.ban_threshold.is_finite() {
            self.ban_threshold = d.ban_threshold;
        }
        if self.ban_max < self.ban_base {
            self.ban_max = self.ban_base;
        }
        self.newcomer_share = unit(self.newcomer_share, d.newcomer_share);
        self.hearsay_weight = nonneg(self.hearsay_weight, d.hearsay_weight);
        self.hearsay_min_score =
            if self.hearsay_min_score.is_finite() { self.hearsay_min_score } else { d.hearsay_min_score };
        self.hearsay_per_source = nonneg(self.hearsay_per_source, d.hearsay_per_source);
        self.hearsay_max_total = nonneg(self.hearsay_max_total, d.hearsay_max_total);
        self.max_peers = self.max_peers.max(1);
        self
    }
}

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
