//! A node with no bootstrap peer and no peer found on the LAN says so: once on the terminal
//! (a log line, again only after it has had a peer and lost every one) and for as long as it
//! lasts in its status ([`NodeStatus::no_peers`](crate::NodeStatus)), and keeps looking.

use std::time::Duration;

use tracing::info;

use crate::Node;

/// What a node alone says while it looks on the LAN (mDNS on).
pub const NO_PEERS_LOOKING: &str = "no peers yet: looking on the local network; to join a network elsewhere use \
                                    --bootstrap host:port or QUIVER_BOOTSTRAP";
/// What a node alone says with LAN discovery off.
pub const NO_PEERS_NOT_LOOKING: &str = "no peers yet: LAN discovery is off (--no-mdns); to join a network use \
                                        --bootstrap host:port or QUIVER_BOOTSTRAP";

/// How long a node may be alone before the terminal is told: on a LAN, the first mDNS answer
/// and its connection come within a second.
const GRACE: Duration = Duration::from_secs(3);
/// How often the node looks at its peers.
const CHECK: Duration = Duration::from_secs(1);

/// Whether the node may ever be told it is alone: not when it was given bootstrap peers (their
/// warnings say what goes wrong), nor a bootstrap node (the first of a network is alone by
/// design), nor a DHT client (`quiver ask` says it its own way).
fn may_be_alone(node: &Node) -> bool {
    let c = node.config();
    c.bootstrap_peers.is_empty() && !c.bootstrap_node && !c.dht_client_only
}

/// The note for a node with `connected` peers, or `None` when it has nothing to say.
pub(crate) fn note(node: &Node, mdns: bool, connected: usize) -> Option<&'static str> {
    (connected == 0 && may_be_alone(node)).then_some(if mdns { NO_PEERS_LOOKING } else { NO_PEERS_NOT_LOOKING })
}

impl Node {
    /// Logs the note once whenever the node has been alone for [`GRACE`] (see the module
    /// documentation). Runs until the node stops.
    pub(crate) async fn say_when_alone(self) {
        if !may_be_alone(&self) {
            return;
        }
        let mut alone_since = tokio::time::Instant::now();
        let mut said = false;
        loop {
            tokio::time::sleep(CHECK).await;
            let Ok(status) = self.net().status().await else { return };
            match note(&self, status.mdns, status.connected_peers.len()) {
                None => {
                    said = false;
                    alone_since = tokio::time::Instant::now();
                }
                Some(text) if !said && alone_since.elapsed() >= GRACE => {
                    info!("{text}");
                    said = true;
                }
                Some(_) => {}
            }
        }
    }
}
