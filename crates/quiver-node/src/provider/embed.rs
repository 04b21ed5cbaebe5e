//! An embedding job: the texts of an `InferRequest.embed`, answered with `Accepted`, one
//! `Embedding` frame per text, and a receipt binding the texts (`prompt_hash`) and the vectors
//! (`output_hash`, [`embeddings_hash`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::Engine;
use quiver_net::PeerId;
use quiver_proto::infer::{embedding_bytes, embeddings_hash};
use quiver_proto::infer_response::Kind;
use quiver_proto::{Accepted, EmbedInput, Embedding, InferRequest, InferResponse, Receipt, write_frame};
use tracing::debug;

use super::{Provider, error_code, error_reply};
use crate::discovery::now_ms;
use crate::metrics::JobOutcome;

/// Longest an engine may take to embed one request.
const EMBED_TIMEOUT: Duration = Duration::from_secs(120);

impl Provider {
    pub(super) async fn embed(
        &self,
        peer: PeerId,
        request: &InferRequest,
        texts: EmbedInput,
        engine: &Arc<dyn Engine>,
        model: &quiver_engine::ModelId,
        stream: &mut quiver_net::Stream,
    ) -> Result<(), quiver_proto::FrameError> {
        let reply = |kind| InferResponse { kind: Some(kind) };
        if !engine.embeds() {
            self.metrics.job(JobOutcome::Invalid);
            let message = format!("this provider does not compute embeddings with {}", model.name);
            return write_frame(stream, &error_reply("unsupported", message)).await;
        }
        let build = engine.build_id();
        let accepted =
            Accepted { model_sha256: model.sha256.to_vec(), engine_build: build.clone(), threads: engine.threads() };
        write_frame(stream, &reply(Kind::Accepted(accepted))).await?;
        let started = Instant::now();
        let _running = self.busy.running();
        let embedded = match tokio::time::timeout(EMBED_TIMEOUT, engine.embed(texts.inputs.clone())).await {
            Ok(Ok(e)) if e.vectors.len() == texts.inputs.len() => e,
            Ok(Ok(e)) => {
                self.metrics.job(JobOutcome::Failed);
                let message =
                    format!("the engine gave {} embeddings for {} texts", e.vectors.len(), texts.inputs.len());
                return write_frame(stream, &error_reply("engine", message)).await;
            }
            Ok(Err(e)) => {
                self.metrics.job(JobOutcome::Failed);
                return write_frame(stream, &error_reply(error_code(&e), e.to_string())).await;
            }
            Err(_) => {
                self.metrics.job(JobOutcome::Failed);
                return write_frame(stream, &error_reply("engine", "embedding timed out".into())).await;
            }
        };
        for (index, values) in embedded.vectors.iter().enumerate() {
            let frame = Embedding { index: index as u32, values: embedding_bytes(values) };
            write_frame(stream, &reply(Kind::Embedding(frame))).await?;
        }
        let elapsed = started.elapsed();
        self.metrics.provider_job(&model.name, peer, crate::metrics::JobOutcome::Served, None, elapsed, 0);
        let receipt = Receipt {
            request_id: request.request_id.clone(),
            provider: self.net.peer_id().to_bytes(),
            model_sha256: model.sha256.to_vec(),
            prompt_hash: texts.hash().to_vec(),
            output_hash: embeddings_hash(&embedded.vectors).to_vec(),
            prompt_tokens: embedded.prompt_tokens,
            completion_tokens: 0,
            params: None,
            engine_build: build,
            threads: engine.threads(),
            finish_reason: "embedding".into(),
            timestamp_ms: now_ms(),
            cached_tokens: 0,
            logprobs_hash: Vec::new(),
        };
        debug!(%peer, texts = embedded.vectors.len(), ?elapsed, "embedding job served");
        write_frame(stream, &reply(Kind::Receipt(receipt.sign(&self.keypair)))).await
    }
}
