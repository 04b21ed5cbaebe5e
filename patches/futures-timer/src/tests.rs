use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::Delay;

/// Bounds every wait of these tests; a delay that never fires fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(10);

fn poll_once(delay: &mut Delay) -> Poll<()> {
    Pin::new(delay).poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn it_is_the_type_libp2p_expects() {
    fn unpin_send_sync<T: Unpin + Send + Sync + 'static>() {}
    unpin_send_sync::<Delay>();
}

#[test]
fn a_zero_delay_is_ready_at_once_and_stays_ready_without_a_runtime() {
    let mut delay = Delay::new(Duration::ZERO);
    assert_eq!(poll_once(&mut delay), Poll::Ready(()));
    assert_eq!(poll_once(&mut delay), Poll::Ready(()));
    assert!(delay.timer.is_none(), "no timer armed for a deadline already passed");
}

#[test]
fn an_overflowing_delay_is_pending_not_a_panic() {
    let mut delay = Delay::new(Duration::MAX);
    assert_eq!(poll_once(&mut delay), Poll::Pending);
    delay.reset(Duration::MAX);
    assert_eq!(poll_once(&mut delay), Poll::Pending);
}

#[tokio::test(flavor = "current_thread")]
async fn it_fires_no_earlier_than_its_deadline_on_a_single_threaded_runtime() {
    let start = Instant::now();
    tokio::time::timeout(LIMIT, Delay::new(Duration::from_millis(30))).await.expect("the delay fires");
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_fires_on_a_multi_threaded_runtime_and_from_another_task() {
    let start = Instant::now();
    let fired = tokio::spawn(Delay::new(Duration::from_millis(30)));
    tokio::time::timeout(LIMIT, fired).await.expect("the delay fires").expect("the task ends");
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[tokio::test(flavor = "current_thread")]
async fn a_reset_moves_an_armed_deadline_both_ways() {
    let mut delay = Delay::new(Duration::from_secs(3600));
    assert_eq!(poll_once(&mut delay), Poll::Pending);
    assert!(delay.timer.is_some(), "the first pending poll arms the timer");
    // Nearer: it fires at the new time, not in an hour.
    delay.reset(Duration::from_millis(20));
    tokio::time::timeout(LIMIT, &mut delay).await.expect("fires at the nearer deadline");
    // Fired, then moved later: pending again until the new deadline.
    let start = Instant::now();
    delay.reset(Duration::from_millis(40));
    assert_eq!(poll_once(&mut delay), Poll::Pending);
    tokio::time::timeout(LIMIT, &mut delay).await.expect("fires again");
    assert!(start.elapsed() >= Duration::from_millis(40));
}

#[tokio::test(flavor = "current_thread")]
async fn a_reset_before_the_first_poll_counts_from_the_reset() {
    let mut delay = Delay::new(Duration::from_secs(3600));
    let start = Instant::now();
    delay.reset(Duration::from_millis(20));
    tokio::time::timeout(LIMIT, &mut delay).await.expect("fires at the reset deadline");
    assert!(start.elapsed() >= Duration::from_millis(20));
}

#[test]
fn outside_any_runtime_it_fires_on_the_background_timer() {
    let start = std::time::Instant::now();
    futures::executor::block_on(Delay::new(Duration::from_millis(30)));
    assert!(start.elapsed() >= Duration::from_millis(30));
    // And a second one, on the same background runtime.
    futures::executor::block_on(Delay::new(Duration::from_millis(10)));
}

#[test]
fn made_outside_a_runtime_it_arms_on_the_one_that_polls_it() {
    let delay = Delay::new(Duration::from_millis(20));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(LIMIT, delay).await.expect("fires");
    });
}

#[tokio::test(flavor = "current_thread")]
async fn many_delays_on_one_thread_each_fire_no_earlier_than_their_own_deadline() {
    let start = Instant::now();
    let delays = [60u64, 20, 40].map(|ms| async move {
        Delay::new(Duration::from_millis(ms)).await;
        (ms, start.elapsed())
    });
    let fired = tokio::time::timeout(LIMIT, futures::future::join_all(delays)).await.expect("each delay fires");
    for (ms, elapsed) in fired {
        assert!(elapsed >= Duration::from_millis(ms), "{ms} ms delay fired after {elapsed:?}");
    }
}

#[test]
fn debug_shows_whether_it_is_armed() {
    let delay = Delay::new(Duration::from_secs(1));
    let text = format!("{delay:?}");
    assert!(text.contains("armed: false"), "{text}");
}
