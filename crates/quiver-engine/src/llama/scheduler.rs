//! The scheduler thread: one llama.cpp context, many sequences, one batch per step.
//!
//! Each step it takes new requests, drops those whose consumer went away, gives waiting requests
//! free slots, then decodes one batch: one token for every generating sequence whose consumer has
//! room for it, and the next chunk of every prompt being read, up to [`MAX_BATCH`] tokens in all,
//! in slot order. Sequences join and leave between steps.
//!
//! **KV budget.** Each slot has a KV stream of its own of `context_size` cells (llama.cpp's
//! non-unified cache, `n_ctx = slots × context_size`), reserved whether it is used or not, as
//! `llama-server --parallel N` does. A request never needs more than `context_size` cells: its
//! prompt is shorter than that (longer ones are refused by
//! [`LlamaEngine::generate`](super::LlamaEngine) before any work) and its `max_new` is clamped to
//! the room left. So admission counting slots counts KV cells: a request that fits waits only
//! while every slot is busy.
//!
//! **Why one stream per sequence, not one unified cache.** Measured with this engine
//! (`tests/llama.rs`, `batched_greedy_equals_solo`): with a unified cache, where sequences' cells
//! interleave in one buffer, greedy answers decoded beside other sequences differed from the same
//! request decoded alone (from the first token on, with flash attention on or off), because the
//! attention reductions then run over other cells and positions. With a stream per sequence a
//! sequence's cells sit at the same places as when it runs alone, and greedy output is the same
//! alone, batched or queued. That keeps verification an exact comparison (two honest providers
//! agree whatever their load). The price: llama.cpp splits a batch into micro-batches of
//! consecutive sequence ids, so the scheduler keeps running sequences in the lowest slots.
//!
//! **Prompt cache.** A slot's cache is the list of tokens whose KV its sequence holds. A request
//! goes to the free slot with the longest common prefix (ties and no match: the lowest free slot),
//! keeps that prefix and decodes only the rest (at least its last token, whose logits start the
//! answer). A hit gives the same answer as a miss (`prompt_cache_hit_gives_the_same_answer`).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Duration;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use super::{Inner, MAX_BATCH, MAX_WAITING, Running, THREAD_STACK, backend, sampler_for};
use crate::chat::grammar::Constraint;
use crate::{EngineError, FinishReason, GenEvent, SamplingParams, StopFilter, TokenLogprob, Usage, Utf8Assembler};

type Events = tokio::sync::mpsc::Sender<Result<GenEvent, EngineError>>;

/// How long the scheduler sleeps when every running sequence waits for its consumer.
const STALLED_WAIT: Duration = Duration::from_millis(2);

/// One request, from `generate` to the scheduler.
pub(super) struct Job {
    tokens: Vec<LlamaToken>,
    params: SamplingParams,
    /// The grammar the output must follow, if any.
    constraint: Option<Constraint>,
    /// Completion tokens allowed (`max_tokens` clamped to the room left in the context).
    max_new: u32,
    tx: Events,
    /// Counted in [`Inner::running`] while the job exists.
    _running: Running,
}

impl Job {
    pub(super) fn new(
        tokens: Vec<LlamaToken>,
        params: SamplingParams,
        constraint: Option<Constraint>,
        max_new: u32,
        tx: Events,
        running: Running,
    ) -> Job {
        Job { tokens, params, constraint, max_new, tx, _running: running }
    }
}

/// Starts the scheduler thread with a context made for `inner`'s model; returns once the context
/// exists (or could not be made).
pub(super) fn start(inner: &Arc<Inner>) -> Result<std_mpsc::SyncSender<Job>, String> {
    let (jobs_tx, jobs_rx) = std_mpsc::sync_channel(MAX_WAITING);
    let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
    let inner = Arc::clone(inner);
    std::thread::Builder::new()
        .name("quiver-llama".into())
        .stack_size(THREAD_STACK)
        .spawn(move || run(&inner, jobs_rx, ready_tx))
        .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(jobs_tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the scheduler thread ended while making its context".into()),
    }
}

