//! The API surface tools use, seen from outside: the release binaries as separate processes on
//! 127.0.0.1 (a bootstrap node, a provider serving the real default model, `quiver gateway`),
//! driven by the real Python clients: the `openai` package for tools, structured output and the
//! sampling fields (checked with the `jsonschema` package), and the `ollama` package for Ollama's
//! API.
//!
//! Needs the default model (scripts/fetch-model.sh) and the Python packages
//! (scripts/install-deps.sh).

use std::time::{Duration, Instant};

use crate::support;
use serde_json::Value;
use support::{repo_root, run_bounded, step};

/// Longest a client script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(480);

/// Runs `crates/quiver-cli/tests/py/<script>` with `env`; returns the JSON of its last line.
fn python(script: &str, env: &[(&str, &str)]) -> Value {
    let path = repo_root().join("crates/quiver-cli/tests/py").join(script);
    let path = path.to_str().expect("utf-8 path");
    let run = run_bounded("python3", &[path], env, SCRIPT_LIMIT);
    assert!(run.status.success(), "{script} failed:\n{}\n{}", run.stderr, run.stdout);
    serde_json::from_str(run.stdout.lines().last().unwrap_or("")).expect("the script's JSON line")
}

#[test]
fn openai_tools_structured_output_and_sampling_fields() {
    let _machine = support::heavy();
    let t = Instant::now();
    let net = crate::gateway::start_network_with(t, &[]);
    let base = format!("http://{}/v1", net.gateway_addr());
    let seen = python("openai_tools.py", &[("OPENAI_BASE_URL", base.as_str())]);
    println!("openai client saw: {seen}");
    assert!(seen["forced"]["city"].is_string(), "{seen}");
    assert!(seen["streamed"]["fragments"].as_u64().is_some_and(|n| n >= 1), "{seen}");
    assert!(seen["usage_chunk"].as_u64().is_some_and(|n| n > 0), "{seen}");
    assert_eq!(seen["n"], 3, "{seen}");
    assert_eq!(seen["invalid_schema"], "invalid_request", "{seen}");
    step(t, "openai client: forced, follow-up and streamed tool calls, json_schema, json_object, usage, n, 400s");
}

#[test]
fn ollama_python_client_through_the_network() {
    let _machine = support::heavy();
    let t = Instant::now();
    let net = crate::gateway::start_network_with(t, &[]);
    let host = format!("http://{}", net.gateway_addr());
    let seen = python("ollama_client.py", &[("OLLAMA_HOST", host.as_str())]);
    println!("ollama client saw: {seen}");
    assert_eq!(seen["list"], serde_json::json!(["smollm2-135m:latest"]), "{seen}");
    assert!(seen["chat"].as_str().is_some_and(|c| !c.is_empty()), "{seen}");
    assert!(seen["format"]["city"].is_string(), "{seen}");
    assert_eq!(seen["unknown"], 404, "{seen}");
    step(t, "ollama client: list, show, ps, chat and generate (whole, streamed, raw), format, tools, 404");
}
