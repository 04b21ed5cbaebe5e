//! A model's own Jinja chat template, rendered as Hugging Face's `apply_chat_template` and
//! llama.cpp's `--jinja` render it: `trim_blocks` and `lstrip_blocks`, Python's string and dict
//! methods (minijinja-contrib's pycompat), `raise_exception`, `strftime_now`, and a `tojson` that
//! writes JSON as Python's `json.dumps` does (`", "` and `": "` separators).
//!
//! The context holds `messages` (tool calls as `{id, type: "function", function: {name,
//! arguments}}` with the arguments as an object when they parse), `tools` (OpenAI's shape) when
//! the model is shown tools, `add_generation_prompt`, `bos_token` and `eos_token`. A template
//! that never mentions tools is given them as a system message instead ([`super::tools`]).

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json, json};

use super::tools::{self, ToolFormat};
use crate::{ChatMessage, Tools};

/// Longest template accepted, in bytes.
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Longest rendered prompt, in bytes.
const MAX_RENDERED_BYTES: usize = 8 << 20;
/// Bound on the template engine's work (minijinja's fuel is not enabled; loops are bounded by
/// the messages, which are bounded, and by this recursion limit).
const MAX_RECURSION: usize = 64;

/// Why a template could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("the chat template has {0} bytes (most: {MAX_TEMPLATE_BYTES})")]
    TooLarge(usize),
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    #[error("the chat template failed: {0}")]
    Render(String),
}

/// A parsed chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The template renders `tools` itself.
    knows_tools: bool,
    /// The template renders assistant `tool_calls` itself.
    knows_tool_calls: bool,
    format: ToolFormat,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("knows_tools", &self.knows_tools)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Parses `source`; `bos` and `eos` are the texts of the model's BOS and EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge(source.len()));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_recursion_limit(MAX_RECURSION);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_owned()).map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
            knows_tools: source.contains("tools"),
            knows_tool_calls: source.contains("tool_calls"),
            format: ToolFormat::detect(source),
        })
    }

    /// How the model calls tools.
    pub fn tool_format(&self) -> ToolFormat {
        self.format
    }

    /// The prompt for `messages`, ending with the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], tools: &Tools) -> Result<String, TemplateError> {
        let mut msgs: Vec<Json> = Vec::with_capacity(messages.len() + 1);
        let shown = tools.active();
        if shown && !self.knows_tools {
            msgs.push(json!({ "role": "system", "content": tools::system_prompt(tools, self.format) }));
        }
        for m in messages {
            msgs.push(self.message(m));
        }
        if shown && !self.knows_tools {
            merge_leading_systems(&mut msgs);
        }
        let mut ctx = Map::new();
        ctx.insert("messages".into(), Json::Array(msgs));
        ctx.insert("add_generation_prompt".into(), Json::Bool(true));
        ctx.insert("bos_token".into(), Json::String(self.bos.clone()));
        ctx.insert("eos_token".into(), Json::String(self.eos.clone()));
        if shown && self.knows_tools {
            let list = tools.list.iter().map(tools::openai_tool).collect();
            ctx.insert("tools".into(), Json::Array(list));
        }
        let template = self.env.get_template("chat").map_err(|e| TemplateError::Render(describe(&e)))?;
        let text = template.render(Value::from_serialize(&ctx)).map_err(|e| TemplateError::Render(describe(&e)))?;
        if text.len() > MAX_RENDERED_BYTES {
            return Err(TemplateError::Render(format!("the prompt has {} bytes", text.len())));
        }
        Ok(text)
    }

    fn message(&self, m: &ChatMessage) -> Json {
        let mut v = Map::new();
        v.insert("role".into(), Json::String(m.role.clone()));
        let mut content = m.content.clone();
        if !m.tool_calls.is_empty() {
            if self.knows_tool_calls {
                let calls: Vec<Json> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let args = serde_json::from_str::<Json>(&c.arguments)
                            .ok()
                            .filter(Json::is_object)
                            .unwrap_or_else(|| Json::String(c.arguments.clone()));
                        json!({ "id": c.id, "type": "function",
                                "function": { "name": c.name, "arguments": args } })
                    })
                    .collect();
                v.insert("tool_calls".into(), Json::Array(calls));
            } else {
                // A template that cannot show calls sees them as the text the model was told to
                // write.
                let calls = tools::calls_as_text(&m.tool_calls, self.format);
                content = if content.is_empty() { calls } else { format!("{content}\n{calls}") };
            }
        }
        if m.role == "tool" && !self.knows_tool_calls {
            content = format!("<tool_response>\n{content}\n</tool_response>");
        }
        v.insert("content".into(), Json::String(content));
        if let Some(id) = &m.tool_call_id {
            v.insert("tool_call_id".into(), Json::String(id.clone()));
        }
        Json::Object(v)
    }
}

/// Joins the system message describing tools with a system message the caller sent first, so
/// templates that allow one system message (or add a default one when the first is not system)
/// see one.
fn merge_leading_systems(msgs: &mut Vec<Json>) {
    let second_is_system = msgs.get(1).is_some_and(|m| m["role"] == "system");
    if !second_is_system {
        return;
    }
    let caller = msgs.remove(1);
    let ours = msgs[0]["content"].as_str().unwrap_or_default().to_owned();
    let theirs = caller["content"].as_str().unwrap_or_default();
    msgs[0]["content"] = Json::String(format!("{theirs}\n\n{ours}"));
}

fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time, for the specifiers chat templates use.
fn strftime_now(format: String) -> Result<String, Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(strftime(&format, secs))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];

/// Formats `secs` since the Unix epoch (UTC) with strftime's `%Y %m %d %e %b %B %a %A %H %M %S
/// %y %j %%`; other specifiers are copied as written.
pub fn strftime(format: &str, secs: u64) -> String {
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[(days % 7) as usize];
    let yday = days as i64 - days_from_civil(y, 1, 1) + 1;
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `value | tojson(indent=N)`, written as Python's `json.dumps(value, ensure_ascii=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted and ignored as Hugging Face's filter does not sort either by default.
    let _: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// JSON text as Python's `json.dumps` writes it: `", "` and `": "` separators without an
/// indent, one item per line with one.
pub(crate) fn py_json(v: &Json, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}