fn run(inner: &Inner, jobs: std_mpsc::Receiver<Job>, ready: std_mpsc::SyncSender<Result<(), String>>) {
    let slots = inner.slots;
    let threads = i32::try_from(inner.threads).unwrap_or(1);
    let cells = inner.context_size.saturating_mul(slots);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cells))
        .with_n_batch(MAX_BATCH)
        .with_n_ubatch(MAX_BATCH)
        .with_n_seq_max(slots)
        // A KV stream per sequence: see the module docs for why not one unified cache.
        .with_kv_unified(false)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let made = backend().map_err(|e| e.to_string()).and_then(|backend| {
        inner.model.new_context(backend, params).map_err(|e| format!("cannot create a llama.cpp context: {e}"))
    });
    let ctx = match made {
        Ok(ctx) if ctx.n_ctx() >= cells => ctx,
        Ok(ctx) => {
            let _ = ready.send(Err(format!("llama.cpp made a context of {} cells, {cells} needed", ctx.n_ctx())));
            return;
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut scheduler = Scheduler::new(inner, ctx);
    if catch_unwind(AssertUnwindSafe(|| scheduler.serve(&jobs))).is_err() {
        // Whatever was running is lost; its consumers see their channels close.
        warn!("the llama.cpp scheduler panicked; this engine serves no more requests");
    }
}

/// A sequence of the shared context.
struct Slot {
    seq: i32,
    /// Tokens whose KV this sequence holds, in position order.
    cached: Vec<LlamaToken>,
    active: Option<Active>,
}

/// A request running in a slot.
struct Active {
    job: Job,
    /// Next prompt token to decode; `job.tokens.len()` once the prompt is read.
    next_prompt: usize,
    /// The token sampled last step, to decode this step.
    pending: Option<LlamaToken>,
    sampler: LlamaSampler,
    utf8: Utf8Assembler,
    stop: StopFilter,
    completion: u32,
    cached_tokens: u32,
    /// Index in this step's batch of the logits to sample from, if any.
    logits_at: Option<i32>,
    /// Tokens of this step's batch that belong to this sequence.
    in_batch: usize,
}

/// The sampler chain of a request: its grammar, logit biases and penalties, then greedy or
/// top-p/temperature/seeded sampling.
fn sampler(model: &LlamaModel, job: &Job) -> Result<LlamaSampler, EngineError> {
    let p = &job.params;
    let mut chain = Vec::with_capacity(6);
    if let Some(c) = &job.constraint {
        chain.push(sampler_for(model, c)?);
    }
    if !p.logit_bias.is_empty() {
        let n_vocab = model.n_vocab();
        let biases: Vec<LlamaLogitBias> = p
            .logit_bias
            .iter()
            .filter(|&&(token, _)| i32::try_from(token).is_ok_and(|t| t < n_vocab))
            .map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token as i32), bias))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        // Over the whole answer, as OpenAI's penalties are.
        let window = i32::try_from(job.max_new).unwrap_or(i32::MAX);
        chain.push(LlamaSampler::penalties(model.n_vocab(), window, 1.0, p.frequency_penalty, p.presence_penalty));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        // llama.cpp takes u32::MAX as "pick a random seed".
        let seed = (p.seed as u32).min(u32::MAX - 1);
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(i32::try_from(p.top_k).unwrap_or(i32::MAX)));
        }
        chain.push(LlamaSampler::top_p(p.top_p, 1));
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(seed));
    }
    Ok(if chain.len() == 1 { chain.remove(0) } else { LlamaSampler::chain_simple(chain) })
}

impl Active {
    fn new(job: Job, next_prompt: usize, sampler: LlamaSampler) -> Active {
        let stop = StopFilter::new(job.params.stop.clone());
        Active {
            cached_tokens: u32::try_from(next_prompt).unwrap_or(u32::MAX),
            job,
            next_prompt,
            pending: None,
            sampler,
            utf8: Utf8Assembler::new(),
            stop,
            completion: 0,
            logits_at: None,
            in_batch: 0,
        }
    }

