//! Grammars that constrain what a model may write, built with llama.cpp's own JSON-schema
//! converter (`json_schema_to_grammar` of llama.cpp's `common` library).
//!
//! - `response_format` `json_object`: any JSON object; `json_schema`: JSON valid under the schema.
//! - `tool_choice` `required` or a named function: one call (several with parallel calls
//!   allowed, for `required`) in the model's [`ToolFormat`], its arguments valid under the
//!   function's schema. `auto`: the same grammar, lazy: free text until the model starts a call
//!   (its trigger, e.g. `<tool_call>`), then a valid call.
//!
//! The converter's grammar keeps its `root` rule; tool grammars add a rule of their own around it
//! and name that one as the root the sampler starts from.

use serde_json::{Value as Json, json};

use super::tools::ToolFormat;
use crate::{EngineError, ResponseFormat, SamplingParams, ToolChoice, Tools};

/// Largest grammar accepted, in bytes (a schema that converts to more is refused).
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;
/// Most calls a forced `required` answer may hold when parallel calls are allowed.
pub const MAX_PARALLEL_CALLS: usize = 4;

/// A grammar and where the sampler starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub grammar: String,
    /// The rule the output must match.
    pub root: String,
    /// When not empty the grammar applies only from the first of these words on (lazy).
    pub triggers: Vec<String>,
}

/// The constraint a request puts on its output, if any.
pub fn constraint(
    params: &SamplingParams,
    tools: &Tools,
    format: ToolFormat,
) -> Result<Option<Constraint>, EngineError> {
    if tools.active() {
        return tool_constraint(tools, format).map(Some);
    }
    let schema = match &params.response_format {
        ResponseFormat::Text => return Ok(None),
        ResponseFormat::JsonObject => json!({ "type": "object" }).to_string(),
        ResponseFormat::JsonSchema(schema) => schema.clone(),
    };
    let grammar = convert(&schema, "response_format json_schema")?;
    Ok(Some(Constraint { grammar, root: "root".into(), triggers: Vec::new() }))
}

fn tool_constraint(tools: &Tools, format: ToolFormat) -> Result<Constraint, EngineError> {
    let key = format.arguments_key();
    let chosen: Vec<_> = match &tools.choice {
        ToolChoice::Function(name) => tools.list.iter().filter(|t| &t.name == name).collect(),
        _ => tools.list.iter().collect(),
    };
    let mut alternatives = Vec::with_capacity(chosen.len());
    for tool in &chosen {
        let parameters: Json = serde_json::from_str(&tool.parameters)
            .map_err(|e| EngineError::InvalidRequest(format!("tool `{}`: parameters: {e}", tool.name)))?;
        // A function with no declared parameters still takes an object.
        let parameters =
            if parameters.as_object().is_some_and(|o| o.is_empty()) { json!({ "type": "object" }) } else { parameters };
        alternatives.push(json!({
            "type": "object",
            "properties": { "name": { "const": tool.name }, key: parameters },
            "required": ["name", key],
            "additionalProperties": false,
        }));
    }
    let call = if alternatives.len() == 1 { alternatives.remove(0) } else { json!({ "anyOf": alternatives }) };
    let many = tools.parallel && tools.choice == ToolChoice::Required;
    let extra = if many { MAX_PARALLEL_CALLS - 1 } else { 0 };
    let (schema, wrapper, trigger) = match format {
        ToolFormat::Hermes | ToolFormat::Generic => (
            call,
            format!(
                "tool-root ::= tool-block (\"\\n\" tool-block){{0,{extra}}}\ntool-block ::= \"<tool_call>\\n\" root \"\\n</tool_call>\"\n"
            ),
            "<tool_call>",
        ),
        ToolFormat::Mistral => (
            json!({ "type": "array", "items": call, "minItems": 1, "maxItems": extra + 1 }),
            "tool-root ::= \"[TOOL_CALLS]\" root\n".to_owned(),
            "[TOOL_CALLS]",
        ),
        // Llama 3 writes one call per answer.
        ToolFormat::Llama3 => (call, "tool-root ::= root\n".to_owned(), "{\"name\""),
    };
    let grammar = convert(&schema.to_string(), "tools")?;
    let triggers = if tools.choice == ToolChoice::Auto { vec![trigger.to_owned()] } else { Vec::new() };
    Ok(Constraint { grammar: format!("{grammar}\n{wrapper}"), root: "tool-root".into(), triggers })
}

/// `schema` as a GBNF grammar, by llama.cpp's converter.
fn convert(schema: &str, what: &str) -> Result<String, EngineError> {
    super::schema_object(schema).map_err(|e| EngineError::InvalidRequest(format!("{what}: {e}")))?;
    let grammar = llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
        EngineError::InvalidRequest(format!("{what}: llama.cpp cannot turn this schema into a grammar: {e}"))
    })?;
    if grammar.len() > MAX_GRAMMAR_BYTES {
        return Err(EngineError::InvalidRequest(format!(
            "{what}: the schema gives a grammar of {} bytes (most: {MAX_GRAMMAR_BYTES})",
            grammar.len()
        )));
    }
    Ok(grammar)
}
