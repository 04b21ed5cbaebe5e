//! An engine that forwards to an OpenAI-compatible HTTP server (Ollama, llama.cpp server,
//! vLLM, ...): `POST <base>/chat/completions` for chat, `POST <base>/completions` for prompts,
//! streamed as server-sent events or not.

use crate::error_chain;
use std::fmt;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::debug;

use futures::future::BoxFuture;

use crate::{
    ChatMessage, Embeddings, Engine, EngineError, GenEvent, GenerateRequest, Generation, Input, ModelId,
    ResponseFormat, ToolCall, ToolChoice, chat,
};

/// Longest server-sent-events line accepted.
pub(super) const MAX_LINE: usize = 1 << 20;
/// Most bytes read from one streamed answer.
const MAX_STREAM: usize = 64 << 20;
/// Most bytes read from a whole (non-streamed) answer.
const MAX_BODY: usize = 16 << 20;
/// Most bytes read from an error answer.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Longest error message kept from a server.
pub(super) const MAX_MESSAGE: usize = 1000;

/// Where and how to reach the server. (Its `Debug` hides the API key.)
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// The API base, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The model name the server knows.
    pub model: String,
    /// Sent as a bearer token.
    pub api_key: Option<String>,
    /// Ask for a streamed answer (server-sent events).
    pub stream: bool,
    pub connect_timeout: Duration,
    /// Longest wait for the answer to start and between two chunks of it.
    pub idle_timeout: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "http://127.0.0.1:11434/v1".into(),
            model: String::new(),
            api_key: None,
            stream: true,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("stream", &self.stream)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// A model served by an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiEngine {
    config: OpenAiConfig,
    base: String,
    id: ModelId,
    client: reqwest::Client,
}

impl OpenAiEngine {
    /// An engine for `config.model` at `config.base_url`, announced as `id`. Nothing is
    /// contacted yet.
    pub fn new(config: OpenAiConfig, id: ModelId) -> Result<Self, EngineError> {
        let base = config.base_url.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| EngineError::InvalidRequest(format!("bad base URL {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EngineError::InvalidRequest(format!("base URL {base:?} is not http(s)")));
        }
        if config.model.is_empty() {
            return Err(EngineError::InvalidRequest("no model name for the backend server".into()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| EngineError::InvalidRequest(format!("cannot make an HTTP client: {e}")))?;
        Ok(OpenAiEngine { config, base, id, client })
    }

    /// The configuration this engine was made with.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }
}

impl Engine for OpenAiEngine {
    fn model(&self) -> &ModelId {
        &self.id
    }

    fn build_id(&self) -> String {
        format!("openai-compatible:{}", self.config.model)
    }

    fn threads(&self) -> u32 {
        0
    }

    fn context_size(&self) -> u32 {
        0
    }

    fn capacity(&self) -> usize {
        // Servers such as vLLM batch many requests; a few at once is safe for any of them.
        4
    }

    /// Must be called within a tokio runtime (the request runs on a task of it).
    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        request.params.validate()?;
        request.tools.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::InvalidRequest("the OpenAI-compatible engine needs a tokio runtime".into()))?;
        let p = &request.params;
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed,
            "stream": self.config.stream,
        });
        if !p.stop.is_empty() {
            body["stop"] = json!(p.stop);
        }
        add_sampling_extras(&mut body, &request);
        if self.config.stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        let (url, chat) = match &request.input {
            Input::Chat(messages) => {
                if messages.is_empty() {
                    return Err(EngineError::InvalidRequest("no messages".into()));
                }
                body["messages"] = Value::Array(messages.iter().map(openai_message).collect());
                (format!("{}/chat/completions", self.base), true)
            }
            Input::Prompt(prompt) => {
                body["prompt"] = json!(prompt);
                (format!("{}/completions", self.base), false)
            }
        };
        let call = Call {
            client: self.client.clone(),
            url,
            api_key: self.config.api_key.clone(),
            body,
            chat,
            stream: self.config.stream,
            idle: self.config.idle_timeout,
        };
        let (tx, rx) = mpsc::channel(Generation::CHANNEL);
        runtime.spawn(async move {
            tokio::select! {
                () = tx.closed() => debug!(url = %call.url, "generation cancelled"),
                result = call.run(&tx) => {
                    if let Err(e) = result {
                        debug!(url = %call.url, error = %e, "backend request failed");
                        let _ = tx.send(Err(e)).await;
                    }
                }
            }
        });
        Ok(Generation::new(rx))
    }

    fn embeds(&self) -> bool {
        true
    }

    fn embed(&self, inputs: Vec<String>) -> BoxFuture<'static, Result<Embeddings, EngineError>> {
        let count = inputs.len();
        let call = Call {
            client: self.client.clone(),
            url: format!("{}/embeddings", self.base),
            api_key: self.config.api_key.clone(),
            body: json!({ "model": self.config.model, "input": inputs, "encoding_format": "float" }),
            chat: false,
            stream: false,
            idle: self.config.idle_timeout,
        };
        Box::pin(async move { call.embeddings(count).await })
    }
}

