//! `quiver-node` / `quiver node`: run a node until SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use quiver_net::{BootstrapAddr, KadMode, Multiaddr, NetError, PeerId, RelayLimits, default_listen_addrs};
use quiver_node::config::{FileConfig, default_data_dir};
use quiver_node::{Node, NodeConfig, NodeError};
use tracing::{info, warn};

use crate::{LogFormat, SERVICE_LOG, api_addr_file, init_logging, usage_error};

/// Port used when none is given (and if it is taken, a free one is picked instead).
pub const DEFAULT_PORT: u16 = 4001;
/// Control API address used when none is given (likewise falls back to a free port).
pub const DEFAULT_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4080);

fn parse_bootstrap(s: &str) -> Result<BootstrapAddr, String> {
    s.parse::<BootstrapAddr>().map_err(|e| e.to_string())
}

pub(crate) fn parse_multiaddr(s: &str) -> Result<Multiaddr, String> {
    s.parse::<Multiaddr>().map_err(|e| e.to_string())
}

fn parse_api(s: &str) -> Result<ApiAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ApiAddr::Off);
    }
    s.parse::<SocketAddr>()
        .map(ApiAddr::At)
        .map_err(|_| format!("expected ADDR:PORT such as 127.0.0.1:4080, or \"off\"; got {s:?}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAddr {
    At(SocketAddr),
    Off,
}

/// Flags of a node. Each can also come from the environment (`QUIVER_*`) or the config file;
/// flags win over the environment, which wins over the file.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Run as a bootstrap node: serve the DHT for others to join through; needs no peers itself.
    #[arg(long, env = "QUIVER_BOOTSTRAP_NODE")]
    pub bootstrap_node: bool,

    /// Peer to join through: a multiaddr (/ip4/1.2.3.4/tcp/4001/p2p/<PeerId>, /dns4/host/tcp/4001)
    /// or host:port. Repeat the flag for several.
    #[arg(long, value_name = "ADDR", value_parser = parse_bootstrap, env = "QUIVER_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<BootstrapAddr>,

    /// TCP port, and the same port number for QUIC over UDP; 0 picks a free port.
    /// [default: 4001, or a free port if 4001 is taken]
    #[arg(long, env = "QUIVER_PORT")]
    pub port: Option<u16>,

    /// IP address to listen on. [default: 0.0.0.0]
    #[arg(long, value_name = "IP", env = "QUIVER_LISTEN_IP")]
    pub listen_ip: Option<IpAddr>,

    /// Listen on exactly these multiaddrs instead of --listen-ip/--port (repeatable).
    #[arg(long = "listen-addr", value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    pub listen_addr: Vec<Multiaddr>,

    /// No QUIC (TCP only): neither listen nor dial over UDP.
    #[arg(long)]
    pub no_quic: bool,

    /// Directory for the identity key and state. [default: $XDG_DATA_HOME/quiver]
    #[arg(long, value_name = "DIR", env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Local control API (status, peers, metrics), or "off". [default: 127.0.0.1:4080, or a free
    /// port if that is taken]
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_api, env = "QUIVER_API")]
    pub api: Option<ApiAddr>,

    /// Also serve the OpenAI-compatible gateway (/v1/chat/completions, /v1/completions,
    /// /v1/models) on this address.
    #[arg(long, value_name = "ADDR:PORT", env = "QUIVER_GATEWAY")]
    pub gateway: Option<SocketAddr>,

    /// Bearer key the gateway's /v1 routes require (repeatable; --api-key is the same flag).
    /// Without any, the gateway is open.
    #[arg(
        long = "gateway-api-key",
        visible_alias = "api-key",
        value_name = "KEY",
        env = "QUIVER_GATEWAY_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub gateway_api_keys: Vec<String>,

    /// Let web pages from this origin call the gateway (CORS), e.g. https://app.example.org, or
    /// "*" for any (repeatable; --cors-origin is the same flag). Off by default.
    #[arg(
        long = "gateway-cors-origin",
        visible_alias = "cors-origin",
        value_name = "ORIGIN",
        env = "QUIVER_GATEWAY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub gateway_cors_origins: Vec<String>,

    /// Completion requests the gateway answers at once (a stream counts until it ends); more
    /// are refused with 429.
    #[arg(long, value_name = "N", default_value_t = quiver_gateway::DEFAULT_MAX_IN_FLIGHT, env = "QUIVER_GATEWAY_MAX_REQUESTS")]
    pub gateway_max_requests: usize,

    /// The gateway returns only answers a second, independent provider reproduced (502
    /// `could_not_verify` when none can); a request's `X-Quiver-Verify: false` opts out.
    #[arg(long, env = "QUIVER_GATEWAY_VERIFY")]
    pub gateway_verify: bool,

    /// Fraction of this node's other reproducible requests (greedy, or with a seed) that are
    /// cross-checked with a second provider anyway; a liar caught so is charged. [default: 0]
    #[arg(long, value_name = "FRACTION", env = "QUIVER_VERIFY_RATE", value_parser = crate::ask_cmd::parse_fraction)]
    pub verify_rate: Option<f64>,

    /// TOML config file.
    #[arg(long, value_name = "FILE", env = "QUIVER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Seconds between heartbeats. [default: 10]
    #[arg(long, value_name = "SECS", env = "QUIVER_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,

    /// Log format on stderr.
    #[arg(long, value_enum, env = "QUIVER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// DHT role: auto serves the DHT once a peer has dialed this node back (AutoNAT), server
    /// always serves it (the node is known to be reachable), client never does. [default: auto]
    #[arg(long, value_enum, env = "QUIVER_DHT_MODE")]
    pub dht_mode: Option<DhtMode>,

    /// Ask the local router for a port mapping (UPnP IGD). Off by default.
    #[arg(long, env = "QUIVER_UPNP")]
    pub upnp: bool,

    /// Never relay for NATed peers, even when reachable.
    #[arg(long, env = "QUIVER_NO_RELAY")]
    pub no_relay: bool,

    /// Do not look for peers on the local network (mDNS), nor announce this node there: join
    /// only through bootstrap peers. (A node listening only on 127.0.0.1 stays off the LAN
    /// anyway.)
    #[arg(long, env = "QUIVER_NO_MDNS")]
    pub no_mdns: bool,

    /// Serve this machine's memory and CPU to the heads of split models on the allow list
    /// (--shard-allow): they run a range of a big model's layers here, through ggml's RPC
    /// server on 127.0.0.1, reached only over QUIVer's authenticated `/quiver/shard/1` streams.
    #[arg(long, env = "QUIVER_SHARD_HOST")]
    pub shard_host: bool,

    /// PeerId of a head this shard host serves (repeatable; `quiver id` prints a node's).
    /// Anyone else's shard streams are refused.
    #[arg(long, value_name = "PEERID", env = "QUIVER_SHARD_ALLOW", value_delimiter = ',')]
    pub shard_allow: Vec<PeerId>,

    /// Relay service: reservations held for NATed peers at once. [default: 64]
    #[arg(long, value_name = "N")]
    pub relay_max_reservations: Option<usize>,

    /// Relay service: reservations one peer may hold. [default: 2]
    #[arg(long, value_name = "N")]
    pub relay_max_reservations_per_peer: Option<usize>,

    /// Relay service: circuits relayed at once. [default: 32]
    #[arg(long, value_name = "N")]
    pub relay_max_circuits: Option<usize>,

    /// Relay service: a circuit is closed after this many seconds. [default: 300]
    #[arg(long, value_name = "SECS")]
    pub relay_max_circuit_secs: Option<u64>,

    /// Relay service: a circuit is closed after this many bytes in each direction.
    /// [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub relay_max_circuit_bytes: Option<u64>,
}

