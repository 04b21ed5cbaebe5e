//! Answers with tool calls: the model's text read into OpenAI's `tool_calls`, whole or streamed.
//!
//! Providers return text; the calls in it are read here, where the request's tools are known
//! ([`quiver_node::engine::chat::tools::parse`] knows the formats). Streamed, text that may still
//! become a call is held back (the start of an answer that opens like a call, or a `<tool_call>`
//! block) and sent as `delta.tool_calls` once the answer ends: per call, one delta with its
//! index, id and name, then its arguments in fragments, as OpenAI streams them.

use quiver_node::engine::chat::tools::{self, ParsedCall};
use quiver_node::engine::{FinishReason, Tools};
use serde_json::{Value, json};

/// Tag that opens a tool call in the middle of an answer.
const OPEN_TAG: &str = "<tool_call>";
/// Bytes of arguments per streamed fragment.
const ARGUMENT_FRAGMENT: usize = 32;

/// A fresh tool call id, as OpenAI's look (`call_` and 24 characters).
pub(crate) fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// The assistant message of a whole chat answer and its finish reason.
pub(super) fn message(text: &str, tools: &Tools, finish: FinishReason) -> (Value, Value) {
    let parsed = tools::parse(text, tools);
    if parsed.calls.is_empty() {
        return (json!({ "role": "assistant", "content": text }), json!(finish));
    }
    let calls: Vec<Value> = parsed
        .calls
        .iter()
        .map(|c| json!({ "id": call_id(), "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
        .collect();
    let content = if parsed.content.is_empty() { Value::Null } else { Value::String(parsed.content) };
    (json!({ "role": "assistant", "content": content, "tool_calls": calls }), json!(FinishReason::ToolCalls))
}

/// The deltas that stream `calls`: per call its header, then its arguments in fragments.
pub(super) fn call_deltas(calls: &[ParsedCall]) -> Vec<Value> {
    let mut deltas = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        deltas.push(json!({ "tool_calls": [{ "index": index, "id": call_id(), "type": "function",
                                             "function": { "name": call.name, "arguments": "" } }] }));
        for fragment in fragments(&call.arguments, ARGUMENT_FRAGMENT) {
            deltas.push(json!({ "tool_calls": [{ "index": index, "function": { "arguments": fragment } }] }));
        }
    }
    deltas
}

/// `s` cut into pieces of about `size` bytes, at character boundaries.
fn fragments(s: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// Splits a streamed answer into content to send now and text held until the end.
pub(crate) struct Splitter {
    tools: Tools,
    held: String,
    /// Content was sent: the answer is not one call from its start.
    sent: bool,
    /// A `<tool_call>` block opened: everything from there on is held.
    in_call: bool,
}

impl Splitter {
    pub(crate) fn new(tools: Tools) -> Self {
        Splitter { tools, held: String::new(), sent: false, in_call: false }
    }

    /// Takes newly generated text; returns the content that can be sent now.
    pub(crate) fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.in_call || (!self.sent && tools::may_become_call(&self.held)) {
            return String::new();
        }
        if let Some(pos) = self.held.find(OPEN_TAG) {
            self.in_call = true;
            return self.send(pos);
        }
        // Hold back an end that may be the start of the tag.
        let keep = (1..OPEN_TAG.len())
            .rev()
            .find(|&n| {
                self.held.len() >= n
                    && self.held.is_char_boundary(self.held.len() - n)
                    && OPEN_TAG.starts_with(&self.held[self.held.len() - n..])
            })
            .unwrap_or(0);
        self.send(self.held.len() - keep)
    }

    fn send(&mut self, upto: usize) -> String {
        let out: String = self.held.drain(..upto).collect();
        self.sent |= !out.is_empty();
        out
    }

    /// The answer is over: the content still held and the calls it made.
    pub(crate) fn finish(self) -> (String, Vec<ParsedCall>) {
        let parsed = tools::parse(&self.held, &self.tools);
        if parsed.calls.is_empty() { (self.held, Vec::new()) } else { (parsed.content, parsed.calls) }
    }
}
