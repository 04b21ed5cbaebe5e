//! Inference messages: limits, validation, hashes and signed receipts.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    Claim, EmbedInput, InferRequest, JobAnnouncement, PromptInput, ProtoError, Receipt, SamplingParams, SignedRecord,
    TokenLogprob, sign,
};

/// Stream protocol of inference requests.
pub const INFER_PROTOCOL: &str = "/quiver/infer/1";
/// Stream protocol of claims.
pub const CLAIM_PROTOCOL: &str = "/quiver/claim/1";
/// Domain of receipt signatures.
pub const RECEIPT_DOMAIN: &str = "quiver/receipt/1";
/// Gossip topic prefix of job announcements: `quiver/1/infer/<model>`.
pub const INFER_TOPIC_PREFIX: &str = "quiver/1/infer/";

/// Largest request frame (prompt included).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Largest response frame (a token chunk, a receipt, an error).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest claim or claim acknowledgement frame.
pub const MAX_CLAIM_BYTES: usize = 1024;
/// Largest job announcement.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 4 * 1024;
/// Largest `max_tokens` a request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 16_384;
pub const MAX_MESSAGES: usize = 256;
pub const MAX_STOP_STRINGS: usize = 8;
pub const MAX_STOP_LEN: usize = 64;
pub const MAX_MODEL_NAME: usize = 128;
/// Most tools in a request.
pub const MAX_TOOLS: usize = 64;
/// Longest JSON schema (a response format's, a tool's parameters), in bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most tool calls in one message.
pub const MAX_TOOL_CALLS: usize = 64;
/// Most token ids with a logit bias.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Most alternatives per token in log probabilities.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Longest token, in bytes, in log probabilities.
pub const MAX_LOGPROB_TOKEN_BYTES: usize = 256;

/// sha256 of log probabilities in order (each message length-delimited): a receipt's
/// `logprobs_hash`.
pub fn logprobs_hash(logprobs: &[TokenLogprob]) -> [u8; 32] {
    let mut h = Sha256::new();
    for lp in logprobs {
        h.update(lp.encode_length_delimited_to_vec());
    }
    h.finalize().into()
}

impl TokenLogprob {
    /// A log probability (at most 0, not NaN) of a bounded token, with at most `top` bounded
    /// alternatives.
    pub fn validate(&self, top: u32) -> Result<(), ProtoError> {
        let ok = |token: &[u8], lp: f32| token.len() <= MAX_LOGPROB_TOKEN_BYTES && !lp.is_nan() && lp <= 0.0;
        if !ok(&self.token, self.logprob)
            || self.top.len() > top as usize
            || !self.top.iter().all(|t| ok(&t.token, t.logprob))
        {
            return Err(invalid(
                "logprobs",
                "a token over 256 bytes, a log probability above 0, or too many alternatives",
            ));
        }
        Ok(())
    }
}

/// Most texts embedded in one request.
pub const MAX_EMBED_INPUTS: usize = 256;
/// Most values in one embedding (the frame that carries it stays under [`MAX_RESPONSE_BYTES`]).
pub const MAX_EMBEDDING_DIMS: usize = 16_000;
pub const JOB_ID_LEN: usize = 16;

fn invalid(field: &'static str, reason: &'static str) -> ProtoError {
    ProtoError::Invalid { field, reason }
}

/// The gossip topic of job announcements for `model`.
pub fn infer_topic(model: &str) -> String {
    format!("{INFER_TOPIC_PREFIX}{model}")
}

/// A model name usable in topics and DHT keys: 1..=128 bytes of `[A-Za-z0-9._:-]`.
pub fn validate_model_name(name: &str) -> Result<(), ProtoError> {
    if name.is_empty() || name.len() > MAX_MODEL_NAME {
        return Err(invalid("model", "empty or too long"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
        return Err(invalid("model", "only letters, digits and . _ : - are allowed"));
    }
    Ok(())
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return Err(invalid("max_tokens", "must be 1..=16384"));
        }
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return Err(invalid("temperature", "must be 0..=2"));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(invalid("top_p", "must be in (0, 1]"));
        }
        if self.stop.len() > MAX_STOP_STRINGS || self.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(invalid("stop", "at most 8 non-empty strings of at most 64 bytes"));
        }
        if self.top_k > 100_000 {
            return Err(invalid("top_k", "must be 0..=100000"));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS || (self.top_logprobs > 0 && !self.logprobs) {
            return Err(invalid("top_logprobs", "0..=20, with logprobs"));
        }
        match self.response_format.as_str() {
            "" | "json_object" if self.json_schema.is_empty() => {}
            "json_schema" if !self.json_schema.is_empty() && self.json_schema.len() <= MAX_SCHEMA_BYTES => {}
            _ => {
                return Err(invalid(
                    "response_format",
                    "\"\", json_object, or json_schema with a schema of at most 64 KiB",
                ));
            }
        }
        for v in [self.presence_penalty, self.frequency_penalty] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return Err(invalid("penalty", "presence and frequency penalties must be -2..=2"));
            }
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS
            || self.logit_bias.iter().any(|b| !b.bias.is_finite() || !(-100.0..=100.0).contains(&b.bias))
        {
            return Err(invalid("logit_bias", "at most 1024 biases of -100..=100"));
        }
        Ok(())
    }
}

