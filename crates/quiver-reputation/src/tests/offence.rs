//! Unit tests of `offence.rs`.

use super::*;

#[test]
fn names_are_unique_and_busy_is_free() {
    let mut names: Vec<_> = Offence::ALL.iter().map(|o| o.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Offence::ALL.len());
    let w = OffenceWeights::default();
    assert_eq!(w.get(Offence::Busy), 0.0);
    assert!(!Offence::Busy.is_job_failure());
    for o in Offence::ALL {
        if o != Offence::Busy {
            assert!(w.get(o) > 0.0, "{o}");
            assert!(o.is_job_failure());
        }
    }
}

#[test]
fn bad_weights_count_as_zero() {
    let w = OffenceWeights { timeout: f64::NAN, stall: -3.0, ..OffenceWeights::default() };
    assert_eq!(w.get(Offence::Timeout), 0.0);
    assert_eq!(w.get(Offence::Stall), 0.0);
}
