//! Unit tests of `discovery.rs`.

use super::*;
use quiver_net::Keypair;

fn heartbeat(kp: &Keypair, seq: u64, timestamp_ms: u64) -> Vec<u8> {
    Heartbeat {
        peer_id: kp.public().to_peer_id().to_bytes(),
        agent_version: "quiver/test".into(),
        timestamp_ms,
        seq,
        ..Default::default()
    }
    .sign_and_encode(kp)
}

#[test]
fn accepts_news_ignores_stale_rejects_forgeries() {
    let local = PeerId::random();
    let mut t = NodeTable::new(10, Duration::from_secs(60));
    let kp = Keypair::generate_ed25519();
    let me = Some(kp.public().to_peer_id());
    let now = now_ms();
    assert_eq!(t.on_heartbeat(&heartbeat(&kp, 1, now), me, local).unwrap(), HeartbeatVerdict::Accepted);
    assert_eq!(t.on_heartbeat(&heartbeat(&kp, 1, now), me, local).unwrap(), HeartbeatVerdict::Stale);
    assert_eq!(t.on_heartbeat(&heartbeat(&kp, 2, now), me, local).unwrap(), HeartbeatVerdict::Accepted);
    // Far future or long past: dropped without penalty.
    assert_eq!(t.on_heartbeat(&heartbeat(&kp, 3, now + 3_600_000), me, local).unwrap(), HeartbeatVerdict::Stale);
    assert_eq!(t.on_heartbeat(&heartbeat(&kp, 3, now - 3_600_000), me, local).unwrap(), HeartbeatVerdict::Stale);
    // Published by someone else, or garbage: refused.
    let other = Some(PeerId::random());
    assert!(t.on_heartbeat(&heartbeat(&kp, 4, now), other, local).is_err());
    assert!(t.on_heartbeat(b"garbage", me, local).is_err());
    assert_eq!(t.len(), 1);
}

#[test]
fn bounded_and_expiring() {
    let local = PeerId::random();
    let mut t = NodeTable::new(3, Duration::from_millis(200));
    let now = now_ms();
    for _ in 0..5 {
        let kp = Keypair::generate_ed25519();
        t.on_heartbeat(&heartbeat(&kp, 1, now), Some(kp.public().to_peer_id()), local).unwrap();
    }
    assert_eq!(t.len(), 3);
    std::thread::sleep(Duration::from_millis(250));
    assert!(t.snapshot().is_empty());
    assert_eq!(t.expire(), 3);
    assert!(t.is_empty());
}
