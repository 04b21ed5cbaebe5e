//! Per-peer rate limits (GCRA, via `governor`) on what peers can make this node do: DHT queries
//! here, and in the node inference requests and claims it serves and job announcements it acts
//! on.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use libp2p::PeerId;

/// A keyed limiter that forgets idle peers now and then, so its memory stays bounded.
pub struct PeerLimiter {
    limiter: DefaultKeyedRateLimiter<PeerId>,
    checks: AtomicU64,
}

/// Peers tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

impl PeerLimiter {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        PeerLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
        }
    }

    /// Whether `peer` may do one more thing now.
    pub fn allow(&self, peer: &PeerId) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed).is_multiple_of(1024) || self.limiter.len() > MAX_TRACKED {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(peer).is_ok()
    }
}

#[cfg(test)]
#[path = "tests/limits.rs"]
mod tests;
