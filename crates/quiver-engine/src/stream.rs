//! Turning a stream of token bytes into text: UTF-8 assembly across token boundaries and stop
//! strings that may be split across tokens.

/// Assembles UTF-8 text from raw token bytes. A multi-byte character may be split across
/// tokens: the incomplete tail of one push is kept for the next. Invalid bytes become U+FFFD.
#[derive(Debug, Default, Clone)]
pub struct Utf8Assembler {
    /// An incomplete trailing sequence (at most 3 bytes).
    pending: Vec<u8>,
}

impl Utf8Assembler {
    /// An assembler with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns all text that is complete now.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.pending);
        let mut out = String::with_capacity(buf.len());
        let mut rest = &buf[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8, so this borrows without replacing anything.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // Input ended inside a character: keep it for the next push.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Returns what is left: an incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let pending = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&pending).into_owned()
    }
}

/// Cuts generated text at the first occurrence of any stop string. Text that could be the start
/// of a stop string is held back until it is known not to be one.
#[derive(Debug, Default, Clone)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopFilter {
    /// A filter for `stop` (empty strings are ignored).
    pub fn new(stop: Vec<String>) -> Self {
        let stops = stop.into_iter().filter(|s| !s.is_empty()).collect();
        StopFilter { stops, held: String::new(), stopped: false }
    }

    /// Adds `text`; returns the text safe to emit now and whether a stop string was met (then
    /// the returned text is everything before it, and later pushes return nothing).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        let keep = self.stops.iter().map(|s| partial_suffix(&self.held, s)).max().unwrap_or(0);
        let tail = self.held.split_off(self.held.len() - keep);
        (std::mem::replace(&mut self.held, tail), false)
    }

    /// Returns the held-back text (nothing once a stop string was met).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len()).rev().find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
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
}
