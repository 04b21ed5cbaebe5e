//! Conversions between the engine's types and the wire messages.

use quiver_engine::{ChatMessage, Input, SamplingParams};
use quiver_proto as pb;

pub(crate) fn input_to_wire(input: &Input) -> pb::PromptInput {
    match input {
        Input::Prompt(p) => pb::PromptInput { prompt: p.clone(), messages: Vec::new() },
        Input::Chat(msgs) => pb::PromptInput {
            prompt: String::new(),
            messages: msgs
                .iter()
                .map(|m| pb::ChatMessage { role: m.role.clone(), content: m.content.clone() })
                .collect(),
        },
    }
}

/// Only call on a validated `PromptInput` (exactly one of prompt or messages).
pub(crate) fn input_from_wire(input: pb::PromptInput) -> Input {
    if input.messages.is_empty() {
        Input::Prompt(input.prompt)
    } else {
        Input::Chat(input.messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect())
    }
}

pub(crate) fn params_to_wire(p: &SamplingParams) -> pb::SamplingParams {
    pb::SamplingParams {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        seed: p.seed,
        stop: p.stop.clone(),
    }
}

pub(crate) fn params_from_wire(p: pb::SamplingParams) -> SamplingParams {
    SamplingParams { max_tokens: p.max_tokens, temperature: p.temperature, top_p: p.top_p, seed: p.seed, stop: p.stop }
}

/// DHT provider key of a model by name.
pub fn model_name_key(name: &str) -> Vec<u8> {
    [quiver_net::MODEL_KEY_PREFIX, b"name/", name.as_bytes()].concat()
}

/// DHT provider key of a model by the sha256 of its file.
pub fn model_sha_key(sha256: &[u8; 32]) -> Vec<u8> {
    [quiver_net::MODEL_KEY_PREFIX, b"sha256/", quiver_engine::models::hex(sha256).as_bytes()].concat()
}

#[cfg(test)]
#[path = "tests/wire.rs"]
mod tests;
