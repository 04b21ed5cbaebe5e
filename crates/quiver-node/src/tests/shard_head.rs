use super::*;

const GIB: u64 = 1 << 30;

#[test]
fn all_members_answering_load_at_once() {
    assert_eq!(choose(&[true, true], false, |_| false), Some(vec![0, 1]));
    assert_eq!(choose(&[true], false, |_| false), Some(vec![0]));
}

#[test]
fn a_missing_member_is_waited_for_during_the_grace() {
    // Even when the model would fit in the others: the group as configured comes first.
    assert_eq!(choose(&[true, false], false, |_| true), None);
    assert_eq!(choose(&[false, false], true, |_| true), None);
}

#[test]
fn after_the_grace_the_members_that_answer_are_used_if_the_model_fits_in_them() {
    assert_eq!(choose(&[false, true, true], true, |p| p == [1, 2]), Some(vec![1, 2]));
    // It does not fit without the missing one: wait for it to return.
    assert_eq!(choose(&[false, true, true], true, |_| false), None);
}

#[test]
fn fitting_counts_the_head_and_the_members_with_a_margin() {
    // 40 GiB of weights need 50 GiB with the 25% margin.
    assert!(fits(40 * GIB, 10 * GIB, &[20 * GIB, 20 * GIB]));
    assert!(!fits(40 * GIB, 10 * GIB, &[20 * GIB]));
    assert!(!fits(40 * GIB, 0, &[24 * GIB, 24 * GIB]));
    assert!(fits(40 * GIB, 2 * GIB, &[24 * GIB, 24 * GIB]));
}

#[test]
fn a_member_left_out_is_taken_back_once_it_has_answered_a_few_probes_in_a_row() {
    // Member 1 was left out of the load over 0 and 2.
    assert_eq!(returned(&[0, 2], &[9, BACK_AFTER - 1, 9]), None, "not yet");
    assert_eq!(returned(&[0, 2], &[9, BACK_AFTER, 9]), Some(1));
    // Members in the load answering are just serving.
    assert_eq!(returned(&[0, 1, 2], &[9, 9, 9]), None);
}
