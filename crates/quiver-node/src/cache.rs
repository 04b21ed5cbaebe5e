//! The client's result cache: identical greedy requests (same model, input and parameters) are
//! answered from memory. Bounded in entries, and each entry expires.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use quiver_proto::InferRequest;
use sha2::{Digest, Sha256};

use crate::client::InferenceResult;

pub(crate) struct ResultCache {
    inner: Mutex<Entries>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Entries {
    map: HashMap<[u8; 32], (Instant, InferenceResult)>,
    order: VecDeque<[u8; 32]>,
}

impl ResultCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        ResultCache { inner: Mutex::new(Entries::default()), capacity: capacity.max(1), ttl }
    }

    /// The key of a request, or `None` when its answer is not reusable (sampled, not greedy).
    pub(crate) fn key(request: &InferRequest) -> Option<[u8; 32]> {
        let params = request.params.as_ref()?;
        if params.temperature != 0.0 {
            return None;
        }
        let mut h = Sha256::new();
        h.update(request.model.as_bytes());
        h.update([0]);
        h.update(&request.model_sha256);
        h.update(request.input.as_ref()?.encode_length_delimited_to_vec());
        h.update(params.encode_length_delimited_to_vec());
        Some(h.finalize().into())
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<InferenceResult> {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match e.map.get(key) {
            Some((at, r)) if at.elapsed() <= self.ttl => Some(r.clone()),
            Some(_) => {
                e.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn put(&self, key: [u8; 32], result: InferenceResult) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if e.map.insert(key, (Instant::now(), result)).is_none() {
            e.order.push_back(key);
        }
        while e.map.len() > self.capacity {
            match e.order.pop_front() {
                Some(old) => {
                    e.map.remove(&old);
                }
                None => break,
            }
        }
        // Keys whose entries were replaced or expired may linger in `order`; keep it bounded.
        if e.order.len() > 2 * self.capacity {
            let live: std::collections::HashSet<[u8; 32]> = e.map.keys().copied().collect();
            e.order.retain(|k| live.contains(k));
        }
    }
}
