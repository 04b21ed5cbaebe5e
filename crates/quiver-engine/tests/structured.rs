//! Structured output and tools with the real default model: what a grammar allows is what the
//! 135M model writes, whatever it would have written free.

use quiver_engine::chat::tools::{self, ParsedCall};
use quiver_engine::llama::LlamaEngine;
use quiver_engine::{
    ChatMessage, Engine, EngineError, FinishReason, GenerateRequest, Input, ResponseFormat, SamplingParams, Tool,
    ToolCall, ToolChoice, Tools,
};
use serde_json::{Value, json};

use super::llama::{Output, chat, engine, generate, greedy, own_engine, run};

fn with_format(text: &str, format: ResponseFormat, max_tokens: u32) -> GenerateRequest {
    chat(text, SamplingParams { response_format: format, ..greedy(max_tokens) })
}

fn schema_request(text: &str, schema: &Value) -> GenerateRequest {
    with_format(text, ResponseFormat::JsonSchema(schema.to_string()), 200)
}

/// A person: strings, a bounded integer, an enum list, a nested object, a number-or-string, no
/// other properties.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["friend", "colleague", "family"]}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": false
            },
            "height": {"anyOf": [{"type": "number"}, {"type": "string", "maxLength": 10}]}
        },
        "required": ["name", "age", "tags", "address", "height"],
        "additionalProperties": false
    })
}

/// Checks `v` against [`person_schema`] by hand.
fn assert_person(v: &Value) {
    let o = v.as_object().unwrap_or_else(|| panic!("an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["address", "age", "height", "name", "tags"], "{v}");
    assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 24), "{v}");
    assert!(o["age"].as_u64().is_some_and(|a| a <= 150), "{v}");
    let tags = o["tags"].as_array().unwrap_or_else(|| panic!("tags: {v}"));
    assert!(tags.len() <= 3);
    assert!(tags.iter().all(|t| ["friend", "colleague", "family"].contains(&t.as_str().unwrap_or(""))), "{v}");
    let address = o["address"].as_object().unwrap_or_else(|| panic!("address: {v}"));
    assert_eq!(address.len(), 2, "{v}");
    let zip = address["zip"].as_str().unwrap_or_else(|| panic!("zip: {v}"));
    assert!(zip.len() == 5 && zip.bytes().all(|b| b.is_ascii_digit()), "{v}");
    assert!(o["height"].is_number() || o["height"].is_string(), "{v}");
}

fn parse_json(out: &Output) -> Value {
    assert_eq!(out.finish_reason, FinishReason::Stop, "the grammar ended the answer: {}", out.text);
    serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.text))
}

#[test]
fn json_schema_output_validates() {
    let out = generate(engine(), schema_request("Describe my friend Ann as JSON.", &person_schema()));
    assert_person(&parse_json(&out));
}

#[test]
fn json_object_output_is_an_object() {
    let out = generate(engine(), with_format("What is 2 + 2? Answer in JSON.", ResponseFormat::JsonObject, 200));
    assert!(parse_json(&out).is_object(), "{}", out.text);
}

#[test]
fn enums_and_required_hold_even_when_the_model_would_say_otherwise() {
    let schema = json!({"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
                        "required": ["answer", "sure"], "additionalProperties": false});
    let v = parse_json(&generate(engine(), schema_request("Is the sky green?", &schema)));
    assert!(v["answer"] == "yes" || v["answer"] == "no", "{v}");
    assert!(v["sure"].is_boolean(), "{v}");
    // A free answer is not JSON: the grammar is what made it so.
    let free = generate(engine(), chat("Is the sky green?", greedy(40)));
    assert!(serde_json::from_str::<Value>(&free.text).is_err(), "{}", free.text);
}

fn weather_tools(choice: ToolChoice) -> Tools {
    Tools {
        list: vec![
            Tool {
                name: "get_weather".into(),
                description: "The current weather in a city".into(),
                parameters: json!({"type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                    "required": ["city", "unit"], "additionalProperties": false})
                .to_string(),
            },
            Tool {
                name: "get_time".into(),
                description: "The local time in a city".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                    "required": ["city"], "additionalProperties": false})
                .to_string(),
            },
        ],
        choice,
        parallel: false,
    }
}

fn tool_request(messages: Vec<ChatMessage>, tools: Tools) -> GenerateRequest {
    GenerateRequest { input: Input::Chat(messages), params: greedy(120), tools }
}

fn calls(e: &LlamaEngine, messages: Vec<ChatMessage>, tools: &Tools) -> (Output, Vec<ParsedCall>) {
    let out = generate(e, tool_request(messages, tools.clone()));
    let parsed = tools::parse(&out.text, tools);
    (out, parsed.calls)
}

fn assert_weather_args(call: &ParsedCall) {
    let args: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
    let o = args.as_object().expect("an object");
    assert_eq!(o.len(), 2, "{args}");
    assert!(o["city"].as_str().is_some_and(|c| c.chars().count() <= 30), "{args}");
    assert!(o["unit"] == "celsius" || o["unit"] == "fahrenheit", "{args}");
}

#[test]
fn a_named_function_is_called_with_valid_arguments() {
    let tools = weather_tools(ToolChoice::Function("get_weather".into()));
    let (out, calls) = calls(engine(), vec![ChatMessage::new("user", "How warm is it in Paris?")], &tools);
    assert_eq!(calls.len(), 1, "{}", out.text);
    assert_eq!(calls[0].name, "get_weather");
    assert_weather_args(&calls[0]);
    assert!(out.text.starts_with("<tool_call>\n"), "the default model's format: {}", out.text);
}