/// `--dht-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DhtMode {
    Auto,
    Server,
    Client,
}

/// Settings after merging flags, environment and config file.
struct Settings {
    node: NodeConfig,
    /// Whether the port came from the user (then a taken port is an error, not a fallback).
    port_explicit: bool,
    api: ApiAddr,
    api_explicit: bool,
    data_dir: PathBuf,
    log_format: LogFormat,
    /// The config file's `gpu_layers` (used by a provider).
    gpu_layers: Option<quiver_engine::GpuLayers>,
}

fn settings(args: NodeArgs) -> Settings {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).unwrap_or_else(|e| usage_error(e)),
        None => FileConfig::default(),
    };
    let bootstrap = if args.bootstrap.is_empty() {
        file.bootstrap
            .unwrap_or_default()
            .iter()
            .map(|s| {
                parse_bootstrap(s)
                    .unwrap_or_else(|e| usage_error(format!("invalid bootstrap {s:?} in config file: {e}")))
            })
            .collect()
    } else {
        args.bootstrap
    };
    let listen: Vec<Multiaddr> = if args.listen_addr.is_empty() {
        file.listen
            .unwrap_or_default()
            .iter()
            .map(|s| {
                parse_multiaddr(s).unwrap_or_else(|e| usage_error(format!("invalid listen {s:?} in config file: {e}")))
            })
            .collect()
    } else {
        args.listen_addr
    };
    let port = args.port.or(file.port);
    let quic = !args.no_quic && file.quic.unwrap_or(true);
    let ip = args.listen_ip.or(file.listen_ip).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let listen_explicit = !listen.is_empty();
    let listen_addrs =
        if listen.is_empty() { default_listen_addrs(ip, port.unwrap_or(DEFAULT_PORT), quic) } else { listen };
    let api_file = file
        .api
        .as_deref()
        .map(|s| parse_api(s).unwrap_or_else(|e| usage_error(format!("invalid api in config file: {e}"))));
    let api = args.api.or(api_file);
    let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(default_data_dir);
    let heartbeat = args.heartbeat_interval.or(file.heartbeat_interval_secs).unwrap_or(10);
    if heartbeat == 0 {
        usage_error("--heartbeat-interval must be at least 1 second");
    }
    let log_format = match (args.log_format, file.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, None | Some("text")) => LogFormat::Text,
        (None, Some("json")) => LogFormat::Json,
        (None, Some(other)) => {
            usage_error(format!("invalid log_format {other:?} in config file: expected text or json"))
        }
    };
    let heartbeat_interval = Duration::from_secs(heartbeat);
    let dht_mode = match (args.dht_mode, file.dht_mode.as_deref()) {
        (Some(m), _) => m,
        (None, None | Some("auto")) => DhtMode::Auto,
        (None, Some("server")) => DhtMode::Server,
        (None, Some("client")) => DhtMode::Client,
        (None, Some(other)) => {
            usage_error(format!("invalid dht_mode {other:?} in config file: expected auto, server or client"))
        }
    };
    let relay_defaults = RelayLimits::default();
    let gpu_layers = file.gpu_layers.as_ref().map(|g| {
        crate::provider_cmd::gpu_layers_from_file(g)
            .unwrap_or_else(|e| usage_error(format!("invalid gpu_layers in config file: {e}")))
    });
    let shard_allow: Vec<PeerId> = if args.shard_allow.is_empty() {
        file.shard_allow
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse().unwrap_or_else(|e| usage_error(format!("invalid shard_allow {s:?} in config file: {e}")))
            })
            .collect()
    } else {
        args.shard_allow
    };
    let shard_host = (args.shard_host || file.shard_host.unwrap_or(false)).then(|| {
        if shard_allow.is_empty() {
            usage_error("--shard-host needs at least one --shard-allow PEERID (the heads it serves)");
        }
        quiver_node::shard::ShardHostConfig {
            allow: shard_allow.clone(),
            cache_dir: data_dir.join("shard-cache"),
            threads: 0,
            models_dir: std::env::var_os("QUIVER_MODELS_DIR")
                .filter(|d| !d.is_empty())
                .map_or_else(|| data_dir.join("models"), PathBuf::from),
        }
    });
    Settings {
        node: NodeConfig {
            shard_host,
            listen_addrs,
            quic,
            bootstrap_peers: bootstrap,
            data_dir: Some(data_dir.clone()),
            bootstrap_node: args.bootstrap_node || file.bootstrap_node.unwrap_or(false),
            heartbeat_interval,
            node_ttl: heartbeat_interval * 6,
            kad_mode: match dht_mode {
                DhtMode::Auto => KadMode::Auto,
                DhtMode::Server => KadMode::Server,
                DhtMode::Client => KadMode::Client,
            },
            upnp: args.upnp || file.upnp.unwrap_or(false),
            mdns: !args.no_mdns && file.mdns.unwrap_or(true),
            verify_rate: match args.verify_rate.or(file.verify_rate).unwrap_or(0.0) {
                f if (0.0..=1.0).contains(&f) => f,
                f => usage_error(format!("invalid verify_rate {f} in config file: expected a fraction from 0 to 1")),
            },
            relay_service: !args.no_relay && file.relay_service.unwrap_or(true),
            relay_limits: RelayLimits {
                max_reservations: args
                    .relay_max_reservations
                    .or(file.relay_max_reservations)
                    .unwrap_or(relay_defaults.max_reservations),
                max_reservations_per_peer: args
                    .relay_max_reservations_per_peer
                    .or(file.relay_max_reservations_per_peer)
                    .unwrap_or(relay_defaults.max_reservations_per_peer),
                max_circuits: args
                    .relay_max_circuits
                    .or(file.relay_max_circuits)
                    .unwrap_or(relay_defaults.max_circuits),
                max_circuit_duration: args
                    .relay_max_circuit_secs
                    .or(file.relay_max_circuit_secs)
                    .map_or(relay_defaults.max_circuit_duration, Duration::from_secs),
                max_circuit_bytes: args
                    .relay_max_circuit_bytes
                    .or(file.relay_max_circuit_bytes)
                    .unwrap_or(relay_defaults.max_circuit_bytes),
                ..relay_defaults
            },
            ..NodeConfig::default()
        },
        port_explicit: port.is_some() || listen_explicit,
        api: api.unwrap_or(ApiAddr::At(DEFAULT_API)),
        api_explicit: api.is_some(),
        data_dir,
        log_format,
        gpu_layers,
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    run_with(args, None).await
}

