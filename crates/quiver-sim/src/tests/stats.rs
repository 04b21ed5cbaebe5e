//! Unit tests of `stats.rs`.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn percentiles_interpolate_between_ranks() {
    let v = [15.0, 20.0, 35.0, 40.0, 50.0];
    assert_eq!(percentile(&v, 0.0), Some(15.0));
    assert_eq!(percentile(&v, 100.0), Some(50.0));
    assert_eq!(percentile(&v, 50.0), Some(35.0));
    // rank 0.4 · 4 = 1.6: 20 + 0.6 · 15
    assert!(close(percentile(&v, 40.0).unwrap(), 29.0));
    // Order of the input does not matter.
    assert_eq!(percentile(&[50.0, 15.0, 40.0, 20.0, 35.0], 50.0), Some(35.0));
}

#[test]
fn percentile_edge_cases() {
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    assert_eq!(percentile(&[1.0, 2.0], 101.0), None);
    assert_eq!(percentile(&[1.0, 2.0], -1.0), None);
    assert_eq!(percentile(&[f64::NAN], 50.0), None);
    assert_eq!(percentile(&[1.0, f64::NAN, 3.0], 50.0), Some(2.0));
}

#[test]
fn summary_of_a_sample() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    let s = Summary::of(&v);
    assert_eq!(s.count, 100);
    assert!(close(s.mean, 50.5));
    assert_eq!(s.min, 1.0);
    assert_eq!(s.max, 100.0);
    assert!(close(s.p50, 50.5));
    assert!(close(s.p90, 90.1));
    assert!(close(s.p99, 99.01));
    assert_eq!(Summary::of(&[]), Summary::default());
}

#[test]
fn gini_of_known_distributions() {
    assert_eq!(gini(&[5.0, 5.0, 5.0]), Some(0.0));
    // One of three takes everything: (n − 1)/n.
    assert!(close(gini(&[15.0, 0.0, 0.0]).unwrap(), 2.0 / 3.0));
    assert!(close(gini(&[0.0, 0.0, 0.0, 8.0]).unwrap(), 0.75));
    // Mean absolute difference of [1, 2, 3]: (1+2+1)·2/9 = 8/9; over 2·mean = 4: 2/9.
    assert!(close(gini(&[1.0, 2.0, 3.0]).unwrap(), 2.0 / 9.0));
    assert!(close(gini(&[3.0, 1.0, 2.0]).unwrap(), 2.0 / 9.0));
    // Scale does not matter.
    assert!(close(gini(&[10.0, 20.0, 30.0]).unwrap(), 2.0 / 9.0));
}

#[test]
fn gini_refuses_what_it_cannot_measure() {
    assert_eq!(gini(&[]), None);
    assert_eq!(gini(&[0.0, 0.0]), None);
    assert_eq!(gini(&[1.0, -1.0]), None);
    assert_eq!(gini(&[1.0, f64::INFINITY]), None);
    assert_eq!(gini(&[4.0]), Some(0.0));
}
