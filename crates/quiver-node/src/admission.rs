//! Who gets a provider's queue places: fair shares between clients without idle capacity.
//!
//! A provider runs `max_concurrent` jobs (a semaphore in `provider.rs`) and keeps at most
//! `queue` more waiting. This module decides, per request, whether it may wait and keeps the
//! count of every client's jobs (running and queued).
//!
//! A lone client may use all of it: a gateway in front of many users is one peer, and a fixed
//! cap per peer would turn its burst into "busy" answers while places stood empty. When the queue
//! is full, a request from a client holding fewer jobs than the heaviest one (by at least two)
//! takes the place of that client's newest queued job, which is refused as busy (its client
//! tries another provider). So under contention every client converges to an equal share, and a
//! flood from one peer cannot keep others out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use quiver_net::PeerId;
use tokio::sync::oneshot;

/// Jobs of one client here.
#[derive(Default)]
struct PeerJobs {
    /// Running and queued.
    total: usize,
    /// Queued jobs, oldest first: their id and the signal that evicts them.
    queued: Vec<(u64, oneshot::Sender<()>)>,
}

#[derive(Default)]
struct State {
    peers: HashMap<PeerId, PeerJobs>,
    queued: usize,
    next_id: u64,
}

/// The admission book of one provider.
#[derive(Clone)]
pub(crate) struct Admission {
    queue_cap: usize,
    state: Arc<Mutex<State>>,
}

/// The answer to a request that found no free slot.
pub(crate) enum Queued {
    /// It may wait: the place, and the signal that it was given to another client's job.
    Place(Ticket, oneshot::Receiver<()>),
    /// The queue is full and this client already holds its share.
    Refused,
}

/// One job's place in the book (running or queued); dropping it gives the place back.
pub(crate) struct Ticket {
    peer: PeerId,
    place: Place,
    book: Admission,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Queued(u64),
    Running,
    /// Its place went to another client's job; nothing of it is left on the book.
    Evicted,
}

impl Admission {
    pub(crate) fn new(queue_cap: usize) -> Self {
        Admission { queue_cap, state: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs waiting for a slot.
    pub(crate) fn queued(&self) -> usize {
        self.lock().queued
    }

    /// Books a job that got a slot at once.
    pub(crate) fn running(&self, peer: PeerId) -> Ticket {
        self.lock().peers.entry(peer).or_default().total += 1;
        Ticket { peer, place: Place::Running, book: self.clone() }
    }

    /// Books a job that found every slot taken: a place in the queue, possibly taken from the
    /// client with the most jobs here, or a refusal.
    pub(crate) fn enqueue(&self, peer: PeerId) -> Queued {
        let mut state = self.lock();
        if state.queued >= self.queue_cap {
            let mine = state.peers.get(&peer).map_or(0, |p| p.total);
            // The client with the most jobs among those with one queued (the first found on a tie).
            let heaviest = state
                .peers
                .iter()
                .filter(|(_, p)| !p.queued.is_empty())
                .max_by_key(|(_, p)| p.total)
                .map(|(id, p)| (*id, p.total));
            let Some((victim, theirs)) = heaviest.filter(|(_, theirs)| *theirs >= mine + 2) else {
                return Queued::Refused;
            };
            let Some(jobs) = state.peers.get_mut(&victim) else { return Queued::Refused };
            if let Some((_, evict)) = jobs.queued.pop() {
                jobs.total -= 1;
                if jobs.total == 0 {
                    state.peers.remove(&victim);
                }
                state.queued -= 1;
                // Its waiter may have gone already; either way its place is free now.
                let _ = evict.send(());
                tracing::debug!(%victim, theirs, %peer, mine, "queue full: a place moves to a lighter client");
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let jobs = state.peers.entry(peer).or_default();
        jobs.total += 1;
        jobs.queued.push((id, tx));
        state.queued += 1;
        Queued::Place(Ticket { peer, place: Place::Queued(id), book: self.clone() }, rx)
    }
}

impl Ticket {
    /// Queued jobs ahead of this one (booked before it and still waiting): its place in line,
    /// since the slots go to waiters in the order they queued. 0 once it runs.
    pub(crate) fn position(&self) -> usize {
        let Place::Queued(id) = self.place else { return 0 };
        let state = self.book.lock();
        state.peers.values().flat_map(|jobs| jobs.queued.iter()).filter(|(q, _)| *q < id).count()
    }

    /// The queued job got its slot: it leaves the queue (and can no longer be evicted). False
    /// when it had been evicted meanwhile; it must not run then.
    pub(crate) fn start(&mut self) -> bool {
        let Place::Queued(id) = self.place else { return self.place == Place::Running };
        let mut state = self.book.lock();
        let found = state.peers.get_mut(&self.peer).and_then(|jobs| {
            let i = jobs.queued.iter().position(|(q, _)| *q == id)?;
            jobs.queued.remove(i);
            Some(())
        });
        if found.is_none() {
            self.place = Place::Evicted;
            return false;
        }
        state.queued -= 1;
        self.place = Place::Running;
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.book.lock();
        let State { peers, queued, .. } = &mut *state;
        let Some(jobs) = peers.get_mut(&self.peer) else { return };
        match self.place {
            Place::Evicted => return,
            Place::Running => {}
            Place::Queued(id) => match jobs.queued.iter().position(|(q, _)| *q == id) {
                Some(i) => {
                    jobs.queued.remove(i);
                    *queued -= 1;
                }
                // Evicted while nobody looked: already off the book.
                None => return,
            },
        }
        jobs.total -= 1;
        if jobs.total == 0 {
            peers.remove(&self.peer);
        }
    }
}

/// Inference streams open per peer, bounded: one peer cannot take every stream place of a
/// provider (by opening streams and never writing a request, say) and leave honest clients
/// refused.
pub(crate) struct StreamBook {
    open: Mutex<HashMap<PeerId, usize>>,
    per_peer: usize,
}

/// One open stream, counted until dropped.
pub(crate) struct OpenStream {
    book: Arc<StreamBook>,
    peer: PeerId,
}

impl StreamBook {
    pub(crate) fn new(per_peer: usize) -> Arc<Self> {
        Arc::new(StreamBook { open: Mutex::new(HashMap::new()), per_peer: per_peer.max(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new stream of `peer`, or `None` when it already has `per_peer` open.
    pub(crate) fn open(self: &Arc<Self>, peer: PeerId) -> Option<OpenStream> {
        let mut open = self.lock();
        let n = open.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(OpenStream { book: self.clone(), peer })
    }

    /// Streams of `peer` open now.
    #[cfg(test)]
    pub(crate) fn count(&self, peer: &PeerId) -> usize {
        self.lock().get(peer).copied().unwrap_or(0)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.book.lock();
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
#[path = "tests/admission.rs"]
mod tests;