/// Penalties, logit biases, the response format and tools, in the server's API.
fn add_sampling_extras(body: &mut Value, request: &GenerateRequest) {
    let p = &request.params;
    if p.top_k > 0 {
        // Not OpenAI's, but llama.cpp's server, vLLM and Ollama's OpenAI API take it.
        body["top_k"] = json!(p.top_k);
    }
    if p.presence_penalty != 0.0 {
        body["presence_penalty"] = json!(p.presence_penalty);
    }
    if p.frequency_penalty != 0.0 {
        body["frequency_penalty"] = json!(p.frequency_penalty);
    }
    if let Some(top) = p.logprobs {
        // Chat takes a flag and a count, completions a count.
        if matches!(request.input, Input::Chat(_)) {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(top);
        } else {
            body["logprobs"] = json!(top);
        }
    }
    if !p.logit_bias.is_empty() {
        let biases: serde_json::Map<String, Value> =
            p.logit_bias.iter().map(|(token, bias)| (token.to_string(), json!(bias))).collect();
        body["logit_bias"] = Value::Object(biases);
    }
    match &p.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => body["response_format"] = json!({ "type": "json_object" }),
        ResponseFormat::JsonSchema(schema) => {
            let schema: Value = serde_json::from_str(schema).unwrap_or_else(|_| json!({}));
            body["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "response", "schema": schema, "strict": true } });
        }
    }
    let tools = &request.tools;
    if !tools.list.is_empty() {
        body["tools"] = Value::Array(tools.list.iter().map(chat::tools::openai_tool).collect());
        body["tool_choice"] = match &tools.choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({ "type": "function", "function": { "name": name } }),
        };
        body["parallel_tool_calls"] = json!(tools.parallel);
    }
}

/// A message in OpenAI's shape (tool calls nested under `function`, arguments as JSON text).
fn openai_message(m: &ChatMessage) -> Value {
    let mut v = json!({ "role": m.role, "content": m.content });
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(
                |c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }),
            )
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

/// Tool calls a server returned as structured data, written as the text QUIVer carries them in
/// (`<tool_call>` blocks), which the gateway reads back into `tool_calls`.
fn calls_text(calls: &[(String, String)]) -> String {
    let calls: Vec<ToolCall> = calls
        .iter()
        .map(|(name, arguments)| ToolCall { id: String::new(), name: name.clone(), arguments: arguments.clone() })
        .collect();
    chat::tools::calls_as_text(&calls, chat::tools::ToolFormat::Hermes)
}

type Events = mpsc::Sender<Result<GenEvent, EngineError>>;

/// Sends a streamed line's log probabilities, then its text (one token); false when the consumer
/// is gone.
async fn send_text(tx: &Events, stream: &mut StreamState, text: Option<String>) -> bool {
    for lp in std::mem::take(&mut stream.logprobs) {
        if tx.send(Ok(GenEvent::Logprob(lp))).await.is_err() {
            return false;
        }
    }
    match text {
        Some(text) => tx.send(Ok(GenEvent::Token { text, tokens: 1 })).await.is_ok(),
        None => true,
    }
}

/// One request to the server.
struct Call {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    body: Value,
    chat: bool,
    stream: bool,
    idle: Duration,
}

impl Call {
    /// Posts the body; the response once its status says success.
    async fn send(&self) -> Result<reqwest::Response, EngineError> {
        let mut request = self.client.post(&self.url).json(&self.body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = timeout(self.idle, request.send())
            .await
            .map_err(|_| self.timed_out("an answer"))?
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            let body = self.read_body(&mut response, MAX_ERROR_BODY).await.unwrap_or_default();
            return Err(EngineError::BackendStatus { status: status.as_u16(), message: error_message(&body, status) });
        }
        Ok(response)
    }

