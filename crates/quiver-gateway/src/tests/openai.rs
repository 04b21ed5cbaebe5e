//! Unit tests of the OpenAI surface: reading requests (messages, tools, response formats,
//! sampling fields) and shaping answers with tool calls.

use axum::body::Bytes;
use axum::http::StatusCode;
use quiver_node::engine::{ChatMessage, FinishReason, Input, ResponseFormat, ToolCall, ToolChoice};
use serde_json::{Value, json};

use super::ApiError;
use super::request::{ApiMessage, check_tool_results, parse_body};
use super::tool_calls::{self, Splitter};

fn messages(body: Value) -> Result<Vec<ChatMessage>, ApiError> {
    let req = parse_body(Ok(Bytes::from(body.to_string()))).expect("parses");
    req.messages.expect("messages").into_iter().map(ApiMessage::into_chat).collect()
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

/// The network request a chat body becomes, or its 400.
fn inference(body: Value) -> Result<quiver_node::InferenceRequest, ApiError> {
    let req = parse_body(Ok(Bytes::from(body.to_string())))?;
    let msgs = req.messages.clone().unwrap_or_default();
    let msgs = msgs.into_iter().map(ApiMessage::into_chat).collect::<Result<Vec<_>, _>>()?;
    check_tool_results(&msgs)?;
    req.to_inference(Input::Chat(msgs))
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn bad_request(body: Value, says: &str) {
    let err = inference(body).expect_err("a 400");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(err.message.contains(says), "`{}` does not say `{says}`", err.message);
    assert_eq!(err.body()["error"]["type"], "invalid_request_error");
}

#[test]
fn string_content_and_text_parts_give_the_same_messages() {
    let plain = messages(json!({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}]}))
    .expect("valid");
    let parts = messages(json!({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"}]}))
    .expect("valid");
    assert_eq!(plain, vec![msg("system", "Be brief."), msg("user", "Hi")]);
    assert_eq!(parts, plain, "developer is the system role; parts are text");
}

#[test]
fn tool_calls_and_tool_results_are_read_from_the_history() {
    let got = messages(json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "First."}, {"type": "text", "text": "Second."}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": {"y": 2}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]}))
    .expect("valid");
    let call = |id: &str, name: &str, arguments: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    };
    assert_eq!(got[0], msg("user", "First.\nSecond."));
    assert_eq!(got[1].tool_calls, vec![call("c1", "f", "{\"x\": 1}"), call("c2", "g", "{\"y\":2}")]);
    assert_eq!(got[1].content, "");
    assert_eq!(got[2], ChatMessage { tool_call_id: Some("c1".into()), ..msg("tool", "42") });
    check_tool_results(&got).expect("c1 was called");
}

#[test]
fn a_tool_result_must_answer_an_earlier_call() {
    bad_request(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"},
            {"role": "tool", "content": "42", "tool_call_id": "nobody"}]}),
        "nobody",
    );
    bad_request(json!({"model": "m", "messages": [{"role": "tool", "content": "42"}]}), "tool_call_id");
    bad_request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
        "only assistant",
    );
}

