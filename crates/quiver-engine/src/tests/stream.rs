//! Unit tests of `stream.rs`.

use super::*;

#[test]
fn utf8_split_characters() {
    let mut a = Utf8Assembler::new();
    let bytes = "é😀x".as_bytes();
    assert_eq!(a.push(&bytes[..1]), "");
    assert_eq!(a.push(&bytes[1..3]), "é");
    assert_eq!(a.push(&bytes[3..5]), "");
    assert_eq!(a.push(&bytes[5..6]), "😀");
    assert_eq!(a.push(&bytes[6..]), "x");
    assert_eq!(a.finish(), "");
}

#[test]
fn utf8_invalid_bytes_are_replaced() {
    let mut a = Utf8Assembler::new();
    assert_eq!(a.push(b"a\xffb\xc3"), "a\u{FFFD}b");
    assert_eq!(a.push(b"("), "\u{FFFD}(");
    assert_eq!(a.push(b"\xe2\x82"), "");
    assert_eq!(a.finish(), "\u{FFFD}");
    assert_eq!(a.push(b"\x80\x80ok"), "\u{FFFD}\u{FFFD}ok");
    assert_eq!(a.finish(), "");
}

#[test]
fn utf8_garbage_never_panics() {
    let mut a = Utf8Assembler::new();
    let mut seed = 7u32;
    let mut total = String::new();
    for _ in 0..2000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = (seed >> 28) as usize;
        let chunk: Vec<u8> = (0..n).map(|i| (seed >> (i % 24)) as u8).collect();
        total.push_str(&a.push(&chunk));
        assert!(a.pending.len() <= 3);
    }
    total.push_str(&a.finish());
}

fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
    let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for p in pieces {
        let (text, stop) = f.push(p);
        out.push_str(&text);
        if stop {
            return (out, true);
        }
    }
    out.push_str(&f.finish());
    (out, false)
}

#[test]
fn stop_passes_text_without_stops() {
    assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    assert_eq!(run(&["zz"], &["a", "z", "b"]), ("azb".into(), false));
}

#[test]
fn stop_in_one_piece() {
    assert_eq!(run(&["STOP"], &["abc", "deSTOPfg", "h"]), ("abcde".into(), true));
}

#[test]
fn stop_split_across_pieces() {
    assert_eq!(run(&["</s>"], &["hello <", "/", "s>", " more"]), ("hello ".into(), true));
    assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
}

#[test]
fn held_text_is_released() {
    let mut f = StopFilter::new(vec!["abc".into()]);
    assert_eq!(f.push("xab"), ("x".into(), false));
    assert_eq!(f.push("d"), ("abd".into(), false));
    assert_eq!(f.push("a"), ("".into(), false));
    assert_eq!(f.finish(), "a");
}

#[test]
fn earliest_of_several_stops() {
    assert_eq!(run(&["world", "lo w"], &["hel", "lo world"]), ("hel".into(), true));
    assert_eq!(run(&["b", "abc"], &["xa", "bc"]), ("x".into(), true));
    // "c" completes first; "abcd" might still have come.
    assert_eq!(run(&["c", "abcd"], &["xab", "c"]), ("xab".into(), true));
}

#[test]
fn multibyte_stops() {
    assert_eq!(run(&["été"], &["un é", "t", "é chaud"]), ("un ".into(), true));
    assert_eq!(run(&["😀!"], &["a😀", "b"]), ("a😀b".into(), false));
    let mut f = StopFilter::new(vec!["é!".into()]);
    assert_eq!(f.push("xé"), ("x".into(), false));
    assert_eq!(f.push("é"), ("é".into(), false));
    assert_eq!(f.push("!"), ("".into(), true));
    assert_eq!(f.push("more"), ("".into(), true));
    assert_eq!(f.finish(), "");
}
