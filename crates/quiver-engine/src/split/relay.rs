//! The head's end of one RPC connection to a member: it carries the bytes between the engine
//! worker's socket and the member's channel (a `/quiver/shard/1` stream in `quiver-node`),
//! counts them, and while the model loads offers the member each weight by hash before sending
//! it.
//!
//! ggml's own client offers only weights above [`HASH_THRESHOLD`] by hash; it sends the smaller
//! ones whole, to every member, on every load. The relay reads the commands it carries
//! ([`wire`]): a SET_TENSOR of [`OFFER_MIN`] (any size, for a member holding the model) to
//! [`HASH_THRESHOLD`] bytes of data is held back
//! and a SET_TENSOR_HASH sent in its place; if the member has the bytes (from its own copy of
//! the model, or from an earlier load) nothing more goes; if not, the held SET_TENSOR goes, with
//! its cache flag set so that the member keeps it. The member's answer to the offer is taken
//! out of the stream back to the worker, which never asked. This is sound because ggml's client
//! sends one command at a time and waits for each answer before the next: when it sends a
//! SET_TENSOR (which has no answer), no answer is owed to it.
//!
//! Only while [`Traffic::loading`] is set: then every SET_TENSOR carries a weight. The member's
//! HELLO answer must name protocol [`PROTO_MAJOR`]; a connection of another version is carried
//! untouched.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::cache::HASH_THRESHOLD;
use super::wire::{self, PROTO_MAJOR};

/// Weights this big and up (to [`HASH_THRESHOLD`]) are offered by hash while loading; smaller
/// ones cost less to send than the round trip an offer takes, unless the member holds the
/// model itself ([`Traffic::offer_all`]).
pub const OFFER_MIN: u64 = 64 << 10;
/// Bytes read at a time in each direction.
const CHUNK: usize = 64 * 1024;
/// Messages held in each direction's delay line.
const DELAY_LINE: usize = 1024;
/// Largest answer the relay reads itself (HELLO's and SET_TENSOR_HASH's are a few bytes).
const MAX_READ_ANSWER: u64 = 4096;

/// Traffic through one member's connections, and whether the head's worker is loading.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes from the head to the member, and back.
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Times data came back after data went out: RPC calls answered.
    pub round_trips: AtomicU64,
    /// Whether the latest data went out (and no answer has come yet).
    awaiting: AtomicBool,
    /// Connections open now.
    pub open: AtomicU64,
    /// Set while the head's worker loads the model (see [`Traffic::begin_load`]).
    loading: AtomicBool,
    /// Offer every weight by hash, however small (the member holds the model itself).
    all: AtomicBool,
    /// Bytes of weights sent to the member, and of weights it took from its cache instead,
    /// during the latest load.
    pub weights_sent: AtomicU64,
    pub weights_cached: AtomicU64,
}

impl Traffic {
    /// A load begins: weights are offered by hash until [`Traffic::end_load`], and counted
    /// afresh.
    pub fn begin_load(&self) {
        self.weights_sent.store(0, Ordering::Relaxed);
        self.weights_cached.store(0, Ordering::Relaxed);
        self.loading.store(true, Ordering::Relaxed);
    }

    pub fn end_load(&self) {
        self.loading.store(false, Ordering::Relaxed);
    }

    /// Whether every weight is offered by hash, however small: set for a member that filled its
    /// cache from its own copy of the model, so that none of its weights is sent.
    pub fn offer_all(&self, all: bool) {
        self.all.store(all, Ordering::Relaxed);
    }

    /// The smallest weight offered by hash.
    fn offer_min(&self) -> u64 {
        if self.all.load(Ordering::Relaxed) { 1 } else { OFFER_MIN }
    }

    fn loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

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

/// An answer the relay waits for on the way back.
enum Expect {
    /// HELLO's: read its version, pass it on.
    Hello,
    /// The client's own SET_TENSOR_HASH for a weight of this many bytes: count it if found,
    /// pass it on.
    ClientHash(u64),
    /// The relay's own offer: taken out, handed to the request side.
    Offer(oneshot::Sender<(Instant, Vec<u8>)>),
}

/// What the two directions of one connection share.
#[derive(Default)]
struct Conn {
    /// The member's HELLO named [`PROTO_MAJOR`].
    known: AtomicBool,
    expect: Mutex<Option<Expect>>,
}

impl Conn {
    fn await_answer(&self, e: Expect) {
        if let Ok(mut slot) = self.expect.lock() {
            *slot = Some(e);
        }
    }

