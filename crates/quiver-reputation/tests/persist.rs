//! Reputation survives a restart; bad records in the file are skipped, never fatal.

use libp2p_identity::PeerId;
use quiver_reputation::{
    FORMAT_VERSION, JobStats, Offence, PEERS_TABLE, PeerView, Reputation, ReputationConfig, ReputationError,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn job(ms: u64) -> JobStats {
    JobStats {
        latency: Duration::from_millis(ms),
        ttft: Some(Duration::from_millis(ms / 5)),
        tokens: 32,
        tokens_per_sec: None,
    }
}

fn cfg() -> ReputationConfig {
    ReputationConfig::default()
}

/// Views equal up to float printing (JSON may round the last bit).
fn assert_same(a: &PeerView, b: &PeerView) {
    assert_eq!(a.peer, b.peer);
    assert_eq!(
        (a.successes, a.failures, a.offences, a.ban_count, a.newcomer),
        (b.successes, b.failures, b.offences, b.ban_count, b.newcomer)
    );
    assert_eq!(a.banned_until_ms, b.banned_until_ms);
    assert_eq!(a.offence_counts, b.offence_counts);
    assert_eq!(
        (a.first_seen_ms, a.last_seen_ms, a.heartbeats_seen),
        (b.first_seen_ms, b.last_seen_ms, b.heartbeats_seen)
    );
    assert_eq!(a.latency_p95_ms, b.latency_p95_ms);
    assert_eq!(a.ttft_p95_ms, b.ttft_p95_ms);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
    let close_opt = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => close(x, y),
        (None, None) => true,
        _ => false,
    };
    assert!(close(a.score, b.score), "{} vs {}", a.score, b.score);
    assert!(close(a.penalty, b.penalty));
    assert!(close(a.posterior_mean, b.posterior_mean));
    assert!(close(a.hearsay_positive, b.hearsay_positive));
    assert!(close_opt(a.latency_ewma_ms, b.latency_ewma_ms));
    assert!(close_opt(a.ttft_ewma_ms, b.ttft_ewma_ms));
    assert!(close_opt(a.tokens_per_sec, b.tokens_per_sec));
    assert!(close_opt(a.uptime, b.uptime));
}

#[test]
fn reputation_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data").join("reputation.redb");
    let good = PeerId::random();
    let liar = PeerId::random();
    let heard = PeerId::random();

    let (views, ban) = {
        let mut r = Reputation::open(&path, cfg()).expect("open");
        assert!(r.is_empty());
        for i in 0..12 {
            r.record_success(good, job(300 + i * 10), t(i));
            r.heartbeat(good, t(i * 10));
        }
        r.record_failure(good, Offence::Timeout, t(130));
        r.record_failure(good, Offence::Busy, t(131));
        r.heartbeat(heard, t(100));
        assert!(r.record_hearsay(heard, good, true, t(140)));
        let mut ban = None;
        for i in 0..5 {
            ban = ban.or(r.record_failure(liar, Offence::BadSignature, t(150 + i)));
        }
        let ban = ban.expect("liar banned");
        assert_eq!(r.dirty_count(), 3);
        assert_eq!(r.flush().expect("flush"), 3);
        assert_eq!(r.dirty_count(), 0);
        assert_eq!(r.flush().expect("flush"), 0);
        (r.all(t(200)), ban)
    };

    let r = Reputation::open(&path, cfg()).expect("reopen");
    assert_eq!(r.skipped_on_open(), 0);
    assert_eq!(r.len(), 3);
    let again = r.all(t(200));
    assert_eq!(again.len(), views.len());
    for (a, b) in views.iter().zip(&again) {
        assert_same(a, b);
    }
    assert_eq!(r.is_banned(liar, t(200)), Some(ban.until));
    assert_eq!(r.banned(t(200)), vec![(liar, ban.until)]);
    assert!(!r.is_newcomer(good));
    assert!(r.is_newcomer(liar));
    // The ladder continues where it was: the next ban lasts twice as long.
    drop(r);
    let mut r = Reputation::open(&path, cfg()).expect("reopen");
    let mut next = None;
    for i in 0..5 {
        next = next.or(r.record_failure(liar, Offence::BadSignature, ban.until + Duration::from_secs(i)));
    }
    let next = next.expect("banned again");
    assert_eq!(next.ban_count, 2);
    assert_eq!(next.duration, ban.duration * 2);
}

