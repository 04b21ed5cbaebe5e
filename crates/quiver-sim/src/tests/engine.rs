//! Unit tests of `engine.rs`: the paced engine is deterministic, honours max_tokens, stop
//! strings, the context size, and stops when its consumer goes away.

use super::*;
use quiver_engine::{Engine, SamplingParams};

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest::new(Input::Prompt(prompt.into()), SamplingParams { max_tokens, ..SamplingParams::default() })
}

async fn run(engine: &PacedEngine, req: GenerateRequest) -> (String, FinishReason, Usage) {
    let mut generation = engine.generate(req).expect("generation starts");
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), generation.next()).await.expect("an event in time") {
            Some(Ok(GenEvent::Token { text: t, .. })) => text.push_str(&t),
            Some(Ok(GenEvent::Logprob(_))) => panic!("the paced engine reports no log probabilities"),
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

/// Under tokio's paused clock, which moves only to the next timer: token `i` of a 100 tokens/s
/// generation arrives exactly `i` × 10 ms after the start.
#[tokio::test(start_paused = true)]
async fn tokens_come_at_the_set_pace() {
    let e = PacedEngine::new(PacedConfig { tokens_per_sec: 100.0, capacity: 1, context_size: 4096 });
    let start = tokio::time::Instant::now();
    let mut generation = e.generate(request("pace", 20)).expect("generation starts");
    let mut arrived = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), generation.next()).await.expect("an event in time") {
            Some(Ok(GenEvent::Token { .. })) => arrived.push(start.elapsed()),
            Some(Ok(GenEvent::Done { usage, .. })) => {
                assert_eq!(usage.completion_tokens, 20);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<Duration> = (0..20).map(|i| Duration::from_millis(10 * i)).collect();
    assert_eq!(arrived, expected);
}

/// Dropping the generation ends its task at its next token (one pace later), long before the
/// answer's natural end (at least 16 tokens, 1.5 s at 10 tokens/s). The paused clock makes the
/// bound exact rather than a guess about the machine's speed.
#[tokio::test(start_paused = true)]
async fn dropping_the_generation_ends_its_task() {
    let e = PacedEngine::new(PacedConfig { tokens_per_sec: 10.0, capacity: 2, context_size: 4096 });
    assert_eq!(e.running_generations(), 0);
    let mut generation = e.generate(request("a long answer", 1000)).expect("generation starts");
    let other = e.generate(request("another answer", 1000)).expect("generation starts");
    assert_eq!(e.running_generations(), 2);
    let first = tokio::time::timeout(Duration::from_secs(1), generation.next()).await.expect("a token in time");
    assert!(matches!(first, Some(Ok(GenEvent::Token { .. }))), "{first:?}");
    drop(generation);
    running_falls_to(&e, 1).await;
    // The other generation is untouched; dropped unread, it ends too.
    assert_eq!(e.running_generations(), 1);
    drop(other);
    running_falls_to(&e, 0).await;
}

/// Waits until at most `n` generation tasks of `e` run, for less than two paces of 10 tokens/s.
async fn running_falls_to(e: &PacedEngine, n: usize) {
    tokio::time::timeout(Duration::from_millis(150), async {
        while e.running_generations() > n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} generation tasks still run a pace after the drop", e.running_generations()));
}
