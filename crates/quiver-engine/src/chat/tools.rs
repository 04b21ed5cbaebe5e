//! Tool calls in the formats models write them.
//!
//! | format | a call looks like | models |
//! |---|---|---|
//! | [`ToolFormat::Hermes`] | `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>` | Hermes, Qwen 2.5/3 |
//! | [`ToolFormat::Llama3`] | `{"name": "f", "parameters": {...}}` (after `<\|python_tag\|>` or alone) | Llama 3.1+ |
//! | [`ToolFormat::Mistral`] | `[TOOL_CALLS][{"name": "f", "arguments": {...}}]` | Mistral, Mixtral |
//! | [`ToolFormat::Generic`] | as Hermes; the tools are described in a system message | templates that know no tools |
//!
//! [`parse`] reads every format whatever the model's, since a model may answer in another one
//! than its template suggests; a call is taken only when it names a declared tool and its
//! arguments are a JSON object. Text that is not a call stays content.

use serde_json::{Map, Value as Json, json};

use super::template::py_json;
use crate::{Tool, ToolCall, ToolChoice, Tools};

/// How a model's template shows tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    Mistral,
    Generic,
}

impl ToolFormat {
    /// The format a template's source speaks.
    pub fn detect(source: &str) -> ToolFormat {
        if source.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }

    /// The key of a call's arguments.
    pub fn arguments_key(self) -> &'static str {
        if self == ToolFormat::Llama3 { "parameters" } else { "arguments" }
    }
}

/// A tool as OpenAI's `tools[]` entry, which is what templates that render tools expect.
pub fn openai_tool(tool: &Tool) -> Json {
    let parameters: Json = serde_json::from_str(&tool.parameters).unwrap_or_else(|_| json!({}));
    json!({ "type": "function",
            "function": { "name": tool.name, "description": tool.description, "parameters": parameters } })
}

/// The system message that shows tools to a model whose template knows none.
pub fn system_prompt(tools: &Tools, format: ToolFormat) -> String {
    let mut s = String::from("You can call functions. Their descriptions, as JSON, are:\n");
    for tool in &tools.list {
        py_json(&openai_tool(tool)["function"], None, 0, &mut s);
        s.push('\n');
    }
    let example = call_text("function_name", "{\"argument\": \"value\"}", format);
    s.push_str("\nTo call a function, answer with nothing else than:\n");
    s.push_str(&example);
    match &tools.choice {
        ToolChoice::Required => s.push_str("\nYou must call at least one function."),
        ToolChoice::Function(name) => s.push_str(&format!("\nYou must call the function `{name}`.")),
        ToolChoice::Auto | ToolChoice::None => {
            s.push_str("\nIf no function is needed, answer the user in plain text.");
        }
    }
    s
}

fn call_text(name: &str, arguments: &str, format: ToolFormat) -> String {
    let name = Json::String(name.to_owned());
    let key = format.arguments_key();
    match format {
        ToolFormat::Hermes | ToolFormat::Generic => {
            format!("<tool_call>\n{{\"name\": {name}, \"{key}\": {arguments}}}\n</tool_call>")
        }
        ToolFormat::Llama3 => format!("{{\"name\": {name}, \"{key}\": {arguments}}}"),
        ToolFormat::Mistral => format!("[TOOL_CALLS][{{\"name\": {name}, \"{key}\": {arguments}}}]"),
    }
}

/// Calls written as the model writes them (for history shown to a template that cannot show
/// calls itself).
pub fn calls_as_text(calls: &[ToolCall], format: ToolFormat) -> String {
    let one = |c: &ToolCall| {
        let args = if serde_json::from_str::<Json>(&c.arguments).is_ok() { c.arguments.as_str() } else { "{}" };
        call_text(&c.name, args, format)
    };
    match format {
        ToolFormat::Mistral => {
            let items: Vec<Json> = calls
                .iter()
                .map(|c| {
                    let args = serde_json::from_str::<Json>(&c.arguments).unwrap_or_else(|_| json!({}));
                    json!({ "name": c.name, "arguments": args })
                })
                .collect();
            let mut s = String::from("[TOOL_CALLS]");
            py_json(&Json::Array(items), None, 0, &mut s);
            s
        }
        _ => calls.iter().map(one).collect::<Vec<_>>().join("\n"),
    }
}

