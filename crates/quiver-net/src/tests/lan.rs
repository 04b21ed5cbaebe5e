//! Unit tests of `lan.rs`: the bounds of the book of LAN peers under a flood of announcements.

use super::*;

fn tcp(peer: &PeerId, last: u8, port: u16) -> Multiaddr {
    format!("/ip4/198.18.0.{last}/tcp/{port}/p2p/{peer}").parse().unwrap()
}

fn book(now: Instant) -> LanPeers {
    LanPeers::new(LanLimits::default(), now)
}

#[test]
fn only_dialable_lan_addresses_naming_the_peer_are_usable() {
    let p = PeerId::random();
    let other = PeerId::random();
    let ok = |s: String| usable_lan_addr(&s.parse().unwrap(), &p, true);
    assert!(ok(format!("/ip4/192.168.1.7/tcp/4001/p2p/{p}")));
    assert!(ok("/ip4/192.168.1.7/tcp/4001".to_owned()));
    assert!(ok(format!("/ip4/192.168.1.7/udp/4001/quic-v1/p2p/{p}")));
    assert!(ok(format!("/ip6/fe80::1/tcp/4001/p2p/{p}")));
    assert!(!usable_lan_addr(&format!("/ip4/192.168.1.7/udp/4001/quic-v1/p2p/{p}").parse().unwrap(), &p, false));
    for bad in [
        format!("/ip4/192.168.1.7/tcp/4001/p2p/{other}"),
        format!("/ip4/0.0.0.0/tcp/4001/p2p/{p}"),
        format!("/ip4/127.0.0.1/tcp/4001/p2p/{p}"),
        format!("/ip4/224.0.0.251/tcp/4001/p2p/{p}"),
        format!("/ip4/255.255.255.255/tcp/4001/p2p/{p}"),
        format!("/ip6/::1/tcp/4001/p2p/{p}"),
        format!("/ip4/192.168.1.7/tcp/0/p2p/{p}"),
        format!("/ip4/192.168.1.7/udp/4001/p2p/{p}"),
        format!("/ip4/192.168.1.7/tcp/4001/ws/p2p/{p}"),
        format!("/ip4/192.168.1.7/tcp/4001/p2p/{other}/p2p-circuit/p2p/{p}"),
        format!("/dns4/example.org/tcp/4001/p2p/{p}"),
        "/memory/7".to_owned(),
    ] {
        assert!(!ok(bad.clone()), "{bad} must be refused");
    }
}

#[test]
fn a_flood_of_fake_peers_stays_within_the_cap_and_the_dial_rate() {
    let limits = LanLimits::default();
    let start = Instant::now();
    let mut lan = book(start);
    let (mut added, mut evicted, mut dials) = (0usize, 0usize, 0usize);
    // 1,000 fake peers announced over 10 s (100 ms apart in batches of 10); the loop dials what
    // the bucket allows every 100 ms, and every dial fails.
    for step in 0..100u32 {
        let now = start + Duration::from_millis(100) * step;
        for i in 0..10 {
            let peer = PeerId::random();
            match lan.offer(peer, tcp(&peer, 20, 10_000 + i), now) {
                Offered::Added { evicted: e } => {
                    added += 1;
                    evicted += usize::from(e.is_some());
                }
                other => panic!("a new peer with a good address is added, got {other:?}"),
            }
            assert!(lan.len() <= limits.max_pending);
        }
        for (n, (peer, addrs)) in lan.due(now).into_iter().enumerate() {
            assert!(!addrs.is_empty() && addrs.len() <= limits.max_addrs);
            dials += 1;
            let id = ConnectionId::new_unchecked(dials * 10 + n);
            lan.dialing(&peer, id);
            assert!(lan.dial_failed(&peer, id, now));
        }
    }
    let elapsed = Duration::from_millis(100) * 99;
    assert_eq!(added, 1000);
    assert_eq!(lan.peak(), limits.max_pending, "the book fills up to its cap and no further");
    assert!(lan.len() <= limits.max_pending);
    let bound = f64::from(limits.dial_burst) + limits.dials_per_sec * elapsed.as_secs_f64();
    assert!(dials as f64 <= bound, "{dials} dials in {elapsed:?}: more than the bucket allows ({bound})");
    // The bucket is used, not starved: a dial every quarter second after the burst.
    assert!(dials as f64 >= bound - 2.0, "{dials} dials, the bucket allowed {bound}");
    assert_eq!(added, lan.len() + evicted + dials, "every added peer is kept, evicted or dialed");
    assert!(lan.quarantined() <= limits.max_quarantined);
}

