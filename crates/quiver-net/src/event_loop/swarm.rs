//! Building the swarm: transports and behaviours, listening, and starting the event loop.

use super::*;

/// Builds the swarm, starts listening, and spawns the event loop.
///
/// Returns the handle, the bounded stream of events for the application, and the loop's task.
pub async fn spawn(
    keypair: libp2p::identity::Keypair,
    cfg: NetConfig,
    registry: &mut Registry,
) -> Result<(NetClient, mpsc::Receiver<NetEvent>, JoinHandle<()>), NetError> {
    let net_metrics = NetMetrics::register(registry);
    let swarm = build_swarm(keypair, &cfg, registry, &net_metrics)?;
    start(swarm, cfg, registry, net_metrics).await
}

/// The swarm with every QUIVer behaviour, over the operating system's network (TCP, QUIC, DNS
/// and circuit relays) or, for the simulator, libp2p's memory transport. Only the transport
/// differs: the bandwidth counters (`libp2p_bandwidth_bytes_total`), the behaviours
/// ([`Behaviour::new`]) and the swarm settings are the same for every [`TransportKind`].
pub(super) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    cfg: &NetConfig,
    registry: &mut Registry,
    net_metrics: &NetMetrics,
) -> Result<Swarm<Behaviour>, NetError> {
    let transport_err = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let boxed = |e: NetError| Box::new(e) as Box<dyn std::error::Error + Send + Sync>;
    let swarm_config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(cfg.idle_connection_timeout);
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match cfg.transport {
        TransportKind::Os => builder
            // QUIC (unless turned off) and TCP + TLS/Noise + yamux, with dead connections
            // dropped (see `transport.rs`).
            .with_other_transport(|key| {
                crate::transport::os_transport(key, cfg.quic, net_metrics.tcp_upgrade_timeouts.clone()).map_err(boxed)
            })
            .map_err(|e| transport_err(&e))?
            .with_dns()
            .map_err(|e| transport_err(&e))?
            .with_relay_client((tls::Config::new, noise::Config::new), yamux::Config::default)
            .map_err(|e| transport_err(&e))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|key, relay_client| Behaviour::new(key, Some(relay_client), cfg).map_err(boxed))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(swarm_config)
            .build(),
        // No relays in one process: every node can reach every other.
        TransportKind::Memory | TransportKind::MemoryPlaintext => builder
            .with_other_transport(|key| {
                let plain = cfg.transport == TransportKind::MemoryPlaintext;
                let upgraded = MemoryTransport::default().upgrade(upgrade::Version::V1);
                let secured = if plain {
                    upgraded.authenticate(plaintext::Config::new(key)).multiplex(yamux::Config::default()).boxed()
                } else {
                    upgraded.authenticate(noise::Config::new(key)?).multiplex(yamux::Config::default()).boxed()
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(secured)
            })
            .map_err(|e| transport_err(&e))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|key| Behaviour::new(key, None, cfg).map_err(boxed))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(swarm_config)
            .build(),
    };
    Ok(swarm)
}

/// Starts listening on a built swarm and spawns its event loop (any transport).
pub(super) async fn start(
    mut swarm: Swarm<Behaviour>,
    cfg: NetConfig,
    registry: &mut Registry,
    net_metrics: NetMetrics,
) -> Result<(NetClient, mpsc::Receiver<NetEvent>, JoinHandle<()>), NetError> {
    let local = *swarm.local_peer_id();
    let metrics = Metrics::new(registry.sub_registry_with_prefix("libp2p"));
    let dht_bootstraps = net_metrics.dht_bootstraps.clone();
    let size_estimate = net_metrics.network_size_estimate.clone();

    let (events_tx, events_rx) = mpsc::channel(cfg.channel_capacity);
    listen(&mut swarm, &cfg, &events_tx).await?;

    let (tx, commands) = mpsc::channel(cfg.channel_capacity);
    let streams = swarm.behaviour().stream.new_control();
    let now = Instant::now();
    let bootstrap = cfg
        .bootstrap
        .iter()
        .map(|b| BootstrapState {
            target: b.clone(),
            peer_id: b.peer_id,
            dialing: None,
            next_attempt: now,
            backoff: BOOTSTRAP_BACKOFF_MIN,
            failures: 0,
        })
        .collect();
    let reach = ReachabilityState::new(cfg.kad_mode, cfg.relay_service);
    let lan = swarm.behaviour().mdns.is_enabled().then(|| {
        info!("looking for peers on the local network (mDNS)");
        crate::lan::LanPeers::new(crate::lan::LanLimits { quic: cfg.quic, ..Default::default() }, now)
    });
    let mut event_loop = EventLoop {
        swarm,
        commands,
        events: events_tx,
        bootstrap,
        peers: HashMap::new(),
        metrics,
        provider_queries: HashMap::new(),
        record_queries: HashMap::new(),
        put_queries: HashMap::new(),
        connecting: HashMap::new(),
        kad_server: cfg.kad_mode == crate::KadMode::Server,
        relay_on: false,
        reach,
        relay_listeners: HashMap::new(),
        relay_retry: HashMap::new(),
        net_metrics,
        hole_punches: (0, 0),
        delivery_rate: crate::behaviour::DeliveryRate::new(),
        last_tick: Instant::now(),
        push_identify: false,
        relay_reserved: HashMap::new(),
        refresh: Refresh::new(local, cfg.kad_bootstrap_interval),
        quic_to_relay: HashSet::new(),
        autonat_servers: HashSet::new(),
        lan,
        lan_joining: HashSet::new(),
        mdns_recheck: HashSet::new(),
        cfg,
    };
    event_loop.apply_reachability();
    let task = tokio::spawn(event_loop.run());
    Ok((NetClient { tx, peer_id: local, streams, dht_bootstraps, size_estimate }, events_rx, task))
}