/// A call read from generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    /// A JSON object, as compact JSON text.
    pub arguments: String,
}

/// Generated text split into what the user reads and the calls it made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

/// The tool calls in `text` (in any format) that name one of `tools`, and the rest as content.
pub fn parse(text: &str, tools: &Tools) -> Parsed {
    if !tools.active() {
        return Parsed { content: text.to_owned(), calls: Vec::new() };
    }
    // Tagged blocks, wherever they are.
    if text.contains("<tool_call>") {
        let (content, calls) = tagged_blocks(text, tools);
        if !calls.is_empty() {
            return Parsed { content, calls };
        }
    }
    let trimmed = text.trim();
    for prefix in ["[TOOL_CALLS]", "<|python_tag|>"] {
        if let Some(pos) = trimmed.find(prefix) {
            let calls = json_calls(&trimmed[pos + prefix.len()..], tools);
            if !calls.is_empty() {
                return Parsed { content: trimmed[..pos].trim().to_owned(), calls };
            }
        }
    }
    // The whole answer one JSON call (or a list, or `{"tool_calls": [...]}`).
    let calls = json_calls(trimmed, tools);
    if !calls.is_empty() {
        return Parsed { content: String::new(), calls };
    }
    Parsed { content: text.to_owned(), calls: Vec::new() }
}

/// `<tool_call>...</tool_call>` blocks (the last one may lack its closing tag when the answer
/// ended there); text around them is content.
fn tagged_blocks(text: &str, tools: &Tools) -> (String, Vec<ParsedCall>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<tool_call>") {
        content.push_str(&rest[..start]);
        let body_start = start + "<tool_call>".len();
        let (body, next) = match rest[body_start..].find("</tool_call>") {
            Some(end) => (&rest[body_start..body_start + end], body_start + end + "</tool_call>".len()),
            None => (&rest[body_start..], rest.len()),
        };
        let found = json_calls(body.trim(), tools);
        if found.is_empty() {
            content.push_str(&rest[start..next]);
        }
        calls.extend(found);
        rest = &rest[next..];
    }
    content.push_str(rest);
    (content.trim().to_owned(), calls)
}

/// Calls in a JSON text: one call object, a list of them, or an object wrapping them.
fn json_calls(text: &str, tools: &Tools) -> Vec<ParsedCall> {
    let Some(value) = first_json(text) else { return Vec::new() };
    let items = match value {
        Json::Array(items) => items,
        Json::Object(mut map) => match (map.remove("tool_calls"), map.remove("tool_call")) {
            (Some(Json::Array(items)), _) => items,
            (_, Some(one)) => vec![one],
            _ => vec![Json::Object(map)],
        },
        _ => return Vec::new(),
    };
    let calls: Vec<ParsedCall> = items.into_iter().filter_map(|item| call(item, tools)).collect();
    calls
}

/// The first JSON value of `text` if nothing but whitespace follows it.
fn first_json(text: &str) -> Option<Json> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Json>();
    let value = stream.next()?.ok()?;
    text[stream.byte_offset()..].trim().is_empty().then_some(value)
}

fn call(item: Json, tools: &Tools) -> Option<ParsedCall> {
    let Json::Object(mut map) = item else { return None };
    // OpenAI's own shape nests the call in `function`.
    if let Some(Json::Object(function)) = map.remove("function") {
        map = function;
    }
    let name = map.get("name")?.as_str()?.to_owned();
    tools.get(&name)?;
    let args = match map.remove("arguments").or_else(|| map.remove("parameters")) {
        None => Json::Object(Map::new()),
        Some(Json::String(s)) => serde_json::from_str::<Json>(&s).ok()?,
        Some(v) => v,
    };
    args.is_object().then(|| ParsedCall { name, arguments: args.to_string() })
}

/// Whether `text` (an answer so far) may still become a tool call, so a streaming reader should
/// hold it back rather than show it as content.
pub fn may_become_call(text: &str) -> bool {
    let t = text.trim_start();
    if t.is_empty() {
        return true;
    }
    ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"].iter().any(|p| p.starts_with(t) || t.starts_with(p))
        || t.starts_with('{')
        || t.starts_with('[')
}