#[test]
fn quarantine_memory_is_bounded_and_keeps_failed_peers_from_redials() {
    let limits = LanLimits { max_quarantined: 8, dial_burst: 100, dials_per_sec: 100.0, ..LanLimits::default() };
    let now = Instant::now();
    let mut lan = LanPeers::new(limits, now);
    let first = PeerId::random();
    lan.offer(first, tcp(&first, 20, 1), now);
    let dial = lan.due(now);
    assert_eq!(dial.len(), 1);
    let id = ConnectionId::new_unchecked(1);
    lan.dialing(&first, id);
    assert!(!lan.dial_failed(&first, ConnectionId::new_unchecked(2), now), "another dial's failure is not ours");
    assert!(lan.dial_failed(&first, id, now));
    assert_eq!(lan.offer(first, tcp(&first, 20, 1), now), Offered::Dropped(Dropped::Quarantined));
    // Rejecting 20 more fills the memory to its bound, never beyond.
    for _ in 0..20 {
        lan.reject(PeerId::random(), now);
        assert!(lan.quarantined() <= 8);
    }
    // After the quarantine, the peer is welcome again.
    let later = now + LanLimits::default().quarantine;
    lan.expire(later);
    assert_eq!(lan.quarantined(), 0);
    assert!(matches!(lan.offer(first, tcp(&first, 20, 1), later), Offered::Added { .. }));
}

#[test]
fn addresses_per_peer_are_bounded_and_silent_peers_expire() {
    let limits = LanLimits::default();
    let now = Instant::now();
    let mut lan = book(now);
    let p = PeerId::random();
    assert!(matches!(lan.offer(p, tcp(&p, 20, 1), now), Offered::Added { evicted: None }));
    assert_eq!(lan.offer(p, tcp(&p, 20, 1), now), Offered::Refreshed);
    for port in 2..=limits.max_addrs as u16 {
        assert_eq!(lan.offer(p, tcp(&p, 20, port), now), Offered::Refreshed);
    }
    assert_eq!(lan.offer(p, tcp(&p, 20, 999), now), Offered::Dropped(Dropped::TooManyAddresses));
    let other = PeerId::random();
    assert_eq!(lan.offer(p, tcp(&other, 20, 5), now), Offered::Dropped(Dropped::InvalidAddress));
    // Heard again just before the time to live ends: kept; then silent for a whole one: gone.
    let refreshed = now + limits.ttl - Duration::from_secs(1);
    lan.offer(p, tcp(&p, 20, 1), refreshed);
    assert_eq!(lan.expire(now + limits.ttl), 0);
    assert_eq!(lan.expire(refreshed + limits.ttl), 1);
    assert_eq!(lan.len(), 0);
}

#[test]
fn a_connected_peer_leaves_the_book_and_a_full_book_evicts_the_least_recently_heard() {
    let limits = LanLimits { max_pending: 3, ..LanLimits::default() };
    let now = Instant::now();
    let mut lan = LanPeers::new(limits, now);
    let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
    for (i, p) in peers.iter().take(3).enumerate() {
        lan.offer(*p, tcp(p, 20, 1), now + Duration::from_secs(i as u64));
    }
    // peers[0] heard again: peers[1] is now the least recently heard.
    lan.offer(peers[0], tcp(&peers[0], 20, 1), now + Duration::from_secs(5));
    assert_eq!(
        lan.offer(peers[3], tcp(&peers[3], 20, 1), now + Duration::from_secs(6)),
        Offered::Added { evicted: Some(peers[1]) }
    );
    assert_eq!(lan.len(), 3);
    assert!(lan.connected(&peers[0]));
    assert!(!lan.connected(&peers[0]));
    lan.forget(&peers[2]);
    assert_eq!(lan.len(), 1);
}
