//! A completion request as OpenAI clients send it, read into what the network serves: messages
//! (with tool calls and tool results), tools and `tool_choice`, `response_format`, sampling
//! fields. What cannot be served is a 400 in OpenAI's shape, never a silent change; fields QUIVer
//! does not use are ignored, as OpenAI ignores them.

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use quiver_node::InferenceRequest;
use quiver_node::engine::chat::grammar;
use quiver_node::engine::chat::tools::ToolFormat;
use quiver_node::engine::{ChatMessage, Input, ResponseFormat, SamplingParams, Tool, ToolCall, ToolChoice, Tools};
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;

/// `max_tokens` when a request does not say.
const DEFAULT_MAX_TOKENS: u32 = 256;
/// Most choices (`n`) one request may ask for.
pub(super) const MAX_CHOICES: u32 = 8;

/// The body as JSON, or an OpenAI-shaped 400 (unparsable); its size limit (413) and deadline
/// (408) are [`read_body_in_time`](super::limits::read_body_in_time)'s.
/// Any content type is taken, so `curl -d '{...}'` works without a header.
pub(super) fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<CompletionRequest, ApiError> {
    // Its size and arrival time were checked as it was read (`read_body_in_time`).
    let bytes = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `stop` may be a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

/// A chat message as OpenAI clients send it. `content` is a string, a list of content parts
/// (frameworks and newer SDKs send `[{"type": "text", "text": ...}]`; only text parts can be
/// served, and they are joined by newlines), or absent/null (an assistant turn that only called
/// tools). `developer` is OpenAI's newer name for the system role.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ApiMessage {
    role: String,
    #[serde(default)]
    content: Option<MessageContent>,
    #[serde(default)]
    tool_calls: Option<Vec<ApiToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// A call in an assistant message of the history.
#[derive(Debug, Clone, Deserialize)]
struct ApiToolCall {
    id: String,
    function: ApiFunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
struct ApiFunctionCall {
    name: String,
    /// JSON text (OpenAI's shape); an object is taken too.
    #[serde(default)]
    arguments: Value,
}

/// A tool of the request: `{"type": "function", "function": {...}}`.
#[derive(Debug, Deserialize)]
struct ApiTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<ApiFunction>,
}

#[derive(Debug, Deserialize)]
struct ApiFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

/// Roles a chat template is given (after `developer` became `system`).
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl ApiMessage {
    pub(super) fn into_chat(self) -> Result<ChatMessage, ApiError> {
        let role = if self.role == "developer" { "system".to_owned() } else { self.role };
        if !ROLES.contains(&role.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown message role `{role}`: expected system, developer, user, assistant or tool"
            )));
        }
        let content = match self.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text,
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => texts.push(text),
                        ("text", None) => return Err(ApiError::bad_request("a text content part has no `text`")),
                        (other, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content parts of type `{other}` are not supported: the models served are text only"
                            )));
                        }
                    }
                }
                texts.join("\n")
            }
        };
        let mut tool_calls = Vec::new();
        for call in self.tool_calls.unwrap_or_default() {
            if role != "assistant" {
                return Err(ApiError::bad_request("only assistant messages have `tool_calls`"));
            }
            let arguments = match call.function.arguments {
                Value::String(s) => s,
                Value::Null => "{}".to_owned(),
                other => other.to_string(),
            };
            tool_calls.push(ToolCall { id: call.id, name: call.function.name, arguments });
        }
        let tool_call_id = match (role.as_str(), self.tool_call_id) {
            ("tool", Some(id)) => Some(id),
            ("tool", None) => return Err(ApiError::bad_request("a `tool` message needs its `tool_call_id`")),
            (_, _) => None,
        };
        Ok(ChatMessage { role, content, tool_calls, tool_call_id })
    }
}

/// Every `tool` message answers a call an earlier assistant message made.
pub(super) fn check_tool_results(messages: &[ChatMessage]) -> Result<(), ApiError> {
    let mut calls: HashSet<&str> = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        calls.extend(m.tool_calls.iter().map(|c| c.id.as_str()));
        if let Some(id) = &m.tool_call_id
            && !calls.contains(id.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "messages[{i}]: the tool message answers `{id}`, but no earlier assistant message made a call with \
                 that id"
            )));
        }
    }
    Ok(())
}

/// The fields of both request kinds that QUIVer honours; others are ignored as OpenAI does for
/// fields a model does not support.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub(super) model: String,
    #[serde(default)]
    pub(super) messages: Option<Vec<ApiMessage>>,
    #[serde(default)]
    pub(super) prompt: Option<Value>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// llama.cpp's server and vLLM take it beside OpenAI's fields.
    top_k: Option<u32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    pub(super) stream: bool,
    pub(super) stream_options: Option<StreamOptions>,
    pub(super) n: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<BTreeMap<String, f32>>,
    logprobs: Option<Value>,
    top_logprobs: Option<u32>,
    tools: Option<Vec<ApiTool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
}

