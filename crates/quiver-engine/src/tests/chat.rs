//! Unit tests of `chat/`: the default model's own template rendered with and without tools,
//! each tool-call format read back, the schema converter's grammars, and the limits.

use serde_json::{Value, json};

use super::grammar::{self, Constraint};
use super::template::{ChatTemplate, py_json, strftime};
use super::tools::{self, ToolFormat};
use super::*;
use crate::{ChatMessage, SamplingParams};

/// SmolLM2-135M-Instruct's `tokenizer.chat_template`, as its GGUF holds it.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A Hermes/Qwen-style template that renders tools and calls itself (shortened from Qwen 2.5's).
const QWEN_LIKE: &str = r#"{%- if tools %}<|im_start|>system
{%- if messages[0]['role'] == 'system' %}
{{ messages[0]['content'] }}
{%- endif %}
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}
<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
{%- set tool_call = tool_call.function %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif not (tools and message.role == "system") %}<|im_start|>{{ message.role }}
{{ message.content.strip() }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

fn weather() -> Tools {
    Tools {
        list: vec![Tool {
            name: "get_weather".into(),
            description: "Weather in a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
                .to_string(),
        }],
        choice: ToolChoice::Auto,
        parallel: true,
    }
}

/// An assistant turn that called `get_weather` for Paris, and the tool's answer.
fn called_and_answered() -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            ..ChatMessage::new("assistant", "")
        },
        ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::new("tool", "18 C") },
    ]
}