/// Runs a node, serving models when `provider` is given, until SIGINT or SIGTERM.
pub async fn run_with(args: NodeArgs, provider: Option<crate::provider_cmd::ProviderArgs>) -> anyhow::Result<()> {
    let args_gateway = args.gateway;
    let gateway_options = quiver_gateway::GatewayOptions {
        api_keys: args.gateway_api_keys.clone(),
        cors_origins: args.gateway_cors_origins.clone(),
        max_in_flight: args.gateway_max_requests,
        verify: args.gateway_verify,
        ..quiver_gateway::GatewayOptions::default()
    };
    let mut s = settings(args);
    init_logging(s.log_format, SERVICE_LOG);
    if let Some(p) = provider {
        s.node.provider = Some(crate::provider_cmd::build(&p, &s.data_dir, s.gpu_layers).await?);
    }

    let node = match Node::start(s.node.clone()).await {
        Err(NodeError::Net(NetError::Listen { addr, reason })) if !s.port_explicit => {
            warn!(%addr, %reason, "default port taken; listening on a free port instead (set --port to choose)");
            let ip = s.node.listen_addrs.first().and_then(|a| a.iter().next()).and_then(|p| match p {
                quiver_net::Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                quiver_net::Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
                _ => None,
            });
            s.node.listen_addrs = default_listen_addrs(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0, s.node.quic);
            Node::start(s.node.clone()).await?
        }
        other => other?,
    };

    let role = match (s.node.bootstrap_node, s.node.provider.is_some()) {
        (true, true) => "bootstrap node, provider",
        (true, false) => "bootstrap node",
        (false, true) => "provider",
        (false, false) => "node",
    };
    println!("QUIVer node {} ({role})", node.peer_id());
    let mut addrs = node.listen_addrs();
    tokio::spawn(async move {
        // Addresses come and go (relay reservations, mappings): print each new one once.
        let mut printed = std::collections::HashSet::new();
        loop {
            let new: Vec<String> = addrs
                .borrow_and_update()
                .iter()
                .map(ToString::to_string)
                .filter(|a| printed.len() < 1024 && !printed.contains(a))
                .collect();
            for a in new {
                println!("listening on {a}");
                printed.insert(a);
            }
            if addrs.changed().await.is_err() {
                return;
            }
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api_task = match s.api {
        ApiAddr::Off => None,
        ApiAddr::At(addr) => {
            if !addr.ip().is_loopback() {
                warn!(%addr, "the control API is reachable from other machines; it has no authentication");
            }
            let listener = match quiver_gateway::bind(addr).await {
                Ok(l) => l,
                Err(e) if !s.api_explicit => {
                    warn!(error = %e, "default API address taken; using a free port (set --api to choose)");
                    quiver_gateway::bind(SocketAddr::new(addr.ip(), 0)).await?
                }
                Err(e) => return Err(e.into()),
            };
            let local = listener.local_addr().context("API listener address")?;
            println!("api on http://{local}");
            let file = api_addr_file(&s.data_dir);
            if let Err(e) = std::fs::write(&file, local.to_string()) {
                warn!(file = %file.display(), error = %e, "cannot record the API address for `quiver status`");
            }
            let mut stop = stop_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(quiver_gateway::serve_api(node.clone(), listener, shutdown)))
        }
    };

    let gateway_task = match args_gateway {
        None => None,
        Some(addr) => {
            if !addr.ip().is_loopback() && gateway_options.api_keys.is_empty() {
                warn!(%addr, "the gateway is reachable from other machines without an API key (--gateway-api-key)");
            }
            let listener = quiver_gateway::bind(addr).await?;
            let local = listener.local_addr().context("gateway listener address")?;
            println!("gateway on http://{local}/v1");
            println!("status page on http://{local}/");
            let mut stop = stop_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(quiver_gateway::serve_gateway(node.clone(), listener, gateway_options, shutdown)))
        }
    };

    wait_for_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(task) = gateway_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(task) = api_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        let _ = std::fs::remove_file(api_addr_file(&s.data_dir));
    }
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