impl CompletionRequest {
    /// Choices asked for (`n`, default 1).
    pub(super) fn choices(&self) -> Result<u32, ApiError> {
        match self.n.unwrap_or(1) {
            0 => Err(ApiError::bad_request("`n` must be at least 1")),
            n if n > MAX_CHOICES => Err(ApiError::bad_request(format!("`n` is at most {MAX_CHOICES}"))),
            n if n > 1 && self.stream => {
                Err(ApiError::bad_request("`n` above 1 is served without streaming only; set `stream` to false"))
            }
            n => Ok(n),
        }
    }

    pub(super) fn to_inference(&self, input: Input) -> Result<InferenceRequest, ApiError> {
        self.choices()?;
        // Chat takes a flag and `top_logprobs`; completions a number of alternatives.
        let logprobs = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(self.top_logprobs.unwrap_or(0)),
            Some(Value::Number(n)) => {
                let n = n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    ApiError::bad_request("`logprobs` must be true/false (chat) or a count (completions)")
                })?;
                Some(n)
            }
            Some(_) => return Err(ApiError::bad_request("`logprobs` must be true/false or a count")),
        };
        if logprobs.is_none() && self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(ApiError::bad_request("`top_logprobs` needs `logprobs: true`"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let mut logit_bias = Vec::new();
        for (token, bias) in self.logit_bias.iter().flatten() {
            let token: u32 =
                token.parse().map_err(|_| ApiError::bad_request(format!("logit_bias: `{token}` is not a token id")))?;
            logit_bias.push((token, *bias));
        }
        let params = SamplingParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
            temperature,
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            // A fixed seed lets a failover reproduce the same tokens.
            seed: self.seed.unwrap_or_else(|| if temperature > 0.0 { rand::random() } else { 0 }),
            stop,
            response_format: self.response_format()?,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            logprobs,
        };
        params.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let tools = self.tools(&input)?;
        // The grammar a provider will build, built here first: a schema llama.cpp cannot convert
        // is the caller's 400, not a failure charged to a provider.
        grammar::constraint(&params, &tools, ToolFormat::Generic).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(InferenceRequest { input, params, tools, ..InferenceRequest::chat(&self.model, "", 1) })
    }

    fn response_format(&self) -> Result<ResponseFormat, ApiError> {
        let Some(format) = &self.response_format else { return Ok(ResponseFormat::Text) };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(ResponseFormat::Text),
            Some("json_object") => Ok(ResponseFormat::JsonObject),
            Some("json_schema") => {
                let schema = format
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .ok_or_else(|| ApiError::bad_request("response_format: `json_schema.schema` is required"))?;
                if !schema.is_object() {
                    return Err(ApiError::bad_request("response_format: `json_schema.schema` must be an object"));
                }
                Ok(ResponseFormat::JsonSchema(schema.to_string()))
            }
            _ => Err(ApiError::bad_request("response_format: `type` must be text, json_object or json_schema")),
        }
    }

    fn tools(&self, input: &Input) -> Result<Tools, ApiError> {
        let mut list = Vec::new();
        for (i, tool) in self.tools.iter().flatten().enumerate() {
            let function = match (tool.kind.as_str(), &tool.function) {
                ("function", Some(f)) => f,
                _ => return Err(ApiError::bad_request(format!("tools[{i}]: only `function` tools are supported"))),
            };
            let parameters = match &function.parameters {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(p @ Value::Object(_)) => p.to_string(),
                Some(_) => return Err(ApiError::bad_request(format!("tools[{i}]: `parameters` must be an object"))),
            };
            list.push(Tool {
                name: function.name.clone(),
                description: function.description.clone().unwrap_or_default(),
                parameters,
            });
        }
        let choice = match &self.tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "tool_choice `{other}`: expected auto, none, required or a function"
                    )));
                }
            },
            Some(v) => match v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => ToolChoice::Function(name.to_owned()),
                None => {
                    return Err(ApiError::bad_request(
                        "tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ));
                }
            },
        };
        let tools = Tools { list, choice, parallel: self.parallel_tool_calls.unwrap_or(true) };
        if !tools.list.is_empty() && !matches!(input, Input::Chat(_)) {
            return Err(ApiError::bad_request("`tools` are for chat completions"));
        }
        tools.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(tools)
    }
}
