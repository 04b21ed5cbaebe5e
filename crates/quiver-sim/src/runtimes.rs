//! Single-threaded tokio runtimes, one per core, that the simulated nodes are spread over.
//!
//! On tokio's multi-threaded runtime the tasks of one connection (its own task, the swarm's
//! event loop, the timers) wake each other across threads. `examples/conn_cost.rs` measured a
//! connection at 2.8–3.3 ms of CPU there and 2.45 ms with both nodes on one single-threaded
//! runtime. Here each node lives on one runtime: its event loop, and the connection tasks
//! libp2p spawns from it, run on that runtime's thread. Nodes on different runtimes talk
//! through the memory transport as before.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::SimError;

/// Threads, each driving one single-threaded runtime until dropped.
pub struct NodeRuntimes {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NodeRuntimes {
    /// Starts `count` runtimes (at least one), each on a thread of its own.
    pub fn new(count: usize) -> Result<NodeRuntimes, SimError> {
        let count = count.max(1);
        let mut runtimes =
            NodeRuntimes { handles: Vec::with_capacity(count), stops: Vec::with_capacity(count), threads: Vec::new() };
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtimes.handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            runtimes.stops.push(stop);
            let thread = std::thread::Builder::new().name(format!("sim-nodes-{i}")).spawn(move || {
                // Drives every task spawned on this runtime until told to stop; dropping the
                // runtime then cancels whatever still runs on it.
                let _stopped = runtime.block_on(stopped);
            })?;
            runtimes.threads.push(thread);
        }
        Ok(runtimes)
    }

    /// The runtime of node `index` (nodes are dealt round-robin).
    pub fn handle(&self, index: usize) -> &Handle {
        &self.handles[index % self.handles.len()]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for NodeRuntimes {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            // A runtime whose thread already ended has dropped its receiver: nothing to stop.
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::warn!("a node runtime's thread panicked");
            }
        }
    }
}

#[cfg(test)]
#[path = "tests/runtimes.rs"]
mod tests;
