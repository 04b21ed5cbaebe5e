//! Ollama's request bodies (`/api/chat`, `/api/generate`) read into what the network serves.
//!
//! Ollama's defaults are kept where they differ from OpenAI's: `stream` is on unless a request
//! turns it off, sampling is `temperature` 0.8, `top_k` 40, `top_p` 0.9, and `num_predict` -1
//! ("until the model stops") becomes [`UNBOUNDED_PREDICT`] tokens (the provider clamps it to the
//! room left in its context).

use quiver_node::InferenceRequest;
use quiver_node::engine::chat::grammar;
use quiver_node::engine::chat::tools::ToolFormat;
use quiver_node::engine::{ChatMessage, Input, ResponseFormat, SamplingParams, Tool, ToolCall, ToolChoice, Tools};
use serde::Deserialize;
use serde_json::Value;

use crate::openai::ApiError;

/// Tokens asked for when a request sets no bound (`num_predict` absent or negative).
pub const UNBOUNDED_PREDICT: u32 = 2048;

/// Ollama's `options` that QUIVer honours; others (`num_ctx`, `repeat_penalty`, ...) are ignored
/// as Ollama ignores options a runner does not know.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    num_predict: Option<i64>,
    seed: Option<i64>,
    stop: Option<Vec<String>>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

/// A message as Ollama's clients send it: tool calls carry their arguments as an object and
/// have no ids; a tool's result may name its tool.
#[derive(Debug, Deserialize)]
struct OllamaMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    tool_calls: Option<Vec<OllamaToolCall>>,
}

#[derive(Debug, Deserialize)]
struct OllamaToolCall {
    function: OllamaFunctionCall,
}

#[derive(Debug, Deserialize)]
struct OllamaFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    pub(super) model: String,
    #[serde(default)]
    messages: Vec<OllamaMessage>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub(super) struct GenerateRequest {
    pub(super) model: String,
    #[serde(default)]
    pub(super) prompt: String,
    #[serde(default)]
    system: Option<String>,
    /// The prompt is given to the model as is, without its chat template.
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
}

/// A model name as Ollama's clients write it (`NAME[:TAG]`) as the network names it: the
/// default tag `latest` is dropped.
pub(crate) fn network_name(model: &str) -> &str {
    model.strip_suffix(":latest").unwrap_or(model)
}

impl ChatRequest {
    pub(super) fn to_inference(&self) -> Result<InferenceRequest, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("`messages` must not be empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if m.images.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(ApiError::bad_request("images are not supported: the models served are text only"));
            }
            if !["system", "user", "assistant", "tool"].contains(&m.role.as_str()) {
                return Err(ApiError::bad_request(format!("messages[{i}]: unknown role `{}`", m.role)));
            }
            let tool_calls = m
                .tool_calls
                .iter()
                .flatten()
                .enumerate()
                .map(|(n, c)| ToolCall {
                    id: format!("call_{i}_{n}"),
                    name: c.function.name.clone(),
                    arguments: match &c.function.arguments {
                        Value::String(s) => s.clone(),
                        Value::Null => "{}".to_owned(),
                        other => other.to_string(),
                    },
                })
                .collect();
            messages.push(ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
                tool_calls,
                tool_call_id: None,
            });
        }
        let tools = tools(self.tools.as_deref().unwrap_or_default())?;
        inference(&self.model, Input::Chat(messages), tools, self.format.as_ref(), self.options.as_ref())
    }
}

impl GenerateRequest {
    pub(super) fn to_inference(&self) -> Result<InferenceRequest, ApiError> {
        if self.images.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request("images are not supported: the models served are text only"));
        }
        let input = if self.raw {
            Input::Prompt(self.prompt.clone())
        } else {
            let mut messages = Vec::with_capacity(2);
            if let Some(system) = self.system.as_ref().filter(|s| !s.is_empty()) {
                messages.push(ChatMessage::new("system", system.as_str()));
            }
            messages.push(ChatMessage::new("user", self.prompt.as_str()));
            Input::Chat(messages)
        };
        inference(&self.model, input, Tools::default(), self.format.as_ref(), self.options.as_ref())
    }
}

/// Ollama's tools have OpenAI's shape.
fn tools(list: &[Value]) -> Result<Tools, ApiError> {
    let mut tools = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let function = tool.get("function").filter(|_| tool.get("type").is_none_or(|t| t == "function"));
        let Some(function) = function else {
            return Err(ApiError::bad_request(format!("tools[{i}]: only function tools are supported")));
        };
        let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(p @ Value::Object(_)) => p.to_string(),
            Some(_) => return Err(ApiError::bad_request(format!("tools[{i}]: `parameters` must be an object"))),
        };
        let description = function.get("description").and_then(Value::as_str).unwrap_or_default();
        tools.push(Tool { name: name.to_owned(), description: description.to_owned(), parameters });
    }
    Ok(Tools { list: tools, choice: ToolChoice::Auto, parallel: true })
}

/// `format`: `"json"` for any JSON object, a schema object, or nothing.
fn response_format(format: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    match format {
        None | Some(Value::Null) => Ok(ResponseFormat::Text),
        Some(Value::String(s)) if s.is_empty() => Ok(ResponseFormat::Text),
        Some(Value::String(s)) if s == "json" => Ok(ResponseFormat::JsonObject),
        Some(schema @ Value::Object(_)) => Ok(ResponseFormat::JsonSchema(schema.to_string())),
        Some(_) => Err(ApiError::bad_request("`format` must be \"json\" or a JSON schema object")),
    }
}

fn inference(
    model: &str,
    input: Input,
    tools: Tools,
    format: Option<&Value>,
    options: Option<&Options>,
) -> Result<InferenceRequest, ApiError> {
    let none = Options::default();
    let o = options.unwrap_or(&none);
    let temperature = o.temperature.unwrap_or(0.8);
    let max_tokens = match o.num_predict {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX).min(quiver_node::proto::infer::MAX_TOKENS_LIMIT),
        _ => UNBOUNDED_PREDICT,
    };
    let seed = match o.seed {
        // Ollama's -1 and absent both mean "a random seed"; a fixed one lets a failover repeat it.
        Some(s) if s >= 0 => s as u64,
        _ if temperature > 0.0 => rand::random(),
        _ => 0,
    };
    let params = SamplingParams {
        max_tokens,
        temperature,
        top_p: o.top_p.unwrap_or(0.9),
        top_k: o.top_k.unwrap_or(40),
        seed,
        stop: o.stop.clone().unwrap_or_default(),
        response_format: response_format(format)?,
        presence_penalty: o.presence_penalty.unwrap_or(0.0),
        frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
        logit_bias: Vec::new(),
        logprobs: None,
    };
    params.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    tools.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    grammar::constraint(&params, &tools, ToolFormat::Generic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(InferenceRequest { input, params, tools, ..InferenceRequest::chat(network_name(model), "", 1) })
}
