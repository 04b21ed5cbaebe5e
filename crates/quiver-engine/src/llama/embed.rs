//! Embeddings: a second, small llama.cpp context of the same model with embeddings on, owned by a
//! thread of its own (made at the first request, so generation-only providers pay nothing).
//!
//! Pooling: a GGUF that declares one (`<arch>.pooling_type`, embedding models do) uses it; a chat
//! model's hidden states are mean-pooled. Vectors are L2-normalised, as OpenAI's and
//! `llama-server`'s are.

use std::num::NonZeroU32;
use std::sync::{Arc, mpsc as std_mpsc};

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{Inner, THREAD_STACK, backend};
use crate::{Embeddings, EngineError, normalize};

/// Embedding requests waiting for the thread.
pub(super) const MAX_WAITING: usize = 64;

/// One request: the tokens of each input, and where the answer goes.
pub(super) struct EmbedJob {
    pub(super) inputs: Vec<Vec<LlamaToken>>,
    pub(super) reply: oneshot::Sender<Result<Embeddings, EngineError>>,
}

/// The pooling to ask llama.cpp for: the model's own when its GGUF names one, else mean.
fn pooling(model: &LlamaModel) -> LlamaPoolingType {
    let declared = model
        .meta_val_str("general.architecture")
        .ok()
        .and_then(|arch| model.meta_val_str(&format!("{arch}.pooling_type")).ok())
        .and_then(|p| p.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if declared > 0 { LlamaPoolingType::Unspecified } else { LlamaPoolingType::Mean }
}

/// Starts the embedding thread; returns once its context exists (or could not be made).
pub(super) fn start(inner: &Arc<Inner>) -> Result<std_mpsc::SyncSender<EmbedJob>, String> {
    let (jobs_tx, jobs_rx) = std_mpsc::sync_channel(MAX_WAITING);
    let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
    let inner = Arc::clone(inner);
    std::thread::Builder::new()
        .name("llama-embed".into())
        .stack_size(THREAD_STACK)
        .spawn(move || run(&inner, &jobs_rx, &ready_tx))
        .map_err(|e| format!("cannot start the embedding thread: {e}"))?;
    ready_rx.recv().map_err(|_| "the embedding thread ended before it was ready".to_string())??;
    Ok(jobs_tx)
}

fn run(inner: &Inner, jobs: &std_mpsc::Receiver<EmbedJob>, ready: &std_mpsc::SyncSender<Result<(), String>>) {
    let cells = inner.context_size;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cells))
        .with_n_batch(cells)
        .with_n_ubatch(cells)
        .with_n_seq_max(1)
        .with_embeddings(true)
        .with_pooling_type(pooling(&inner.model))
        .with_n_threads(i32::try_from(inner.threads).unwrap_or(1))
        .with_n_threads_batch(i32::try_from(inner.threads).unwrap_or(1));
    let made = backend().map_err(|e| e.to_string()).and_then(|backend| {
        inner.model.new_context(backend, params).map_err(|e| format!("cannot create an embedding context: {e}"))
    });
    let mut ctx = match made {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut batch = LlamaBatch::new(cells as usize, 1);
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            continue;
        }
        let mut vectors = Vec::with_capacity(job.inputs.len());
        let mut prompt_tokens = 0u32;
        let mut failed = None;
        for tokens in &job.inputs {
            ctx.clear_kv_cache();
            batch.clear();
            let mut ok = true;
            for (i, &token) in tokens.iter().enumerate() {
                ok &= batch.add(token, i as i32, &[0], true).is_ok();
            }
            let embedded = if !ok {
                Err("cannot build the batch".to_string())
            } else {
                ctx.decode(&mut batch)
                    .map_err(|e| format!("decoding failed: {e}"))
                    .and_then(|()| ctx.embeddings_seq_ith(0).map(<[f32]>::to_vec).map_err(|e| e.to_string()))
            };
            match embedded {
                Ok(mut v) => {
                    normalize(&mut v);
                    prompt_tokens = prompt_tokens.saturating_add(u32::try_from(tokens.len()).unwrap_or(u32::MAX));
                    vectors.push(v);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let answer = match failed {
            Some(e) => {
                warn!(error = %e, "an embedding failed");
                Err(EngineError::Inference(e))
            }
            None => {
                debug!(inputs = vectors.len(), prompt_tokens, "embedded");
                Ok(Embeddings { vectors, prompt_tokens })
            }
        };
        let _ = job.reply.send(answer);
    }
}
