//! Tests of the store's behaviour (no files; see `tests/persist.rs` for persistence).

use crate::*;
use libp2p_identity::PeerId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn t(secs: u64) -> SystemTime {
    // A fixed, realistic epoch offset so nothing depends on the wall clock.
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn job() -> JobStats {
    JobStats {
        latency: Duration::from_millis(500),
        ttft: Some(Duration::from_millis(100)),
        tokens: 40,
        tokens_per_sec: None,
    }
}

fn rep() -> Reputation {
    Reputation::in_memory(ReputationConfig::default())
}

fn established(r: &mut Reputation, peer: PeerId, n: u64, at: u64) {
    for i in 0..n {
        r.record_success(peer, job(), t(at + i));
    }
}

#[test]
fn newcomer_vs_established() {
    let mut r = rep();
    let new = PeerId::random();
    let old = PeerId::random();
    let prior = 0.5 - (1.0f64 / 12.0).sqrt();
    assert!((r.score(new, t(0)) - prior).abs() < 1e-12);
    assert!(r.is_newcomer(new));
    established(&mut r, old, 4, 0);
    assert!(r.is_newcomer(old));
    r.record_success(old, job(), t(10));
    assert!(!r.is_newcomer(old));
    let s_old = r.score(old, t(10));
    assert!((s_old - 0.7334).abs() < 1e-3, "{s_old}");
    established(&mut r, old, 95, 20);
    assert!(r.score(old, t(200)) > 0.98);
    // A newcomer with one failure is below the unknown prior; one success above it.
    let a = PeerId::random();
    let b = PeerId::random();
    r.record_failure(a, Offence::Timeout, t(0));
    r.record_success(b, job(), t(0));
    assert!(r.score(a, t(0)) < prior);
    assert!(r.score(b, t(0)) > prior);
    assert!(r.score(b, t(0)) < s_old);
}

#[test]
fn success_updates_timings() {
    let mut r = rep();
    let p = PeerId::random();
    r.record_success(p, job(), t(0));
    let v = r.snapshot(p, t(0)).expect("known");
    assert_eq!(v.latency_ewma_ms, Some(500.0));
    assert_eq!(v.ttft_ewma_ms, Some(100.0));
    // 40 tokens in 0.4 s after the first token.
    assert!((v.tokens_per_sec.unwrap_or(0.0) - 100.0).abs() < 1e-9);
    r.record_success(
        p,
        JobStats { latency: Duration::from_millis(1000), ttft: None, tokens: 0, tokens_per_sec: Some(200.0) },
        t(1),
    );
    let v = r.snapshot(p, t(1)).expect("known");
    assert!((v.latency_ewma_ms.unwrap_or(0.0) - 600.0).abs() < 1e-9);
    assert_eq!(v.ttft_ewma_ms, Some(100.0));
    assert!((v.tokens_per_sec.unwrap_or(0.0) - 120.0).abs() < 1e-9);
    assert_eq!(v.latency_p95_ms, Some(1000.0));
    assert_eq!(v.successes, 2);
}

#[test]
fn penalties_decay_by_half_life() {
    let mut r = rep();
    let p = PeerId::random();
    established(&mut r, p, 20, 0);
    let base = r.score(p, t(100));
    assert!(r.penalize(p, Offence::BadSignature, t(100)).is_none());
    let pen = |r: &Reputation, s| r.snapshot(p, t(s)).map(|v| v.penalty).unwrap_or(-1.0);
    assert!((pen(&r, 100) - 1.0).abs() < 1e-12);
    assert!((pen(&r, 700) - 0.5).abs() < 1e-12);
    assert!((pen(&r, 1300) - 0.25).abs() < 1e-12);
    assert!((r.score(p, t(700)) - (base - 0.5)).abs() < 1e-9);
    // A second offence adds to the decayed value.
    r.penalize(p, Offence::GarbageFrame, t(700));
    assert!((pen(&r, 700) - 1.0).abs() < 1e-12);
    assert!((pen(&r, 1300) - 0.5).abs() < 1e-12);
    // penalize is not a job failure; record_failure is.
    let v = r.snapshot(p, t(700)).expect("known");
    assert_eq!(v.failures, 0);
    assert_eq!(v.offences, 2);
    r.record_failure(p, Offence::Stall, t(800));
    assert_eq!(r.snapshot(p, t(800)).map(|v| v.failures), Some(1));
}

#[test]
fn busy_is_counted_but_costs_nothing() {
    let mut r = rep();
    let p = PeerId::random();
    established(&mut r, p, 10, 0);
    let before = r.score(p, t(50));
    for i in 0..100 {
        assert!(r.record_failure(p, Offence::Busy, t(50 + i)).is_none());
    }
    let v = r.snapshot(p, t(150)).expect("known");
    assert_eq!(v.failures, 0);
    assert_eq!(v.offences, 0);
    assert_eq!(v.offence_counts.get("busy"), Some(&100));
    assert_eq!(v.penalty, 0.0);
    assert!((r.score(p, t(150)) - before).abs() < 1e-12);
}

/// Offends with `BadSignature` from `start` on (one per second) until banned.
fn offend_until_banned(r: &mut Reputation, p: PeerId, start: u64) -> (Ban, u64) {
    for i in 0..1000 {
        if let Some(b) = r.record_failure(p, Offence::BadSignature, t(start + i)) {
            return (b, start + i);
        }
    }
    panic!("never banned");
}

#[test]
fn ban_ladder_doubles_and_caps() {
    let mut r = rep();
    let p = PeerId::random();
    established(&mut r, p, 50, 0);
    let mut now = 100;
    let mut expected = Duration::from_secs(600);
    for n in 1..=10u32 {
        let (ban, at) = offend_until_banned(&mut r, p, now);
        assert_eq!(ban.peer, p);
        assert_eq!(ban.ban_count, n);
        assert_eq!(ban.offence, Offence::BadSignature);
        assert_eq!(ban.duration, expected.min(Duration::from_secs(24 * 3600)), "ban {n}");
        assert_eq!(ban.until, t(at) + ban.duration);
        assert_eq!(r.is_banned(p, t(at)), Some(ban.until));
        assert_eq!(r.is_banned(p, ban.until - Duration::from_secs(1)), Some(ban.until));
        assert_eq!(r.is_banned(p, ban.until), None);
        now = at + ban.duration.as_secs();
        expected *= 2;
    }
    // 10 min · 2^8 = 42.7 h > 24 h: capped from the 9th ban on.
    assert_eq!(r.record(&p).map(|x| x.ban_count), Some(10));
}

#[test]
fn released_peer_is_not_rebanned_by_old_penalties() {
    let mut r = rep();
    let p = PeerId::random();
    // A burst of garbage far beyond the threshold.
    let mut ban = None;
    for i in 0..20 {
        let b = r.penalize(p, Offence::GarbageFrame, t(i));
        if ban.is_none() {
            ban = b;
        } else {
            assert!(b.is_none(), "no second ban while banned");
        }
    }
    let ban = ban.expect("banned");
    let cfg = r.config().clone();
    // At the ban the score sits exactly at the threshold; offences during the ban add nothing.
    let at = ban.until - ban.duration;
    assert!(r.score(p, at) >= cfg.ban_threshold - 1e-9);
    let pen_during = r.snapshot(p, at).map(|v| v.penalty).unwrap_or(0.0);
    assert!(pen_during < 1.3, "{pen_during}");
    assert_eq!(r.snapshot(p, at).map(|v| v.offences), Some(20));
    // Released: not banned, score above the threshold, and nothing that is not a new offence
    // bans again.
    let rel = ban.until;
    assert_eq!(r.is_banned(p, rel), None);
    assert!(r.score(p, rel) > cfg.ban_threshold);
    r.heartbeat(p, rel);
    r.record_success(p, job(), rel);
    assert_eq!(r.is_banned(p, rel + Duration::from_secs(1)), None);
    // A small new offence does not re-ban either; a run of big ones does, for twice as long.
    assert!(r.penalize(p, Offence::Timeout, rel).is_none());
    let mut again = None;
    for i in 0..10 {
        if let Some(b) = r.penalize(p, Offence::BadSignature, rel + Duration::from_secs(i)) {
            again = Some(b);
            break;
        }
    }
    let again = again.expect("re-banned on new offences");
    assert_eq!(again.ban_count, 2);
    assert_eq!(again.duration, ban.duration * 2);
}

#[test]
fn bans_are_listed() {
    let mut r = rep();
    let a = PeerId::random();
    let b = PeerId::random();
    let c = PeerId::random();
    r.record_success(c, job(), t(0));
    let (ba, _) = offend_until_banned(&mut r, a, 0);
    let (bb, _) = offend_until_banned(&mut r, b, 100);
    let list = r.banned(t(200));
    assert_eq!(list, vec![(a, ba.until), (b, bb.until)]);
    assert_eq!(r.next_ban_expiry(t(200)), Some(ba.until));
    assert_eq!(r.banned(ba.until), vec![(b, bb.until)]);
    assert_eq!(r.next_ban_expiry(bb.until), None);
    let v = r.snapshot(a, t(200)).expect("known");
    assert_eq!(v.banned_until_ms, Some(unix_ms(ba.until)));
    assert_eq!(r.snapshot(a, ba.until).and_then(|v| v.banned_until_ms), None);
}

#[test]
fn hearsay_weighs_little_and_only_from_good_sources() {
    let mut r = rep();
    let good = PeerId::random();
    let newcomer = PeerId::random();
    let bad = PeerId::random();
    let subject = PeerId::random();
    let stranger = PeerId::random();
    established(&mut r, good, 30, 0);
    established(&mut r, bad, 30, 0);
    r.penalize(bad, Offence::FailedVerification, t(100)); // score ≈ 0.95 − 1.5 < 0.5
    r.record_success(newcomer, job(), t(100));
    r.heartbeat(subject, t(100));
    let now = t(100);
    let before = r.snapshot(subject, now).expect("known");

    // Ignored: bad standing, newcomer, unknown source, self, unknown subject.
    assert!(!r.record_hearsay(subject, bad, false, now));
    assert!(!r.record_hearsay(subject, newcomer, false, now));
    assert!(!r.record_hearsay(subject, stranger, false, now));
    assert!(!r.record_hearsay(good, good, true, now));
    assert!(!r.record_hearsay(stranger, good, false, now));
    assert!(r.record(&stranger).is_none(), "hearsay creates no record");
    assert_eq!(r.snapshot(subject, now), Some(before.clone()));

    // Counted from a good source, but less than one own observation.
    assert!(r.record_hearsay(subject, good, true, now));
    let heard = r.snapshot(subject, now).expect("known");
    let mut own = rep();
    own.heartbeat(subject, now);
    own.record_success(subject, job(), now);
    let own_mean = own.snapshot(subject, now).map(|v| v.posterior_mean).unwrap_or(0.0);
    assert!(heard.posterior_mean > before.posterior_mean);
    assert!(heard.posterior_mean < own_mean);
    assert!((heard.hearsay_positive - 0.1).abs() < 1e-12);
    assert_eq!(heard.successes, 0);
    assert!(heard.newcomer);

    // Capped per source (0.5 = 5 reports).
    for _ in 0..20 {
        r.record_hearsay(subject, good, true, now);
    }
    let capped = r.snapshot(subject, now).expect("known");
    assert!((capped.hearsay_positive - 0.5).abs() < 1e-9);
    assert!(!r.record_hearsay(subject, good, false, now));

    // Capped in total (2.0): many good sources cannot outweigh two own observations.
    let mut sources = Vec::new();
    for i in 0..10 {
        let s = PeerId::random();
        established(&mut r, s, 10, 200 + i * 20);
        sources.push(s);
    }
    let now = t(500);
    for s in &sources {
        for _ in 0..5 {
            r.record_hearsay(subject, *s, false, now);
        }
    }
    let v = r.snapshot(subject, now).expect("known");
    assert!((v.hearsay_positive + v.hearsay_negative - 2.0).abs() < 1e-9, "{v:?}");
    // Own observations dominate: after a few own successes the mean is well above 1/2.
    for i in 0..10 {
        r.record_success(subject, job(), t(600 + i));
    }
    let v = r.snapshot(subject, t(700)).expect("known");
    assert!(v.posterior_mean > 0.75, "{}", v.posterior_mean);
}

#[test]
fn eviction_keeps_the_table_bounded() {
    let cfg = ReputationConfig { max_peers: 3, ..ReputationConfig::default() };
    let mut r = Reputation::in_memory(cfg);
    let (a, b, c, d, e) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
    offend_until_banned(&mut r, a, 0); // oldest, but banned
    r.heartbeat(b, t(100));
    r.heartbeat(c, t(200));
    assert_eq!(r.len(), 3);
    r.heartbeat(d, t(300));
    assert_eq!(r.len(), 3);
    assert!(r.record(&a).is_some(), "banned peers are kept");
    assert!(r.record(&b).is_none(), "least recently seen goes");
    // c is seen again, so d is now the least recently seen unbanned peer.
    r.heartbeat(c, t(400));
    r.heartbeat(e, t(500));
    assert!(r.record(&d).is_none());
    assert!(r.record(&c).is_some() && r.record(&e).is_some() && r.record(&a).is_some());
    // Once the ban has ended, the old offender still outranks peers known only from
    // heartbeats: c, the least recently seen of those, goes first.
    let f = PeerId::random();
    r.heartbeat(f, t(100_000));
    assert!(r.record(&a).is_some());
    assert!(r.record(&c).is_none());
    assert_eq!(r.len(), 3);
}

#[test]
fn a_flood_of_new_ids_does_not_wash_away_history() {
    let cfg = ReputationConfig { max_peers: 100, ..ReputationConfig::default() };
    let mut r = Reputation::in_memory(cfg);
    let worker = PeerId::random();
    let cheat = PeerId::random();
    established(&mut r, worker, 10, 0);
    r.penalize(cheat, Offence::WrongModel, t(0));
    for i in 0..1000 {
        r.heartbeat(PeerId::random(), t(100 + i));
    }
    assert!(r.len() <= 100);
    assert!(r.record(&worker).is_some());
    assert!(r.record(&cheat).is_some());
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Reputation>();
}

#[test]
fn uptime_from_heartbeats_enters_the_score() {
    let mut r = rep();
    let p = PeerId::random();
    established(&mut r, p, 20, 0);
    let no_hb = r.score(p, t(100));
    assert_eq!(r.snapshot(p, t(100)).and_then(|v| v.uptime), None);
    for i in 0..360 {
        r.heartbeat(p, t(100 + i * 10));
        // Duplicates (gossip and DHT) do not count twice.
        r.heartbeat(p, t(100 + i * 10) + Duration::from_millis(300));
    }
    let now = t(100 + 3595);
    let v = r.snapshot(p, now).expect("known");
    assert_eq!(v.heartbeats_seen, 360);
    assert!(v.uptime.unwrap_or(0.0) > 0.99);
    assert!((v.score - no_hb).abs() < 1e-2);
    // Silent for two hours: uptime and score fall.
    let later = t(100 + 3600 + 7200);
    let v2 = r.snapshot(p, later).expect("known");
    assert!(v2.uptime.unwrap_or(1.0) < 0.4, "{:?}", v2.uptime);
    assert!(v2.score < no_hb - 0.25);
}

#[test]
fn newcomer_share_is_capped() {
    let mut r = rep();
    let old = PeerId::random();
    let new = PeerId::random();
    established(&mut r, old, 5, 0);
    assert_eq!(r.newcomer_share(), 0.2);
    let now = t(10);
    assert!(r.newcomer_quota_available(now), "the first job may go to a newcomer");
    r.note_routed(new, now);
    assert!(!r.newcomer_quota_available(now));
    let mut to_new = 1;
    for _ in 0..99 {
        if r.newcomer_quota_available(now) {
            r.note_routed(new, now);
            to_new += 1;
        } else {
            r.note_routed(old, now);
        }
    }
    assert!((to_new as f64 / 100.0 - 0.2).abs() <= 0.02, "{to_new}");
    assert!((r.routed_newcomer_share(now) - to_new as f64 / 100.0).abs() < 1e-9);
    // Both counts decay alike, so the share stays while nothing is routed.
    let later = t(10 + 3600);
    assert!((r.routed_newcomer_share(later) - to_new as f64 / 100.0).abs() < 1e-9);
    // Newcomers fill the quota, then must wait for established peers' jobs.
    while r.newcomer_quota_available(later) {
        r.note_routed(new, later);
    }
    assert!(r.routed_newcomer_share(later) <= 0.2 + 0.05);
    for _ in 0..5 {
        r.note_routed(old, later);
    }
    assert!(r.newcomer_quota_available(later));
}

#[test]
fn views_are_sorted_and_serializable() {
    let mut r = rep();
    let a = PeerId::random();
    let b = PeerId::random();
    r.record_success(a, job(), t(0));
    r.record_failure(b, Offence::WrongModel, t(0));
    let all = r.all(t(1));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].peer, a.to_base58());
    assert!(all[0].score >= all[1].score);
    let json = serde_json::to_string(&all).expect("json");
    assert!(json.contains("\"wrong_model\":1"), "{json}");
    assert!(json.contains("\"banned_until_ms\":null"));
    let back: Vec<PeerView> = serde_json::from_str(&json).expect("back");
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].peer, all[1].peer);
    assert_eq!(back[1].failures, 1);
    assert!((back[0].score - all[0].score).abs() < 1e-12);
}

#[test]
fn clock_going_backwards_is_harmless() {
    let mut r = rep();
    let p = PeerId::random();
    r.penalize(p, Offence::Stall, t(1000));
    r.penalize(p, Offence::Stall, t(10));
    let v = r.snapshot(p, t(5)).expect("known");
    assert!((v.penalty - 0.4).abs() < 1e-12);
    assert!(v.score.is_finite());
    r.heartbeat(p, t(2000));
    r.heartbeat(p, t(1));
    assert!(r.snapshot(p, t(0)).and_then(|v| v.uptime).is_some_and(f64::is_finite));
}