#[test]
fn images_unknown_roles_and_malformed_parts_are_bad_requests() {
    let image = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    let err = messages(image).expect_err("text only");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(err.message.contains("image_url"), "{}", err.message);

    let err = messages(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})).expect_err("role");
    assert!(err.message.contains("wizard"), "{}", err.message);

    let err = messages(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}))
        .expect_err("a text part without text");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);

    // Content that is neither a string nor a list of parts does not parse at all.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": 7}]});
    let err = parse_body(Ok(Bytes::from(body.to_string()))).expect_err("not a message");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn tools_choices_and_formats_are_read() {
    let user = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let named = inference(json!({"model": "m", "messages": user, "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": false}))
    .expect("valid");
    assert_eq!(named.tools.choice, ToolChoice::Function("get_weather".into()));
    assert!(!named.tools.parallel);
    assert_eq!(named.tools.list[0].name, "get_weather");
    let schema: Value = serde_json::from_str(&named.tools.list[0].parameters).expect("json");
    assert_eq!(schema["required"], json!(["city"]));

    let required =
        inference(json!({"model": "m", "messages": user, "tools": [weather_tool()], "tool_choice": "required"}))
            .expect("valid");
    assert_eq!(required.tools.choice, ToolChoice::Required);
    assert!(required.tools.parallel, "parallel calls are allowed unless refused");

    let object =
        inference(json!({"model": "m", "messages": user, "response_format": {"type": "json_object"}})).expect("valid");
    assert_eq!(object.params.response_format, ResponseFormat::JsonObject);

    // Property order is kept: the grammar writes properties in the schema's order.
    let schema = json!({"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "string"}}});
    let with_schema = inference(json!({"model": "m", "messages": user,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}))
    .expect("valid");
    let ResponseFormat::JsonSchema(text) = &with_schema.params.response_format else { panic!("a schema") };
    assert!(text.find("zeta") < text.find("alpha"), "{text}");

    let sampling = inference(json!({"model": "m", "messages": user, "presence_penalty": 0.5,
        "frequency_penalty": 1.0, "logit_bias": {"42": -100, "7": 5}, "stop": "END", "seed": 9,
        "max_completion_tokens": 12, "user": "ignored", "metadata": {"x": 1}}))
    .expect("valid");
    assert_eq!(sampling.params.presence_penalty, 0.5);
    assert_eq!(sampling.params.frequency_penalty, 1.0);
    assert_eq!(sampling.params.logit_bias, vec![(42, -100.0), (7, 5.0)]);
    assert_eq!(sampling.params.stop, vec!["END".to_owned()]);
    assert_eq!((sampling.params.seed, sampling.params.max_tokens), (9, 12));
    assert_eq!(sampling.params.logprobs, None);
    let chat = inference(json!({"model": "m", "messages": user, "logprobs": true, "top_logprobs": 3})).expect("valid");
    assert_eq!(chat.params.logprobs, Some(3));
    let flag = inference(json!({"model": "m", "messages": user, "logprobs": true})).expect("valid");
    assert_eq!(flag.params.logprobs, Some(0));
}

#[test]
fn what_cannot_be_served_is_a_400_that_says_why() {
    let user = json!([{"role": "user", "content": "hi"}]);
    bad_request(
        json!({"model": "m", "messages": user, "tools": [weather_tool()],
            "tool_choice": {"type": "function", "function": {"name": "launch_rockets"}}}),
        "launch_rockets",
    );
    bad_request(json!({"model": "m", "messages": user, "tool_choice": "required"}), "no tools");
    bad_request(
        json!({"model": "m", "messages": user, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}),
        "grammar",
    );
    bad_request(
        json!({"model": "m", "messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        "schema",
    );
    bad_request(json!({"model": "m", "messages": user, "response_format": {"type": "yaml"}}), "json_schema");
    // A schema past the size limit.
    let huge: serde_json::Map<String, Value> =
        (0..3000).map(|i| (format!("property_number_{i}"), json!({"type": "string"}))).collect();
    bad_request(
        json!({"model": "m", "messages": user, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": huge}}}}),
        "bytes",
    );
    // A schema under its size limit whose grammar is over its own (integer ranges expand).
    let ranges: serde_json::Map<String, Value> = (0..400)
        .map(|i| (format!("p{i}"), json!({"type": "integer", "minimum": -123_456_789, "maximum": 987_654_321})))
        .collect();
    bad_request(
        json!({"model": "m", "messages": user, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": ranges}}}}),
        "grammar of",
    );
    bad_request(json!({"model": "m", "messages": user, "presence_penalty": 3.0}), "presence_penalty");
    bad_request(json!({"model": "m", "messages": user, "logit_bias": {"word": 1}}), "logit_bias");
    bad_request(json!({"model": "m", "messages": user, "logprobs": true, "top_logprobs": 21}), "top_logprobs");
    bad_request(json!({"model": "m", "messages": user, "top_logprobs": 2}), "top_logprobs");
    bad_request(json!({"model": "m", "messages": user, "n": 2, "stream": true}), "stream");
    bad_request(json!({"model": "m", "messages": user, "n": 99}), "`n`");
    bad_request(
        json!({"model": "m", "messages": user, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
        "bad name!",
    );
}

#[test]
fn an_answer_with_a_call_becomes_tool_calls() {
    let tools =
        inference(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [weather_tool()]}))
            .expect("valid")
            .tools;
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let (message, finish) = tool_calls::message(text, &tools, FinishReason::Stop);
    assert_eq!(finish, json!("tool_calls"));
    assert_eq!(message["content"], Value::Null);
    let call = &message["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_") && id.len() == 29), "{call}");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("text")).expect("json");
    assert_eq!(args, json!({"city": "Paris"}));

    // Not a call of a declared tool: text, as the model wrote it.
    let (message, finish) = tool_calls::message("{\"name\": \"other\", \"arguments\": {}}", &tools, FinishReason::Stop);
    assert_eq!(
        (message["content"].as_str(), finish),
        (Some("{\"name\": \"other\", \"arguments\": {}}"), json!("stop"))
    );
    assert!(message.get("tool_calls").is_none());
}

#[test]
fn a_streamed_call_is_held_back_and_text_is_not() {
    let tools =
        inference(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [weather_tool()]}))
            .expect("valid")
            .tools;
    // Text first, then a call: the text streams, the call is held from its tag on.
    let mut s = Splitter::new(tools.clone());
    let mut sent = String::new();
    for piece in [
        "Let me",
        " check.",
        " <tool",
        "_call>\n{\"name\": \"get_weather\",",
        " \"arguments\": {\"city\": \"Oslo\"}}",
        "\n</tool_call>",
    ] {
        sent.push_str(&s.push(piece));
    }
    assert_eq!(sent, "Let me check. ");
    let (rest, calls) = s.finish();
    assert_eq!(rest, "");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].arguments, "{\"city\":\"Oslo\"}");

    // An answer that opens like JSON is held to the end; plain text is not held.
    let mut s = Splitter::new(tools.clone());
    assert_eq!(s.push("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}"), "");
    assert_eq!(s.finish().1.len(), 1);
    let mut s = Splitter::new(tools);
    assert_eq!(s.push("Hello"), "Hello");
    assert_eq!(s.push(" <"), " ");
    assert_eq!(s.push("b>"), "<b>");
    assert_eq!(s.finish(), (String::new(), vec![]));

    // Streamed calls: the header with id and name, then the arguments in fragments.
    let calls = vec![quiver_node::engine::chat::tools::ParsedCall {
        name: "get_weather".into(),
        arguments: format!("{{\"city\": \"{}\"}}", "x".repeat(100)),
    }];
    let deltas = tool_calls::call_deltas(&calls);
    assert!(deltas.len() > 2);
    assert_eq!(deltas[0]["tool_calls"][0]["function"]["name"], "get_weather");
    let joined: String =
        deltas[1..].iter().map(|d| d["tool_calls"][0]["function"]["arguments"].as_str().expect("text")).collect();
    assert_eq!(joined, calls[0].arguments);
}
