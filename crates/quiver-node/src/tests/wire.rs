//! Unit tests of `wire.rs`.

use super::*;

#[test]
fn round_trips() {
    let none = Tools::default();
    let chat = Input::Chat(vec![ChatMessage::new("user", "hi")]);
    assert_eq!(input_from_wire(input_to_wire(&chat, &none)), (chat, none.clone()));
    let raw = Input::Prompt("once upon".into());
    assert_eq!(input_from_wire(input_to_wire(&raw, &none)), (raw, none));
    let p = SamplingParams {
        max_tokens: 5,
        temperature: 0.7,
        top_p: 0.9,
        top_k: 40,
        seed: 42,
        stop: vec!["\n".into()],
        response_format: ResponseFormat::JsonSchema(r#"{"type":"object"}"#.into()),
        presence_penalty: 0.5,
        frequency_penalty: -0.25,
        logit_bias: vec![(7, -100.0), (42, 3.5)],
        logprobs: Some(5),
    };
    assert_eq!(params_from_wire(params_to_wire(&p)), p);
    let object = SamplingParams { response_format: ResponseFormat::JsonObject, ..SamplingParams::default() };
    assert_eq!(params_from_wire(params_to_wire(&object)), object);
    assert!(model_name_key("m").starts_with(quiver_net::MODEL_KEY_PREFIX));
}

#[test]
fn tools_calls_and_results_round_trip() {
    let history = Input::Chat(vec![
        ChatMessage::new("user", "weather in Paris?"),
        ChatMessage {
            role: "assistant".into(),
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            tool_call_id: None,
        },
        ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "18 C") },
    ]);
    for choice in [ToolChoice::Auto, ToolChoice::None, ToolChoice::Required, ToolChoice::Function("weather".into())] {
        let tools = Tools {
            list: vec![Tool {
                name: "weather".into(),
                description: "Current weather".into(),
                parameters: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
            }],
            choice,
            parallel: false,
        };
        let wire = input_to_wire(&history, &tools);
        wire.validate().expect("valid on the wire");
        assert_eq!(input_from_wire(wire), (history.clone(), tools));
    }
}
