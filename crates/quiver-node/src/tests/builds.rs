use quiver_net::PeerId;
use quiver_proto::{Heartbeat, ModelInfo};

use super::{BuildBook, MAX_PEERS, Signed};

const SHA: [u8; 32] = [3; 32];

fn signed(build: &str, threads: u32, at_ms: u64) -> Signed {
    Signed { model_sha256: SHA.to_vec(), engine_build: build.into(), threads, at_ms }
}

fn heartbeat(build: &str, threads: u32, made_ms: u64, uptime_secs: u64) -> Heartbeat {
    Heartbeat {
        models: vec![ModelInfo {
            name: "m".into(),
            sha256: SHA.to_vec(),
            engine_build: build.into(),
            threads,
            ..Default::default()
        }],
        timestamp_ms: made_ms,
        uptime_secs,
        ..Default::default()
    }
}

#[test]
fn a_receipt_of_the_class_announced_passes() {
    let mut book = BuildBook::default();
    let peer = PeerId::random();
    book.note_receipt(peer, signed("llama.cpp/x", 2, 100_000));
    assert_eq!(book.check(peer, &heartbeat("llama.cpp/x", 2, 101_000, 60)), None);
    assert_eq!(book.len(), 0, "judged and forgotten");
}

#[test]
fn another_build_or_thread_count_from_the_same_process_is_a_lie() {
    let mut book = BuildBook::default();
    let peer = PeerId::random();
    book.note_receipt(peer, signed("unique-build-7", 2, 100_000));
    let lie = book.check(peer, &heartbeat("llama.cpp/x", 2, 101_000, 60));
    assert!(lie.as_deref().is_some_and(|l| l.contains("unique-build-7") && l.contains("llama.cpp/x")), "{lie:?}");
    book.note_receipt(peer, signed("llama.cpp/x", 8, 102_000));
    assert!(book.check(peer, &heartbeat("llama.cpp/x", 2, 103_000, 60)).is_some(), "threads are part of the class");
}

#[test]
fn a_restart_between_receipt_and_heartbeat_is_not_held_against_it() {
    let mut book = BuildBook::default();
    let peer = PeerId::random();
    // Signed at 100 s; the heartbeat at 130 s comes from a process up for 20 s (an upgrade).
    book.note_receipt(peer, signed("llama.cpp/old", 2, 100_000));
    assert_eq!(book.check(peer, &heartbeat("llama.cpp/new", 2, 130_000, 20)), None);
    assert_eq!(book.len(), 0);
}

#[test]
fn receipts_newer_than_the_heartbeat_wait_for_the_next() {
    let mut book = BuildBook::default();
    let peer = PeerId::random();
    book.note_receipt(peer, signed("liar", 2, 200_000));
    assert_eq!(book.check(peer, &heartbeat("llama.cpp/x", 2, 150_000, 60)), None);
    assert_eq!(book.len(), 1, "not judged by an older heartbeat");
    assert!(book.check(peer, &heartbeat("llama.cpp/x", 2, 210_000, 120)).is_some());
}

#[test]
fn peers_that_announce_no_build_and_other_models_are_not_judged() {
    let mut book = BuildBook::default();
    let peer = PeerId::random();
    book.note_receipt(peer, signed("llama.cpp/x", 2, 100_000));
    assert_eq!(book.check(peer, &heartbeat("", 0, 101_000, 60)), None, "an older peer announces no build");
    book.note_receipt(peer, Signed { model_sha256: vec![9; 32], ..signed("other", 1, 102_000) });
    assert_eq!(book.check(peer, &heartbeat("llama.cpp/x", 2, 103_000, 60)), None, "a model it no longer announces");
}

#[test]
fn the_book_is_bounded() {
    let mut book = BuildBook::default();
    let first = PeerId::random();
    for i in 0..20 {
        book.note_receipt(first, signed("b", 1, i));
    }
    assert_eq!(book.len(), 8, "receipts per provider");
    for _ in 0..MAX_PEERS + 10 {
        book.note_receipt(PeerId::random(), signed("b", 1, 1));
    }
    assert_eq!(book.peers.len(), MAX_PEERS);
    assert!(!book.peers.contains_key(&first), "the oldest provider went first");
}