/// Listens on every configured address. TCP first: a QUIC address asking for port 0 then gets
/// the port number TCP was given on the same IP, so users see one number for both.
pub(super) async fn listen(
    swarm: &mut Swarm<Behaviour>,
    cfg: &NetConfig,
    events: &mpsc::Sender<NetEvent>,
) -> Result<(), NetError> {
    let local = *swarm.local_peer_id();
    let listen_err = |addr: &Multiaddr, reason: String| NetError::Listen { addr: addr.clone(), reason };
    let mut tcp_ports: HashMap<Multiaddr, u16> = HashMap::new();
    let (quic, others): (Vec<_>, Vec<_>) = cfg.listen_addrs.iter().partition(|a| is_quic(a));
    for addr in others {
        let listener = swarm.listen_on(addr.clone()).map_err(|e| listen_err(addr, e.to_string()))?;
        let Some((ip, 0)) = ip_and_port(addr, PortKind::Tcp) else {
            continue;
        };
        // Learn the port the OS chose.
        let learned = timeout(Duration::from_secs(10), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { listener_id, address } if listener_id == listener => {
                        let port = ip_and_port(&address, PortKind::Tcp).map(|(_, p)| p);
                        let full = address.with_p2p(local).unwrap_or_else(|a| a);
                        let _ = events.try_send(NetEvent::NewListenAddr(full));
                        return port;
                    }
                    SwarmEvent::ListenerClosed { listener_id, .. } if listener_id == listener => {
                        return None;
                    }
                    other => trace!(?other, "event before listening"),
                }
            }
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| listen_err(addr, "the listener reported no address".into()))?;
        tcp_ports.insert(ip, learned);
    }
    for addr in quic {
        let same_port = match ip_and_port(addr, PortKind::Udp) {
            Some((ip, 0)) => tcp_ports.get(&ip).map(|p| ip.with(Protocol::Udp(*p)).with(Protocol::QuicV1)),
            _ => None,
        };
        if let Some(same) = same_port {
            match swarm.listen_on(same.clone()) {
                Ok(_) => continue,
                // TCP is enough to take part; QUIC on another port is still better than none.
                Err(e) => {
                    warn!(%same, error = %e, "cannot listen for QUIC on the TCP port number; using another")
                }
            }
        }
        swarm.listen_on(addr.clone()).map_err(|e| listen_err(addr, e.to_string()))?;
    }
    Ok(())
}

pub(super) fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// Which transport port [`ip_and_port`] reads.
#[derive(Clone, Copy)]
pub(super) enum PortKind {
    Tcp,
    Udp,
}

/// `(/ip4|ip6/<ip>, port)` of a TCP or UDP address.
pub(super) fn ip_and_port(addr: &Multiaddr, kind: PortKind) -> Option<(Multiaddr, u16)> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        p @ (Protocol::Ip4(_) | Protocol::Ip6(_)) => Multiaddr::empty().with(p),
        _ => return None,
    };
    match (it.next()?, kind) {
        (Protocol::Tcp(port), PortKind::Tcp) | (Protocol::Udp(port), PortKind::Udp) => Some((ip, port)),
        _ => None,
    }
}
