//! Reachability and relay metrics (QUIVer's own; libp2p's are registered beside them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Reachability;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabel {
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

/// Why the relay service closed a circuit, from the error libp2p's relay reports: the
/// circuit's time limit (`duration_limit`), its byte limit (`byte_limit`), both ends done
/// (`ended`), or anything else (`error`).
pub(crate) fn circuit_close_reason(error: Option<&std::io::Error>) -> &'static str {
    match error {
        None => "ended",
        Some(e) if e.kind() == std::io::ErrorKind::TimedOut => "duration_limit",
        // libp2p-relay's copy loop has no error kind of its own for this one.
        Some(e) if e.to_string().contains("Max circuit bytes") => "byte_limit",
        Some(_) => "error",
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct NetMetrics {
    /// 1 for the current state, 0 for the others.
    pub reachability: Family<StateLabel, Gauge>,
    /// Reservations this node holds on relays.
    pub relay_reservations: Gauge,
    /// Reservations and circuits this node's relay service holds for others now.
    pub relay_service_reservations: Gauge,
    pub relay_service_circuits: Gauge,
    /// Reservation and circuit requests the relay service refused (over a limit, or not a relay now).
    pub relay_service_refused: Family<RefusedLabel, Counter>,
    /// Circuits the relay service closed, by [`circuit_close_reason`].
    pub relay_service_circuits_closed: Family<ReasonLabel, Counter>,
    /// TCP connections dropped for not finishing their handshake within `TCP_UPGRADE_TIMEOUT`.
    pub tcp_upgrade_timeouts: Counter,
    /// Hole punches (DCUtR) by result.
    pub hole_punches: Family<ResultLabel, Counter>,
    /// Our AutoNAT probes by answer (public, private, error).
    pub autonat_probes: Family<ResultLabel, Counter>,
    /// Routing-table refreshes this node finished: a lookup of our own key, then of each
    /// farther bucket short of peers (`refresh`); the join's first, then the retries of a table
    /// short of K peers and the periodic ones.
    pub dht_bootstraps: Counter,
    /// DHT servers in the network, estimated from our routing table's density (`size.rs`);
    /// 0 while the table holds too few peers to say.
    pub network_size_estimate: Gauge,
    /// LAN discovery (mDNS, `lan.rs`): (peer, address) pairs heard, what was dropped and why,
    /// dials started, peers found this way that connected, the book's size now and its peak,
    /// peers quarantined now.
    pub mdns_discovered: Counter,
    pub mdns_dropped: Family<ReasonLabel, Counter>,
    pub mdns_dials: Counter,
    pub mdns_connected: Counter,
    pub mdns_pending: Gauge,
    pub mdns_pending_peak: Gauge,
    pub mdns_quarantined: Gauge,
}

impl NetMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = NetMetrics::default();
        let q = registry.sub_registry_with_prefix("quiver");
        q.register(
            "reachability",
            "How others can reach this node (1 for the current state: unknown, public, private, relayed)",
            m.reachability.clone(),
        );
        q.register("relay_reservations", "Reservations this node holds on relays", m.relay_reservations.clone());
        q.register(
            "relay_service_reservations",
            "Reservations this node's relay service holds for NATed peers",
            m.relay_service_reservations.clone(),
        );
        q.register(
            "relay_service_circuits",
            "Circuits this node's relay service carries now",
            m.relay_service_circuits.clone(),
        );
        q.register(
            "relay_service_refused",
            "Reservation and circuit requests this node's relay service refused",
            m.relay_service_refused.clone(),
        );
        q.register(
            "relay_service_circuits_closed",
            "Circuits this node's relay service closed, by reason (duration_limit, byte_limit, ended, error)",
            m.relay_service_circuits_closed.clone(),
        );
        q.register(
            "tcp_upgrade_timeouts",
            "TCP connections dropped for not finishing TLS/Noise and yamux within the upgrade timeout",
            m.tcp_upgrade_timeouts.clone(),
        );
        q.register("hole_punches", "Hole punches (DCUtR) by result", m.hole_punches.clone());
        q.register("autonat_probes", "This node's reachability probes by answer", m.autonat_probes.clone());
        q.register(
            "dht_bootstraps",
            "Kademlia bootstraps (own-key lookup and bucket refreshes) this node finished",
            m.dht_bootstraps.clone(),
        );
        q.register(
            "network_size_estimate",
            "DHT servers in the network estimated from this node's routing table (0: too few peers to say)",
            m.network_size_estimate.clone(),
        );
        q.register(
            "mdns_discovered",
            "Peer addresses heard in mDNS answers on the local network (before any check)",
            m.mdns_discovered.clone(),
        );
        q.register(
            "mdns_dropped",
            "Peers or addresses from mDNS not kept or not dialed again, by reason",
            m.mdns_dropped.clone(),
        );
        q.register("mdns_dials", "Dials of peers found on the local network", m.mdns_dials.clone());
        q.register("mdns_connected", "Peers found on the local network that were connected", m.mdns_connected.clone());
        q.register(
            "mdns_pending",
            "Peers found on the local network, not connected yet, kept for dialing",
            m.mdns_pending.clone(),
        );
        q.register(
            "mdns_pending_peak",
            "The most peers found on the local network kept for dialing at once",
            m.mdns_pending_peak.clone(),
        );
        q.register(
            "mdns_quarantined",
            "Peers from mDNS not dialed for a while (their dial failed, or they were not QUIVer nodes)",
            m.mdns_quarantined.clone(),
        );
        m.set_reachability(Reachability::Unknown);
        m
    }

    pub(crate) fn set_reachability(&self, now: Reachability) {
        for r in Reachability::ALL {
            self.reachability.get_or_create(&StateLabel { state: r.as_str() }).set(i64::from(r == now));
        }
    }
}
