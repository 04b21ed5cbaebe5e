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

/// Cuts `s` to at most `max` bytes at a character boundary; whether anything was cut.
pub(crate) fn truncate_at_char(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
#[path = "tests/stream.rs"]
mod tests;
