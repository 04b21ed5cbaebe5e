//! Unit tests of `wire.rs`.

use super::*;

#[test]
fn round_trips() {
    let chat = Input::Chat(vec![ChatMessage { role: "user".into(), content: "hi".into() }]);
    assert_eq!(input_from_wire(input_to_wire(&chat)), chat);
    let raw = Input::Prompt("once upon".into());
    assert_eq!(input_from_wire(input_to_wire(&raw)), raw);
    let p = SamplingParams { max_tokens: 5, temperature: 0.7, top_p: 0.9, seed: 42, stop: vec!["\n".into()] };
    assert_eq!(params_from_wire(params_to_wire(&p)), p);
    assert!(model_name_key("m").starts_with(quiver_net::MODEL_KEY_PREFIX));
}
