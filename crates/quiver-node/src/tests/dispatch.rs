use std::time::Duration;

use super::*;

#[test]
fn attempts_after_a_snapshot_are_unseen_and_leave_the_book_when_done() {
    let book = Dispatched::default();
    let (a, b) = (PeerId::random(), PeerId::random());
    let before = book.start(a);
    std::thread::sleep(Duration::from_millis(2));
    let snapshot = Instant::now();
    let after: Vec<InFlight> = (0..2).map(|_| book.start(a)).collect();
    let _other = book.start(b);
    assert_eq!(book.unseen(a, Some(snapshot)), 2, "the one started before the snapshot is in it");
    assert_eq!(book.unseen(a, None), 3, "no snapshot: every attempt counts");
    assert_eq!(book.unseen(b, Some(snapshot)), 1);
    drop(after);
    assert_eq!(book.unseen(a, Some(snapshot)), 0);
    drop(before);
    assert_eq!(book.unseen(a, None), 0);
    assert!(!book.lock().jobs.contains_key(&a), "a provider with nothing in flight leaves the book");
    assert_eq!(book.lock().booked, 1);
}

#[test]
fn the_book_is_bounded() {
    let book = Dispatched::default();
    let peer = PeerId::random();
    let held: Vec<InFlight> = (0..MAX_BOOKED + 10).map(|_| book.start(peer)).collect();
    assert_eq!(book.unseen(peer, None) as usize, MAX_BOOKED);
    drop(held);
    assert_eq!(book.lock().booked, 0);
    assert!(book.lock().jobs.is_empty());
}

#[test]
fn unseen_jobs_take_free_slots_then_queue() {
    assert_eq!(with_unseen(Some(Load::new(2, 0, 0.5, 90.0)), 0), Some(Load::new(2, 0, 0.5, 90.0)));
    assert_eq!(with_unseen(Some(Load::new(2, 0, 0.5, 90.0)), 1), Some(Load::new(1, 0, 0.5, 90.0)));
    assert_eq!(with_unseen(Some(Load::new(2, 1, 0.5, 90.0)), 5), Some(Load::new(0, 4, 0.5, 90.0)));
    assert_eq!(with_unseen(None, 0), None);
    assert_eq!(with_unseen(None, 2), Some(Load::new(0, 3, 0.0, 0.0)), "no snapshot: busy, and our jobs queue");
}
