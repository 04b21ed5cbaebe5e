//! The operating system's transports: QUIC-v1 (optional: `--no-quic` turns UDP off entirely) and
//! TCP, then TLS 1.3 (Noise as the fallback), then yamux — what libp2p's
//! `SwarmBuilder::with_tcp` builds, plus one socket option. Every TCP socket gets
//! `TCP_USER_TIMEOUT`: data left unacknowledged that long aborts the connection.
//!
//! Without it a peer cut off by a partition (or a pulled cable: nothing sends a reset) keeps its
//! TCP connection for the kernel's full retransmission schedule, some 15 minutes. Closing it
//! from above does not help: libp2p's graceful close first writes yamux's goodbye into a send
//! buffer that the dead peer never drains, and waits. Meanwhile the node counts the peer as
//! connected, so it neither redials its bootstrap peers nor lets Kademlia and gossip route around
//! the gap. Pings (every 15 s) keep data in flight, so a silent peer is noticed within about
//! 15 s + [`TCP_USER_TIMEOUT`]. QUIC needs no such option: its idle timeout does the same.

use std::time::Duration;

use std::io;

use futures::future::{BoxFuture, Either};
use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::core::Transport;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::timeout::TransportTimeoutError;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, SelectUpgrade, UpgradeInfo, Version};
use libp2p::identity::Keypair;
use libp2p::{PeerId, noise, quic, tcp, tls, yamux};
use prometheus_client::metrics::counter::Counter;

use crate::NetError;

/// Longest data may stay unacknowledged on a TCP connection before the kernel drops it.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a TCP connection may take from dialing (or accepting) until TLS/Noise and yamux are
/// up; then it is dropped. A dial to a host behind a NAT that drops unsolicited packets would
/// otherwise wait out the kernel's SYN retries (about two minutes), and a peer that opens a
/// connection and never finishes the handshake would hold a pending-connection slot for as long
/// as it likes. A working link needs well under a second.
pub const TCP_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// A QUIC connection with no packet from the peer for this long is dead (a peer that vanishes,
/// killed or unplugged, sends no reset over UDP); keep-alives every third of it keep idle but
/// live connections up.
const QUIC_IDLE_TIMEOUT_MS: u32 = 5_000;

/// TCP, and QUIC-v1 beside it when `quic` is set, as one transport.
pub(crate) fn os_transport(
    key: &Keypair,
    quic: bool,
    upgrade_timeouts: Counter,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let tcp = tcp_transport(key, upgrade_timeouts)?;
    if !quic {
        return Ok(tcp);
    }
    let mut config = quic::Config::new(key);
    config.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
    config.keep_alive_interval = Duration::from_millis(u64::from(QUIC_IDLE_TIMEOUT_MS) / 3);
    let quic = quic::tokio::Transport::new(config).map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    Ok(quic
        .or_transport(tcp)
        .map(|either, _| match either {
            Either::Left(out) | Either::Right(out) => out,
        })
        .boxed())
}

/// TCP + TLS/Noise + yamux, each socket with [`TCP_USER_TIMEOUT`], each connection up within
/// [`TCP_UPGRADE_TIMEOUT`] or dropped (and counted in `upgrade_timeouts`).
pub(crate) fn tcp_transport(
    key: &Keypair,
    upgrade_timeouts: Counter,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let security = TlsOrNoise(SelectUpgrade::new(
        tls::Config::new(key).map_err(|e| NetError::Transport(e.to_string()))?,
        noise::Config::new(key).map_err(|e| NetError::Transport(e.to_string()))?,
    ));
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(|stream, _| {
            limit_unacknowledged(&stream);
            stream
        })
        .upgrade(Version::V1Lazy)
        .authenticate(security)
        .multiplex(yamux::Config::default())
        .timeout(TCP_UPGRADE_TIMEOUT)
        .map_err(move |e| {
            if matches!(e, TransportTimeoutError::Timeout) {
                upgrade_timeouts.inc();
            }
            e
        })
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Sets [`TCP_USER_TIMEOUT`] on the socket; a failure only costs the faster detection.
#[cfg(target_os = "linux")]
fn limit_unacknowledged(stream: &tcp::tokio::TcpStream) {
    if let Err(error) = socket2::SockRef::from(&stream.0).set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_unacknowledged(_stream: &tcp::tokio::TcpStream) {}

/// TLS, or Noise if the peer does not speak TLS, with the two outputs as one type (what
/// `authenticate` needs).
#[derive(Clone)]
struct TlsOrNoise(SelectUpgrade<tls::Config, noise::Config>);

type Select = SelectUpgrade<tls::Config, noise::Config>;
type Secured<C> = (PeerId, Either<tls::TlsStream<C>, noise::Output<C>>);

impl UpgradeInfo for TlsOrNoise {
    type Info = <Select as UpgradeInfo>::Info;
    type InfoIter = <Select as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

/// One `(PeerId, stream)` out of either upgrade's.
fn merge<A, B>(out: Either<(PeerId, A), (PeerId, B)>) -> (PeerId, Either<A, B>) {
    match out {
        Either::Left((peer, s)) => (peer, Either::Left(s)),
        Either::Right((peer, s)) => (peer, Either::Right(s)),
    }
}

impl<C> InboundConnectionUpgrade<C> for TlsOrNoise
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Secured<C>;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Secured<C>, io::Error>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(socket, info).map_ok(merge).map_err(|e| io::Error::other(e.to_string())).boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for TlsOrNoise
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Secured<C>;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Secured<C>, io::Error>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(socket, info).map_ok(merge).map_err(|e| io::Error::other(e.to_string())).boxed()
    }
}
