//! Conversions between the engine's types and the wire messages.

use quiver_engine::{ChatMessage, Input, ResponseFormat, SamplingParams, Tool, ToolCall, ToolChoice, Tools};
use quiver_proto as pb;

pub(crate) fn input_to_wire(input: &Input, tools: &Tools) -> pb::PromptInput {
    let mut wire = match input {
        Input::Prompt(p) => pb::PromptInput { prompt: p.clone(), ..Default::default() },
        Input::Chat(msgs) => pb::PromptInput {
            messages: msgs
                .iter()
                .map(|m| pb::ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                    tool_calls: m
                        .tool_calls
                        .iter()
                        .map(|c| pb::ToolCall {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        })
                        .collect(),
                    tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        },
    };
    if !tools.list.is_empty() {
        wire.tools = tools
            .list
            .iter()
            .map(|t| pb::ToolDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect();
        wire.tool_choice = tools.choice.to_wire();
        wire.parallel_tool_calls = tools.parallel;
    }
    wire
}

/// Only call on a validated `PromptInput` (exactly one of prompt or messages, a known tool choice).
pub(crate) fn input_from_wire(input: pb::PromptInput) -> (Input, Tools) {
    let tools = Tools {
        list: input
            .tools
            .into_iter()
            .map(|t| Tool { name: t.name, description: t.description, parameters: t.parameters })
            .collect(),
        choice: ToolChoice::from_wire(&input.tool_choice).unwrap_or_default(),
        parallel: input.parallel_tool_calls,
    };
    let input = if input.messages.is_empty() {
        Input::Prompt(input.prompt)
    } else {
        Input::Chat(
            input
                .messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                    tool_calls: m
                        .tool_calls
                        .into_iter()
                        .map(|c| ToolCall { id: c.id, name: c.name, arguments: c.arguments })
                        .collect(),
                    tool_call_id: (!m.tool_call_id.is_empty()).then_some(m.tool_call_id),
                })
                .collect(),
        )
    };
    (input, tools)
}

pub(crate) fn params_to_wire(p: &SamplingParams) -> pb::SamplingParams {
    let (response_format, json_schema) = match &p.response_format {
        ResponseFormat::Text => (String::new(), String::new()),
        ResponseFormat::JsonObject => ("json_object".to_owned(), String::new()),
        ResponseFormat::JsonSchema(schema) => ("json_schema".to_owned(), schema.clone()),
    };
    pb::SamplingParams {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        seed: p.seed,
        stop: p.stop.clone(),
        response_format,
        json_schema,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        logit_bias: p.logit_bias.iter().map(|&(token, bias)| pb::LogitBias { token, bias }).collect(),
        logprobs: p.logprobs.is_some(),
        top_logprobs: p.logprobs.unwrap_or(0),
    }
}

/// Only call on validated `SamplingParams`.
pub(crate) fn params_from_wire(p: pb::SamplingParams) -> SamplingParams {
    let response_format = match p.response_format.as_str() {
        "json_object" => ResponseFormat::JsonObject,
        "json_schema" => ResponseFormat::JsonSchema(p.json_schema),
        _ => ResponseFormat::Text,
    };
    SamplingParams {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        seed: p.seed,
        stop: p.stop,
        response_format,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        logit_bias: p.logit_bias.into_iter().map(|b| (b.token, b.bias)).collect(),
        logprobs: p.logprobs.then_some(p.top_logprobs),
    }
}

pub(crate) fn logprob_to_wire(lp: quiver_engine::TokenLogprob) -> pb::TokenLogprob {
    pb::TokenLogprob {
        token: lp.token,
        logprob: lp.logprob,
        top: lp.top.into_iter().map(|(token, logprob)| pb::TopLogprob { token, logprob }).collect(),
    }
}

pub(crate) fn logprob_from_wire(lp: pb::TokenLogprob) -> quiver_engine::TokenLogprob {
    quiver_engine::TokenLogprob {
        token: lp.token,
        logprob: lp.logprob,
        top: lp.top.into_iter().map(|t| (t.token, t.logprob)).collect(),
    }
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
