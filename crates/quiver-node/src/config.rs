//! The TOML configuration file. Flags and environment variables (handled by the CLI) win over it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Every setting a config file may hold; all optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the identity key (and later state) lives.
    pub data_dir: Option<PathBuf>,
    /// TCP port, and the same number for QUIC over UDP. 0 picks a free port.
    pub port: Option<u16>,
    /// IP address to listen on.
    pub listen_ip: Option<IpAddr>,
    /// Explicit listen multiaddrs (override listen_ip/port).
    pub listen: Option<Vec<String>>,
    /// Peers to join through: multiaddrs or host:port.
    pub bootstrap: Option<Vec<String>>,
    /// Run as a bootstrap node.
    pub bootstrap_node: Option<bool>,
    /// Address of the local control API, e.g. "127.0.0.1:4080"; "off" disables it.
    pub api: Option<String>,
    /// Listen on QUIC beside TCP.
    pub quic: Option<bool>,
    /// Seconds between heartbeats.
    pub heartbeat_interval_secs: Option<u64>,
    /// "text" or "json".
    pub log_format: Option<String>,
    /// DHT role: "auto", "server" or "client".
    pub dht_mode: Option<String>,
    /// Ask the local router for a port mapping (UPnP IGD).
    pub upnp: Option<bool>,
    /// Find peers on the local network with mDNS (on unless false).
    pub mdns: Option<bool>,
    /// Relay for NATed peers while reachable.
    pub relay_service: Option<bool>,
    /// Fraction of this node's reproducible requests (greedy or seeded) cross-checked with a
    /// second provider (0..=1).
    pub verify_rate: Option<f64>,
    /// Relay service limits (see `quiver node --help`).
    pub relay_max_reservations: Option<usize>,
    pub relay_max_reservations_per_peer: Option<usize>,
    pub relay_max_circuits: Option<usize>,
    pub relay_max_circuit_secs: Option<u64>,
    pub relay_max_circuit_bytes: Option<u64>,
    /// Provider: layers offloaded to the GPU, a number or "auto" (see `quiver provider --help`).
    pub gpu_layers: Option<LayersSetting>,
    /// Serve this machine to the heads of split models listed in `shard_allow`.
    pub shard_host: Option<bool>,
    /// PeerIds of the heads a shard host serves.
    pub shard_allow: Option<Vec<String>>,
}

/// `gpu_layers = 20` or `gpu_layers = "auto"` (the CLI checks the word).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LayersSetting {
    Count(u64),
    Word(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned() });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// `$XDG_DATA_HOME/quiver`, else `$HOME/.local/share/quiver`, else `./quiver-data`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = non_empty("XDG_DATA_HOME") {
        return x.join("quiver");
    }
    if let Some(h) = non_empty("HOME") {
        return h.join(".local/share/quiver");
    }
    PathBuf::from("quiver-data")
}

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
