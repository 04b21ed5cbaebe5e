//! The llama.cpp engine with the real default model (SmolLM2-135M-Instruct Q4_1).
//!
//! The model is looked for in `$QUIVER_MODEL_DIR`, else in `target/models` of the workspace
//! (`scripts/fetch-model.sh` puts it there).

use std::path::PathBuf;
use std::sync::OnceLock;

use futures::executor::block_on;
use quiver_engine::llama::{LlamaConfig, LlamaEngine};
use quiver_engine::models::{self, DEFAULT_MODEL};
use quiver_engine::{
    ChatMessage, Engine, EngineError, FinishReason, GenEvent, GenerateRequest, Generation, Input, SamplingParams, Usage,
};

fn model_path() -> PathBuf {
    let entry = models::find(DEFAULT_MODEL).unwrap();
    let dir = std::env::var_os("QUIVER_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models"));
    let path = dir.join(&entry.file_name);
    assert!(
        path.is_file(),
        "the test model {} is missing: run scripts/fetch-model.sh (or set QUIVER_MODEL_DIR)",
        path.display()
    );
    path
}

fn config(context_size: u32) -> LlamaConfig {
    LlamaConfig { threads: 2, context_size, slots: 0, ..LlamaConfig::default() }
}

/// An engine of its own with `slots` slots, so that other tests' requests do not touch its slots
/// or its prompt cache.
pub(crate) fn own_engine(slots: u32) -> LlamaEngine {
    let entry = models::find(DEFAULT_MODEL).unwrap();
    LlamaEngine::load(&model_path(), DEFAULT_MODEL, Some(entry.sha256), LlamaConfig { slots, ..config(2048) }).unwrap()
}

/// One engine shared by the tests of this file.
pub(crate) fn engine() -> &'static LlamaEngine {
    static ENGINE: OnceLock<LlamaEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let entry = models::find(DEFAULT_MODEL).unwrap();
        LlamaEngine::load(&model_path(), DEFAULT_MODEL, Some(entry.sha256), config(2048)).unwrap()
    })
}

pub(crate) fn chat(text: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest::new(Input::Chat(vec![ChatMessage::new("user", text)]), params)
}

pub(crate) fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { max_tokens, ..Default::default() }
}

pub(crate) struct Output {
    pub(crate) text: String,
    /// Log probabilities, when the request asked for them.
    pub(crate) logprobs: Vec<quiver_engine::TokenLogprob>,
    /// Token events (each with `tokens == 1`).
    pub(crate) token_events: u32,
    /// Sum of `tokens` over the events.
    pub(crate) tokens: u32,
    pub(crate) finish_reason: FinishReason,
    pub(crate) usage: Usage,
}

pub(crate) fn run(g: Generation) -> Output {
    block_on(async move {
        let mut g = g;
        let (mut text, mut token_events, mut tokens) = (String::new(), 0, 0);
        let mut logprobs = Vec::new();
        while let Some(event) = g.next().await {
            match event.unwrap() {
                GenEvent::Logprob(lp) => logprobs.push(lp),
                GenEvent::Token { text: t, tokens: n } => {
                    text.push_str(&t);
                    tokens += n;
                    token_events += u32::from(n == 1);
                }
                GenEvent::Done { finish_reason, usage } => {
                    assert!(g.next().await.is_none());
                    return Output { text, logprobs, token_events, tokens, finish_reason, usage };
                }
            }
        }
        panic!("no Done event");
    })
}

pub(crate) fn generate(e: &LlamaEngine, request: GenerateRequest) -> Output {
    run(e.generate(request).unwrap())
}

#[test]
fn model_identity() {
    let e = engine();
    let entry = models::find(DEFAULT_MODEL).unwrap();
    assert_eq!(e.model().sha256, entry.sha256);
    assert_eq!(e.model().name, DEFAULT_MODEL);
    assert!(!e.model().gguf_name.is_empty());
    assert_eq!(e.build_id(), "llama.cpp/llama-cpp-2=0.1.160");
    assert_eq!((e.threads(), e.context_size()), (2, 2048));
    assert_eq!(models::gguf_general_name(&model_path()).unwrap().as_deref(), Some(e.model().gguf_name.as_str()));
}

