use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// `n` random 32-byte keys, as SHA-256 hashes of PeerIds are.
fn keys(n: usize, seed: u64) -> Vec<[u8; 32]> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.r#gen::<[u8; 32]>()).collect()
}

/// The routing table of `own` in a network of `all` keys, as Kademlia keeps it: the others by
/// bucket (leading zero bits of the XOR distance), at most 20 per bucket, the first met kept.
fn routing_table(all: &[[u8; 32]], own: usize) -> Vec<f64> {
    let mut buckets = [0usize; 257];
    let mut out = Vec::new();
    for (i, k) in all.iter().enumerate() {
        if i == own {
            continue;
        }
        let d = normalised_distance(&all[own], k);
        let xor: Vec<u8> = all[own].iter().zip(k).map(|(a, b)| a ^ b).collect();
        let lz = xor.iter().position(|b| *b != 0).map_or(256, |p| p * 8 + xor[p].leading_zeros() as usize);
        if buckets[lz] < 20 {
            buckets[lz] += 1;
            out.push(d);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() * 9 / 10]
}

/// Relative errors of the estimates of the first `sample` nodes of a network of `n`, and their
/// estimates.
fn errors(n: usize, sample: usize, seed: u64) -> (Vec<f64>, Vec<u64>) {
    let all = keys(n, seed);
    let mut errs = Vec::new();
    let mut ests = Vec::new();
    for own in 0..sample.min(n) {
        let table = routing_table(&all, own);
        let est = estimate(&table).nodes().expect("enough peers");
        ests.push(est);
        errs.push((est as f64 - n as f64).abs() / n as f64);
    }
    (errs, ests)
}

#[test]
fn distances_are_fractions_of_the_key_space() {
    assert_eq!(normalised_distance(&[0; 32], &[0; 32]), 0.0);
    assert_eq!(normalised_distance(&[0x80, 0, 0], &[0; 32]), 0.5);
    let d = normalised_distance(&[0xff; 32], &[0; 32]);
    assert!(d < 1.0 && d > 0.999, "{d}");
    // Short keys are read as zero-padded.
    assert_eq!(normalised_distance(&[0x40], &[]), 0.25);
}

#[test]
fn too_few_peers_give_no_figure() {
    assert_eq!(estimate(&[]), SizeEstimate::TooFewPeers { peers: 0 });
    let few = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7];
    assert_eq!(estimate(&few), SizeEstimate::TooFewPeers { peers: 7 });
    assert_eq!(estimate(&few).nodes(), None);
    // Values that are no distances are not counted.
    assert_eq!(estimate(&[f64::NAN, -1.0, 2.0, 0.5]), SizeEstimate::TooFewPeers { peers: 1 });
}

#[test]
fn never_below_the_peers_known_nor_above_the_cap() {
    // Everyone far away suggests a tiny network, but we know of 30 peers.
    let far = vec![0.99; 30];
    assert_eq!(estimate(&far).nodes(), Some(31));
    // All at distance zero: the cap, not infinity.
    assert_eq!(estimate(&[0.0; 20]).nodes(), Some(MAX_SIZE_ESTIMATE));
}

#[test]
fn the_twentieth_distance_gives_the_size() {
    // The 20th closest at (20 − 2/3) / 999 of the key space: 999 others, and ourselves.
    let d: Vec<f64> = (1..1000).map(|i| i as f64 * (20.0 - 2.0 / 3.0) / 20.0 / 999.0).rev().collect();
    assert_eq!(estimate(&d), SizeEstimate::Nodes { nodes: 1000, peers_used: SIZE_FIT_PEERS });
}

#[test]
fn uniform_networks_of_known_size_are_estimated_within_tolerance() {
    for (n, seed) in [(100usize, 1u64), (1_000, 2), (10_000, 3), (100_000, 4)] {
        let (errs, ests) = errors(n, 100, seed);
        let (med, p) = (median(errs.clone()), p90(errs));
        println!("n = {n}: median error {med:.3}, p90 {p:.3}");
        assert!(med < 0.2, "n = {n}: median relative error {med}");
        assert!(p < 0.5, "n = {n}: p90 relative error {p}");
        // The median over many nodes' estimates (what heartbeats give) is much closer.
        let combined = combine(&ests).expect("estimates") as f64;
        assert!((combined - n as f64).abs() / (n as f64) < 0.1, "n = {n}: combined {combined}");
    }
}

#[test]
fn routing_table_size_is_not_the_estimate() {
    // A broken estimator returning the routing table's size would be off by far at 10,000 nodes
    // (about 20 · log2(10,000 / 20) ≈ 180 peers known).
    let all = keys(10_000, 9);
    let table = routing_table(&all, 0);
    assert!(table.len() < 400, "{}", table.len());
    let est = estimate(&table).nodes().expect("enough peers");
    assert!(est > 5_000 && est < 20_000, "{est}");
}

#[test]
fn a_small_network_known_whole_is_counted_well() {
    // 30 nodes: every table holds all 29 others.
    let (errs, _) = errors(30, 30, 5);
    assert!(median(errs) < 0.25);
}

#[test]
fn combine_takes_the_median_and_ignores_unknowns() {
    assert_eq!(combine(&[]), None);
    assert_eq!(combine(&[0, 0]), None);
    assert_eq!(combine(&[5]), Some(5));
    assert_eq!(combine(&[100, 0, 300, 200]), Some(200));
    assert_eq!(combine(&[100, 200]), Some(150));
    assert_eq!(combine(&[u64::MAX, u64::MAX]), Some(u64::MAX));
    // A minority of liars moves the median only within the honest values.
    let mut v = vec![1_000, 1_100, 900, 1_050, 950];
    v.extend([u64::MAX, u64::MAX]);
    let m = combine(&v).expect("median");
    assert!((900..=1_100).contains(&m), "{m}");
}
