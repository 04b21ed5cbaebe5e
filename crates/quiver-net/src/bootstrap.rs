//! Bootstrap peer addresses as users write them: full multiaddrs with or without `/p2p/<PeerId>`,
//! `/dns4/...` multiaddrs, or plain `host:port`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::split_peer_id;

/// A peer to join the network through. Without a PeerId, it is learned on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapAddr {
    pub addr: Multiaddr,
    pub peer_id: Option<PeerId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseBootstrapError {
    #[error("empty address")]
    Empty,
    #[error("not a multiaddr ({0}); expected e.g. /ip4/1.2.3.4/tcp/4001/p2p/<PeerId> or host:4001")]
    Multiaddr(String),
    #[error("expected host:port, e.g. example.org:4001 or 1.2.3.4:4001")]
    HostPort,
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("address has no transport QUIVer can dial (need tcp or udp/quic-v1)")]
    NoTransport,
}

impl FromStr for BootstrapAddr {
    type Err = ParseBootstrapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseBootstrapError::Empty);
        }
        if s.starts_with('/') {
            let ma: Multiaddr =
                s.parse().map_err(|e: libp2p::multiaddr::Error| ParseBootstrapError::Multiaddr(e.to_string()))?;
            let (addr, peer_id) = split_peer_id(ma);
            let dialable = addr.iter().any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1 | Protocol::Memory(_)));
            if !dialable {
                return Err(ParseBootstrapError::NoTransport);
            }
            return Ok(BootstrapAddr { addr, peer_id });
        }
        // host:port, [v6]:port
        let (host, port) = s.rsplit_once(':').ok_or(ParseBootstrapError::HostPort)?;
        let port: u16 = port.parse().map_err(|_| ParseBootstrapError::Port(port.to_owned()))?;
        if port == 0 {
            return Err(ParseBootstrapError::Port(port.to_string()));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(ParseBootstrapError::HostPort);
        }
        let mut addr = Multiaddr::empty();
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => addr.push(Protocol::Ip4(ip)),
            Ok(IpAddr::V6(ip)) => addr.push(Protocol::Ip6(ip)),
            Err(_) => addr.push(Protocol::Dns(host.to_owned().into())),
        }
        addr.push(Protocol::Tcp(port));
        Ok(BootstrapAddr { addr, peer_id: None })
    }
}

impl fmt::Display for BootstrapAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer_id {
            Some(p) => write!(f, "{}/p2p/{}", self.addr, p),
            None => write!(f, "{}", self.addr),
        }
    }
}

#[cfg(test)]
#[path = "tests/bootstrap.rs"]
mod tests;