#[test]
fn identity_hash_is_computed_when_not_given() {
    let e = LlamaEngine::load(&model_path(), "x", None, config(256)).unwrap();
    assert_eq!(e.model().sha256, models::find(DEFAULT_MODEL).unwrap().sha256);
}

#[test]
fn greedy_chat_is_deterministic() {
    let e = engine();
    let started = std::time::Instant::now();
    let a = generate(e, chat("What is the capital of France?", greedy(32)));
    eprintln!("32-token greedy generation: {:?}, {:?}", started.elapsed(), a.text);
    assert!(!a.text.trim().is_empty());
    assert!(a.usage.completion_tokens <= 32);
    assert_eq!(a.usage.completion_tokens, a.tokens);
    assert_eq!(a.usage.completion_tokens, a.token_events);
    assert!(a.usage.prompt_tokens > 5);
    if a.usage.completion_tokens == 32 {
        assert_eq!(a.finish_reason, FinishReason::Length);
    }
    let b = generate(e, chat("What is the capital of France?", greedy(32)));
    assert_eq!(a.text, b.text);
    assert_eq!((a.usage.prompt_tokens, a.usage.completion_tokens), (b.usage.prompt_tokens, b.usage.completion_tokens));

    let started = std::time::Instant::now();
    let long = generate(e, chat("Tell me a long story about a dragon.", greedy(32)));
    eprintln!("32 tokens generated in {:?}", started.elapsed());
    assert_eq!((long.finish_reason, long.usage.completion_tokens), (FinishReason::Length, 32));
}

#[test]
fn seeded_sampling() {
    let e = engine();
    let params = |seed| SamplingParams { max_tokens: 24, temperature: 1.0, top_p: 0.95, seed, ..Default::default() };
    let prompt = "Write a short poem about the sea.";
    let a = generate(e, chat(prompt, params(1)));
    let a2 = generate(e, chat(prompt, params(1)));
    assert_eq!(a.text, a2.text, "same seed, same text");
    // Different seeds almost surely differ somewhere among a few tries.
    let differs = (2..6).any(|seed| generate(e, chat(prompt, params(seed))).text != a.text);
    assert!(differs, "every seed gave {:?}", a.text);
}

#[test]
fn stop_string_is_honoured() {
    let e = engine();
    let prompt = "Count from 1 to 10, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. \
                  Now you do it. Write only the numbers.";
    let free = generate(e, chat(prompt, greedy(40)));
    assert!(free.text.contains('4'), "the model did not count: {:?}", free.text);
    let params = SamplingParams { max_tokens: 40, stop: vec!["4".into()], ..Default::default() };
    let stopped = generate(e, chat(prompt, params));
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(!stopped.text.contains('4'), "{:?}", stopped.text);
    let cut = free.text.find('4').unwrap();
    assert_eq!(stopped.text, free.text[..cut]);
    assert_eq!(stopped.usage.completion_tokens, stopped.tokens);
}

#[test]
fn max_tokens_is_honoured() {
    let e = engine();
    let out = generate(e, chat("Tell me a long story about a dragon.", greedy(5)));
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, 5);
    assert_eq!(out.token_events, 5);

    // A raw prompt, continued as is.
    let request = GenerateRequest {
        input: Input::Prompt("The capital of France is".into()),
        params: greedy(4),
        tools: Default::default(),
    };
    let out = generate(e, request);
    assert_eq!(out.usage.completion_tokens, 4);
    assert!(out.usage.prompt_tokens >= 5);
}