#[test]
fn the_default_models_template_adds_its_own_system_prompt() {
    let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").expect("parses");
    let text = t.render(&[ChatMessage::new("user", "Hi")], &Tools::default()).expect("renders");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let own = t.render(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")], &Tools::default());
    assert_eq!(
        own.expect("renders"),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.tool_format(), ToolFormat::Generic);
}

#[test]
fn a_template_without_tools_is_told_of_them_in_one_system_message() {
    let t = ChatTemplate::new(SMOLLM2, "", "").expect("parses");
    let history = [
        vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Weather in Paris?")],
        called_and_answered(),
    ]
    .concat();
    let text = t.render(&history, &weather()).expect("renders");
    // One system message: the caller's, then the tools; the model's default one is not added.
    assert_eq!(text.matches("<|im_start|>system").count(), 1, "{text}");
    assert!(text.starts_with("<|im_start|>system\nBe brief.\n\nYou can call functions."), "{text}");
    assert!(
        text.contains(r#"{"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object""#),
        "{text}"
    );
    // The call and its result as the model was told to write and read them.
    assert!(text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><|im_end|>"), "{text}");
    assert!(text.contains("<|im_start|>tool\n<tool_response>\n18 C\n</tool_response><|im_end|>"), "{text}");
    // `none` hides the tools.
    let none = Tools { choice: ToolChoice::None, ..weather() };
    let plain = t.render(&history[..2], &none).expect("renders");
    assert!(!plain.contains("get_weather"), "{plain}");
}

#[test]
fn a_template_with_tools_renders_them_itself() {
    let t = ChatTemplate::new(QWEN_LIKE, "", "<|im_end|>").expect("parses");
    assert_eq!(t.tool_format(), ToolFormat::Hermes);
    let history = [vec![ChatMessage::new("user", "  Weather in Paris?  ")], called_and_answered()].concat();
    let text = t.render(&history, &weather()).expect("renders");
    assert!(text.contains(r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#), "{text}");
    // Arguments reach the template as an object (`tojson` writes them back with Python's spacing).
    assert!(
        text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
        "{text}"
    );
    assert!(text.contains("<tool_response>\n18 C\n</tool_response>"), "{text}");
    // Python's str.strip() through pycompat.
    assert!(text.contains("<|im_start|>user\nWeather in Paris?<|im_end|>"), "{text}");
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
}

#[test]
fn template_errors_are_errors_not_panics() {
    assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(template::TemplateError::Syntax(_))));
    let raising = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").expect("parses");
    let err = raising.render(&[ChatMessage::new("user", "x")], &Tools::default()).expect_err("raises");
    assert!(err.to_string().contains("roles must alternate"), "{err}");
    let huge = "x".repeat(300 * 1024);
    assert!(matches!(ChatTemplate::new(&huge, "", ""), Err(template::TemplateError::TooLarge(_))));
}

#[test]
fn strftime_and_python_json() {
    // 2024-07-23 14:05:09 UTC, a Tuesday.
    assert_eq!(strftime("%d %b %Y %H:%M:%S %A %j %%", 1_721_743_509), "23 Jul 2024 14:05:09 Tuesday 205 %");
    assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    let mut out = String::new();
    py_json(&json!({"a": [1, "x"], "b": {}, "c": null}), None, 0, &mut out);
    assert_eq!(out, r#"{"a": [1, "x"], "b": {}, "c": null}"#);
    let mut out = String::new();
    py_json(&json!({"a": [1]}), Some(2), 0, &mut out);
    assert_eq!(out, "{\n  \"a\": [\n    1\n  ]\n}");
}

#[test]
fn calls_are_read_in_every_format() {
    let t = weather();
    let call = |text: &str| tools::parse(text, &t);
    let paris = tools::ParsedCall { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() };
    for text in [
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
        "[{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}]",
        "{\"tool_call\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}",
        "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}",
    ] {
        let got = call(text);
        assert_eq!(got.calls, vec![paris.clone()], "{text}");
        assert_eq!(got.content, "", "{text}");
    }
    // Text around tagged calls stays content; two calls in a row are two calls.
    let two = call(
        "Checking both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
    );
    assert_eq!(two.content, "Checking both.");
    assert_eq!(two.calls.len(), 2);
    // Not calls: unknown tools, arguments that are not objects, broken JSON, plain text.
    for text in [
        "{\"name\": \"launch\", \"arguments\": {}}",
        "{\"name\": \"get_weather\", \"arguments\": [1]}",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": </tool_call>",
        "It is sunny in Paris.",
        "{\"city\": \"Paris\"} and more",
    ] {
        let got = call(text);
        assert!(got.calls.is_empty(), "{text}");
        assert_eq!(got.content, text.trim());
    }
    // With no tools shown nothing is a call.
    let none = Tools { choice: ToolChoice::None, ..weather() };
    assert!(tools::parse("{\"name\": \"get_weather\", \"arguments\": {}}", &none).calls.is_empty());
    assert!(tools::may_become_call("  <tool_c"));
    assert!(tools::may_become_call("{\"na"));
    assert!(!tools::may_become_call("Sure"));
}

#[test]
fn grammars_come_from_llama_cpps_converter() {
    let object = SamplingParams { response_format: ResponseFormat::JsonObject, ..SamplingParams::default() };
    let Some(Constraint { grammar, root, triggers }) =
        grammar::constraint(&object, &Tools::default(), ToolFormat::Generic).expect("converts")
    else {
        panic!("json_object constrains");
    };
    assert_eq!(root, "root");
    assert!(triggers.is_empty());
    assert!(grammar.contains("root ::="), "{grammar}");

    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
        "required": ["name"], "additionalProperties": false});
    let p =
        SamplingParams { response_format: ResponseFormat::JsonSchema(schema.to_string()), ..SamplingParams::default() };
    let c = grammar::constraint(&p, &Tools::default(), ToolFormat::Generic).expect("converts").expect("some");
    assert!(c.grammar.contains("\"\\\"a\\\"\""), "the enum's values are literals: {}", c.grammar);

    // Forced calls: no trigger, one call wrapped in the model's format; auto: lazy.
    let forced = Tools { choice: ToolChoice::Function("get_weather".into()), parallel: false, ..weather() };
    let c =
        grammar::constraint(&SamplingParams::default(), &forced, ToolFormat::Hermes).expect("converts").expect("some");
    assert_eq!(c.root, "tool-root");
    assert!(c.triggers.is_empty());
    assert!(c.grammar.contains("tool-block ::= \"<tool_call>\\n\" root \"\\n</tool_call>\""), "{}", c.grammar);
    assert!(c.grammar.contains("{0,0}"), "one call: {}", c.grammar);
    let auto = grammar::constraint(&SamplingParams::default(), &weather(), ToolFormat::Mistral)
        .expect("converts")
        .expect("some");
    assert_eq!(auto.triggers, vec!["[TOOL_CALLS]".to_owned()]);
    let llama =
        grammar::constraint(&SamplingParams::default(), &forced, ToolFormat::Llama3).expect("converts").expect("some");
    assert!(llama.grammar.contains("parameters"), "{}", llama.grammar);
    // Text with no tools shown is not constrained.
    let none = Tools { choice: ToolChoice::None, ..weather() };
    assert_eq!(grammar::constraint(&SamplingParams::default(), &none, ToolFormat::Hermes), Ok(None));
}

#[test]
fn bad_schemas_and_tools_are_invalid_requests() {
    let invalid = |p: SamplingParams| {
        matches!(grammar::constraint(&p, &Tools::default(), ToolFormat::Generic), Err(EngineError::InvalidRequest(_)))
    };
    let schema = |v: Value| SamplingParams {
        response_format: ResponseFormat::JsonSchema(v.to_string()),
        ..SamplingParams::default()
    };
    assert!(invalid(schema(json!({"$ref": "#/definitions/missing"}))));
    assert!(invalid(SamplingParams {
        response_format: ResponseFormat::JsonSchema("not json".into()),
        ..SamplingParams::default()
    }));
    assert!(invalid(SamplingParams {
        response_format: ResponseFormat::JsonSchema("[1]".into()),
        ..SamplingParams::default()
    }));
    assert!(ResponseFormat::JsonSchema("x".repeat(MAX_SCHEMA_BYTES + 1)).validate().is_err());
    // Under the schema limit, over the grammar limit: integer ranges expand into digit rules.
    let ranges: serde_json::Map<String, Value> = (0..400)
        .map(|i| (format!("p{i}"), json!({"type": "integer", "minimum": -123_456_789, "maximum": 987_654_321})))
        .collect();
    let big = json!({"type": "object", "properties": ranges}).to_string();
    assert!(big.len() < MAX_SCHEMA_BYTES);
    match grammar::constraint(
        &SamplingParams { response_format: ResponseFormat::JsonSchema(big), ..SamplingParams::default() },
        &Tools::default(),
        ToolFormat::Generic,
    ) {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("grammar of"), "{m}"),
        other => panic!("a grammar over the limit: {other:?}"),
    }

    let mut t = weather();
    t.choice = ToolChoice::Function("nope".into());
    assert!(t.validate().is_err());
    t = weather();
    t.list.push(t.list[0].clone());
    assert!(t.validate().is_err(), "declared twice");
    t = weather();
    t.list[0].parameters = "[]".into();
    assert!(t.validate().is_err());
    t = weather();
    t.list[0].name = "has space".into();
    assert!(t.validate().is_err());
    assert!(Tools { choice: ToolChoice::Required, ..Tools::default() }.validate().is_err());
    weather().validate().expect("valid");
    for choice in [ToolChoice::Auto, ToolChoice::None, ToolChoice::Required, ToolChoice::Function("f".into())] {
        assert_eq!(ToolChoice::from_wire(&choice.to_wire()), Some(choice));
    }
}

/// What upstream `llama-server --jinja` (llama.cpp 0.6.0, the same sources as llama-cpp-sys-2's)
/// answers on `/apply-template` for the default model, recorded: QUIVer renders the same prompts.
#[test]
fn renders_as_llama_server_does() {
    let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").expect("parses");
    let m = ChatMessage::new;
    let cases: [(Vec<ChatMessage>, &str); 3] = [
        (
            vec![m("user", "What is the capital of France?")],
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            vec![m("system", "Be brief."), m("user", "Hi")],
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            vec![m("user", "Hi"), m("assistant", "Hello! How can I help?"), m("user", "Tell me a joke.")],
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n",
        ),
    ];
    for (messages, upstream) in cases {
        assert_eq!(t.render(&messages, &Tools::default()).expect("renders"), upstream);
    }
}
