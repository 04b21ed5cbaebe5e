//! Inference through the network with the real binaries and the real default model, as separate
//! processes on 127.0.0.1 with ephemeral ports: the answer through the network is the bare
//! engine's answer, with a receipt that verifies; killing the serving provider mid-stream fails
//! over without losing or repeating text; no provider means exit code 3. A provider told
//! `--gpu-layers 0` answers on the CPU and says so in `quiver status` and its heartbeats.
//!
//! Needs the default model: run scripts/fetch-model.sh first.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::support;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{
    MODEL_SHA256, NodeProc, eventually, knows_provider, model_dir, run_bounded, step, strip_ansi, wait_bounded,
};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";

/// Bound on one `quiver ask` (the dev profile generates a few dozen tokens a second).
const ASK_LIMIT: Duration = Duration::from_secs(90);

/// Output of the failover test's client before the serving provider is killed: a few tokens.
const KILL_AFTER_BYTES: usize = 40;

fn parse_json(stdout: &str, what: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{what} did not print JSON ({e}): {stdout}"))
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex: {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The provider's own count of free slots, from its control API.
fn free_slots(node: &NodeProc) -> Option<u64> {
    node.status()?["provider"]["free_slots"].as_u64()
}

/// Checks the signed receipt of a `quiver ask --json` result independently of the client:
/// signature by the provider, provider named, output and model hashes.
fn check_receipt(result: &Value) {
    let provider: quiver_net::PeerId =
        result["provider"].as_str().expect("provider").parse().expect("provider is a PeerId");
    let signed = unhex(result["receipt"]["signed"].as_str().expect("receipt.signed"));
    let record = <quiver_proto::SignedRecord as prost::Message>::decode(signed.as_slice()).expect("a SignedRecord");
    let receipt = quiver_proto::Receipt::verify(record, &provider).expect("the receipt verifies for the provider");
    let text = result["text"].as_str().expect("text");
    assert_eq!(hex(&receipt.output_hash), hex(&Sha256::digest(text.as_bytes())), "output_hash is sha256 of the text");
    assert_eq!(hex(&receipt.model_sha256), MODEL_SHA256, "the receipt names the catalogue model file");
    assert_eq!(u64::from(receipt.completion_tokens), result["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(u64::from(receipt.prompt_tokens), result["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(receipt.finish_reason, result["finish_reason"].as_str().unwrap());
    assert_eq!(hex(&receipt.request_id), result["receipt"]["request_id"].as_str().unwrap());
    assert_eq!(u64::from(receipt.cached_tokens), result["receipt"]["cached_tokens"].as_u64().unwrap());
    assert_eq!(u64::from(receipt.cached_tokens), result["usage"]["cached_tokens"].as_u64().unwrap());
    assert_eq!(result["receipt"]["logprobs_hash"], "", "no log probabilities were asked");
    assert_eq!(result["receipt"]["verified"], true);
}

/// `--gpu-layers 0`: the device is `cpu` with no layer offloaded, in the provider's own status
/// (JSON and `quiver status`'s text) and in the heartbeats the bootstrap node heard.
fn check_cpu_placement(boot: &NodeProc, provider: &NodeProc) {
    let api = provider.api.to_string();
    let json =
        run_bounded(QUIVER, &["status", "--json", "--api", &api], &[], ASK_LIMIT).expect_success("quiver status");
    let status = parse_json(&json.stdout, "quiver status --json");
    let model = &status["provider"]["models"][0];
    assert_eq!(model["name"], MODEL, "{status}");
    assert_eq!(model["device"], "cpu", "{model}");
    assert_eq!(model["gpu_layers"], 0, "{model}");
    // SmolLM2-135M: 30 blocks and the output layer.
    assert_eq!(model["layers"], 31, "{model}");
    assert_eq!((model["device_memory_total"].as_u64(), model["device_memory_free"].as_u64()), (Some(0), Some(0)));
    let text = run_bounded(QUIVER, &["status", "--api", &api], &[], ASK_LIMIT).expect_success("quiver status");
    let text = strip_ansi(&text.stdout);
    assert!(text.contains(&format!("{MODEL} on cpu, 0 of 31 layers offloaded")), "quiver status:\n{text}");
    let heard = boot.status().expect("the bootstrap node's status");
    let node = heard["known_nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["peer_id"] == provider.peer_id.as_str())
        .unwrap_or_else(|| panic!("the bootstrap node knows the provider: {heard}"));
    let model = &node["models"][0];
    assert_eq!(
        (model["device"].as_str(), model["gpu_layers"].as_u64(), model["layers"].as_u64()),
        (Some("cpu"), Some(0), Some(31)),
        "{node}"
    );
}

#[test]
fn greedy_answer_through_the_network_equals_the_bare_engine() {
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let _machine = support::heavy();
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let prompt = "Write a short poem about the sea.";
    let max_tokens = "48";

    // The reference: the bare engine, no network, same threads and sampling (greedy).
    let local = support::local_answer(models, "2", max_tokens, prompt);
    let reference = local["text"].as_str().expect("text").to_owned();
    assert!(!reference.trim().is_empty(), "the bare engine answered nothing: {local}");
    assert_eq!(local["model_sha256"], MODEL_SHA256);
    step(t, "bare engine answered");

    // quiver-node --bootstrap-node; quiver-provider --bootstrap host:port
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let hostport = format!("127.0.0.1:{}", boot.tcp_port);
    let provider = NodeProc::start(
        PROVIDER,
        "provider",
        &["--bootstrap", &hostport, "--port", "0", "--threads", "2", "--gpu-layers", "0", "--models-dir", models],
        d,
    );
    eventually(Duration::from_secs(60), "the bootstrap node hears the provider's models", || {
        knows_provider(MODEL, &boot, &provider.peer_id)
    });
    step(t, "provider known to the bootstrap node");
    check_cpu_placement(&boot, &provider);
    step(t, "the provider runs on the CPU, in its status and heartbeats");

    let ask = |extra: &[&str]| {
        let mut args =
            vec!["ask", "--bootstrap", &boot.tcp_addr, "--listen-ip", "127.0.0.1", "--max-tokens", max_tokens];
        args.extend_from_slice(extra);
        args.push(prompt);
        let asked =
            run_bounded(QUIVER, &args, &[], ASK_LIMIT).expect_success(&format!("quiver ask {}", extra.join(" ")));
        // A normal run says nothing on stderr: no warning about peers it is connecting to anyway.
        assert!(!asked.stderr.contains("WARN"), "quiver ask {extra:?} warned:\n{}", asked.stderr);
        asked
    };

    // Through the gossip announcement (claimed) and asked directly: the same answer, the same
    // usage, and receipts that verify. The second time the provider's prompt cache holds the
    // prompt: all of it but the last token is reused, and the answer is the same.
    for (flags, route) in [(&["--json"][..], "claim"), (&["--json", "--direct"][..], "direct")] {
        let result = parse_json(&ask(flags).stdout, "quiver ask --json");
        assert_eq!(result["route"], route, "route of {flags:?}: {result}");
        assert_eq!(result["text"].as_str(), Some(reference.as_str()), "answer through the network ({route})");
        let (usage, expected) = (&result["usage"], &local["usage"]);
        for key in ["prompt_tokens", "completion_tokens"] {
            assert_eq!(usage[key], expected[key], "{key} through the network ({route})");
        }
        let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
        let cached = if route == "claim" { 0 } else { prompt_tokens - 1 };
        assert_eq!(usage["cached_tokens"], cached, "cached prompt tokens ({route}): {usage}");
        assert_eq!(result["finish_reason"], local["finish_reason"]);
        assert_eq!(result["provider"], provider.peer_id.as_str());
        assert_eq!(result["attempts"], 1);
        check_receipt(&result);
        step(t, &format!("answered through the network, route {route}"));
    }

    // The plain form streams the same text, then a newline.
    let plain = ask(&[]);
    assert_eq!(plain.stdout, format!("{reference}\n"), "streamed answer");
    step(t, "streamed through the network");
}

/// Shares what a child process writes to a pipe while it runs.
struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// A message after each read.
    read: mpsc::Receiver<()>,
    done: std::thread::JoinHandle<()>,
}

impl Capture {
    fn start<R: Read + Send + 'static>(mut pipe: R) -> Capture {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (tx, read) = mpsc::channel();
        let shared = bytes.clone();
        let done = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        shared.lock().unwrap().extend_from_slice(&buf[..n]);
                        let _ = tx.send(());
                    }
                }
            }
        });
        Capture { bytes, read, done }
    }

    fn len(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }

    fn finish(self) -> String {
        let _ = self.done.join();
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

#[test]
fn killing_the_serving_provider_mid_stream_fails_over() {
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let _machine = support::heavy();
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A long, deterministic answer (greedy counting), so the kill lands mid-stream. Prompt and
    // answer stay well inside the 2048-token context.
    let prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";
    let max_tokens = "600";

    let reference = run_bounded(
        QUIVER,
        &["ask", "--local", "--threads", "1", "--models-dir", models, "--raw", "--max-tokens", max_tokens, prompt],
        &[],
        ASK_LIMIT,
    )
    .expect_success("quiver ask --local")
    .stdout;
    // 600 tokens of counting reach about 150: some 700 bytes.
    assert!(reference.len() > 500, "the reference answer is too short to be interrupted: {reference:?}");
    step(t, "bare engine answered");

    // Provider A is the bootstrap node; B joins it with `start` and QUIVER_BOOTSTRAP=host:port.
    let a = NodeProc::start(
        PROVIDER,
        "a",
        &["--bootstrap-node", "--port", "0", "--threads", "1", "--max-concurrent", "1", "--models-dir", models],
        d,
    );
    let a_hostport = format!("127.0.0.1:{}", a.tcp_port);
    let b = NodeProc::start_with_env(
        PROVIDER,
        "b",
        &["start", "--port", "0", "--threads", "1", "--max-concurrent", "1", "--models-dir", models],
        &[("QUIVER_BOOTSTRAP", a_hostport.as_str())],
        d,
    );
    eventually(Duration::from_secs(60), "both providers hear each other's models", || {
        knows_provider(MODEL, &a, &b.peer_id) && knows_provider(MODEL, &b, &a.peer_id)
    });
    let mut providers = [a, b];
    step(t, "providers know each other");

    // The client logs which provider failed and which served (debug level of the client role).
    let log_path = d.join("client.log");
    let mut client = Command::new(QUIVER)
        .args(["ask", "--bootstrap", &providers[0].tcp_addr, "--listen-ip", "127.0.0.1"])
        .args(["--raw", "--max-tokens", max_tokens, prompt])
        .env("RUST_LOG", "warn,quiver_node::client=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log_path).expect("client log")))
        .spawn()
        .expect("quiver ask starts");
    let capture = Capture::start(client.stdout.take().expect("piped stdout"));
    // Wait for the first few tokens, so the failover has a prefix to replay and check.
    let until = Instant::now() + ASK_LIMIT;
    while capture.len() < KILL_AFTER_BYTES {
        if capture.read.recv_timeout(until.saturating_duration_since(Instant::now())).is_err() {
            let _ = client.kill();
            let _ = client.wait();
            panic!(
                "quiver ask printed {} bytes within {ASK_LIMIT:?} and no more (ended or stalled); its log:\n{}",
                capture.len(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    }

    // Text is streaming: find the provider generating it (its only slot is taken) and
    // SIGKILL it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let serving = loop {
        let busy: Vec<usize> = (0..2).filter(|&i| free_slots(&providers[i]) == Some(0)).collect();
        if let [i] = busy[..] {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no provider showed a taken slot within 10 s of the first output (busy: {busy:?}, output so far \
             {} bytes of {}): the answer may have finished before the kill; make it longer",
            capture.len(),
            reference.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    providers[serving].kill();
    let at_kill = capture.len();
    let (killed, survivor) = (providers[serving].peer_id.clone(), providers[1 - serving].peer_id.clone());
    step(t, "killed the serving provider");
    println!(
        "killed provider {} ({killed}) after {at_kill} of {} bytes of output",
        providers[serving].name,
        reference.len()
    );

    let status = wait_bounded(&mut client, ASK_LIMIT * 2, "quiver ask (failover)");
    let output = capture.finish();
    step(t, "the client finished");
    let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    assert!(status.success(), "quiver ask failed after the kill ({status}); its log:\n{log}");
    // The request must have been served by the survivor, else the kill came too late to test
    // anything.
    let served = log.lines().find(|l| l.contains("request served")).unwrap_or_default();
    assert!(
        !served.contains(&killed),
        "the killed provider had already served the whole answer before the kill ({at_kill} of {} bytes \
         had arrived): the test did not exercise failover; make the answer longer. Client log:\n{log}",
        reference.len()
    );
    assert!(served.contains(&survivor), "the survivor {survivor} did not serve the request; client log:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("trying the next") && l.contains(&killed)),
        "the client did not record the failure of {killed}; client log:\n{log}"
    );
    assert!(at_kill < output.len(), "all output had arrived before the kill: nothing was tested");
    // Exactly the bare engine's text: nothing lost, nothing repeated across the failover.
    assert_eq!(output, reference, "output across the failover differs from the bare engine's");

    // The survivor alone serves the next request in one attempt.
    let survivor_proc = &providers[1 - serving];
    let again = run_bounded(
        QUIVER,
        &[
            "ask",
            "--bootstrap",
            &survivor_proc.tcp_addr,
            "--listen-ip",
            "127.0.0.1",
            "--json",
            "--raw",
            "--max-tokens",
            max_tokens,
            prompt,
        ],
        &[],
        ASK_LIMIT,
    )
    .expect_success("quiver ask --json after the failover");
    let again = parse_json(&again.stdout, "quiver ask --json");
    assert_eq!(again["provider"], survivor.as_str());
    assert_eq!(again["attempts"], 1, "{again}");
    assert_eq!(format!("{}\n", again["text"].as_str().unwrap_or_default()), reference);
    check_receipt(&again);
    step(t, &format!("the survivor answered alone (timing {})", again["timing"]));
}

#[test]
fn no_provider_exits_3() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], dir.path());
    let out = run_bounded(
        QUIVER,
        &["ask", "--wait", "3", "--bootstrap", &boot.tcp_addr, "--listen-ip", "127.0.0.1", "hi"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(3), "exit code without a provider; stderr: {}", out.stderr);
    assert!(out.stderr.contains(MODEL), "the error names the model: {}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
}
