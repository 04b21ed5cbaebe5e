//! futures-timer's [`Delay`] on tokio's timer.
//!
//! libp2p (swarm, kad, gossipsub, ping, identify, quic, relay…) and governor time their
//! timeouts and intervals with `futures_timer::Delay`. crates.io's futures-timer keeps every
//! `Delay` in one global list served by one helper thread: each `Delay::new` and each
//! `Delay::reset` pushes onto that list and wakes the thread through a futex, and the thread wakes
//! the task back when the time comes. With thousands of connections each resetting idle and
//! upgrade timeouts, that thread and its context switches were ~19% of the simulator's CPU
//! (perf, 900 nodes; `bench/sim/SIM.md`).
//!
//! This crate keeps futures-timer 3.0's API (`Delay::new`, `Delay::reset`, `Future`, `Unpin`,
//! `Send`, `Sync`) and hands the deadline to tokio's timer wheel, which the runtime's own threads
//! drive: no extra thread, no cross-thread wake per reset. The workspace swaps it in for the
//! crates.io crate with `[patch.crates-io]`.
//!
//! * A `Delay` arms its tokio timer on its first poll that finds the deadline still ahead, in the
//!   runtime that polls it: one created outside a runtime and polled inside works.
//! * Polled outside any tokio runtime (e.g. `futures::executor::block_on`), it arms on a small
//!   runtime of its own on one background thread, started on first need.
//! * Runtimes that poll a `Delay` must have their time driver enabled (`enable_all` or
//!   `enable_time`, which `#[tokio::main]` and `#[tokio::test]` do); tokio panics otherwise.
//! * An armed `Delay` stays with the runtime it armed in: polled after that runtime has shut
//!   down, tokio panics. Nothing in QUIVer moves libp2p's futures across runtimes (the simulator
//!   drops its nodes before their runtimes).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::time::{Instant, Sleep};

/// How far away tokio's own `sleep` puts a deadline that overflows `Instant` (about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A future that completes at a point in time, like futures-timer's `Delay`. Once the deadline
/// has passed it stays ready (every later poll answers at once) until [`Delay::reset`] moves it.
pub struct Delay {
    deadline: Instant,
    /// Registered with the timer wheel of the runtime that first polled the delay while its
    /// deadline was ahead; `None` until then.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Delay {
    /// A `Delay` that fires `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        Delay { deadline: deadline_after(dur), timer: None }
    }

    /// Moves the deadline to `dur` from now, whether or not the delay has fired; the task that
    /// polls it next is woken at the new time.
    pub fn reset(&mut self, dur: Duration) {
        self.deadline = deadline_after(dur);
        if let Some(timer) = &mut self.timer {
            timer.as_mut().reset(self.deadline);
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // A deadline already behind us needs no timer at all (libp2p makes zero-length delays
        // to be polled right away).
        if this.timer.is_none() && this.deadline <= Instant::now() {
            return Poll::Ready(());
        }
        let deadline = this.deadline;
        this.timer.get_or_insert_with(|| Box::pin(arm(deadline))).as_mut().poll(cx)
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay").field("deadline", &self.deadline).field("armed", &self.timer.is_some()).finish()
    }
}

/// `now + dur`, or tokio's far future when that overflows.
fn deadline_after(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now)
}

/// A tokio `Sleep` until `at`: on the runtime polling us, or on the background one.
fn arm(at: Instant) -> Sleep {
    if Handle::try_current().is_ok() {
        return tokio::time::sleep_until(at);
    }
    let _entered = background().enter();
    tokio::time::sleep_until(at)
}

/// The runtime that drives the timers of delays polled outside any tokio runtime: one
/// single-threaded runtime with only its time driver, parked on a thread of its own for the rest
/// of the process.
fn background() -> &'static Handle {
    static BACKGROUND: OnceLock<Handle> = OnceLock::new();
    BACKGROUND.get_or_init(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            // Like std::thread::spawn: without a timer no delay could ever fire.
            Err(e) => panic!("futures-timer: cannot build the background timer runtime: {e}"),
        };
        let handle = runtime.handle().clone();
        if let Err(e) = std::thread::Builder::new().name("futures-timer".into()).spawn(move || park(runtime)) {
            panic!("futures-timer: cannot start the background timer thread: {e}");
        }
        handle
    })
}

/// Drives `runtime`'s timers forever: a current-thread runtime fires timers while it blocks.
fn park(runtime: Runtime) {
    runtime.block_on(std::future::pending::<()>());
}

#[cfg(test)]
mod tests;
