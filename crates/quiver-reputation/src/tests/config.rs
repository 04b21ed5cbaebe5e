//! Unit tests of `config.rs`.

use super::*;

#[test]
fn default_is_already_sane() {
    assert_eq!(ReputationConfig::default().sanitized(), ReputationConfig::default());
}

#[test]
fn sanitize_fixes_nonsense() {
    let c = ReputationConfig {
        prior_success: 0.0,
        prior_failure: f64::NAN,
        ewma_alpha: 7.0,
        uptime_weight: -1.0,
        heartbeat_period: Duration::ZERO,
        ban_max: Duration::from_secs(1),
        newcomer_share: 3.0,
        max_peers: 0,
        ..ReputationConfig::default()
    }
    .sanitized();
    assert_eq!(c.prior_success, 1.0);
    assert_eq!(c.prior_failure, 1.0);
    assert_eq!(c.ewma_alpha, 1.0);
    assert_eq!(c.uptime_weight, 0.0);
    assert_eq!(c.heartbeat_period, Duration::from_secs(10));
    assert_eq!(c.ban_max, c.ban_base);
    assert_eq!(c.newcomer_share, 1.0);
    assert_eq!(c.max_peers, 1);
}
