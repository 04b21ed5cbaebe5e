//! The routing-table refresh: how a node joins the DHT, and how it keeps its buckets filled.
//!
//! A refresh is a lookup of our own key (libp2p-kad's `bootstrap()`, which fills the near
//! buckets and tells our closest neighbours about us), then, for every bucket farther out than
//! our closest neighbour's that holds fewer than [`REFRESH_BELOW`] peers, a lookup for the
//! [`BUCKET_RESULTS`] peers nearest a key in that bucket. Every peer that answers such a lookup
//! lies in that bucket, so each lookup fills its bucket and makes us known there.
//!
//! libp2p-kad's own bucket walk, which follows the own-key lookup of each `bootstrap()`, looks up
//! a key for every farther bucket, full or not, and each of its lookups must hear from the 20
//! peers closest to its key: at 1,000 simulated nodes a join sent ~714 requests and opened ~500
//! connections that way, though a bucket holds 20 peers (bench/SIM.md). So [`Refresh`] cuts that
//! walk: our bootstrap's continuations are finished as soon as libp2p-kad starts them, and
//! bootstraps we did not start are finished at once. libp2p-kad 0.49 starts a bootstrap by
//! itself 500 ms after a peer enters a routing table of fewer than 20, and its switch for that is
//! test-only (rust-libp2p issue 5341); its periodic bootstrap is turned off in the behaviour's
//! configuration, and the event loop starts a refresh on our own period instead.
//!
//! A table still short of K peers after a refresh is refreshed again, sooner while refreshes
//! keep adding peers and ever later (doubling up to the period) once they stop: a node whose
//! join found too few peers, or that never reached its bootstrap peer but was found by others,
//! fills its table without waiting a whole period, and a network smaller than K does not spend
//! a lookup a second on it.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::{self, KBucketKey, QueryId, store::MemoryStore};
use rand::RngCore;
use tokio::time::Instant;

type Kad = kad::Behaviour<MemoryStore>;

/// Kademlia's bucket size (K).
const BUCKET_SIZE: usize = 20;
/// A farther bucket is refreshed while it holds fewer peers than this.
pub(crate) const REFRESH_BELOW: usize = BUCKET_SIZE / 2;
/// Peers a bucket's lookup must hear from before it ends (each disjoint path on its own).
pub(crate) const BUCKET_RESULTS: usize = BUCKET_SIZE / 4;
/// Random keys drawn at most to find one in each bucket to refresh. A key lands in bucket `i`
/// with probability 2^(i-256), so this reaches 14 buckets below the farthest: a network would
/// need about 2^14 nodes before the closest neighbour's bucket lies deeper than that, and
/// buckets not hit are left to the next refresh and to the random walk.
const MAX_KEY_TRIES: usize = 1 << 14;
/// Index of the farthest bucket (log2 of the largest distance).
const FARTHEST_BUCKET: u32 = 255;
/// First wait before refreshing a table that is still short of K peers.
pub(crate) const RETRY_MIN: Duration = Duration::from_secs(1);

/// Our refresh in progress, if any.
#[derive(Debug)]
pub(crate) struct Refresh {
    /// Our key in the DHT's key space.
    local: KBucketKey<PeerId>,
    /// Our bootstrap query: its own-key lookup, then libp2p-kad's continuations, which we cut.
    walk: Option<QueryId>,
    /// Our bucket lookups still running (at most one per bucket).
    buckets: HashSet<QueryId>,
    /// Peers in the routing table when the refresh running now started.
    table_at_start: usize,
    /// When to refresh again because the table is short of K peers (none while it is full).
    retry_at: Option<Instant>,
    /// The wait before that next refresh; doubles up to `retry_max` while refreshes add nobody.
    backoff: Duration,
    retry_max: Duration,
}

/// What a Kademlia event meant for the refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not ours, or ours and more is to come.
    Pending,
    /// The refresh has finished: the own-key lookup and every bucket lookup.
    Finished,
}

