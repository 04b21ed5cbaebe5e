//! Chat beyond plain text: tools the model may call, output constrained to JSON, and the model's
//! own Jinja chat template.
//!
//! - [`template`] renders a GGUF's `tokenizer.chat_template` (minijinja with Python-compatible
//!   methods, `trim_blocks` and `lstrip_blocks` as Hugging Face renders them), with tools, tool
//!   calls and tool results in its context.
//! - [`tools`] knows the formats models call tools in (Hermes/Qwen `<tool_call>`, Llama 3.x
//!   JSON, Mistral `[TOOL_CALLS]`, bare JSON): which one a template speaks, how to describe tools
//!   to a model whose template knows none, and how to read calls back out of generated text.
//! - [`grammar`] turns a response format or a forced tool call into a llama.cpp grammar, with
//!   llama.cpp's own JSON-schema converter.
//!
//! Everything here is bounded: schemas, tool lists and grammars have size limits, checked by
//! [`Tools::validate`] and [`ResponseFormat::validate`] before any work.

pub mod grammar;
pub mod template;
pub mod tools;

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Longest JSON schema accepted (a response format's, or one tool's parameters), in bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most tools in one request.
pub const MAX_TOOLS: usize = 64;
/// Longest tool name, in bytes (OpenAI's limit).
pub const MAX_TOOL_NAME: usize = 64;
/// Longest tool description, in bytes.
pub const MAX_TOOL_DESCRIPTION: usize = 4096;

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// `[A-Za-z0-9_-]`, 1..=64 bytes.
    pub name: String,
    pub description: String,
    /// The JSON schema of its arguments, as JSON text (`{}` when the function takes none).
    pub parameters: String,
}

/// A call of a tool the model made (OpenAI's `tool_calls[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model decides: text or tool calls.
    #[default]
    Auto,
    /// No tool calls: the tools are not shown to the model.
    None,
    /// At least one call of some tool (constrained by a grammar).
    Required,
    /// One call of this function (constrained by a grammar).
    Function(String),
}

impl ToolChoice {
    /// The wire form: `auto`, `none`, `required` or `function:NAME`.
    pub fn to_wire(&self) -> String {
        match self {
            ToolChoice::Auto => "auto".into(),
            ToolChoice::None => "none".into(),
            ToolChoice::Required => "required".into(),
            ToolChoice::Function(name) => format!("function:{name}"),
        }
    }

    /// Reads the wire form; empty is `auto`.
    pub fn from_wire(s: &str) -> Option<ToolChoice> {
        match s {
            "" | "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => s.strip_prefix("function:").map(|n| ToolChoice::Function(n.to_string())),
        }
    }
}

/// The tools of a chat request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tools {
    pub list: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one answer allowed (OpenAI's `parallel_tool_calls`, default true).
    pub parallel: bool,
}

impl Tools {
    /// Whether the model is shown tools at all.
    pub fn active(&self) -> bool {
        !self.list.is_empty() && self.choice != ToolChoice::None
    }

    /// Refuses what no engine should run: too many tools, bad names, schemas that are not JSON
    /// objects or too large, a forced function that is not in the list, a choice with no tools.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if self.list.len() > MAX_TOOLS {
            return bad(format!("{} tools (most: {MAX_TOOLS})", self.list.len()));
        }
        for (i, tool) in self.list.iter().enumerate() {
            if !valid_tool_name(&tool.name) {
                return bad(format!(
                    "tools[{i}]: the name `{}` is not 1..={MAX_TOOL_NAME} of [A-Za-z0-9_-]",
                    tool.name.escape_debug()
                ));
            }
            if self.list[..i].iter().any(|t| t.name == tool.name) {
                return bad(format!("tools[{i}]: `{}` is declared twice", tool.name));
            }
            if tool.description.len() > MAX_TOOL_DESCRIPTION {
                return bad(format!("tools[{i}]: the description is longer than {MAX_TOOL_DESCRIPTION} bytes"));
            }
            schema_object(&tool.parameters)
                .map_err(|e| EngineError::InvalidRequest(format!("tools[{i}] ({}): parameters: {e}", tool.name)))?;
        }
        match &self.choice {
            ToolChoice::Required if self.list.is_empty() => bad("tool_choice `required` with no tools".into()),
            ToolChoice::Function(name) if !self.list.iter().any(|t| &t.name == name) => {
                bad(format!("tool_choice names the function `{}`, which is not in `tools`", name.escape_debug()))
            }
            _ => Ok(()),
        }
    }

    /// The tool of this name.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.list.iter().find(|t| t.name == name)
    }
}

fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What the output must be.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against this schema (JSON text).
    JsonSchema(String),
}

impl ResponseFormat {
    /// A schema must be a JSON object of at most [`MAX_SCHEMA_BYTES`]. (Whether llama.cpp can
    /// turn it into a grammar is checked when the grammar is built.)
    pub fn validate(&self) -> Result<(), EngineError> {
        match self {
            ResponseFormat::JsonSchema(schema) => schema_object(schema)
                .map(|_| ())
                .map_err(|e| EngineError::InvalidRequest(format!("response_format json_schema: {e}"))),
            _ => Ok(()),
        }
    }
}

/// `text` parsed as a JSON object of bounded size.
pub(crate) fn schema_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(format!("the schema has {} bytes (most: {MAX_SCHEMA_BYTES})", text.len()));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("the schema is not a JSON object".into()),
        Err(e) => Err(format!("the schema is not valid JSON: {e}")),
    }
}

#[cfg(test)]
#[path = "../tests/chat.rs"]
mod tests;
