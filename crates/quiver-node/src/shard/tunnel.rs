//! Carrying ggml's RPC bytes between a TCP socket on 127.0.0.1 and a `/quiver/shard/1` stream,
//! with counters (bytes each way, round trips) and, for benchmarks, an added delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Bytes read at a time in each direction.
const CHUNK: usize = 64 * 1024;
/// Chunks held in a delay line (each direction).
const DELAY_LINE: usize = 1024;
/// Environment knob for benchmarks and tests only: milliseconds of delay added to every chunk
/// the head's tunnel forwards, each way (so the round trip grows by twice this).
pub const TEST_DELAY_ENV: &str = "QUIVER_SHARD_TEST_DELAY_MS";

/// Traffic through one member's tunnels.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Bytes from the head to the member, and back.
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Times data came back after data went out: RPC calls answered.
    pub round_trips: AtomicU64,
    /// Whether the latest data went out (and no answer has come yet).
    awaiting: AtomicBool,
    /// Tunnels open now.
    pub open: AtomicU64,
}

impl TunnelCounters {
    fn outbound(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.awaiting.store(true, Ordering::Relaxed);
    }

    fn inbound(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        if self.awaiting.swap(false, Ordering::Relaxed) {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The delay [`TEST_DELAY_ENV`] asks for (zero when unset or unreadable).
pub fn test_delay() -> Duration {
    std::env::var(TEST_DELAY_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// Waits until `at` if it is still ahead. (A timer is never armed for a time already past:
/// tokio's timers tick by the millisecond, which would add up to 1 ms to every chunk.)
async fn hold_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Which end of the tunnel this is (the head counts; the member only carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Head,
    Member,
}

/// Carries bytes both ways between `tcp` and `stream` until either side ends or fails; then
/// both are closed. On the head's side `counters` count the traffic and `delay` is added to
/// every chunk, each way.
pub async fn pipe(
    tcp: TcpStream,
    stream: quiver_net::Stream,
    side: Side,
    counters: Arc<TunnelCounters>,
    delay: Duration,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut p2p_read, mut p2p_write) = stream.split();
    counters.open.fetch_add(1, Ordering::Relaxed);
    let head = side == Side::Head;
    // TCP → stream: from the head's worker to the member (head side), or from the RPC server
    // back to the head (member side).
    let c = Arc::clone(&counters);
    let up = async move {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_LINE);
        let reader = async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = tcp_read.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                if head {
                    c.outbound(n);
                }
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                    return Ok(());
                }
            }
        };
        let writer = async move {
            while let Some((at, bytes)) = rx.recv().await {
                hold_until(at).await;
                p2p_write.write_all(&bytes).await?;
                p2p_write.flush().await?;
            }
            p2p_write.close().await
        };
        let (r, w) = tokio::join!(reader, writer);
        r.and(w)
    };
    let c = Arc::clone(&counters);
    let down = async move {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_LINE);
        let reader = async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = p2p_read.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                if head {
                    c.inbound(n);
                }
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                    return Ok(());
                }
            }
        };
        let writer = async move {
            while let Some((at, bytes)) = rx.recv().await {
                hold_until(at).await;
                tcp_write.write_all(&bytes).await?;
            }
            tcp_write.shutdown().await
        };
        let (r, w) = tokio::join!(reader, writer);
        r.and(w)
    };
    // Either direction ending ends the tunnel: an RPC connection is useless half-open, and a
    // member that went away must make the head's worker see a closed socket at once.
    let result = tokio::select! {
        r = up => r,
        r = down => r,
    };
    counters.open.fetch_sub(1, Ordering::Relaxed);
    result
}
