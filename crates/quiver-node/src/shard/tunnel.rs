//! Carrying ggml's RPC connections over `/quiver/shard/1` streams: on the head's side through
//! [`relay`](quiver_engine::split::relay) (traffic counters, weights offered by hash while the
//! model loads, the test delay), on a member's side plainly to its RPC server on 127.0.0.1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;

pub use quiver_engine::split::relay::Traffic;

/// Environment knob for benchmarks and tests only: milliseconds of delay added to everything
/// the head's tunnels carry, each way (so the round trip grows by twice this).
pub const TEST_DELAY_ENV: &str = "QUIVER_SHARD_TEST_DELAY_MS";

/// The delay [`TEST_DELAY_ENV`] asks for (zero when unset or unreadable).
pub fn test_delay() -> Duration {
    std::env::var(TEST_DELAY_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// The head's end: the engine worker's connection `tcp` carried over `stream` to a member
/// until either ends.
pub async fn head(
    tcp: TcpStream,
    stream: quiver_net::Stream,
    traffic: &Traffic,
    delay: Duration,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    quiver_engine::split::relay::relay(tcp, stream.compat(), traffic, delay).await
}

/// A member's end: a head's `stream` carried to the RPC server's connection `tcp` until either
/// ends (then both close: an RPC connection is useless half-open). `open` counts the tunnels.
pub async fn member(tcp: TcpStream, stream: quiver_net::Stream, open: &AtomicU64) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    open.fetch_add(1, Ordering::Relaxed);
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut p2p_read, mut p2p_write) = tokio::io::split(stream.compat());
    let result = tokio::select! {
        r = tokio::io::copy(&mut p2p_read, &mut tcp_write) => r,
        r = tokio::io::copy(&mut tcp_read, &mut p2p_write) => r,
    };
    let _ = tcp_write.shutdown().await;
    let _ = p2p_write.shutdown().await;
    open.fetch_sub(1, Ordering::Relaxed);
    result.map(|_| ())
}