    /// The consumer dropped its [`Generation`](crate::Generation).
    fn cancelled(&self) -> bool {
        self.job.tx.is_closed()
    }
}

/// What one sampled token did to its request.
enum Outcome {
    Continue,
    Finished,
    Cancelled,
}

struct Scheduler<'a> {
    inner: &'a Inner,
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    waiting: VecDeque<Job>,
    /// No more requests can arrive (the engine was dropped).
    closed: bool,
}

impl<'a> Scheduler<'a> {
    fn new(inner: &'a Inner, ctx: LlamaContext<'a>) -> Self {
        let slots = (0..inner.slots).map(|i| Slot { seq: i as i32, cached: Vec::new(), active: None }).collect();
        Scheduler {
            inner,
            ctx,
            batch: LlamaBatch::new(MAX_BATCH as usize, 1),
            slots,
            waiting: VecDeque::new(),
            closed: false,
        }
    }

    /// Serves requests until the engine is dropped and every request has ended.
    fn serve(&mut self, jobs: &std_mpsc::Receiver<Job>) {
        loop {
            self.take(jobs);
            if self.closed && self.waiting.is_empty() && self.slots.iter().all(|s| s.active.is_none()) {
                return;
            }
            self.drop_cancelled();
            self.admit();
            if !self.build_batch() {
                // Nothing to decode: every running sequence waits for its consumer, or nothing runs.
                let idle = self.waiting.is_empty() && self.slots.iter().all(|s| s.active.is_none());
                let wait = if idle { None } else { Some(STALLED_WAIT) };
                self.wait_for_job(jobs, wait);
                continue;
            }
            match self.ctx.decode(&mut self.batch) {
                Ok(()) => self.after_decode(),
                Err(e) => self.fail_batch(EngineError::Inference(format!("decoding failed: {e}"))),
            }
        }
    }

