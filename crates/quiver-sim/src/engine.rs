//! The paced engine: a real [`Engine`] that emits tokens at a set rate, with text derived
//! deterministically from the input. It stands in for the model only where the model's cost
//! would hide what the simulator measures (many providers on two cores): the provider role
//! around it (admission, queue, claims, rate limits, receipts, the client's verification and
//! failover) is the real code.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quiver_engine::{
    EngineError, FinishReason, GenEvent, GenerateRequest, Generation, Input, ModelId, StopFilter, Usage,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Name of the model the paced engine serves.
pub const SIM_MODEL: &str = "sim-paced";

/// How the paced engine behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacedConfig {
    /// Tokens emitted per second by one generation.
    pub tokens_per_sec: f64,
    /// Generations at once (the provider's default concurrency).
    pub capacity: usize,
    /// Largest prompt plus completion, in tokens.
    pub context_size: u32,
}

impl Default for PacedConfig {
    fn default() -> Self {
        PacedConfig { tokens_per_sec: 50.0, capacity: 2, context_size: 4096 }
    }
}

/// An engine that emits `tokens_per_sec` deterministic tokens per second.
#[derive(Debug, Clone)]
pub struct PacedEngine {
    model: ModelId,
    config: PacedConfig,
    /// Generation tasks not yet finished.
    running: Arc<AtomicUsize>,
}

/// Counts a generation task in [`PacedEngine::running_generations`] until it ends or is dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PacedEngine {
    pub fn new(config: PacedConfig) -> Arc<PacedEngine> {
        let sha256: [u8; 32] = Sha256::digest(b"quiver-sim paced engine v1").into();
        Arc::new(PacedEngine {
            model: ModelId { name: SIM_MODEL.to_owned(), gguf_name: "quiver-sim paced engine".to_owned(), sha256 },
            config,
            running: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Generation tasks still running: a dropped [`Generation`] leaves this count at its next
    /// token, when its task finds the consumer gone.
    pub fn running_generations(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// The input as one string (chat messages joined by role).
fn input_text(input: &Input) -> String {
    match input {
        Input::Prompt(p) => p.clone(),
        Input::Chat(messages) => messages.iter().map(|m| format!("{}: {}\n", m.role, m.content)).collect(),
    }
}

/// Token `i` of the answer to `input`: a short word drawn from a hash chain over the input,
/// so the same input (and seed) always gives the same text.
pub fn token_text(input: &str, seed: u64, i: u32) -> String {
    let h = Sha256::new().chain_update(input.as_bytes()).chain_update(seed.to_le_bytes()).chain_update(i.to_le_bytes());
    let d = h.finalize();
    const SYLLABLES: [&str; 16] =
        ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "du", "ga", "ho", "ji", "be", "fu", "zo"];
    let len = 1 + usize::from(d[0] % 3);
    let word: String = (0..len).map(|k| SYLLABLES[usize::from(d[1 + k] % 16)]).collect();
    format!(" {word}")
}

/// Tokens the paced engine answers `input` with before it ends its turn (between 16 and 143).
pub fn natural_length(input: &str) -> u32 {
    let d = Sha256::digest(input.as_bytes());
    16 + u32::from(d[0] % 128)
}

impl quiver_engine::Engine for PacedEngine {
    fn model(&self) -> &ModelId {
        &self.model
    }

    fn build_id(&self) -> String {
        format!("quiver-sim/paced={}", env!("CARGO_PKG_VERSION"))
    }

    fn threads(&self) -> u32 {
        1
    }

    fn context_size(&self) -> u32 {
        self.config.context_size
    }

    fn capacity(&self) -> usize {
        self.config.capacity.max(1)
    }

    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        request.params.validate()?;
        let text = input_text(&request.input);
        // One token per whitespace-separated word of the input, at least one.
        let prompt_tokens = text.split_whitespace().count().max(1) as u32;
        let context = self.config.context_size;
        if prompt_tokens >= context {
            return Err(EngineError::ContextOverflow { prompt_tokens, context });
        }
        let room = context - prompt_tokens;
        let natural = natural_length(&text);
        let limit = request.params.max_tokens.min(room);
        let pace = if self.config.tokens_per_sec > 0.0 && self.config.tokens_per_sec.is_finite() {
            Duration::from_secs_f64(1.0 / self.config.tokens_per_sec)
        } else {
            Duration::ZERO
        };
        let seed = if request.params.temperature > 0.0 { request.params.seed } else { 0 };
        let (tx, rx) = mpsc::channel(Generation::CHANNEL);
        let running = Running::new(&self.running);
        tokio::spawn(async move {
            let _running = running;
            let mut stops = StopFilter::new(request.params.stop.clone());
            let mut tick = tokio::time::interval(pace.max(Duration::from_micros(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut emitted = 0u32;
            let mut stopped = false;
            while emitted < limit.min(natural) && !stopped {
                if !pace.is_zero() {
                    tick.tick().await;
                }
                let out;
                (out, stopped) = stops.push(&token_text(&text, seed, emitted));
                emitted += 1;
                if tx.send(Ok(GenEvent::Token { text: out, tokens: 1 })).await.is_err() {
                    // The consumer went away: the generation is cancelled.
                    return;
                }
            }
            // The answer ends on its own (or at a stop string) unless max_tokens cut it short.
            let finish = if stopped || emitted >= natural { FinishReason::Stop } else { FinishReason::Length };
            let rest = stops.finish();
            if !rest.is_empty() && tx.send(Ok(GenEvent::Token { text: rest, tokens: 0 })).await.is_err() {
                return;
            }
            let usage = Usage { prompt_tokens, completion_tokens: emitted, cached_tokens: 0 };
            let _ = tx.send(Ok(GenEvent::Done { finish_reason: finish, usage })).await;
        });
        Ok(Generation::new(rx))
    }
}

#[cfg(test)]
#[path = "tests/engine.rs"]
mod tests;
