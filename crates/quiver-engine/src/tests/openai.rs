//! Unit tests of `openai/`.

use super::wire::*;
use super::*;
use crate::{FinishReason, Usage};

#[test]
fn debug_hides_the_api_key() {
    let config = OpenAiConfig { api_key: Some("sk-secret".into()), ..Default::default() };
    assert!(!format!("{config:?}").contains("sk-secret"));
}

#[test]
fn lines_across_chunks() {
    let mut l = Lines::default();
    assert_eq!(l.push(b"data: a").unwrap(), Vec::<String>::new());
    assert_eq!(l.push(b"b\r\n\ndata:").unwrap(), vec!["data: ab".to_string(), String::new()]);
    assert_eq!(l.push(b" c\n").unwrap(), vec!["data: c".to_string()]);
    assert_eq!(l.push(b"tail").unwrap(), Vec::<String>::new());
    assert_eq!(l.finish().unwrap(), "tail");
}

#[test]
fn lines_are_bounded() {
    let mut l = Lines::default();
    let big = vec![b'x'; MAX_LINE / 2 + 1];
    assert!(l.push(&big).is_ok());
    assert!(l.push(&big).is_err());
    let mut l = Lines::default();
    assert!(l.push(b"\xff\xfe\n").is_err());
}

#[test]
fn stream_of_chat_chunks() {
    let mut s = StreamState::new(true);
    let lines = [
        ": keep-alive",
        "",
        r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#,
        r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#,
        r#"data:{"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}"#,
        r#"data: {"choices":[{"delta":{},"finish_reason":"length"}]}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#,
        "data: [DONE]",
    ];
    let texts: Vec<String> = lines.iter().filter_map(|l| s.line(l).unwrap()).collect();
    assert_eq!(texts, ["Hel", "lo"]);
    assert!(s.done);
    let (reason, usage, more) = s.end().unwrap();
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(usage, Usage { prompt_tokens: 7, completion_tokens: 2, cached_tokens: 0 });
    assert_eq!(more, 0, "one token a piece, as counted");
}

/// The pieces' tokens and the usage add up (a receipt signs both, and a client checks them
/// against each other): a server that counts more tokens than pieces gets the rest reported
/// at the end, within one token per byte delivered.
#[test]
fn streamed_counts_add_up() {
    let run = |lines: &[&str]| {
        let mut s = StreamState::new(true);
        let texts: Vec<String> = lines.iter().filter_map(|l| s.line(l).unwrap()).collect();
        let calls = s.calls_text();
        let (_, usage, more) = s.end().unwrap();
        (texts, calls, usage.completion_tokens, more)
    };
    // Two tokens in one piece ("Hello" then ", world" as one), counted as 3 by the server.
    let merged = run(&[
        r#"data: {"choices":[{"delta":{"content":"Hello"}}]}"#,
        r#"data: {"choices":[{"delta":{"content":", world"},"finish_reason":"stop"}]}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}"#,
    ]);
    assert_eq!((merged.2, merged.3), (3, 1));
    // A streamed tool call: its tokens come with the usage.
    let call = run(&[
        r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
        r#"data: {"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}"#,
    ]);
    assert!(call.1.is_some());
    assert_eq!((call.2, call.3), (9, 9));
    // A count beyond one token per delivered byte is not believed.
    let inflated = run(&[
        r#"data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":5000}}"#,
    ]);
    assert_eq!((inflated.2, inflated.3), (2, 1));
}

