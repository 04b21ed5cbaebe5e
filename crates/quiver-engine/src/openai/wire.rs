//! What OpenAI-compatible servers send: error bodies, server-sent-event lines, answers (whole
//! and streamed, with tool calls, usage and log probabilities) and embeddings, read within bounds.

use serde::Deserialize;
use serde_json::Value;

use super::{MAX_LINE, MAX_MESSAGE, calls_text};
use crate::{EngineError, FinishReason, TokenLogprob, Usage};

/// The message of an error answer: OpenAI's `{"error": {"message": ...}}`, or the forms other
/// servers use, or the start of the body.
pub(super) fn error_message(body: &[u8], status: reqwest::StatusCode) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        [v.pointer("/error/message"), v.get("error"), v.get("message"), v.get("detail")]
            .into_iter()
            .flatten()
            .find_map(|m| m.as_str().map(str::to_string))
    });
    let message = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let message =
        if message.is_empty() { status.canonical_reason().unwrap_or("no message").to_string() } else { message };
    truncate(message, MAX_MESSAGE)
}

fn truncate(mut s: String, max: usize) -> String {
    if crate::stream::truncate_at_char(&mut s, max) {
        s.push('…');
    }
    s
}

/// Splits a byte stream into lines (LF or CRLF), each at most [`MAX_LINE`] bytes.
#[derive(Default)]
pub(super) struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    pub(super) fn push(&mut self, data: &[u8]) -> Result<Vec<String>, EngineError> {
        self.buf.extend_from_slice(data);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(n) = self.buf[start..].iter().position(|&b| b == b'\n') {
            lines.push(line_text(&self.buf[start..start + n])?);
            start += n + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(EngineError::BackendProtocol(format!("a stream line is longer than {MAX_LINE} bytes")));
        }
        Ok(lines)
    }

    /// The unterminated last line.
    pub(super) fn finish(&mut self) -> Result<String, EngineError> {
        line_text(&std::mem::take(&mut self.buf))
    }
}

fn line_text(line: &[u8]) -> Result<String, EngineError> {
    if line.len() > MAX_LINE {
        return Err(EngineError::BackendProtocol(format!("a stream line is longer than {MAX_LINE} bytes")));
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8(line.to_vec()).map_err(|_| EngineError::BackendProtocol("a stream line is not UTF-8".into()))
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
}

impl WireUsage {
    /// Whether the server itemised its hidden reasoning tokens (OpenAI's
    /// `completion_tokens_details.reasoning_tokens`), which `Usage::from` then leaves out.
    fn itemises_reasoning(&self) -> bool {
        self.completion_tokens_details.as_ref().is_some_and(|d| d.reasoning_tokens.is_some())
    }
}

#[derive(Deserialize)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let prompt_tokens = clamp(u.prompt_tokens);
        let cached = u.prompt_tokens_details.map_or(0, |d| clamp(d.cached_tokens));
        let reasoning = u.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0);
        Usage {
            prompt_tokens,
            // Only the tokens whose text reaches the caller: hidden reasoning is not delivered.
            completion_tokens: clamp(u.completion_tokens.saturating_sub(reasoning)),
            // A server's word, kept within what it says the prompt had.
            cached_tokens: cached.min(prompt_tokens),
        }
    }
}