    fn take_expected(&self) -> Option<Expect> {
        self.expect.lock().ok().and_then(|mut slot| slot.take())
    }

    fn known(&self) -> bool {
        self.known.load(Ordering::Relaxed)
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the other side of the relay closed")
}

fn garbled(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("RPC relay: {what}"))
}

/// Waits until `at` if it is still ahead. (A timer is never armed for a time already past:
/// tokio's timers tick by the millisecond, which would add up to 1 ms to every message.)
async fn hold_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at.into()).await;
    }
}

type Line = mpsc::Sender<(Instant, Vec<u8>)>;

/// One connection's relaying: its counters, what its two directions share, the added delay.
struct Link<'a> {
    traffic: &'a Traffic,
    conn: Conn,
    delay: Duration,
}

/// Writes what `rx` brings to `to`, each message once its time has come; closes `to` at the end.
async fn deliver<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<(Instant, Vec<u8>)>, to: &mut W) -> std::io::Result<()> {
    while let Some((at, bytes)) = rx.recv().await {
        hold_until(at).await;
        to.write_all(&bytes).await?;
        to.flush().await?;
    }
    to.shutdown().await
}

/// Carries one RPC connection between the head's engine worker (`worker`) and a member
/// (`member`) until either side ends or fails, counting into `traffic`; `delay` is added to
/// everything, each way (a test and benchmark knob: zero otherwise).
pub async fn relay<W, M>(worker: W, member: M, traffic: &Traffic, delay: Duration) -> std::io::Result<()>
where
    W: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    let (mut worker_read, mut worker_write) = tokio::io::split(worker);
    let (mut member_read, mut member_write) = tokio::io::split(member);
    let link = Link { traffic, conn: Conn::default(), delay };
    traffic.open.fetch_add(1, Ordering::Relaxed);
    let up = async {
        let (tx, rx) = mpsc::channel(DELAY_LINE);
        let (r, w) = tokio::join!(link.requests(&mut worker_read, tx), deliver(rx, &mut member_write));
        r.and(w)
    };
    let down = async {
        let (tx, rx) = mpsc::channel(DELAY_LINE);
        let (r, w) = tokio::join!(link.answers(&mut member_read, tx), deliver(rx, &mut worker_write));
        r.and(w)
    };
    // Either direction ending ends the connection: an RPC connection is useless half-open, and
    // a member that went away must make the worker see a closed socket at once.
    let result = tokio::select! {
        r = up => r,
        r = down => r,
    };
    traffic.open.fetch_sub(1, Ordering::Relaxed);
    result
}

