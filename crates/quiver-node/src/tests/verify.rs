use quiver_net::PeerId;

use super::{NEWCOMER_WEIGHT as NEW, Vote, decide};

const EST: f64 = super::ESTABLISHED_WEIGHT;

fn vote(provider: PeerId, build: &str, output: &str, weight: f64) -> Vote {
    Vote { provider, class: ("aa".into(), build.into(), 2), output: output.into(), weight }
}

fn peers<const N: usize>() -> [PeerId; N] {
    std::array::from_fn(|_| PeerId::random())
}

#[test]
fn one_answer_alone_is_not_confirmed() {
    let [a] = peers();
    assert_eq!(decide(&[vote(a, "b1", "x", EST)]), None);
}

#[test]
fn two_newcomers_agreeing_confirm_when_nobody_dissents() {
    let [a, b] = peers();
    assert_eq!(decide(&[vote(a, "b1", "x", NEW), vote(b, "b1", "x", NEW)]), Some(0));
}

#[test]
fn one_against_one_decides_nothing() {
    let [liar, honest] = peers();
    assert_eq!(decide(&[vote(liar, "b1", "lie", NEW), vote(honest, "b1", "x", NEW)]), None);
    assert_eq!(decide(&[vote(liar, "b1", "lie", EST), vote(honest, "b1", "x", EST)]), None);
}

#[test]
fn two_honest_outvote_a_liar_that_answered_first() {
    let [liar, h1, h2] = peers();
    let votes = [vote(liar, "b1", "lie", NEW), vote(h1, "b1", "x", NEW), vote(h2, "b1", "x", NEW)];
    assert_eq!(decide(&votes), Some(1), "the first vote of the majority's output");
}

#[test]
fn a_sock_puppet_cannot_outweigh_an_established_dissenter() {
    // A newcomer's answer, an established provider against it, and a second fresh identity of
    // the liar for it: one established weighs as much as two newcomers, so nothing is confirmed.
    let [liar, honest, puppet] = peers();
    let votes = [vote(liar, "b1", "lie", NEW), vote(honest, "b1", "x", EST), vote(puppet, "b1", "lie", NEW)];
    assert_eq!(decide(&votes), None);
    // A second established provider settles it against the pair.
    let h2 = PeerId::random();
    let mut more = votes.to_vec();
    more.push(vote(h2, "b1", "x", EST));
    assert_eq!(decide(&more), Some(1));
}

#[test]
fn results_of_another_build_neither_confirm_nor_refute() {
    let [a, b, c] = peers();
    // A unique build string: its answer is never compared, so never confirmed.
    let votes = [vote(a, "unique", "lie", EST), vote(b, "b1", "x", EST)];
    assert_eq!(decide(&votes), None);
    // Two of another build that agree confirm their own answer, without outvoting the first.
    let votes = [vote(a, "unique", "lie", EST), vote(b, "b1", "x", EST), vote(c, "b1", "x", NEW)];
    assert_eq!(decide(&votes), Some(1));
}

#[test]
fn another_model_file_is_another_class() {
    let [a, b] = peers();
    let mut other_file = vote(b, "b1", "x", EST);
    other_file.class.0 = "bb".into();
    assert_eq!(decide(&[vote(a, "b1", "x", EST), other_file]), None);
}

#[test]
fn a_provider_counts_once() {
    let [a, b] = peers();
    let votes = [vote(a, "b1", "x", NEW), vote(a, "b1", "x", NEW), vote(b, "b1", "y", NEW)];
    assert_eq!(decide(&votes), None, "the same provider twice is one vote");
}
