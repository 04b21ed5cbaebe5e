//! The statistics the reports use: percentiles of a sample, a five-number summary, and the
//! Gini coefficient of a distribution.

use serde::Serialize;

/// The `p`-th percentile (0–100) of `values` by linear interpolation between the closest ranks
/// (the same definition as NumPy's default). `None` for an empty sample or a `p` outside 0–100.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo], sorted[hi.min(sorted.len() - 1)]);
    Some(a + (b - a) * (rank - lo as f64))
}

/// Count, mean, minimum, median, 90th, 99th percentile and maximum of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (all zero for an empty sample; non-finite values are left out).
    pub fn of(values: &[f64]) -> Summary {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return Summary::default();
        }
        let pct = |p| percentile(&finite, p).unwrap_or(0.0);
        Summary {
            count: finite.len(),
            mean: finite.iter().sum::<f64>() / finite.len() as f64,
            min: pct(0.0),
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: pct(100.0),
        }
    }
}

/// The Gini coefficient of non-negative amounts: the mean absolute difference between all
/// pairs over twice the mean. 0 when every amount is equal, (n−1)/n when one takes everything.
/// `None` for an empty distribution, one with a negative or non-finite amount, or all zeros.
pub fn gini(amounts: &[f64]) -> Option<f64> {
    if amounts.is_empty() || amounts.iter().any(|a| !a.is_finite() || *a < 0.0) {
        return None;
    }
    let n = amounts.len() as f64;
    let total: f64 = amounts.iter().sum();
    if total <= 0.0 {
        return None;
    }
    // Sorted ascending, Σ|xi − xj| over all pairs is 2 Σ_i (2i − n + 1) x_i (0-based i).
    let mut sorted = amounts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let weighted: f64 = sorted.iter().enumerate().map(|(i, x)| (2.0 * i as f64 - n + 1.0) * x).sum();
    Some(weighted / (n * total))
}

#[cfg(test)]
#[path = "tests/stats.rs"]
mod tests;
