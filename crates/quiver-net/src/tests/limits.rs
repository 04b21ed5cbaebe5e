//! Unit tests of `limits.rs`.

use super::*;

#[test]
fn bursts_then_refuses_per_peer() {
    let l = PeerLimiter::new(1, 3);
    let (a, b) = (PeerId::random(), PeerId::random());
    assert!((0..3).all(|_| l.allow(&a)));
    assert!(!l.allow(&a), "the fourth at once is over the burst");
    assert!(l.allow(&b), "another peer has its own budget");
}
