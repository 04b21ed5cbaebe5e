//! What providers said their engine was, in the receipts they signed and in their heartbeats.
//!
//! Verification compares results only within a class (model file, engine build, threads), and a
//! receipt's class is the provider's word. A provider that signs one class and announces
//! another in its heartbeats chose its class to dodge comparison. So a client remembers the
//! classes its providers signed for (bounded), and checks them against each later heartbeat of
//! the same provider: when the heartbeat comes from the process that signed the receipt (its
//! uptime reaches back past the receipt's time, so no restart, and no upgrade, came between),
//! it must announce that class for the model. An honest provider always does: both come from
//! the same engine.
//!
//! A provider that restarts reports a short uptime, and its receipts from before are not held
//! against it. A liar could claim a short uptime in every heartbeat to escape the check; what it
//! gains is to remain incomparable, which verification already treats as unconfirmed.

use std::collections::{HashMap, VecDeque};

use quiver_net::PeerId;
use quiver_proto::Heartbeat;

/// Providers remembered at most (the oldest noted is forgotten first).
const MAX_PEERS: usize = 1024;
/// Receipts remembered per provider at most (the oldest go first).
const PER_PEER: usize = 8;

/// The class a receipt was signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) model_sha256: Vec<u8>,
    pub(crate) engine_build: String,
    pub(crate) threads: u32,
    /// The receipt's own timestamp (the provider's clock, like its heartbeats').
    pub(crate) at_ms: u64,
}

/// Receipts' classes per provider, waiting for a heartbeat to be checked against.
#[derive(Debug, Default)]
pub(crate) struct BuildBook {
    peers: HashMap<PeerId, VecDeque<Signed>>,
    order: VecDeque<PeerId>,
}

impl BuildBook {
    /// Remembers the class of a receipt `peer` signed.
    pub(crate) fn note_receipt(&mut self, peer: PeerId, signed: Signed) {
        if !self.peers.contains_key(&peer) {
            while self.peers.len() >= MAX_PEERS {
                let Some(oldest) = self.order.pop_front() else { break };
                self.peers.remove(&oldest);
            }
            self.order.push_back(peer);
        }
        let receipts = self.peers.entry(peer).or_default();
        if receipts.len() >= PER_PEER {
            receipts.pop_front();
        }
        receipts.push_back(signed);
    }

    /// Whether receipts of `peer` wait for a heartbeat.
    pub(crate) fn waiting(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Checks `peer`'s remembered receipts against its heartbeat: the first one signed by the
    /// process that made `heartbeat` for a class the heartbeat does not announce for its model
    /// (as "build X, threads N"), if any. Receipts older than the heartbeat are judged (or, from
    /// an earlier process, let go) and forgotten; newer ones wait for a later heartbeat.
    pub(crate) fn check(&mut self, peer: PeerId, heartbeat: &Heartbeat) -> Option<String> {
        let receipts = self.peers.get_mut(&peer)?;
        let made = heartbeat.timestamp_ms;
        // The process started no later than this (uptime is in whole seconds).
        let started = made.saturating_sub(heartbeat.uptime_secs.saturating_mul(1000));
        let mut lie = None;
        receipts.retain(|r| {
            if r.at_ms > made {
                return true;
            }
            if r.at_ms >= started && lie.is_none() {
                let announced = heartbeat.models.iter().find(|m| m.sha256 == r.model_sha256);
                // Peers of older versions announce no build: nothing to hold them to.
                if let Some(m) = announced.filter(|m| !m.engine_build.is_empty())
                    && (m.engine_build != r.engine_build || m.threads != r.threads)
                {
                    lie = Some(format!(
                        "signed build {:?} with {} threads, announces {:?} with {}",
                        r.engine_build, r.threads, m.engine_build, m.threads
                    ));
                }
            }
            false
        });
        if receipts.is_empty() {
            self.peers.remove(&peer);
            self.order.retain(|p| *p != peer);
        }
        lie
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
#[path = "tests/builds.rs"]
mod tests;
