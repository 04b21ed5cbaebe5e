//! This client's own jobs in flight at each provider: the part of a provider's load that its
//! last heartbeat (or claim) cannot show yet.
//!
//! A provider's load reaches a client in its heartbeat (every few seconds) or in a claim (at the
//! moment it claimed). A client that sends a burst (a gateway in front of many users) ranks every
//! request of the burst on that same snapshot, so all of them looked equally cheap at the
//! provider that was cheapest a moment ago, and they herded onto it: 13 of a fresh gateway's
//! first 16 requests went to one of two equal providers. The client knows better than any
//! snapshot what it sent since: [`Dispatched`] books each attempt while it runs, and the ranking
//! takes the jobs started after a provider's snapshot as taking its free slots, then queueing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quiver_net::PeerId;

/// Attempts booked at most (all providers together); beyond it new ones go unbooked. A client
/// runs far fewer at once: the gateway's in-flight limit is 256.
const MAX_BOOKED: usize = 4096;

#[derive(Default)]
struct Book {
    /// Per provider: each attempt in flight, with its id and when it started.
    jobs: HashMap<PeerId, Vec<(u64, Instant)>>,
    booked: usize,
    next_id: u64,
}

/// The attempts this node has in flight, per provider.
#[derive(Clone, Default)]
pub(crate) struct Dispatched {
    book: Arc<Mutex<Book>>,
}

/// One attempt in flight; dropping it takes it off the book.
pub(crate) struct InFlight {
    entry: Option<(PeerId, u64)>,
    book: Dispatched,
}

impl Dispatched {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Books an attempt at `peer` starting now.
    pub(crate) fn start(&self, peer: PeerId) -> InFlight {
        let mut book = self.lock();
        if book.booked >= MAX_BOOKED {
            return InFlight { entry: None, book: self.clone() };
        }
        let id = book.next_id;
        book.next_id += 1;
        book.booked += 1;
        book.jobs.entry(peer).or_default().push((id, Instant::now()));
        InFlight { entry: Some((peer, id)), book: self.clone() }
    }

    /// Attempts in flight at `peer` that started at or after `seen` (all of them without a
    /// snapshot time): the ones a load observed at `seen` does not include.
    pub(crate) fn unseen(&self, peer: PeerId, seen: Option<Instant>) -> u32 {
        let book = self.lock();
        let Some(jobs) = book.jobs.get(&peer) else { return 0 };
        let n = jobs.iter().filter(|(_, started)| seen.is_none_or(|s| *started >= s)).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some((peer, id)) = self.entry else { return };
        let mut book = self.book.lock();
        let Some(jobs) = book.jobs.get_mut(&peer) else { return };
        let Some(i) = jobs.iter().position(|(j, _)| *j == id) else { return };
        jobs.swap_remove(i);
        if jobs.is_empty() {
            book.jobs.remove(&peer);
        }
        book.booked -= 1;
    }
}

/// A provider's load as last observed (its heartbeat or its claim).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Load {
    pub free_slots: u32,
    pub queue_depth: u32,
    /// Load average ÷ cores.
    pub cpu_load: f32,
    /// One job's speed, tokens/s (0 = unknown).
    pub tokens_per_sec: f32,
    /// All its jobs together, tokens/s of busy time (0 = unknown).
    pub batch_tokens_per_sec: f32,
}

impl Load {
    /// What is assumed of a provider whose load was never seen (a DHT record only): no free slot
    /// and a job ahead, since it may be gone.
    pub(crate) const UNSEEN: Load = Load::new(0, 1, 0.0, 0.0);

    pub(crate) const fn new(free_slots: u32, queue_depth: u32, cpu_load: f32, tokens_per_sec: f32) -> Load {
        Load { free_slots, queue_depth, cpu_load, tokens_per_sec, batch_tokens_per_sec: 0.0 }
    }

    /// The same with the provider's batched throughput.
    pub(crate) const fn batched(self, batch_tokens_per_sec: f32) -> Load {
        Load { batch_tokens_per_sec, ..self }
    }
}

/// A provider's load snapshot with `unseen` more jobs of ours on top: they take its free slots
/// first, then wait in its queue. Without a snapshot the provider already counts as busy; our
/// jobs there lengthen its queue.
pub(crate) fn with_unseen(load: Option<Load>, unseen: u32) -> Option<Load> {
    if unseen == 0 {
        return load;
    }
    let load = load.unwrap_or(Load::UNSEEN);
    let taken = load.free_slots.min(unseen);
    Some(Load {
        free_slots: load.free_slots - taken,
        queue_depth: load.queue_depth.saturating_add(unseen - taken),
        ..load
    })
}

#[cfg(test)]
#[path = "tests/dispatch.rs"]
mod tests;
