use super::*;

fn place(q: Queued) -> (Ticket, oneshot::Receiver<()>) {
    match q {
        Queued::Place(t, rx) => (t, rx),
        Queued::Refused => panic!("refused"),
    }
}

fn totals(book: &Admission) -> Vec<(PeerId, usize, usize)> {
    let state = book.lock();
    let mut v: Vec<_> = state.peers.iter().map(|(p, j)| (*p, j.total, j.queued.len())).collect();
    v.sort();
    v
}

#[test]
fn a_lone_client_may_fill_the_whole_queue() {
    let book = Admission::new(3);
    let gateway = PeerId::random();
    let _running = book.running(gateway);
    let places: Vec<_> = (0..3).map(|_| place(book.enqueue(gateway))).collect();
    assert_eq!(book.queued(), 3);
    assert!(matches!(book.enqueue(gateway), Queued::Refused), "no place beyond the queue");
    drop(places);
    assert_eq!(book.queued(), 0);
    assert_eq!(totals(&book), vec![(gateway, 1, 0)]);
}

#[test]
fn a_lighter_client_takes_the_heaviest_clients_newest_place() {
    let book = Admission::new(3);
    let (heavy, light) = (PeerId::random(), PeerId::random());
    let _running = book.running(heavy);
    let mut places: Vec<_> = (0..3).map(|_| place(book.enqueue(heavy))).collect();
    let (mut mine, _) = place(book.enqueue(light));
    // The newest of the heavy client's queued jobs was told it lost its place.
    let (mut newest, mut evicted) = places.pop().expect("three places");
    assert!(evicted.try_recv().is_ok(), "the newest place was given away");
    assert!(!newest.start(), "an evicted job does not run");
    for (_, rx) in &mut places {
        assert!(rx.try_recv().is_err(), "older places stay");
    }
    assert_eq!(book.queued(), 3);
    drop(newest);
    assert_eq!(totals(&book).iter().find(|t| t.0 == heavy).map(|t| t.1), Some(3), "1 running + 2 queued");
    // Shares converge: with 2 each (light 1 queued + 1 more), nobody is heavier by two any more.
    let _second = place(book.enqueue(light));
    assert_eq!(totals(&book).iter().find(|t| t.0 == heavy).map(|t| (t.1, t.2)), Some((2, 1)));
    assert!(matches!(book.enqueue(light), Queued::Refused), "2 against 2: no place taken from an equal");
    assert!(mine.start());
    assert_eq!(book.queued(), 2);
}

#[test]
fn running_jobs_are_never_taken_and_books_balance() {
    let book = Admission::new(1);
    let (a, b) = (PeerId::random(), PeerId::random());
    let running: Vec<_> = (0..4).map(|_| book.running(a)).collect();
    // A's jobs all run; none is queued, so a full queue of B's own cannot be taken by B.
    let (queued_b, _) = place(book.enqueue(b));
    assert!(matches!(book.enqueue(b), Queued::Refused));
    // A queued job started, then finished; an evicted one dropped late; everything returns.
    let c = PeerId::random();
    let (mut started, _) = place({
        drop(queued_b);
        book.enqueue(c)
    });
    assert!(started.start());
    assert_eq!(book.queued(), 0);
    drop(started);
    drop(running);
    assert!(totals(&book).is_empty(), "{:?}", totals(&book));
}

#[test]
fn an_evicted_waiter_dropped_without_starting_leaves_the_books_straight() {
    let book = Admission::new(1);
    let (heavy, light) = (PeerId::random(), PeerId::random());
    let _r = book.running(heavy);
    let _r2 = book.running(heavy);
    let (victim, _rx) = place(book.enqueue(heavy));
    let (winner, _) = place(book.enqueue(light));
    drop(victim);
    assert_eq!(book.queued(), 1);
    assert_eq!(totals(&book).iter().find(|t| t.0 == heavy).map(|t| (t.1, t.2)), Some((2, 0)));
    drop(winner);
    assert_eq!(book.queued(), 0);
    assert!(totals(&book).iter().all(|t| t.0 != light));
}

#[test]
fn a_queued_job_learns_how_many_are_ahead_of_it() {
    let book = Admission::new(4);
    let (a, b) = (PeerId::random(), PeerId::random());
    let running = book.running(a);
    let (first, _) = place(book.enqueue(a));
    let (second, _) = place(book.enqueue(b));
    let (mut third, _) = place(book.enqueue(a));
    assert_eq!([first.position(), second.position(), third.position()], [0, 1, 2]);
    assert_eq!(running.position(), 0, "a running job waits for nobody");
    // The first leaves the queue (it runs, or its client gave up): everyone moves up.
    drop(first);
    assert_eq!([second.position(), third.position()], [0, 1]);
    assert!(third.start());
    assert_eq!(third.position(), 0);
    assert_eq!(second.position(), 0);
}

#[test]
fn a_peer_holds_at_most_its_share_of_streams() {
    let book = StreamBook::new(2);
    let (a, b) = (PeerId::random(), PeerId::random());
    let first = book.open(a).expect("room");
    let second = book.open(a).expect("room");
    assert!(book.open(a).is_none(), "a third stream of the same peer is refused");
    // Another peer's share is its own.
    let other = book.open(b).expect("room for another peer");
    assert_eq!((book.count(&a), book.count(&b)), (2, 1));
    drop(first);
    assert_eq!(book.count(&a), 1, "a closed stream frees its place");
    let again = book.open(a).expect("room again");
    drop((second, again, other));
    assert_eq!((book.count(&a), book.count(&b)), (0, 0));
}
