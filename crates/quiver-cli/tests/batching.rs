//! One provider decoding many requests together (continuous batching), seen from outside: the
//! release binaries as separate processes on 127.0.0.1 (a bootstrap node, a provider with
//! `--max-concurrent 4` serving the real default model, and `quiver gateway`), driven over the
//! gateway's HTTP API and with `quiver ask`.
//!
//! Needs the default model (scripts/fetch-model.sh).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support;
use serde_json::{Value, json};
use support::{NodeProc, eventually, http_post, metric, metrics_of, run_bounded, step};

const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";
const SLOTS: usize = 4;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Three colours of the rainbow are",
    "A haiku about the sea:",
    "12 times 12 equals",
    "The sky is blue because",
    "A good name for a pet cat is",
    "Bees make",
    "Once upon a time, a dragon",
];

fn completion(gw: SocketAddr, prompt: &str, max_tokens: u32) -> Value {
    let body = json!({ "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 }).to_string();
    let (code, answer) = http_post(gw, "/v1/completions", &body).expect("the gateway answers");
    assert_eq!(code, 200, "{prompt:?}: {answer}");
    serde_json::from_str(&answer).expect("JSON")
}

fn text(answer: &Value) -> &str {
    answer["choices"][0]["text"].as_str().expect("a text")
}

fn provider_jobs(provider: &NodeProc, outcome: &str) -> f64 {
    metric(&metrics_of(provider.api), &format!("quiver_provider_jobs_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0)
}

/// Jobs of the provider's recent list as (start, end) in ms.
fn job_spans(provider: &NodeProc) -> Vec<(f64, f64)> {
    let jobs = support::http_get_json(provider.api, "/api/v1/jobs").expect("jobs JSON");
    jobs["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["outcome"] == "served")
        .filter_map(|j| {
            let end = j["finished_ms"].as_f64()?;
            Some((end - j["duration_ms"].as_f64()?, end))
        })
        .collect()
}

/// Most served jobs that were running at one moment.
fn most_at_once(spans: &[(f64, f64)]) -> usize {
    spans.iter().map(|&(start, _)| spans.iter().filter(|&&(s, e)| s <= start && start < e).count()).max().unwrap_or(0)
}

#[test]
fn one_provider_batches_requests_without_changing_answers() {
    let _machine = support::heavy();
    let t = Instant::now();
    let slots = SLOTS.to_string();
    let net = crate::gateway::start_network_with(t, &["--max-concurrent", &slots]);
    let (boot, provider, gw) = (&net.boot, &net.provider, net.gateway_addr());
    let gateway_api = net.gateway.api;

    // Each prompt alone, one after the other.
    let solo: Vec<String> = PROMPTS.iter().map(|p| text(&completion(gw, p, 24)).to_owned()).collect();
    step(t, "8 answers alone");
    // All eight at once: four decoded together, four queued behind them. Different max_tokens
    // (25, not 24) so that the gateway's result cache cannot answer; greedy answers of 25 tokens
    // begin with those of 24.
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> =
            PROMPTS.iter().map(|p| s.spawn(move || text(&completion(gw, p, 25)).to_owned())).collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    for ((prompt, alone), batched) in PROMPTS.iter().zip(&solo).zip(&together) {
        assert!(
            batched.starts_with(alone.as_str()),
            "{prompt:?}: decoded beside others the answer is {batched:?}, alone {alone:?}"
        );
    }
    let spans = job_spans(provider);
    assert_eq!(spans.len(), 16, "{spans:?}");
    assert!(most_at_once(&spans) >= 2, "the 8 requests at once never overlapped at the provider: {spans:?}");
    step(t, "8 answers at once equal the answers alone");

    // A repeated chat reuses the prompt the provider's slot still holds.
    let chat = |max_tokens: u32| {
        let body = json!({ "model": MODEL, "max_tokens": max_tokens, "temperature": 0,
                           "messages": [{ "role": "user", "content": "Name a large city in Japan." }] });
        let (code, answer) = http_post(gw, "/v1/chat/completions", &body.to_string()).expect("an answer");
        assert_eq!(code, 200, "{answer}");
        serde_json::from_str::<Value>(&answer).expect("JSON")
    };
    let miss = chat(12);
    let hit = chat(13);
    let content = |v: &Value| v["choices"][0]["message"]["content"].as_str().expect("content").to_owned();
    let cached = hit["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens");
    let prompt_tokens = hit["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert_eq!(cached, prompt_tokens - 1, "{hit}");
    assert!(content(&hit).starts_with(&content(&miss)), "a cache hit changed the answer: {hit} vs {miss}");
    let pm = metrics_of(provider.api);
    assert!(metric(&pm, "quiver_provider_prompt_tokens_cached_total").is_some_and(|n| n >= cached as f64), "{pm}");
    step(t, "a cache hit answers as a miss did");

    // Every slot busy with a long stream; one more request waits. Dropping one stream gives the
    // waiting request its slot while the three others still stream.
    let mut streams: Vec<_> = (0..SLOTS).map(|_| crate::gateway::stream_some(gw, 1000, 2)).collect();
    step(t, "4 long streams running");
    let served = provider_jobs(provider, "served");
    let waiting = std::thread::spawn(move || completion(gw, "The capital of Italy is", 6));
    eventually(Duration::from_secs(30), "the provider queues the fifth request", || {
        support::http_get_json(provider.api, "/api/v1/status")
            .is_some_and(|s| s["provider"]["queue_depth"].as_u64().is_some_and(|q| q >= 1))
    });
    drop(streams.pop());
    let answer = waiting.join().expect("request thread");
    assert!(!text(&answer).is_empty());
    assert_eq!(provider_jobs(provider, "served"), served + 1.0, "only the waiting request was served");
    assert_eq!(provider_jobs(provider, "cancelled"), 1.0);
    step(t, "the dropped stream's slot served the waiting request while 3 streams went on");
    drop(streams);
    eventually(Duration::from_secs(60), "the other streams end", || provider_jobs(provider, "cancelled") >= 4.0);
    // Its throughput with all jobs together is measured and travels in its heartbeats.
    let batch_speed = |status: Option<Value>| {
        status.and_then(|s| {
            s["known_nodes"].as_array()?.iter().find(|n| n["peer_id"] == provider.peer_id.as_str())?
                ["batch_tokens_per_sec"]
                .as_f64()
        })
    };
    let own = support::http_get_json(provider.api, "/api/v1/status").expect("status");
    assert!(own["provider"]["batch_tokens_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{own}");
    eventually(Duration::from_secs(30), "the gateway hears the provider's batch throughput", || {
        batch_speed(support::http_get_json(gateway_api, "/api/v1/status")).is_some_and(|v| v > 0.0)
    });
    step(t, "the provider's batch throughput is in its heartbeats");

    // A prompt longer than the context is refused before any work: 400 at the gateway, exit 5
    // from `quiver ask`.
    let huge: String = (1..1500).map(|i| format!("{i}, ")).collect();
    let body = json!({ "model": MODEL, "prompt": huge, "max_tokens": 4 }).to_string();
    let (code, answer) = http_post(gw, "/v1/completions", &body).expect("an answer");
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("context"), "{answer}");
    let ask = run_bounded(
        QUIVER,
        &["ask", "--bootstrap", &boot.tcp_addr, "--listen-ip", "127.0.0.1", "--raw", "--max-tokens", "4", &huge],
        &[],
        Duration::from_secs(120),
    );
    assert_eq!(ask.code(), Some(quiver_cli::EXIT_REJECTED), "{}", ask.stderr);
    assert!(ask.stdout.is_empty());
    step(t, "an impossible prompt is refused");
}