/// Hidden reasoning (vLLM's reasoning parser, DeepSeek, Ollama's thinking models) is not
/// delivered, so its tokens are not the answer's: left out when the server itemises them, and
/// when it does not, the answer's tokens are its pieces.
#[test]
fn hidden_reasoning_is_not_counted() {
    let answer = [
        r#"data: {"choices":[{"delta":{"reasoning_content":"Let me think about it at length."}}]}"#,
        r#"data: {"choices":[{"delta":{"content":"Yes"}}]}"#,
        r#"data: {"choices":[{"delta":{"content":"."},"finish_reason":"stop"}]}"#,
    ];
    let count = |usage: &str| {
        let mut s = StreamState::new(true);
        for l in answer.iter().chain([&usage]) {
            s.line(l).unwrap();
        }
        let (_, usage, more) = s.end().unwrap();
        (usage.completion_tokens, more)
    };
    assert_eq!(count(r#"data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":40}}"#), (2, 0));
    assert_eq!(
        count(
            r#"data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":40,"completion_tokens_details":{"reasoning_tokens":37}}}"#
        ),
        (3, 1)
    );
    let whole = br#"{"choices":[{"message":{"content":"Yes.","reasoning":"Hmm, a long thought that counted many tokens."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":30}}"#;
    assert_eq!(parse_whole(whole, true).unwrap().2.completion_tokens, 4, "no more than a token per byte");
    let itemised = br#"{"choices":[{"message":{"content":"Yes.","reasoning":"Hmm."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":30,"completion_tokens_details":{"reasoning_tokens":28}}}"#;
    assert_eq!(parse_whole(itemised, true).unwrap().2.completion_tokens, 2);
}

#[test]
fn stream_without_usage_counts_chunks() {
    let mut s = StreamState::new(false);
    for l in [r#"data: {"choices":[{"text":"a"}]}"#, r#"data: {"choices":[{"text":"b","finish_reason":"stop"}]}"#] {
        s.line(l).unwrap();
    }
    assert_eq!(
        s.end().unwrap(),
        (FinishReason::Stop, Usage { prompt_tokens: 0, completion_tokens: 2, cached_tokens: 0 }, 0)
    );
    assert!(StreamState::new(true).end().is_err());
}

#[test]
fn stream_errors() {
    let mut s = StreamState::new(true);
    assert!(matches!(s.line("data: {nope"), Err(EngineError::BackendProtocol(_))));
    assert!(matches!(
        s.line(r#"data: {"error":{"message":"model crashed"}}"#),
        Err(EngineError::Inference(m)) if m.contains("model crashed")
    ));
}

#[test]
fn error_messages() {
    let s = reqwest::StatusCode::INTERNAL_SERVER_ERROR;
    assert_eq!(error_message(br#"{"error":{"message":"boom","type":"x"}}"#, s), "boom");
    assert_eq!(error_message(br#"{"error":"model not found"}"#, s), "model not found");
    assert_eq!(error_message(b"plain text\n", s), "plain text");
    assert_eq!(error_message(b"", s), "Internal Server Error");
    assert!(error_message(&[b'x'; 5000], s).len() < 1100);
}

#[test]
fn whole_answers() {
    let chat = br#"{"choices":[{"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#;
    assert_eq!(
        parse_whole(chat, true).unwrap(),
        (
            "Paris.".into(),
            FinishReason::Stop,
            Usage { prompt_tokens: 9, completion_tokens: 3, cached_tokens: 0 },
            Vec::new()
        )
    );
    let completion = br#"{"choices":[{"text":"abc","finish_reason":"length"}]}"#;
    assert_eq!(parse_whole(completion, false).unwrap().1, FinishReason::Length);
    assert!(parse_whole(br#"{"choices":[]}"#, true).is_err());
    assert!(parse_whole(b"<html>", true).is_err());
}

#[test]
fn log_probabilities_in_both_shapes() {
    let chat = r#"{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop","logprobs":{"content":[
        {"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[{"token":"Hi","logprob":-0.5},{"token":"Yo","logprob":-1.5}]}]}}]}"#;
    let (_, _, _, lp) = parse_whole(chat.as_bytes(), true).expect("parses");
    assert_eq!(lp.len(), 1);
    assert_eq!((lp[0].token.as_slice(), lp[0].logprob), (&b"Hi"[..], -0.5));
    assert_eq!(lp[0].top, vec![(b"Hi".to_vec(), -0.5), (b"Yo".to_vec(), -1.5)]);
    let completion = r#"{"choices":[{"text":"a b","finish_reason":"length","logprobs":{"tokens":["a"," b"],
        "token_logprobs":[-0.1,-0.2],"top_logprobs":[{"a":-0.1},{" b":-0.2," c":-2.0}]}}]}"#;
    let (_, _, _, lp) = parse_whole(completion.as_bytes(), false).expect("parses");
    assert_eq!(lp.len(), 2);
    assert_eq!(lp[1].token, b" b".to_vec());
    assert_eq!(lp[1].top.len(), 2);
}
