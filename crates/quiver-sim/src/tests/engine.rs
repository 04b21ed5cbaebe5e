//! Unit tests of `engine.rs`: the paced engine is deterministic, honours max_tokens, stop
//! strings, the context size, and stops when its consumer goes away.

use super::*;
use quiver_engine::{Engine, SamplingParams};

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        input: Input::Prompt(prompt.into()),
        params: SamplingParams { max_tokens, ..SamplingParams::default() },
    }
}

async fn run(engine: &PacedEngine, req: GenerateRequest) -> (String, FinishReason, Usage) {
    let mut generation = engine.generate(req).expect("generation starts");
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), generation.next()).await.expect("an event in time") {
            Some(Ok(GenEvent::Token { text: t, .. })) => text.push_str(&t),
            Some(Ok(GenEvent::Done { finish_reason, usage })) => return (text, finish_reason, usage),
            Some(Err(e)) => panic!("generation failed: {e}"),
            None => panic!("generation ended without Done"),
        }
    }
}

fn fast() -> Arc<PacedEngine> {
    PacedEngine::new(PacedConfig { tokens_per_sec: 2000.0, capacity: 2, context_size: 4096 })
}

#[tokio::test]
async fn same_input_same_text() {
    let e = fast();
    let (a, fa, ua) = run(&e, request("hello there", 500)).await;
    let (b, fb, ub) = run(&e, request("hello there", 500)).await;
    assert_eq!((a.as_str(), fa, ua), (b.as_str(), fb, ub));
    assert_eq!(fa, FinishReason::Stop);
    assert_eq!(ua.completion_tokens, natural_length("hello there"));
    assert_eq!(ua.prompt_tokens, 2);
    let (c, _, _) = run(&e, request("another prompt", 500)).await;
    assert_ne!(a, c);
}

#[tokio::test]
async fn max_tokens_cuts_the_answer() {
    let (text, finish, usage) = run(&fast(), request("count", 3)).await;
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(usage.completion_tokens, 3);
    let expected: String = (0..3).map(|i| token_text("count", 0, i)).collect();
    assert_eq!(text, expected);
}

#[tokio::test]
async fn stop_strings_end_the_answer() {
    let first_two: String = (0..2).map(|i| token_text("stop here", 0, i)).collect();
    let third = token_text("stop here", 0, 2);
    let mut req = request("stop here", 50);
    req.params.stop = vec![third.clone()];
    let (text, finish, _) = run(&fast(), req).await;
    assert_eq!(finish, FinishReason::Stop);
    assert!(text.starts_with(&first_two) && !text.contains(third.as_str()), "{text:?}");
}

#[tokio::test]
async fn prompt_beyond_the_context_is_refused() {
    let long = "word ".repeat(5000);
    let err = fast().generate(request(&long, 4)).err();
    assert!(matches!(err, Some(EngineError::ContextOverflow { prompt_tokens: 5000, context: 4096 })), "{err:?}");
    assert!(fast().generate(request("x", 0)).is_err());
}

#[tokio::test]
async fn tokens_come_at_the_set_pace() {
    // 20 tokens at 100/s take at least 190 ms (the first comes at once).
    let e = PacedEngine::new(PacedConfig { tokens_per_sec: 100.0, capacity: 1, context_size: 4096 });
    let start = tokio::time::Instant::now();
    let (_, _, usage) = run(&e, request("pace", 20)).await;
    assert_eq!(usage.completion_tokens, 20);
    assert!(start.elapsed() >= Duration::from_millis(190), "{:?}", start.elapsed());
}