    /// Moves newly arrived requests to the waiting queue without blocking.
    fn take(&mut self, jobs: &std_mpsc::Receiver<Job>) {
        loop {
            match jobs.try_recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(std_mpsc::TryRecvError::Empty) => return,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Blocks until a request arrives (or `wait` passes).
    fn wait_for_job(&mut self, jobs: &std_mpsc::Receiver<Job>, wait: Option<Duration>) {
        if self.closed {
            if let Some(wait) = wait {
                std::thread::sleep(wait);
            }
            return;
        }
        let got = match wait {
            None => jobs.recv().map_err(|_| true),
            Some(wait) => jobs.recv_timeout(wait).map_err(|e| e == std_mpsc::RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(job) => self.waiting.push_back(job),
            Err(disconnected) => self.closed |= disconnected,
        }
    }

    fn drop_cancelled(&mut self) {
        self.waiting.retain(|job| !job.tx.is_closed());
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(Active::cancelled) {
                debug!(seq = slot.seq, "generation cancelled");
                slot.active = None;
            }
        }
    }

    /// Gives waiting requests free slots, first come first served.
    fn admit(&mut self) {
        while let Some(job) = self.waiting.front() {
            let Some(index) = self.pick_slot(&job.tokens) else { return };
            let Some(job) = self.waiting.pop_front() else { return };
            let common = common_prefix(&self.slots[index].cached, &job.tokens);
            // The last prompt token is always decoded: its logits start the answer.
            let keep = common.min(job.tokens.len().saturating_sub(1));
            let keep = self.truncate_seq(index, keep);
            self.inner.cached.fetch_add(keep as u64, Ordering::Relaxed);
            debug!(seq = self.slots[index].seq, prompt_tokens = job.tokens.len(), cached = keep, "request admitted");
            match sampler(&self.inner.model, &job) {
                Ok(sampler) => self.slots[index].active = Some(Active::new(job, keep, sampler)),
                Err(e) => {
                    let _ = job.tx.try_send(Err(e));
                }
            }
        }
    }

    /// The free slot for `tokens`: the one with the longest common prefix, the lowest on a tie
    /// (llama.cpp decodes consecutive sequence ids together).
    fn pick_slot(&self, tokens: &[LlamaToken]) -> Option<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].active.is_none())
            .max_by_key(|&i| (common_prefix(&self.slots[i].cached, tokens), std::cmp::Reverse(i)))
    }

    /// Drops the KV of slot `index` from position `keep` on; returns the positions kept (0 when
    /// llama.cpp cannot cut the sequence there and the whole of it went).
    fn truncate_seq(&mut self, index: usize, keep: usize) -> usize {
        let slot = &mut self.slots[index];
        if keep >= slot.cached.len() {
            return slot.cached.len();
        }
        let p0 = u32::try_from(keep).ok();
        if p0.is_some() && self.ctx.clear_kv_cache_seq(Some(slot.seq as u32), p0, None).unwrap_or(false) {
            slot.cached.truncate(keep);
            return keep;
        }
        self.clear_seq(index);
        0
    }

    fn clear_seq(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let _ = self.ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        slot.cached.clear();
    }

    /// Fills the batch for this step, in slot order; false when there is nothing to decode.
    fn build_batch(&mut self) -> bool {
        self.batch.clear();
        // A token event (its log probability first, if asked) and possibly the Done event after it
        // must fit in the consumer's channel.
        let ready = |a: &Active| a.job.tx.capacity() >= 2 + usize::from(a.job.params.logprobs.is_some());
        let generating =
            self.slots.iter().filter_map(|s| s.active.as_ref()).filter(|a| a.pending.is_some() && ready(a)).count();
        // Generating sequences get their token first; prompts share the rest of the batch.
        let mut prompt_room = (MAX_BATCH as usize).saturating_sub(generating);
        let mut ok = true;
        for slot in &mut self.slots {
            let Some(a) = slot.active.as_mut() else { continue };
            a.logits_at = None;
            a.in_batch = 0;
            if !ready(a) {
                continue;
            }
            let base = slot.cached.len();
            if let Some(token) = a.pending {
                ok &= self.batch.add(token, base as i32, &[slot.seq], true).is_ok();
                a.logits_at = Some(self.batch.n_tokens() - 1);
                a.in_batch = 1;
                continue;
            }
            let end = (a.next_prompt + prompt_room).min(a.job.tokens.len());
            for (i, &token) in a.job.tokens[a.next_prompt..end].iter().enumerate() {
                let last = a.next_prompt + i + 1 == a.job.tokens.len();
                ok &= self.batch.add(token, (base + i) as i32, &[slot.seq], last).is_ok();
                if last {
                    a.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            a.in_batch = end - a.next_prompt;
            prompt_room -= a.in_batch;
        }
        if !ok {
            // The batch is sized for MAX_BATCH tokens and filled with at most that many.
            self.fail_batch(EngineError::Inference("cannot build the batch".into()));
            return false;
        }
        self.batch.n_tokens() > 0
    }

    /// Records what the decoded batch put in the KV cache, then samples every sequence that has
    /// logits this step.
    fn after_decode(&mut self) {
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let Some(a) = slot.active.as_mut() else { continue };
            if a.in_batch == 0 {
                continue;
            }
            if let Some(token) = a.pending.take() {
                slot.cached.push(token);
            } else {
                let end = a.next_prompt + a.in_batch;
                slot.cached.extend_from_slice(&a.job.tokens[a.next_prompt..end]);
                self.inner.prompt_decoded.fetch_add(a.in_batch as u64, Ordering::Relaxed);
                a.next_prompt = end;
                if end == a.job.tokens.len() {
                    debug!(seq = slot.seq, prompt_tokens = end, "prompt decoded");
                }
            }
            a.in_batch = 0;
            let Some(at) = a.logits_at.take() else { continue };
            let token = a.sampler.sample(&self.ctx, at);
            if let Some(top) = a.job.params.logprobs
                && !self.inner.model.vocab().is_eog(token)
            {
                let lp = logprob(self.inner, self.ctx.get_logits_ith(at), token, top as usize);
                // Room for it was checked with the token's (`build_batch`).
                let _ = a.job.tx.try_send(Ok(GenEvent::Logprob(lp)));
            }
            self.inner.sampled.fetch_add(1, Ordering::Relaxed);
            let outcome = match catch_unwind(AssertUnwindSafe(|| yield_token(self.inner, a, token))) {
                Ok(outcome) => outcome,
                Err(_) => {
                    let _ = a.job.tx.try_send(Err(EngineError::Inference("llama.cpp generation panicked".into())));
                    Outcome::Finished
                }
            };
            if !matches!(outcome, Outcome::Continue) {
                slot.active = None;
            }
        }
    }

    /// Ends every request with tokens in the failed batch and forgets their sequences' KV.
    fn fail_batch(&mut self, error: EngineError) {
        warn!(error = %error, "a decoding step failed");
        for index in 0..self.slots.len() {
            let in_batch = self.slots[index].active.as_ref().is_some_and(|a| a.in_batch > 0);
            if !in_batch {
                continue;
            }
            if let Some(a) = self.slots[index].active.take() {
                let _ = a.job.tx.try_send(Err(error.clone()));
            }
            self.clear_seq(index);
        }
    }
}

