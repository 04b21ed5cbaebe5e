//! Unit tests of `record.rs`.

use super::*;

fn cfg() -> ReputationConfig {
    ReputationConfig::default()
}

#[test]
fn prior_posterior() {
    let r = PeerRecord::default();
    let c = cfg();
    assert_eq!(r.posterior(&c), (1.0, 1.0));
    assert!((r.posterior_mean(&c) - 0.5).abs() < 1e-12);
    // Beta(1,1): sd = sqrt(1/12) = 0.288675
    assert!((r.posterior_lower(&c) - (0.5 - (1.0f64 / 12.0).sqrt())).abs() < 1e-12);
}

#[test]
fn posterior_after_observations() {
    let c = cfg();
    let mut r = PeerRecord::default();
    for _ in 0..8 {
        r.add_evidence(true, &c);
    }
    r.add_evidence(false, &c);
    // Beta(9, 2): mean 9/11, var = 18 / (121 · 12)
    let (a, b) = r.posterior(&c);
    assert_eq!((a, b), (9.0, 2.0));
    assert!((r.posterior_mean(&c) - 9.0 / 11.0).abs() < 1e-12);
    let sd = (18.0f64 / (121.0 * 12.0)).sqrt();
    assert!((r.posterior_lower(&c) - (9.0 / 11.0 - sd)).abs() < 1e-12);
    assert_eq!((r.successes, r.failures), (8, 1));
}

#[test]
fn lower_bound_tightens_with_evidence() {
    let c = cfg();
    let mut few = PeerRecord::default();
    let mut many = PeerRecord::default();
    for i in 0..10 {
        few.add_evidence(i % 10 != 0, &c);
    }
    for i in 0..100 {
        many.add_evidence(i % 10 != 0, &c);
    }
    // Same rate, more evidence: higher lower bound.
    assert!(many.posterior_lower(&c) > few.posterior_lower(&c));
}

#[test]
fn evidence_window_keeps_recent_behaviour_visible() {
    let c = cfg();
    let mut r = PeerRecord::default();
    for _ in 0..10_000 {
        r.add_evidence(true, &c);
    }
    assert!((r.evidence_success + r.evidence_failure - c.evidence_window).abs() < 1e-6);
    for _ in 0..100 {
        r.add_evidence(false, &c);
    }
    // Unbounded counts would give 10001/10102 ≈ 0.99; the window sees the turn.
    assert!(r.posterior_mean(&c) < 0.7, "{}", r.posterior_mean(&c));
    assert_eq!(r.successes, 10_000);
    assert_eq!(r.failures, 100);
}

#[test]
fn hearsay_ages_with_own_observations() {
    let c = cfg();
    let mut r = PeerRecord::default();
    // Others said it was good, up to the cap; then it fails us again and again.
    r.hearsay.positive = c.hearsay_max_total;
    r.hearsay.sources.insert("source".into(), c.hearsay_per_source);
    for _ in 0..(4 * c.evidence_window as usize) {
        r.add_evidence(false, &c);
    }
    // The old praise shrank as the window moved on, as old own observations did.
    assert!(r.hearsay.positive < c.hearsay_max_total / 2.0, "{}", r.hearsay.positive);
    let used = r.hearsay.sources["source"];
    assert!(used < c.hearsay_per_source / 2.0, "the source may speak again: {used}");
    // Before the window is full nothing ages.
    let mut young = PeerRecord::default();
    young.hearsay.negative = 1.0;
    young.add_evidence(true, &c);
    assert_eq!(young.hearsay.negative, 1.0);
}

#[test]
fn decay_halves_per_half_life() {
    let hl = Duration::from_secs(600);
    assert_eq!(decay(8.0, 0, 0, hl), 8.0);
    assert!((decay(8.0, 0, 600_000, hl) - 4.0).abs() < 1e-12);
    assert!((decay(8.0, 1_000, 1_201_000, hl) - 2.0).abs() < 1e-12);
    // Backwards time does not grow it.
    assert_eq!(decay(8.0, 1_000, 0, hl), 8.0);
    assert_eq!(decay(8.0, 0, 1, Duration::ZERO), 0.0);
}