impl PromptInput {
    /// Exactly one of prompt or messages; bounded.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match (self.prompt.is_empty(), self.messages.is_empty()) {
            (false, false) => return Err(invalid("input", "both prompt and messages")),
            (true, true) => return Err(invalid("input", "neither prompt nor messages")),
            _ => {}
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(invalid("messages", "too many"));
        }
        for m in &self.messages {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool" | "developer") {
                return Err(invalid("messages.role", "not system, user, assistant, tool or developer"));
            }
            if m.tool_calls.len() > MAX_TOOL_CALLS {
                return Err(invalid("messages.tool_calls", "too many"));
            }
        }
        if self.tools.len() > MAX_TOOLS {
            return Err(invalid("tools", "too many"));
        }
        if !self.tools.is_empty() && self.messages.is_empty() {
            return Err(invalid("tools", "only with chat messages"));
        }
        if self.tools.iter().any(|t| t.name.is_empty() || t.name.len() > 64 || t.parameters.len() > MAX_SCHEMA_BYTES) {
            return Err(invalid("tools", "a name of 1..=64 bytes and parameters of at most 64 KiB"));
        }
        let choice = self.tool_choice.as_str();
        if !matches!(choice, "" | "auto" | "none" | "required") && !choice.starts_with("function:") {
            return Err(invalid("tool_choice", "not auto, none, required or function:NAME"));
        }
        Ok(())
    }

    /// sha256 of the input as encoded on the wire: what a receipt's `prompt_hash` binds.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode_to_vec()).into()
    }
}

impl InferRequest {
    /// Decodes and validates a request frame body.
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.request_id.len() != JOB_ID_LEN {
            return Err(invalid("request_id", "not 16 bytes"));
        }
        validate_model_name(&self.model)?;
        if !self.model_sha256.is_empty() && self.model_sha256.len() != 32 {
            return Err(invalid("model_sha256", "not 32 bytes"));
        }
        if let Some(embed) = &self.embed {
            if self.input.is_some() || self.params.is_some() {
                return Err(invalid("embed", "with input or params"));
            }
            return embed.validate();
        }
        self.input.as_ref().ok_or(invalid("input", "missing"))?.validate()?;
        self.params.as_ref().ok_or(invalid("params", "missing"))?.validate()
    }

    /// What a receipt's `prompt_hash` binds: the input, or the texts to embed.
    pub fn input_hash(&self) -> [u8; 32] {
        match (&self.embed, &self.input) {
            (Some(embed), _) => embed.hash(),
            (None, Some(input)) => input.hash(),
            (None, None) => PromptInput::default().hash(),
        }
    }
}

impl EmbedInput {
    /// 1..=256 texts, none empty.
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.inputs.is_empty() || self.inputs.len() > MAX_EMBED_INPUTS {
            return Err(invalid("embed.inputs", "1..=256 texts"));
        }
        if self.inputs.iter().any(String::is_empty) {
            return Err(invalid("embed.inputs", "an empty text"));
        }
        Ok(())
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode_to_vec()).into()
    }
}

/// Embeddings as they travel: each value little-endian f32.
pub fn embedding_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The values of an embedding frame, if it holds whole finite f32s of a bounded count.
pub fn embedding_values(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.is_empty() || bytes.len() % 4 != 0 || bytes.len() / 4 > MAX_EMBEDDING_DIMS {
        return None;
    }
    let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    values.iter().all(|v| v.is_finite()).then_some(values)
}

/// sha256 of embeddings in input order (their bytes concatenated): a receipt's `output_hash`
/// for an embedding request.
pub fn embeddings_hash(vectors: &[Vec<f32>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in vectors {
        h.update(embedding_bytes(v));
    }
    h.finalize().into()
}

impl JobAnnouncement {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.job_id.len() != JOB_ID_LEN {
            return Err(invalid("job_id", "not 16 bytes"));
        }
        validate_model_name(&self.model)?;
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return Err(invalid("max_tokens", "must be 1..=16384"));
        }
        if self.client_addrs.len() > 16 || self.client_addrs.iter().any(|a| a.is_empty() || a.len() > 256) {
            return Err(invalid("client_addrs", "at most 16 addresses of at most 256 bytes"));
        }
        Ok(())
    }
}

impl Claim {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.job_id.len() != JOB_ID_LEN {
            return Err(invalid("job_id", "not 16 bytes"));
        }
        if self.model_sha256.len() != 32 {
            return Err(invalid("model_sha256", "not 32 bytes"));
        }
        if !self.tokens_per_sec.is_finite() || self.tokens_per_sec < 0.0 {
            return Err(invalid("tokens_per_sec", "not a finite speed"));
        }
        if !self.batch_tokens_per_sec.is_finite() || self.batch_tokens_per_sec < 0.0 {
            return Err(invalid("batch_tokens_per_sec", "not a finite speed"));
        }
        Ok(())
    }
}

/// sha256 of generated text: what a receipt's `output_hash` binds.
pub fn output_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl Receipt {
    /// Signs the receipt with the provider's key.
    pub fn sign(&self, keypair: &Keypair) -> SignedRecord {
        sign(keypair, RECEIPT_DOMAIN, self.encode_to_vec())
    }

    /// Verifies a signed receipt: signature, domain, and that it was signed by `provider` and
    /// names it.
    pub fn verify(record: SignedRecord, provider: &PeerId) -> Result<Receipt, ProtoError> {
        let signed = record.verify(RECEIPT_DOMAIN)?;
        if signed.signer != *provider {
            return Err(ProtoError::PeerMismatch { named: provider.to_string(), signer: signed.signer.to_string() });
        }
        let receipt = Receipt::decode(signed.payload.as_slice())?;
        if receipt.provider != provider.to_bytes() {
            return Err(invalid("provider", "not the signer"));
        }
        Ok(receipt)
    }
}

#[cfg(test)]
#[path = "tests/infer.rs"]
mod tests;