#[test]
fn context_overflow_is_an_error() {
    let e = LlamaEngine::load(&model_path(), DEFAULT_MODEL, Some([0; 32]), config(256)).unwrap();
    let long = "word ".repeat(2000);
    match e.generate(chat(&long, greedy(8))) {
        Err(EngineError::ContextOverflow { prompt_tokens, context }) => {
            assert!(prompt_tokens > 256);
            assert_eq!(context, 256);
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a too-long prompt was accepted"),
    }
    // A prompt that fits but leaves little room: completion clamped to the context.
    let medium = "word ".repeat(200);
    let out =
        generate(&e, GenerateRequest { input: Input::Prompt(medium), params: greedy(500), tools: Default::default() });
    assert!(out.usage.prompt_tokens + out.usage.completion_tokens <= 256);
    if out.usage.prompt_tokens + out.usage.completion_tokens == 256 {
        assert_eq!(out.finish_reason, FinishReason::Length);
    }
    // Still works afterwards.
    assert!(!generate(&e, chat("Hi!", greedy(4))).text.is_empty());
}

#[test]
fn invalid_requests_are_refused() {
    let e = engine();
    let bad = |params: SamplingParams| matches!(e.generate(chat("hi", params)), Err(EngineError::InvalidRequest(_)));
    assert!(bad(greedy(0)));
    assert!(bad(SamplingParams { temperature: f32::NAN, ..greedy(4) }));
    assert!(bad(SamplingParams { top_p: 0.0, ..greedy(4) }));
    assert!(bad(SamplingParams { stop: vec!["x".repeat(5000)], ..greedy(4) }));
    let nul = chat("a\0b", greedy(4));
    assert!(matches!(e.generate(nul), Err(EngineError::InvalidRequest(_))));
    let empty = GenerateRequest { input: Input::Chat(vec![]), params: greedy(4), tools: Default::default() };
    assert!(matches!(e.generate(empty), Err(EngineError::InvalidRequest(_))));
}

/// Waits (a minute at most) until no generation thread of `e` is running.
fn all_generations_end(e: &LlamaEngine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while e.running_generations() > 0 {
        assert!(std::time::Instant::now() < deadline, "a generation thread is still running after a minute");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn cancellation_ends_the_generation() {
    // An engine of its own, so that the other tests' generations do not show in its counts.
    let entry = models::find(DEFAULT_MODEL).unwrap();
    let e = LlamaEngine::load(&model_path(), DEFAULT_MODEL, Some(entry.sha256), config(2048)).unwrap();
    assert_eq!(e.running_generations(), 0);
    let mut g = e.generate(chat("Tell me a long story about a dragon.", greedy(1000))).unwrap();
    assert_eq!(e.running_generations(), 1);
    block_on(async {
        for _ in 0..2 {
            assert!(matches!(g.next().await, Some(Ok(GenEvent::Token { .. }))));
        }
    });
    drop(g);
    // The thread ends on its next send: it sampled at most the 2 tokens read, the channel's
    // worth waiting unread, and the one it could not send. Uncancelled, the story runs for
    // hundreds of tokens.
    all_generations_end(&e);
    let sampled = e.tokens_sampled();
    let bound = 2 + Generation::CHANNEL as u64 + 1;
    assert!(sampled <= bound, "{sampled} tokens sampled for a generation dropped after 2 (at most {bound})");
    // The engine still works, and its thread ends too.
    let out = generate(&e, chat("What is the capital of France?", greedy(8)));
    assert!(out.usage.completion_tokens > 0);
    all_generations_end(&e);
}

#[test]
fn concurrent_generations() {
    let e = engine();
    let a = e.generate(chat("What is the capital of France?", greedy(16))).unwrap();
    let b = e.generate(chat("What is the capital of Italy?", greedy(16))).unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(a));
        let b = s.spawn(|| run(b));
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(!out.text.trim().is_empty());
        assert_eq!(out.usage.completion_tokens, out.tokens);
    }
    // Same answer as when run alone.
    let alone = generate(e, chat("What is the capital of France?", greedy(16)));
    assert_eq!(alone.text, a.text);
}

#[test]
fn loading_garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    let err = LlamaEngine::load(&junk, "junk", None, config(256)).unwrap_err();
    assert!(matches!(err, EngineError::Load { .. }), "{err}");
    let err = LlamaEngine::load(&dir.path().join("absent.gguf"), "x", None, config(256)).unwrap_err();
    assert!(matches!(err, EngineError::Load { .. }), "{err}");
}

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Why is the sky blue?",
    "Give me a name for a pet cat.",
    "What do bees make?",
    "Tell me a long story about a dragon.",
];