#[test]
fn p95_of_known_distribution() {
    let mut t = Timing::default();
    // 1..=64 ms: nearest rank ceil(0.95·64) = 61.
    for ms in 1..=64u64 {
        t.push(Duration::from_millis(ms), 0.2);
    }
    assert_eq!(t.p95_ms(), Some(61.0));
    assert_eq!(t.quantile_ms(0.5), Some(32.0));
    // Ring keeps only the last 64: 37..=100 → p95 is 37 + 60 = 97.
    for ms in 65..=100u64 {
        t.push(Duration::from_millis(ms), 0.2);
    }
    assert_eq!(t.samples.len(), RING_SIZE);
    assert_eq!(t.p95_ms(), Some(97.0));
    assert_eq!(t.quantile_ms(0.0), Some(37.0));
    assert_eq!(t.quantile_ms(1.0), Some(100.0));
}

#[test]
fn p95_of_exponential_latencies() {
    // Exponential with mean 100 ms: p95 = 100·ln 20 ≈ 299.6 ms. Stratified inverse-CDF
    // samples in a scrambled order, so the ring holds an evenly spread 64.
    let mut t = Timing::default();
    let n = 64u64;
    for i in 0..n {
        let k = (i * 37) % n; // 37 is coprime with 64: a permutation
        let u = (k as f64 + 0.5) / n as f64;
        let x = -100.0 * (1.0 - u).ln();
        t.push(Duration::from_secs_f64(x / 1000.0), 0.2);
    }
    let p95 = t.p95_ms().unwrap_or(0.0);
    let expected = 100.0 * 20f64.ln();
    assert!((p95 - expected).abs() / expected < 0.15, "p95 {p95} vs {expected}");
    // The EWMA is in the right ballpark of the mean.
    let e = t.ewma_ms.unwrap_or(0.0);
    assert!(e > 10.0 && e < 400.0, "{e}");
}

#[test]
fn ewma_follows_samples() {
    let mut t = Timing::default();
    t.push(Duration::from_millis(100), 0.2);
    assert_eq!(t.ewma_ms, Some(100.0));
    t.push(Duration::from_millis(200), 0.2);
    assert!((t.ewma_ms.unwrap_or(0.0) - 120.0).abs() < 1e-9);
}

#[test]
fn uptime_from_heartbeats() {
    let c = cfg();
    let p = 10_000u64;
    let mut r = PeerRecord::default();
    assert_eq!(r.uptime(&c, 0), None);
    // A heartbeat every period for an hour.
    let mut u = UptimeState::default();
    for i in 0..360u64 {
        u = u.advanced(i * p, &c);
        if i == 0 {
            u.expected = 1.0;
        }
        u.seen += 1.0;
    }
    r.uptime = Some(u);
    let now = 359 * p + p / 2;
    assert!(r.uptime(&c, now).unwrap_or(0.0) > 0.99);
    // Every other heartbeat missing: about half.
    let mut u = UptimeState::default();
    for i in 0..360u64 {
        u = u.advanced(i * p, &c);
        if i == 0 {
            u.expected = 1.0;
        }
        if i % 2 == 0 {
            u.seen += 1.0;
        }
    }
    r.uptime = Some(u);
    let half = r.uptime(&c, 360 * p).unwrap_or(0.0);
    assert!((half - 0.5).abs() < 0.02, "{half}");
    // Then silence for an hour: it drops.
    assert!(r.uptime(&c, 720 * p).unwrap_or(1.0) < 0.3);
}

#[test]
fn sanitize_repairs_hostile_values() {
    let c = cfg();
    let mut r = PeerRecord {
        evidence_success: f64::INFINITY,
        evidence_failure: -5.0,
        tokens_per_sec: Some(f64::NAN),
        latency: Timing { ewma_ms: Some(-1.0), samples: vec![1; 1000], next: 5000 },
        ..PeerRecord::default()
    };
    r.penalty.value = f64::NAN;
    r.sanitize(&c);
    assert_eq!(r.evidence_success, 0.0);
    assert_eq!(r.evidence_failure, 0.0);
    assert_eq!(r.tokens_per_sec, None);
    assert_eq!(r.latency.samples.len(), RING_SIZE);
    assert_eq!(r.latency.next, 0);
    assert_eq!(r.latency.ewma_ms, None);
    assert_eq!(r.penalty.value, 0.0);
    assert!(r.score(&c, 0).is_finite());
}
