//! Unit tests of `runtimes.rs`: nodes are dealt round-robin, each runtime runs its tasks on a
//! thread of its own, and dropping the runtimes ends their threads and cancels what still runs.

use std::time::Duration;

use super::*;

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("unnamed").to_string()
}

#[tokio::test]
async fn nodes_are_dealt_round_robin_onto_threads_of_their_own() {
    let runtimes = NodeRuntimes::new(2).expect("two runtimes");
    assert_eq!(runtimes.len(), 2);
    let mut names = Vec::new();
    for index in 0..4 {
        let name = tokio::time::timeout(Duration::from_secs(10), runtimes.handle(index).spawn(async { thread_name() }))
            .await
            .expect("the task ran in time")
            .expect("the task did not panic");
        names.push(name);
    }
    assert_eq!(names, ["sim-nodes-0", "sim-nodes-1", "sim-nodes-0", "sim-nodes-1"]);
    assert_ne!(thread_name(), "sim-nodes-0", "the caller's runtime is not one of them");
}

#[test]
fn zero_runtimes_means_one() {
    let runtimes = NodeRuntimes::new(0).expect("one runtime");
    assert_eq!(runtimes.len(), 1);
    assert!(!runtimes.is_empty());
}

#[tokio::test]
async fn dropping_the_runtimes_cancels_their_tasks() {
    let runtimes = NodeRuntimes::new(1).expect("one runtime");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // Holds its sender until cancelled: the receiver sees the sender dropped only then.
    runtimes.handle(0).spawn(async move {
        let _tx = tx;
        std::future::pending::<()>().await;
    });
    drop(runtimes);
    let closed = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("the task was cancelled in time");
    assert!(closed.is_err(), "the pending task never sent; its sender was dropped by the cancellation");
}