/// Sends what `token` adds to the answer; the caller made sure the channel has room for two
/// events.
fn yield_token(inner: &Inner, a: &mut Active, token: LlamaToken) -> Outcome {
    let vocab = inner.model.vocab();
    let send = |a: &Active, event: GenEvent| match a.job.tx.try_send(Ok(event)) {
        Ok(()) => true,
        Err(TrySendError::Closed(_)) => false,
        Err(TrySendError::Full(_)) => {
            // Cannot happen: only this thread sends, and it checked for room first.
            warn!("a generation's channel was full; its request is cancelled");
            false
        }
    };
    let finish = |a: &mut Active, finish_reason: FinishReason| {
        let usage = Usage {
            prompt_tokens: u32::try_from(a.job.tokens.len()).unwrap_or(u32::MAX),
            completion_tokens: a.completion,
            cached_tokens: a.cached_tokens,
        };
        debug!(%finish_reason, completion_tokens = a.completion, "generation done");
        if send(a, GenEvent::Done { finish_reason, usage }) { Outcome::Finished } else { Outcome::Cancelled }
    };
    if vocab.is_eog(token) {
        // Release what was held back, as a last event for no new token.
        let (mut text, stopped) = a.stop.push(&a.utf8.finish());
        if !stopped {
            text.push_str(&a.stop.finish());
        }
        if !text.is_empty() && !send(a, GenEvent::Token { text, tokens: 0 }) {
            return Outcome::Cancelled;
        }
        return finish(a, FinishReason::Stop);
    }
    a.completion += 1;
    let last = a.completion >= a.job.max_new;
    let mut piece = a.utf8.push(&vocab.token_to_piece(token, false, None));
    if last {
        piece.push_str(&a.utf8.finish());
    }
    let (mut text, stopped) = a.stop.push(&piece);
    if last && !stopped {
        text.push_str(&a.stop.finish());
    }
    if !send(a, GenEvent::Token { text, tokens: 1 }) {
        return Outcome::Cancelled;
    }
    if stopped {
        return finish(a, FinishReason::Stop);
    }
    if last {
        return finish(a, FinishReason::Length);
    }
    a.pending = Some(token);
    Outcome::Continue
}

/// `token`'s log probability under `logits` (a log-softmax over the vocabulary, before sampling
/// filters), and the `top` most likely tokens with theirs.
fn logprob(inner: &Inner, logits: &[f32], token: LlamaToken, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - lse) as f32;
    let vocab = inner.model.vocab();
    let piece = |t: i32| vocab.token_to_piece(LlamaToken(t), false, None);
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i, l));
                best.truncate(top);
            }
        }
    }
    let chosen = usize::try_from(token.0).ok().and_then(|i| logits.get(i)).copied().unwrap_or(f32::NEG_INFINITY);
    TokenLogprob {
        token: piece(token.0),
        logprob: lp(chosen),
        top: best.into_iter().map(|(i, l)| (piece(i32::try_from(i).unwrap_or(0)), lp(l))).collect(),
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