#[derive(Deserialize)]
struct WireText {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    /// Reasoning text some servers send beside the answer (vLLM's and DeepSeek's
    /// `reasoning_content`, Ollama's and newer vLLM's `reasoning`): not delivered, but its tokens
    /// may be in `usage.completion_tokens`.
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

impl WireText {
    fn has_reasoning(&self) -> bool {
        [&self.reasoning_content, &self.reasoning].into_iter().flatten().any(|r| !r.is_empty())
    }
}

/// The completion tokens to report for `bytes` bytes of delivered text, `floor` tokens of it
/// already reported: the server's count of delivered tokens when it gave one it could mean (it
/// may count hidden reasoning it did not itemise: then it cannot), kept within the floor and
/// one token per byte, which is what a client checking the count allows.
fn delivered_tokens(reported: Option<u32>, floor: u32, bytes: usize) -> u32 {
    let ceiling = u32::try_from(bytes).unwrap_or(u32::MAX).max(floor);
    reported.unwrap_or(floor).clamp(floor, ceiling)
}

/// A tool call, whole or (streamed) a fragment of one: `index` says which.
#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: usize,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireEmbeddings {
    pub(super) data: Vec<WireEmbedding>,
    pub(super) usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct WireEmbedding {
    #[serde(default)]
    pub(super) index: usize,
    pub(super) embedding: Vec<f32>,
}

/// Most values accepted in one embedding from a server.
pub(super) const MAX_EMBEDDING_DIMS: usize = 16_000;

/// Most tool calls taken from one answer.
const MAX_CALLS: usize = 64;

#[derive(Deserialize)]
struct WireChoice {
    /// Streamed chat.
    delta: Option<WireText>,
    /// Whole chat answer.
    message: Option<WireText>,
    /// Completions.
    text: Option<String>,
    finish_reason: Option<String>,
    /// Chat: `{content: [{token, logprob, bytes, top_logprobs}]}`; completions: `{tokens,
    /// token_logprobs, top_logprobs}`.
    #[serde(default)]
    logprobs: Option<Value>,
}

/// Most log probabilities taken from one answer.
const MAX_LOGPROBS: usize = 16_384;
/// Most alternatives taken per token.
const MAX_TOP: usize = 20;

/// The log probabilities of a choice, in either of OpenAI's shapes, bounded.
fn logprobs(v: Option<&Value>) -> Vec<TokenLogprob> {
    let Some(v) = v else { return Vec::new() };
    let text_of = |t: &Value| -> Vec<u8> {
        match t.get("bytes").and_then(Value::as_array) {
            Some(bytes) => bytes.iter().filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect(),
            None => t.get("token").and_then(Value::as_str).unwrap_or_default().as_bytes().to_vec(),
        }
    };
    let number = |v: Option<&Value>| v.and_then(Value::as_f64).map_or(f32::NEG_INFINITY, |x| x as f32);
    if let Some(content) = v.get("content").and_then(Value::as_array) {
        return content
            .iter()
            .take(MAX_LOGPROBS)
            .map(|t| TokenLogprob {
                token: text_of(t),
                logprob: number(t.get("logprob")),
                top: t
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .map(|top| top.iter().take(MAX_TOP).map(|a| (text_of(a), number(a.get("logprob")))).collect())
                    .unwrap_or_default(),
            })
            .collect();
    }
    let tokens = v.get("tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let values = v.get("token_logprobs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let tops = v.get("top_logprobs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    tokens
        .iter()
        .take(MAX_LOGPROBS)
        .enumerate()
        .map(|(i, t)| TokenLogprob {
            token: t.as_str().unwrap_or_default().as_bytes().to_vec(),
            logprob: number(values.get(i)),
            top: tops
                .get(i)
                .and_then(Value::as_object)
                .map(|m| m.iter().take(MAX_TOP).map(|(k, lp)| (k.as_bytes().to_vec(), number(Some(lp)))).collect())
                .unwrap_or_default(),
        })
        .collect()
}

#[derive(Deserialize)]
struct WireAnswer {
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

fn finish_reason(reason: &str) -> FinishReason {
    if reason == "length" { FinishReason::Length } else { FinishReason::Stop }
}

fn parse_answer(json: &str) -> Result<WireAnswer, EngineError> {
    let answer: WireAnswer = serde_json::from_str(json)
        .map_err(|e| EngineError::BackendProtocol(format!("bad JSON ({e}): {}", truncate(json.into(), 200))))?;
    if let Some(error) = &answer.error {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .or(error.as_str())
            .map_or_else(|| error.to_string(), str::to_string);
        return Err(EngineError::Inference(format!("the backend reported: {}", truncate(message, MAX_MESSAGE))));
    }
    Ok(answer)
}

/// Text, finish reason, usage and log probabilities of a whole answer.
pub(super) fn parse_whole(
    body: &[u8],
    chat: bool,
) -> Result<(String, FinishReason, Usage, Vec<TokenLogprob>), EngineError> {
    let body = std::str::from_utf8(body).map_err(|_| EngineError::BackendProtocol("the answer is not UTF-8".into()))?;
    let answer = parse_answer(body)?;
    let choice = answer
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::BackendProtocol("the answer has no choices".into()))?;
    let logprobs = logprobs(choice.logprobs.as_ref());
    let text = if chat {
        choice.message.map(|m| {
            let mut calls = Vec::new();
            for call in m.tool_calls.into_iter().take(MAX_CALLS) {
                let f = call.function.unwrap_or(WireFunction { name: None, arguments: None });
                calls.push((f.name.unwrap_or_default(), f.arguments.unwrap_or_default()));
            }
            let content = m.content.unwrap_or_default();
            if calls.is_empty() { content } else { format!("{content}{}", calls_text(&calls)) }
        })
    } else {
        choice.text
    };
    let reason = choice.finish_reason.as_deref().map_or(FinishReason::Stop, finish_reason);
    let text = text.unwrap_or_default();
    let counted = answer.usage.is_some();
    let mut usage =
        answer.usage.map_or(Usage { prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0 }, Usage::from);
    // A count that may hold hidden reasoning it did not itemise is all there is: the cap at
    // a token per byte bounds it.
    let reported = counted.then_some(usage.completion_tokens);
    usage.completion_tokens = delivered_tokens(reported, u32::from(!text.is_empty()), text.len());
    Ok((text, reason, usage, logprobs))
}

/// What a stream has said so far.
pub(super) struct StreamState {
    chat: bool,
    pub(super) done: bool,
    /// Pieces of text sent on, each reported as one token (servers stream one token a piece).
    pub(super) chunks: u32,
    /// Bytes of text sent on, tool calls included.
    bytes: usize,
    /// Reasoning text came, and the usage (so far) does not itemise its tokens.
    reasoning: bool,
    itemised: bool,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// Streamed tool calls: name and arguments, by index.
    calls: Vec<(String, String)>,
    /// Log probabilities of the last line's text, to be sent before it.
    pub(super) logprobs: Vec<TokenLogprob>,
}

impl StreamState {
    pub(super) fn new(chat: bool) -> Self {
        StreamState {
            chat,
            done: false,
            chunks: 0,
            bytes: 0,
            reasoning: false,
            itemised: false,
            finish: None,
            usage: None,
            calls: Vec::new(),
            logprobs: Vec::new(),
        }
    }

    /// Adds fragments of streamed tool calls.
    fn tool_calls(&mut self, fragments: Vec<WireToolCall>) -> Result<(), EngineError> {
        for f in fragments {
            if f.index >= MAX_CALLS {
                return Err(EngineError::BackendProtocol(format!("a tool call index of {}", f.index)));
            }
            if self.calls.len() <= f.index {
                self.calls.resize(f.index + 1, (String::new(), String::new()));
            }
            if let Some(function) = f.function {
                let (name, arguments) = &mut self.calls[f.index];
                name.push_str(&function.name.unwrap_or_default());
                arguments.push_str(&function.arguments.unwrap_or_default());
            }
        }
        Ok(())
    }

    /// The streamed tool calls as text, once (at the end of the stream).
    pub(super) fn calls_text(&mut self) -> Option<String> {
        if self.calls.is_empty() {
            return None;
        }
        let text = calls_text(&std::mem::take(&mut self.calls));
        self.bytes += text.len();
        Some(text)
    }

    /// Handles one line; returns new text, if any.
    pub(super) fn line(&mut self, line: &str) -> Result<Option<String>, EngineError> {
        // Blank lines end events, `:` starts comments; other fields (event, id, retry) carry
        // nothing for us. Every OpenAI-compatible server sends one JSON object per data line.
        let Some(data) = line.strip_prefix("data:") else { return Ok(None) };
        let data = data.strip_prefix(' ').unwrap_or(data);
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let answer = parse_answer(data)?;
        if let Some(usage) = answer.usage {
            self.itemised = usage.itemises_reasoning();
            self.usage = Some(usage.into());
        }
        let Some(choice) = answer.choices.into_iter().next() else { return Ok(None) };
        self.reasoning |= choice.delta.as_ref().is_some_and(WireText::has_reasoning);
        if let Some(reason) = choice.finish_reason.as_deref() {
            self.finish = Some(finish_reason(reason));
        }
        self.logprobs = logprobs(choice.logprobs.as_ref());
        let text = if self.chat {
            choice.delta.and_then(|d| self.tool_calls(d.tool_calls).map(|()| d.content).transpose())
        } else {
            choice.text.map(Ok)
        }
        .transpose()?;
        match text {
            Some(text) if !text.is_empty() => {
                self.chunks += 1;
                self.bytes += text.len();
                Ok(Some(text))
            }
            _ => Ok(None),
        }
    }

    /// The finish reason and usage once the stream is over, and how many tokens beyond the one
    /// per piece already reported the usage counts (to be reported before the end, so that the
    /// pieces' tokens add up to the usage).
    pub(super) fn end(self) -> Result<(FinishReason, Usage, u32), EngineError> {
        if !self.done && self.finish.is_none() {
            return Err(EngineError::BackendProtocol("the stream ended before [DONE]".into()));
        }
        let mut usage = self.usage.unwrap_or(Usage { prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0 });
        let reported = (self.usage.is_some() && (!self.reasoning || self.itemised)).then_some(usage.completion_tokens);
        usage.completion_tokens = delivered_tokens(reported, self.chunks, self.bytes);
        Ok((self.finish.unwrap_or(FinishReason::Stop), usage, usage.completion_tokens - self.chunks))
    }
}
