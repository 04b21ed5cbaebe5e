//! The OpenAI-compatible gateway against a live network of three processes of the real release
//! binaries on 127.0.0.1 (ephemeral ports): a bootstrap node, a provider serving the real
//! default model, and `quiver gateway`. The answers come from the provider in another process,
//! found through gossip and the DHT. Checked with the official `openai` Python package
//! (installed by scripts/install-deps.sh), with curl, and over raw HTTP for client disconnects,
//! which must stop generation at the provider.
//!
//! Needs the default model (scripts/fetch-model.sh), python3 with `openai`, and curl.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support;
use serde_json::{Value, json};
use support::{NodeProc, eventually, http_post, metric, metrics_of, model_dir, repo_root, run_bounded, step};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";
/// Bound on the Python script and on one curl call.
const CLIENT_LIMIT: Duration = Duration::from_secs(300);
/// A prompt the model continues for as long as it may (it counts), so that a job is still
/// generating when its client leaves.
const LONG_PROMPT: &str = "1, 2, 3, 4, 5,";

pub(crate) struct Network {
    _dir: tempfile::TempDir,
    pub(crate) boot: NodeProc,
    pub(crate) provider: NodeProc,
    pub(crate) gateway: NodeProc,
}

impl Network {
    pub(crate) fn gateway_addr(&self) -> SocketAddr {
        self.gateway.gateway.expect("the gateway printed its address")
    }
}

/// Bootstrap node, provider (joined by host:port) and gateway (joined by multiaddr); returns once
/// the gateway lists the provider's model.
fn start_network(t: Instant) -> Network {
    start_network_with(t, &[])
}

/// [`start_network`] with `provider_flags` added to the provider's command line.
pub(crate) fn start_network_with(t: Instant, provider_flags: &[&str]) -> Network {
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let hostport = format!("127.0.0.1:{}", boot.tcp_port);
    let mut flags = vec!["--bootstrap", &hostport, "--port", "0", "--threads", "2", "--models-dir", models];
    flags.extend_from_slice(provider_flags);
    let provider = NodeProc::start(PROVIDER, "provider", &flags, d);
    let gateway = NodeProc::start(
        QUIVER,
        "gateway",
        &["gateway", "--listen", "127.0.0.1:0", "--bootstrap", &boot.tcp_addr, "--port", "0"],
        d,
    );
    let gw = gateway.gateway.expect("the gateway printed its address");
    eventually(Duration::from_secs(60), "the gateway lists the provider's model", || {
        support::http_get_json(gw, "/v1/models").is_some_and(|m| {
            m["data"].as_array().is_some_and(|d| d.iter().any(|x| x["id"] == MODEL && x["providers"] == 1))
        })
    });
    step(t, "network up: the gateway knows the provider");
    Network { _dir: dir, boot, provider, gateway }
}

fn curl(args: &[&str]) -> String {
    let mut all = vec!["-sS", "--max-time", "120"];
    all.extend_from_slice(args);
    run_bounded("curl", &all, &[], CLIENT_LIMIT).expect_success(&format!("curl {}", args.join(" "))).stdout
}

#[test]
fn openai_python_client_and_curl_through_the_network() {
    let _machine = support::heavy();
    let t = Instant::now();
    let net = start_network(t);
    let gw = net.gateway_addr();
    let base = format!("http://{gw}/v1");

    // The official Python client: models, chat, streamed chat, completions, error cases.
    let script = repo_root().join("crates/quiver-cli/tests/py/openai_client.py");
    let script = script.to_str().expect("utf-8 path");
    let py = run_bounded(
        "python3",
        &[script],
        &[("OPENAI_BASE_URL", base.as_str()), ("QUIVER_PROVIDER", net.provider.peer_id.as_str())],
        CLIENT_LIMIT,
    );
    assert!(py.status.success(), "the openai client script failed:\n{}\n{}", py.stderr, py.stdout);
    let seen: Value = serde_json::from_str(py.stdout.lines().last().unwrap_or("")).expect("the script's JSON line");
    println!("openai client saw: {seen}");
    assert_eq!(seen["providers"], 1, "{seen}");
    assert_eq!(seen["unknown_model"]["status"], 404);
    assert_eq!(seen["unknown_model"]["code"], "model_not_found");
    assert_eq!(seen["bad_request"]["status"], 400);
    assert!(seen["stream"]["pieces"].as_u64().is_some_and(|n| n > 1), "{seen}");
    assert_eq!(seen["burst"], 8, "{seen}");
    // Nothing of it counts against the provider: no failure, no offence but refusals (none here).
    let peers = support::http_get_json(net.gateway.api, "/api/v1/peers").expect("the gateway's peers");
    let record = peers
        .as_array()
        .and_then(|p| p.iter().find(|p| p["peer_id"] == net.provider.peer_id.as_str()))
        .map(|p| p["reputation"].clone())
        .expect("the gateway keeps a record of the provider");
    assert_eq!(record["failures"], 0, "{record}");
    assert!(record["offence_counts"].as_object().is_some_and(|o| o.keys().all(|k| k == "busy")), "{record}");
    step(t, "openai client: models, chat, streamed chat, completions, a burst of 8, 404, 400");

    // curl: the README's examples.
    let models: Value = serde_json::from_str(&curl(&[&format!("{base}/models")])).expect("models JSON");
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");
    let body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "Say hello." }], "max_tokens": 12,
                       "temperature": 0 })
    .to_string();
    // No content-type header, as `curl -d` sends: accepted.
    let chat: Value =
        serde_json::from_str(&curl(&[&format!("{base}/chat/completions"), "-d", &body])).expect("chat completion JSON");
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert!(chat["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{chat}");
    assert_eq!(chat["usage"]["completion_tokens"], 12, "{chat}");
    assert_eq!(chat["quiver"]["provider"], net.provider.peer_id.as_str());
    let stream_body = json!({ "model": MODEL, "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0,
                              "stream": true })
    .to_string();
    let sse = curl(&["-N", &format!("{base}/completions"), "-H", "content-type: application/json", "-d", &stream_body]);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).expect("an SSE chunk is JSON"))
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert!(!text.is_empty(), "{sse}");
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/chat/completions"),
        "-d",
        &json!({ "model": "no-such-model", "messages": [{ "role": "user", "content": "x" }] }).to_string(),
    ]);
    assert_eq!(code, "404");
    step(t, "curl: models, chat, SSE stream, 404");

    // Usage counts and latency histograms on both sides.
    let gm = metrics_of(net.gateway.api);
    assert!(metric(&gm, "quiver_gateway_tokens_total{kind=\"completion\"}").is_some_and(|n| n >= 24.0 + 25.0), "{gm}");
    assert!(metric(&gm, "quiver_client_time_to_first_token_seconds_count").is_some_and(|n| n >= 3.0), "{gm}");
    assert!(metric(&gm, "quiver_client_request_duration_seconds_count").is_some_and(|n| n >= 3.0), "{gm}");
    let pm = metrics_of(net.provider.api);
    assert!(metric(&pm, "quiver_provider_time_to_first_token_seconds_count").is_some_and(|n| n >= 3.0), "{pm}");
    assert!(metric(&pm, "quiver_provider_job_duration_seconds_count").is_some_and(|n| n >= 3.0), "{pm}");
    assert!(metric(&pm, "quiver_tokens_generated_total").is_some_and(|n| n >= 49.0), "{pm}");
}

