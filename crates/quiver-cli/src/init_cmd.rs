//! `quiver init`: write a commented default config file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use quiver_node::config::{FileConfig, default_data_dir};

use crate::node_cmd::{DEFAULT_API, DEFAULT_PORT};

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where to write the config file.
    #[arg(default_value = "quiver.toml")]
    pub path: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// A TOML string literal (quotes and escapes as TOML wants them).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The commented default config: every setting the file can hold, commented out, with its
/// default value, so uncommenting a line and editing it is all a user does.
pub fn default_config() -> String {
    let data_dir = toml_string(&default_data_dir().display().to_string());
    let api = toml_string(&DEFAULT_API.to_string());
    let relay = quiver_net::RelayLimits::default();
    let (relay_res, relay_res_peer, relay_circuits) =
        (relay.max_reservations, relay.max_reservations_per_peer, relay.max_circuits);
    let (relay_secs, relay_bytes) = (relay.max_circuit_duration.as_secs(), relay.max_circuit_bytes);
    format!(
        r#"# QUIVer node configuration, written by `quiver init`.
#
# Use it with:  quiver node --config <this file>   (or quiver-provider / quiver gateway --config ...,
# or QUIVER_CONFIG=<this file>). Flags win over environment variables (QUIVER_*), which win over
# this file. Every setting is optional: a commented-out line shows the default.

# Directory of the identity key (identity.key, created on first start), the reputation store
# and, by default, the models.
# data_dir = {data_dir}

# Peers to join the network through: multiaddrs (/ip4/1.2.3.4/tcp/4001/p2p/<PeerId>,
# /dns4/host/tcp/4001) or host:port. Empty for a bootstrap node.
# bootstrap = ["bootstrap.example.org:4001"]

# Run as a bootstrap node: serve the DHT for others to join through.
# bootstrap_node = false

# TCP port, and the same port number for QUIC over UDP. 0 picks a free port.
# The default falls back to a free port when {DEFAULT_PORT} is taken.
# port = {DEFAULT_PORT}

# IP address to listen on.
# listen_ip = "0.0.0.0"

# Listen on exactly these multiaddrs instead of listen_ip and port.
# listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]

# Speak QUIC beside TCP; false: TCP only, no UDP at all.
# quic = true

# Local control API (status page at /, /api/v1/*, /metrics), or "off". It has no authentication:
# keep it on a loopback address.
# api = {api}

# Seconds between the heartbeats this node publishes.
# heartbeat_interval_secs = 10

# Log format on stderr: "text" or "json".
# log_format = "text"

# DHT role: "auto" serves the DHT once a peer has dialed this node back (AutoNAT), "server"
# always serves it (the node is known to be reachable), "client" never does.
# dht_mode = "auto"

# Ask the local router for a port mapping (UPnP IGD).
# upnp = false

# Find QUIVer peers on the local network by multicast DNS (mDNS) and announce this node there.
# false: only the bootstrap peers (the same as --no-mdns).
# mdns = true

# Fraction of this node's reproducible requests (greedy, or seeded) cross-checked with a second
# provider, so a lying provider is caught even when nobody asked to verify (--verify-rate).
# verify_rate = 0.0

# Relay for NATed peers while this node is reachable, within these limits: reservations held
# at once and per peer, circuits at once, and each circuit's longest life and bytes each way.
# relay_service = true
# relay_max_reservations = {relay_res}
# relay_max_reservations_per_peer = {relay_res_peer}
# relay_max_circuits = {relay_circuits}
# relay_max_circuit_secs = {relay_secs}
# relay_max_circuit_bytes = {relay_bytes}

# Provider: layers of each model offloaded to the GPU (a build with feature cuda, vulkan or
# metal): a number (0 = CPU only; more than the model has = all), or "auto": as many as fit in
# the GPU's free memory beside the KV cache of all slots (0 without a GPU device).
# gpu_layers = "auto"

# Split models: serve this machine's memory and CPU to the heads listed here (their PeerIds, as
# `quiver id` prints them); every other node's shard streams are refused.
# shard_host = false
# shard_allow = ["12D3KooWHeadPeerIdFromQuiverId"]
"#
    )
}

/// Writes the default config to `args.path`, refusing to replace a file without `--force`.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    write(&args.path, args.force)?;
    eprintln!("wrote {}", args.path.display());
    println!("{}", args.path.display());
    eprintln!("start a node with it: quiver node --config {}", args.path.display());
    Ok(())
}

fn write(path: &Path, force: bool) -> anyhow::Result<()> {
    let text = default_config();
    // The file must load as it is: a template the node refuses would be worse than none.
    FileConfig::parse(&text).map_err(|e| anyhow::anyhow!("the default config does not parse: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} exists; pass --force to replace it", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    };
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
