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
    let (reason, usage) = s.end().unwrap();
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(usage, Usage { prompt_tokens: 7, completion_tokens: 2, cached_tokens: 0 });
}

#[test]
fn stream_without_usage_counts_chunks() {
    let mut s = StreamState::new(false);
    for l in [r#"data: {"choices":[{"text":"a"}]}"#, r#"data: {"choices":[{"text":"b","finish_reason":"stop"}]}"#] {
        s.line(l).unwrap();
    }
    assert_eq!(
        s.end().unwrap(),
        (FinishReason::Stop, Usage { prompt_tokens: 0, completion_tokens: 2, cached_tokens: 0 })
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