/// Eight greedy requests at once on a 4-slot engine (four decoded together, four queued) all
/// complete, and each answer equals the one a fresh engine gives the same request alone: batching
/// and queueing change nothing in the output.
#[test]
fn batched_greedy_equals_solo() {
    let request = |q: &str| chat(q, greedy(40));
    // Alone: a fresh engine per request, so no prompt cache and no other sequence is involved.
    let solo: Vec<String> = QUESTIONS.iter().map(|q| generate(&own_engine(1), request(q)).text).collect();
    let e = own_engine(4);
    let generations: Vec<Generation> = QUESTIONS.iter().map(|q| e.generate(request(q)).unwrap()).collect();
    assert_eq!(e.running_generations(), 8);
    let batched: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = generations.into_iter().map(|g| s.spawn(|| run(g))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((q, alone), together) in QUESTIONS.iter().zip(&solo).zip(&batched) {
        assert!(!alone.trim().is_empty());
        assert_eq!(&together.text, alone, "{q:?}: batched answer differs from the answer alone");
        assert_eq!(together.usage.completion_tokens, together.tokens);
    }
    all_generations_end(&e);
}

/// A request that repeats a prompt, or continues a chat, reuses the KV of the slot that read it:
/// `cached_tokens` says how much, and the answer is the one an engine without that cache gives.
#[test]
fn prompt_cache_hit_gives_the_same_answer() {
    let e = own_engine(2);
    let first = generate(&e, chat("What is the capital of France?", greedy(24)));
    assert_eq!(first.usage.cached_tokens, 0, "a fresh engine has nothing cached");
    let again = generate(&e, chat("What is the capital of France?", greedy(24)));
    assert_eq!(again.text, first.text);
    // All of the prompt but its last token, whose logits start the answer.
    assert_eq!(again.usage.cached_tokens, again.usage.prompt_tokens - 1);

    // The next turn of the chat: the history is the cached prompt and answer.
    let turn = |answer: &str| {
        let m = |role: &str, content: &str| ChatMessage::new(role, content);
        GenerateRequest {
            input: Input::Chat(vec![
                m("user", "What is the capital of France?"),
                m("assistant", answer),
                m("user", "And what is its population?"),
            ]),
            params: greedy(24),
            tools: Default::default(),
        }
    };
    let next = generate(&e, turn(&first.text));
    assert!(next.usage.cached_tokens > first.usage.prompt_tokens / 2, "{:?}", next.usage);
    let uncached = generate(&own_engine(1), turn(&first.text));
    assert_eq!(uncached.usage.cached_tokens, 0);
    assert_eq!(next.text, uncached.text, "a cache hit changed the answer");
    let (cached, decoded) = e.prompt_tokens_cached_and_decoded();
    assert_eq!(cached, u64::from(again.usage.cached_tokens + next.usage.cached_tokens));
    assert!(decoded > 0);
}

/// With every slot taken, a request waits; dropping a running generation gives its slot to the
/// waiting one at once, well before the dropped one would have ended.
#[test]
fn a_cancelled_stream_frees_its_slot() {
    let e = own_engine(1);
    let mut long = e.generate(chat("Tell me a long story about a dragon.", greedy(1000))).unwrap();
    block_on(async {
        assert!(matches!(long.next().await, Some(Ok(GenEvent::Token { .. }))));
    });
    let waiting = e.generate(chat("What is the capital of France?", greedy(8))).unwrap();
    assert_eq!(e.running_generations(), 2);
    let sampled_before = e.tokens_sampled();
    drop(long);
    let out = run(waiting);
    assert!(out.usage.completion_tokens > 0);
    // The story was cut: what was sampled meanwhile is the channel's worth at most, plus the answer.
    let sampled = e.tokens_sampled() - sampled_before;
    let bound = Generation::CHANNEL as u64 + 1 + u64::from(out.usage.completion_tokens);
    assert!(sampled <= bound, "{sampled} tokens sampled (at most {bound})");
    all_generations_end(&e);
}