#[test]
fn drop_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reputation.redb");
    let p = PeerId::random();
    {
        let mut r = Reputation::open(&path, cfg()).expect("open");
        r.record_success(p, job(100), t(0));
        r.penalize(p, Offence::HeartbeatLie, t(1));
        // No flush: the drop writes it.
    }
    let r = Reputation::open(&path, cfg()).expect("reopen");
    let v = r.snapshot(p, t(1)).expect("persisted by drop");
    assert_eq!(v.successes, 1);
    assert_eq!(v.offence_counts.get("heartbeat_lie"), Some(&1));
    assert!((v.penalty - 0.3).abs() < 1e-12);
}

#[test]
fn corrupt_records_are_skipped_and_cleaned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reputation.redb");
    let ok = PeerId::random();
    let bad_json = PeerId::random();
    let future = PeerId::random();
    let empty = PeerId::random();
    {
        let mut r = Reputation::open(&path, cfg()).expect("open");
        r.record_success(ok, job(100), t(0));
        r.flush().expect("flush");
    }
    {
        let db = redb::Database::create(&path).expect("redb");
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(PEERS_TABLE).expect("table");
            let mut garbage = vec![FORMAT_VERSION];
            garbage.extend_from_slice(b"{\"successes\": \"lots\"");
            table.insert(bad_json.to_bytes().as_slice(), garbage.as_slice()).expect("insert");
            table.insert(future.to_bytes().as_slice(), [99u8, b'{', b'}'].as_slice()).expect("insert");
            table.insert(empty.to_bytes().as_slice(), [].as_slice()).expect("insert");
            table.insert(b"not a peer id".as_slice(), [FORMAT_VERSION, b'{', b'}'].as_slice()).expect("insert");
            // Hostile numbers in an otherwise valid record are repaired, not fatal.
            let mut hostile = vec![FORMAT_VERSION];
            hostile.extend_from_slice(
                br#"{"successes": 3, "evidence_success": -7.0, "latency": {"samples": [1,2,3], "next": 999999}}"#,
            );
            let hostile_peer = PeerId::random();
            table.insert(hostile_peer.to_bytes().as_slice(), hostile.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let mut r = Reputation::open(&path, cfg()).expect("open despite corrupt records");
    assert_eq!(r.skipped_on_open(), 4);
    assert_eq!(r.len(), 2);
    assert_eq!(r.snapshot(ok, t(1)).map(|v| v.successes), Some(1));
    for v in r.all(t(1)) {
        assert!(v.score.is_finite());
    }
    // The peers with unreadable records start afresh and are written properly.
    r.record_success(bad_json, job(100), t(2));
    r.flush().expect("flush removes the bad entries");
    drop(r);
    let r = Reputation::open(&path, cfg()).expect("reopen");
    assert_eq!(r.skipped_on_open(), 0);
    assert_eq!(r.len(), 3);
    assert_eq!(r.snapshot(bad_json, t(3)).map(|v| v.successes), Some(1));
}

#[test]
fn eviction_is_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reputation.redb");
    let config = ReputationConfig { max_peers: 4, ..cfg() };
    let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
    {
        let mut r = Reputation::open(&path, config.clone()).expect("open");
        for (i, p) in peers.iter().enumerate() {
            r.heartbeat(*p, t(i as u64 * 100));
        }
        assert_eq!(r.len(), 4);
        r.flush().expect("flush");
    }
    let r = Reputation::open(&path, config).expect("reopen");
    assert_eq!(r.len(), 4);
    assert!(r.record(&peers[0]).is_none() && r.record(&peers[1]).is_none());
    assert!(peers[2..].iter().all(|p| r.record(p).is_some()));
    // A smaller limit at open trims the oldest.
    drop(r);
    let r = Reputation::open(&path, ReputationConfig { max_peers: 2, ..cfg() }).expect("reopen smaller");
    assert_eq!(r.len(), 2);
    assert!(r.record(&peers[4]).is_some() && r.record(&peers[5]).is_some());
}

#[test]
fn open_errors_are_reported_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reputation.redb");
    std::fs::write(&path, vec![0xA5u8; 10_000]).expect("junk file");
    match Reputation::open(&path, cfg()) {
        Err(ReputationError::Open { path: p, .. }) => assert_eq!(p, path),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a junk file"),
    }
    // The same file twice in one process: the second open is refused.
    let path2 = dir.path().join("other.redb");
    let _first = Reputation::open(&path2, cfg()).expect("open");
    let second = Reputation::open(&path2, cfg());
    assert!(matches!(second, Err(ReputationError::Open { .. })));
}

#[test]
fn in_memory_flush_is_a_no_op() {
    let mut r = Reputation::in_memory(cfg());
    r.record_success(PeerId::random(), job(10), t(0));
    assert_eq!(r.flush().expect("flush"), 0);
    assert_eq!(r.dirty_count(), 0);
    assert_eq!(r.len(), 1);
}