/// Sends a streamed completion over raw HTTP and returns the open connection after `events`
/// SSE data lines have arrived.
pub(crate) fn stream_some(gw: SocketAddr, max_tokens: u32, events: usize) -> TcpStream {
    let body = json!({ "model": MODEL, "prompt": LONG_PROMPT, "max_tokens": max_tokens, "temperature": 0,
                       "stream": true })
    .to_string();
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(5)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {gw}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut seen = 0;
    let mut line = String::new();
    while seen < events {
        line.clear();
        let n = reader.read_line(&mut line).expect("the stream goes on");
        assert!(n > 0, "the stream ended after {seen} events");
        if line.contains("data: {") {
            seen += 1;
        }
    }
    s
}

fn provider_jobs(provider: &NodeProc, outcome: &str) -> f64 {
    metric(&metrics_of(provider.api), &format!("quiver_provider_jobs_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0)
}

#[test]
fn a_client_that_leaves_stops_generation_at_the_provider() {
    let _machine = support::heavy();
    let t = Instant::now();
    let net = start_network(t);
    let gw = net.gateway_addr();
    let served = provider_jobs(&net.provider, "served");

    // SSE: a few chunks, then the client hangs up. The job asked for 1000 tokens of counting,
    // so only a cancellation ends it without a "served".
    let conn = stream_some(gw, 1000, 3);
    step(t, "streaming; hanging up");
    drop(conn);
    eventually(Duration::from_secs(60), "the provider stops the streamed job", || {
        provider_jobs(&net.provider, "cancelled") >= 1.0
    });
    assert_eq!(provider_jobs(&net.provider, "served"), served, "the job ran to its end instead");
    step(t, "streamed job cancelled at the provider");

    // Not streamed: hang up while the provider generates (its token count moves).
    let tokens = || metric(&metrics_of(net.provider.api), "quiver_tokens_generated_total").unwrap_or(0.0);
    let before = tokens();
    let body = json!({ "model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 999, "temperature": 0 }).to_string();
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(5)).expect("connect to the gateway");
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {gw}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    eventually(Duration::from_secs(60), "the provider generates", || tokens() > before);
    drop(s);
    eventually(Duration::from_secs(60), "the provider stops the job", || {
        provider_jobs(&net.provider, "cancelled") >= 2.0
    });
    assert_eq!(provider_jobs(&net.provider, "served"), served, "the job ran to its end instead");
    step(t, "non-streamed job cancelled at the provider");

    // The provider is free again and serves the next request in full.
    let (code, answer) = http_post(
        gw,
        "/v1/completions",
        &json!({ "model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 5, "temperature": 0 }).to_string(),
    )
    .expect("an answer");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(provider_jobs(&net.provider, "served"), served + 1.0);
    let recent = support::http_get_json(net.provider.api, "/api/v1/jobs").expect("jobs JSON");
    let outcomes: Vec<&str> =
        recent["jobs"].as_array().into_iter().flatten().filter_map(|j| j["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["served", "cancelled", "cancelled"], "{recent}");
    // The gateway gave back the places of the requests that left.
    eventually(Duration::from_secs(10), "no request left in flight at the gateway", || {
        metric(&metrics_of(net.gateway.api), "quiver_gateway_requests_in_flight") == Some(0.0)
    });
}