impl Refresh {
    /// A node's refresh state; `retry_max` is the longest wait between refreshes of a table
    /// short of peers (the periodic refresh's interval). The first check is [`RETRY_MIN`] from
    /// now, so a node that some peer found before it reached a bootstrap peer still joins.
    pub(crate) fn new(local: PeerId, retry_max: Duration) -> Refresh {
        Refresh {
            local: KBucketKey::from(local),
            walk: None,
            buckets: HashSet::new(),
            table_at_start: 0,
            retry_at: Some(Instant::now() + RETRY_MIN),
            backoff: RETRY_MIN,
            retry_max: retry_max.max(RETRY_MIN),
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.walk.is_some() || !self.buckets.is_empty()
    }

    /// Starts a refresh unless one is running. False if none runs now (the routing table is empty).
    pub(crate) fn start(&mut self, kad: &mut Kad) -> bool {
        if self.running() {
            return true;
        }
        let table = table_size(kad);
        match kad.bootstrap() {
            Ok(id) => {
                self.walk = Some(id);
                self.table_at_start = table;
                self.retry_at = None;
                true
            }
            Err(kad::NoKnownPeers()) => false,
        }
    }

    /// Whether a table short of peers is due another refresh at `now`.
    pub(crate) fn retry_due(&self, now: Instant) -> bool {
        !self.running() && self.retry_at.is_some_and(|at| now >= at)
    }

    /// The retry found no peer to ask: look again after the shortest wait (a bootstrap peer
    /// reached or a peer that found us fills the table meanwhile).
    pub(crate) fn retry_later(&mut self, now: Instant) {
        self.retry_at = Some(now + RETRY_MIN);
    }

    /// Called when a refresh has finished with `table` peers in the routing table: schedules
    /// the next one while the table is short of K peers.
    pub(crate) fn finished(&mut self, table: usize, now: Instant) {
        let (retry_at, backoff) = next_retry(self.table_at_start, table, self.backoff, self.retry_max, now);
        self.retry_at = retry_at;
        self.backoff = backoff;
    }

    /// Finishes every bootstrap query libp2p-kad started by itself. Called after each swarm
    /// event, so such a walk is cut after the requests of its first poll.
    pub(crate) fn cut_foreign(&self, kad: &mut Kad) {
        for mut q in kad.iter_queries_mut() {
            if matches!(q.info(), kad::QueryInfo::Bootstrap { .. }) && Some(q.id()) != self.walk {
                q.finish();
            }
        }
    }

    /// A step of a bootstrap query. After our own-key lookup (step 1, whether it ended or timed
    /// out) the bucket lookups start; every later step is a bucket libp2p-kad would walk, and is
    /// finished before it sends anything.
    pub(crate) fn on_bootstrap_step(&mut self, kad: &mut Kad, id: QueryId, step: &kad::ProgressStep) -> Progress {
        if self.walk != Some(id) {
            // Someone else's walk: cut what comes next.
            if !step.last
                && let Some(mut q) = kad.query_mut(&id)
            {
                q.finish();
            }
            return Progress::Pending;
        }
        if step.count.get() == 1 {
            self.start_bucket_lookups(kad);
        }
        if step.last {
            self.walk = None;
        } else if let Some(mut q) = kad.query_mut(&id) {
            q.finish();
        }
        self.progress()
    }

    /// A step of a closest-peers lookup (ours among them).
    pub(crate) fn on_closest_peers(&mut self, id: QueryId, step: &kad::ProgressStep) -> Progress {
        if !step.last || !self.buckets.remove(&id) {
            return Progress::Pending;
        }
        self.progress()
    }

    fn progress(&self) -> Progress {
        if self.running() { Progress::Pending } else { Progress::Finished }
    }

    fn start_bucket_lookups(&mut self, kad: &mut Kad) {
        let fill: Vec<(u32, usize)> =
            kad.kbuckets().filter_map(|b| b.range().0.ilog2().map(|i| (i, b.num_entries()))).collect();
        let wanted = buckets_to_refresh(&fill);
        let Some(n) = NonZeroUsize::new(BUCKET_RESULTS) else { return };
        for (_, key) in keys_in_buckets(&self.local, &wanted, &mut rand::thread_rng()) {
            self.buckets.insert(kad.get_n_closest_peers(key, n));
        }
    }
}

fn table_size(kad: &mut Kad) -> usize {
    kad.kbuckets().map(|b| b.num_entries()).sum()
}

/// When to refresh again after a refresh took the table from `before` to `after` peers, and
/// the wait to double next time: not at all once the table holds K peers; after the shortest
/// wait while refreshes add peers; after twice the last wait (at most `max`) while they do not.
pub(crate) fn next_retry(
    before: usize,
    after: usize,
    backoff: Duration,
    max: Duration,
    now: Instant,
) -> (Option<Instant>, Duration) {
    if after >= BUCKET_SIZE {
        return (None, RETRY_MIN);
    }
    let wait = if after > before { RETRY_MIN } else { (backoff * 2).min(max) };
    (Some(now + wait), wait)
}

/// The buckets a refresh looks into, by index (log2 of their distance from us): each one
/// farther out than the closest non-empty bucket that holds fewer than [`REFRESH_BELOW`] peers.
/// `fill` lists the non-empty buckets as (index, peers). Nothing while the table is empty.
pub(crate) fn buckets_to_refresh(fill: &[(u32, usize)]) -> Vec<u32> {
    let Some(closest) = fill.iter().map(|(i, _)| *i).min() else { return Vec::new() };
    (closest + 1..=FARTHEST_BUCKET)
        .filter(|i| fill.iter().find(|(j, _)| j == i).map_or(0, |(_, n)| *n) < REFRESH_BELOW)
        .collect()
}

/// One random key (a 32-byte preimage) in each of `buckets`, by trial: each draw lands in the
/// bucket of its distance from `local`, so one pass of draws serves every bucket at once. A
/// bucket not hit within [`MAX_KEY_TRIES`] draws is left out.
pub(crate) fn keys_in_buckets(
    local: &KBucketKey<PeerId>,
    buckets: &[u32],
    rng: &mut impl RngCore,
) -> Vec<(u32, Vec<u8>)> {
    let mut missing: HashSet<u32> = buckets.iter().copied().collect();
    let mut found = Vec::with_capacity(missing.len());
    for _ in 0..MAX_KEY_TRIES {
        if missing.is_empty() {
            break;
        }
        let mut preimage = vec![0u8; 32];
        rng.fill_bytes(&mut preimage);
        let key = KBucketKey::from(preimage);
        if let Some(i) = local.distance(&key).ilog2()
            && missing.remove(&i)
        {
            found.push((i, key.into_preimage()));
        }
    }
    found.sort_by_key(|(i, _)| *i);
    found
}

#[cfg(test)]
#[path = "tests/refresh.rs"]
mod tests;
