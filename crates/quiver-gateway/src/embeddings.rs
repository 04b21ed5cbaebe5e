//! Embeddings through the network: OpenAI's `POST /v1/embeddings` (a text or a list of texts,
//! `encoding_format` float or base64) and Ollama's `POST /api/embed` (`input`: a text or a list)
//! and `POST /api/embeddings` (one `prompt`).

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use quiver_node::{EmbeddingRequest, EmbeddingResult, Node};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ollama::{self, request::network_name};
use crate::openai::limits::Admission;
use crate::openai::{ApiError, counted, model_known};

/// Texts: one, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<Value>),
}

impl Texts {
    fn into_strings(self) -> Result<Vec<String>, ApiError> {
        match self {
            Texts::One(s) => Ok(vec![s]),
            Texts::Many(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(ApiError::bad_request(
                        "`input` must be text or a list of texts (token arrays are not supported)",
                    )),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct OpenAiEmbeddings {
    model: String,
    input: Texts,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
}

/// The network's embeddings, or the error OpenAI's routes give for the same cause.
async fn embed(node: &Node, model: &str, inputs: Vec<String>) -> Result<EmbeddingResult, ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::bad_request("`input` must not be empty"));
    }
    if inputs.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("`input` must not contain empty texts"));
    }
    let model = network_name(model);
    match node.embed(EmbeddingRequest::new(model, inputs)).await {
        Ok(r) => Ok(r),
        Err(e) => Err(ApiError::from_infer(e, model_known(node, model).await)),
    }
}

/// `POST /v1/embeddings`.
pub async fn openai(State(node): State<Node>, admission: Admission, body: Result<Bytes, BytesRejection>) -> Response {
    let answer = async {
        let _place = admission.place;
        let req: OpenAiEmbeddings = ollama::parse(body)?;
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => return Err(ApiError::bad_request(format!("encoding_format `{other}`: float or base64"))),
        };
        let r = embed(&node, &req.model, req.input.into_strings()?).await?;
        if let Some(d) = req.dimensions
            && r.vectors.first().is_some_and(|v| v.len() != d as usize)
        {
            return Err(ApiError::bad_request(format!(
                "`dimensions` {d}: the model's embeddings have {} and cannot be shortened",
                r.vectors[0].len()
            )));
        }
        let data: Vec<Value> = r
            .vectors
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let embedding = if base64 {
                    json!(
                        base64::engine::general_purpose::STANDARD.encode(quiver_node::proto::infer::embedding_bytes(v))
                    )
                } else {
                    json!(v)
                };
                json!({ "object": "embedding", "index": index, "embedding": embedding })
            })
            .collect();
        Ok(Json(json!({
            "object": "list", "data": data, "model": req.model,
            "usage": { "prompt_tokens": r.prompt_tokens, "total_tokens": r.prompt_tokens },
            "quiver": { "provider": r.provider.to_string(), "attempts": r.attempts },
        }))
        .into_response())
    };
    counted(&node, "embeddings", answer.await)
}

#[derive(Debug, Deserialize)]
struct OllamaEmbed {
    model: String,
    input: Texts,
}

#[derive(Debug, Deserialize)]
struct OllamaEmbeddings {
    model: String,
    prompt: String,
}

/// `POST /api/embed`.
pub async fn ollama_embed(
    State(node): State<Node>,
    admission: Admission,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let _place = admission.place;
        let started = Instant::now();
        let req: OllamaEmbed = ollama::parse(body)?;
        let r = embed(&node, &req.model, req.input.into_strings()?).await?;
        Ok(Json(json!({
            "model": req.model, "embeddings": r.vectors,
            "total_duration": started.elapsed().as_nanos() as u64, "load_duration": 0,
            "prompt_eval_count": r.prompt_tokens,
        }))
        .into_response())
    };
    ollama::answered(&node, "ollama_embed", answer.await)
}

/// `POST /api/embeddings` (Ollama's older route: one text, one vector).
pub async fn ollama_embeddings(
    State(node): State<Node>,
    admission: Admission,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let _place = admission.place;
        let req: OllamaEmbeddings = ollama::parse(body)?;
        let r = embed(&node, &req.model, vec![req.prompt]).await?;
        Ok(Json(json!({ "embedding": r.vectors.into_iter().next().unwrap_or_default() })).into_response())
    };
    ollama::answered(&node, "ollama_embed", answer.await)
}