impl Link<'_> {
    /// Puts `bytes` on the way to the member, counted, due after the delay.
    async fn send(&self, line: &Line, bytes: Vec<u8>) -> std::io::Result<()> {
        self.traffic.outbound(bytes.len());
        line.send((Instant::now() + self.delay, bytes)).await.map_err(|_| closed())
    }

    /// The worker's commands, toward the member.
    async fn requests<R: AsyncRead + Unpin>(&self, from: &mut R, line: Line) -> std::io::Result<()> {
        // `line` is owned: when this returns it closes, and the delivery behind it ends.
        let line = &line;
        let (traffic, conn) = (self.traffic, &self.conn);
        loop {
            let mut head = [0u8; wire::REQUEST_HEADER];
            match from.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let (cmd, size) = wire::request_header(&head);
            match cmd {
                wire::CMD_HELLO => self.conn.await_answer(Expect::Hello),
                wire::CMD_SET_TENSOR_HASH if conn.known() && size == wire::SET_TENSOR_HASH_BYTES as u64 => {
                    let mut payload = vec![0u8; wire::SET_TENSOR_HASH_BYTES];
                    from.read_exact(&mut payload).await?;
                    self.conn.await_answer(Expect::ClientHash(wire::hashed_tensor_bytes(&payload).unwrap_or(0)));
                    let mut frame = head.to_vec();
                    frame.extend_from_slice(&payload);
                    self.send(line, frame).await?;
                    continue;
                }
                wire::CMD_SET_TENSOR
                    if conn.known()
                        && traffic.loading()
                        && (wire::SET_TENSOR_PREFIX as u64 + traffic.offer_min()
                            ..=wire::SET_TENSOR_PREFIX as u64 + HASH_THRESHOLD)
                            .contains(&size) =>
                {
                    self.offer(from, line, &head, size).await?;
                    continue;
                }
                wire::CMD_SET_TENSOR if traffic.loading() => {
                    traffic
                        .weights_sent
                        .fetch_add(size.saturating_sub(wire::SET_TENSOR_PREFIX as u64), Ordering::Relaxed);
                }
                _ => {}
            }
            // The header goes with the payload's first chunk: one write for a small command.
            let mut message = head.to_vec();
            let mut left = size;
            loop {
                let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let at = message.len();
                message.resize(at + n, 0);
                from.read_exact(&mut message[at..]).await?;
                left -= n as u64;
                self.send(line, std::mem::take(&mut message)).await?;
                if left == 0 {
                    break;
                }
            }
        }
    }

    /// One SET_TENSOR (header read, `size` bytes of payload still in `from`): offered by hash first,
    /// sent (to be cached) only if the member lacks it.
    async fn offer<R: AsyncRead + Unpin>(
        &self,
        from: &mut R,
        line: &Line,
        head: &[u8],
        size: u64,
    ) -> std::io::Result<()> {
        let traffic = self.traffic;
        let mut payload = vec![0u8; usize::try_from(size).map_err(|_| garbled("size"))?];
        from.read_exact(&mut payload).await?;
        let Some(set) = wire::parse_set_tensor(&payload) else { return Err(garbled("short SET_TENSOR")) };
        let (data_len, flagged, request) = (set.data.len() as u64, set.cache_flag != 0, wire::hash_request(&set));
        if !flagged {
            let (tx, rx) = oneshot::channel();
            self.conn.await_answer(Expect::Offer(tx));
            self.send(line, request).await?;
            let (at, answer) = rx.await.map_err(|_| closed())?;
            hold_until(at).await;
            match wire::hash_found(&answer) {
                Some(true) => {
                    traffic.weights_cached.fetch_add(data_len, Ordering::Relaxed);
                    return Ok(());
                }
                Some(false) => wire::set_cache_flag(&mut payload),
                None => return Err(garbled("the member's answer to an offer")),
            }
        }
        traffic.weights_sent.fetch_add(data_len, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(head.len() + payload.len());
        frame.extend_from_slice(head);
        frame.extend_from_slice(&payload);
        self.send(line, frame).await
    }

    /// The member's answers, toward the worker; the ones the relay waits for are read on the way.
    async fn answers<R: AsyncRead + Unpin>(&self, from: &mut R, line: Line) -> std::io::Result<()> {
        let (traffic, conn, delay) = (self.traffic, &self.conn, self.delay);
        let mut buf = vec![0u8; CHUNK];
        let mut reading: Option<(Expect, Vec<u8>)> = None;
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            traffic.inbound(n);
            let at = Instant::now() + delay;
            let mut rest = &buf[..n];
            let mut forward = Vec::with_capacity(n);
            while !rest.is_empty() {
                if reading.is_none() {
                    reading = conn.take_expected().map(|e| (e, Vec::new()));
                }
                let Some((expect, frame)) = reading.as_mut() else {
                    forward.extend_from_slice(rest);
                    break;
                };
                let want = match wire::response_size(frame) {
                    None => wire::RESPONSE_HEADER - frame.len(),
                    Some(size) if size <= MAX_READ_ANSWER => wire::RESPONSE_HEADER + size as usize - frame.len(),
                    Some(size) => return Err(garbled(&format!("an answer of {size} bytes where a few were due"))),
                };
                let k = want.min(rest.len());
                frame.extend_from_slice(&rest[..k]);
                if !matches!(expect, Expect::Offer(_)) {
                    forward.extend_from_slice(&rest[..k]);
                }
                rest = &rest[k..];
                let complete =
                    wire::response_size(frame).is_some_and(|s| frame.len() as u64 == wire::RESPONSE_HEADER as u64 + s);
                if complete && let Some((expect, frame)) = reading.take() {
                    match expect {
                        Expect::Hello => {
                            conn.known.store(wire::hello_major(&frame) == Some(PROTO_MAJOR), Ordering::Relaxed)
                        }
                        Expect::ClientHash(bytes) => {
                            if wire::hash_found(&frame) == Some(true) && traffic.loading() {
                                traffic.weights_cached.fetch_add(bytes, Ordering::Relaxed);
                            }
                        }
                        Expect::Offer(tx) => {
                            let _ = tx.send((at, frame));
                        }
                    }
                }
            }
            if !forward.is_empty() && line.send((at, forward)).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
#[path = "../tests/split_relay.rs"]
mod tests;
