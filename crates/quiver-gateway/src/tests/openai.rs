use super::*;

fn messages(body: serde_json::Value) -> Result<Vec<ChatMessage>, ApiError> {
    let req = parse_body(Ok(Bytes::from(body.to_string()))).expect("parses");
    req.messages.expect("messages").into_iter().map(ApiMessage::into_chat).collect()
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
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
fn several_text_parts_are_joined_and_a_tool_calling_turn_has_no_content() {
    let got = messages(json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "First."}, {"type": "text", "text": "Second."}]},
        {"role": "assistant", "content": null, "tool_calls": []},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]}))
    .expect("valid");
    assert_eq!(got, vec![msg("user", "First.\nSecond."), msg("assistant", ""), msg("tool", "42")]);
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