    /// `POST /embeddings`: one vector per input, normalised, in input order.
    async fn embeddings(&self, inputs: usize) -> Result<Embeddings, EngineError> {
        let mut response = self.send().await?;
        let body = self.read_body(&mut response, MAX_BODY).await?;
        let answer: WireEmbeddings = serde_json::from_slice(&body)
            .map_err(|e| EngineError::BackendProtocol(format!("bad embeddings JSON: {e}")))?;
        let mut data = answer.data;
        data.sort_by_key(|d| d.index);
        if data.len() != inputs || data.iter().enumerate().any(|(i, d)| d.index != i) {
            return Err(EngineError::BackendProtocol(format!("{} embeddings for {inputs} inputs", data.len())));
        }
        let mut vectors = Vec::with_capacity(inputs);
        for d in data {
            let mut v = d.embedding;
            if v.is_empty() || v.len() > MAX_EMBEDDING_DIMS || v.iter().any(|x| !x.is_finite()) {
                return Err(EngineError::BackendProtocol(format!("an embedding of {} values", v.len())));
            }
            crate::normalize(&mut v);
            vectors.push(v);
        }
        let prompt_tokens = answer.usage.map_or(0, |u| u32::try_from(u.prompt_tokens).unwrap_or(u32::MAX));
        Ok(Embeddings { vectors, prompt_tokens })
    }

    async fn run(&self, tx: &Events) -> Result<(), EngineError> {
        let mut response = self.send().await?;
        let json_answer = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        // A server that ignores `stream` answers with plain JSON.
        if self.stream && !json_answer {
            self.read_stream(response, tx).await
        } else {
            let body = self.read_body(&mut response, MAX_BODY).await?;
            let (text, finish_reason, usage, logprobs) = parse_whole(&body, self.chat)?;
            for lp in logprobs {
                if tx.send(Ok(GenEvent::Logprob(lp))).await.is_err() {
                    return Ok(());
                }
            }
            let event = GenEvent::Token { text, tokens: usage.completion_tokens };
            if tx.send(Ok(event)).await.is_ok() {
                let _ = tx.send(Ok(GenEvent::Done { finish_reason, usage })).await;
            }
            Ok(())
        }
    }

    async fn read_stream(&self, mut response: reqwest::Response, tx: &Events) -> Result<(), EngineError> {
        let mut lines = Lines::default();
        let mut stream = StreamState::new(self.chat);
        let mut total = 0usize;
        'read: loop {
            let chunk = self.next_chunk(&mut response).await?;
            let Some(chunk) = chunk else {
                let text = stream.line(&lines.finish()?)?;
                if !send_text(tx, &mut stream, text).await {
                    return Ok(());
                }
                break;
            };
            let chunk = chunk.as_ref();
            total += chunk.len();
            if total > MAX_STREAM {
                return Err(EngineError::BackendProtocol(format!("the stream is longer than {MAX_STREAM} bytes")));
            }
            for line in lines.push(chunk)? {
                let text = stream.line(&line)?;
                if !send_text(tx, &mut stream, text).await {
                    return Ok(());
                }
                if stream.done {
                    break 'read;
                }
            }
        }
        if let Some(text) = stream.calls_text()
            && tx.send(Ok(GenEvent::Token { text, tokens: 0 })).await.is_err()
        {
            return Ok(());
        }
        let (finish_reason, usage, more) = stream.end()?;
        // Tokens counted and not yet reported (several in one piece, or a tool call's).
        if more > 0 && tx.send(Ok(GenEvent::Token { text: String::new(), tokens: more })).await.is_err() {
            return Ok(());
        }
        let _ = tx.send(Ok(GenEvent::Done { finish_reason, usage })).await;
        Ok(())
    }

    async fn next_chunk(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<Option<impl AsRef<[u8]> + use<>>, EngineError> {
        timeout(self.idle, response.chunk())
            .await
            .map_err(|_| self.timed_out("more of the answer"))?
            .map_err(|e| self.transport(&e))
    }

    /// The whole body, at most `max` bytes.
    async fn read_body(&self, response: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, EngineError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk(response).await? {
            let chunk = chunk.as_ref();
            if body.len() + chunk.len() > max {
                return Err(EngineError::BackendProtocol(format!("the answer is longer than {max} bytes")));
            }
            body.extend_from_slice(chunk);
        }
        Ok(body)
    }

    fn timed_out(&self, what: &str) -> EngineError {
        EngineError::Timeout(format!("waited {:?} for {what} from {}", self.idle, self.url))
    }

    fn transport(&self, e: &reqwest::Error) -> EngineError {
        if e.is_timeout() {
            return EngineError::Timeout(format!("{}: {}", self.url, error_chain(e)));
        }
        EngineError::Unavailable { url: self.url.clone(), reason: error_chain(e) }
    }
}

mod wire;
use wire::{Lines, MAX_EMBEDDING_DIMS, StreamState, WireEmbeddings, error_message, parse_whole};

#[cfg(test)]
#[path = "../tests/openai.rs"]
mod tests;