#[test]
fn required_calls_one_of_the_tools_and_the_result_can_follow() {
    let tools = weather_tools(ToolChoice::Required);
    let question = ChatMessage::new("user", "What time is it in Tokyo?");
    let (out, made) = calls(engine(), vec![question.clone()], &tools);
    assert_eq!(made.len(), 1, "one call, parallel calls refused: {}", out.text);
    assert!(["get_weather", "get_time"].contains(&made[0].name.as_str()), "{}", out.text);
    // The next turn: the call and its result in the history; `auto` lets the model answer.
    let history = vec![
        question,
        ChatMessage {
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: made[0].name.clone(),
                arguments: made[0].arguments.clone(),
            }],
            ..ChatMessage::new("assistant", "")
        },
        ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "{\"time\": \"14:05\"}") },
    ];
    let auto = weather_tools(ToolChoice::Auto);
    let next = generate(engine(), tool_request(history, auto.clone()));
    assert!(!next.text.is_empty());
    // In `auto` a call, if the model starts one, is complete and valid (the lazy grammar).
    if next.text.contains("<tool_call>") {
        assert!(!tools::parse(&next.text, &auto).calls.is_empty(), "{}", next.text);
    }
}

#[test]
fn constrained_requests_batched_equal_each_alone() {
    let requests = || {
        vec![
            schema_request("Describe my friend Ann as JSON.", &person_schema()),
            tool_request(
                vec![ChatMessage::new("user", "Weather in Oslo?")],
                weather_tools(ToolChoice::Function("get_weather".into())),
            ),
            with_format("What is 2 + 2? Answer in JSON.", ResponseFormat::JsonObject, 200),
            chat("What is the capital of France?", greedy(40)),
        ]
    };
    let alone: Vec<String> = requests().into_iter().map(|r| generate(&own_engine(1), r).text).collect();
    let e = own_engine(4);
    let running: Vec<_> = requests().into_iter().map(|r| e.generate(r).expect("starts")).collect();
    let together: Vec<String> = running.into_iter().map(|g| run(g).text).collect();
    assert_eq!(together, alone);
}

#[test]
fn logit_bias_steers_and_bans_tokens() {
    let e = engine();
    let plain = generate(e, chat("What is the capital of France?", greedy(8)));
    let vocab_first = e.tokenize_text(&plain.text).expect("tokenizes");
    let first = vocab_first[0];
    let banned = SamplingParams { logit_bias: vec![(first, -100.0)], ..greedy(8) };
    let without = generate(e, chat("What is the capital of France?", banned));
    assert!(!without.text.starts_with(&plain.text), "{} / {}", without.text, plain.text);
    let forced = SamplingParams { logit_bias: vec![(first, 100.0)], ..greedy(4) };
    let repeated = generate(e, chat("What is the capital of France?", forced));
    let once = e.detokenize(&[first]).expect("detokenizes");
    assert_eq!(repeated.text, once.repeat(4), "a +100 bias makes that token every token");
}

#[test]
fn penalties_change_a_repetitive_answer() {
    let e = engine();
    let prompt = "Write the word 'cat' twenty times.";
    let plain = generate(e, chat(prompt, greedy(48)));
    let penalised =
        generate(e, chat(prompt, SamplingParams { frequency_penalty: 2.0, presence_penalty: 2.0, ..greedy(48) }));
    assert_ne!(plain.text, penalised.text);
    let cats = |text: &str| text.to_lowercase().matches("cat").count();
    assert!(cats(&penalised.text) < cats(&plain.text), "{} / {}", penalised.text, plain.text);
}

#[test]
fn bad_constraints_are_refused_before_any_work() {
    let e = engine();
    let bad = |r: GenerateRequest| matches!(e.generate(r), Err(EngineError::InvalidRequest(_)));
    assert!(bad(schema_request("x", &json!({"$ref": "#/nowhere"}))));
    assert!(bad(tool_request(vec![ChatMessage::new("user", "x")], weather_tools(ToolChoice::Function("nope".into())))));
    let prompt_tools =
        GenerateRequest { input: Input::Prompt("x".into()), params: greedy(4), tools: weather_tools(ToolChoice::Auto) };
    assert!(bad(prompt_tools), "tools need chat messages");
    assert!(bad(chat("x", SamplingParams { presence_penalty: 9.0, ..greedy(4) })));
}

#[test]
fn logprobs_come_with_each_token_and_agree_with_greedy_choice() {
    let e = engine();
    let plain = generate(e, chat("What is the capital of France?", greedy(12)));
    let with = generate(e, chat("What is the capital of France?", SamplingParams { logprobs: Some(3), ..greedy(12) }));
    assert_eq!(with.text, plain.text, "asking for log probabilities changes nothing else");
    assert!(plain.logprobs.is_empty());
    assert_eq!(with.logprobs.len() as u32, with.usage.completion_tokens, "one per generated token");
    let joined: Vec<u8> = with.logprobs.iter().flat_map(|lp| lp.token.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&joined), with.text);
    for lp in &with.logprobs {
        assert!(lp.logprob <= 0.0 && lp.logprob.is_finite(), "{lp:?}");
        assert_eq!(lp.top.len(), 3);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first: {lp:?}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp.top[0].0, lp.token, "{lp:?}");
        assert!((lp.top[0].1 - lp.logprob).abs() < 1e-5, "{lp:?}");
    }
    assert!(e.generate(chat("x", SamplingParams { logprobs: Some(21), ..greedy(2) })).is_err());
}
