//! The trust checks seen from outside, as a user meets them: release binaries as separate
//! processes on 127.0.0.1, the default model, and `quiver-adversary` providers with their default
//! lure (heartbeats that promise far more speed than anyone has, so clients try them first).
//!
//! `quiver ask --verify` prints an answer only when a second, independent provider reproduced
//! it: with one honest provider beside a liar nobody can tell who is right, so an ask either
//! prints the model's own answer or fails with exit code 6 and prints nothing, never the liar's
//! text; with two honest providers every ask prints the model's answer, the liar is outvoted
//! and banned, and the ban outlives the client process (it is kept in the client's data dir).
//! With only liars left, an ask fails "could not verify".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::support;
use serde_json::Value;
use support::{MODEL_FILE, NodeProc, eventually, knows_provider, model_dir, run_bounded, step};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";
const ASK_LIMIT: Duration = Duration::from_secs(120);
/// `quiver ask`'s exit code when `--verify` found nobody to confirm the answer.
const EXIT_UNVERIFIED: i32 = 6;

/// The `quiver-adversary` binary, built beside the others by the workspace's test build.
fn adversary_bin() -> PathBuf {
    let bin = Path::new(QUIVER).with_file_name("quiver-adversary");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace's tests (cargo test --workspace --release --no-run)",
        bin.display()
    );
    bin
}

/// A running `quiver-adversary`; killed when dropped.
struct Adversary {
    child: Child,
    peer_id: String,
}

impl Adversary {
    fn start(mode: &str, bootstrap: &str, model: &Path, log: &Path) -> Adversary {
        let mut child = Command::new(adversary_bin())
            .args(["--mode", mode, "--bootstrap", bootstrap, "--model"])
            .arg(model)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
            .spawn()
            .expect("quiver-adversary starts");
        let lines = support::stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let peer_id = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("quiver-adversary --mode {mode} printed no peer id within 60 s"));
            if let Some(id) = line.strip_prefix("peer_id: ") {
                break id.trim().to_owned();
            }
        };
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Adversary { child, peer_id }
    }
}

impl Drop for Adversary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Asked {
    code: Option<i32>,
    stdout: String,
    json: Option<Value>,
}

#[test]
fn verify_never_returns_a_liars_answer_and_the_liar_ends_banned() {
    let models = model_dir();
    let model = models.join(MODEL_FILE);
    let models = models.to_str().expect("utf-8 path");
    let _machine = support::heavy();
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let questions = ["What is the capital of France?", "Name a colour of the rainbow.", "What is 2 + 3?"];

    // The references: the bare engine, greedy, one thread as the providers run.
    let reference: Vec<String> = questions
        .iter()
        .map(|q| {
            let out = run_bounded(
                QUIVER,
                &["ask", "--local", "--threads", "1", "--models-dir", models, "--json", "--max-tokens", "24", q],
                &[],
                ASK_LIMIT,
            )
            .expect_success("quiver ask --local");
            let v: Value = serde_json::from_str(&out.stdout).expect("json");
            v["text"].as_str().expect("text").to_owned()
        })
        .collect();
    step(t, "bare engine answered");

    // Exactly the setup a user would build: a bootstrap node, one honest provider, a liar and a
    // garbage sender.
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let hostport = format!("127.0.0.1:{}", boot.tcp_port);
    let provider_args = ["--bootstrap", &hostport, "--port", "0", "--threads", "1", "--models-dir", models];
    let mut honest = vec![NodeProc::start(PROVIDER, "honest-1", &provider_args, d)];
    let liar = Adversary::start("wrong-output", &boot.tcp_addr, &model, &d.join("liar.log"));
    let garbage = Adversary::start("garbage-frames", &boot.tcp_addr, &model, &d.join("garbage.log"));
    let all = [honest[0].peer_id.clone(), liar.peer_id.clone(), garbage.peer_id.clone()];
    eventually(Duration::from_secs(60), "the bootstrap node hears every provider", || {
        all.iter().all(|p| knows_provider(MODEL, &boot, p))
    });
    step(t, "one honest provider and two adversaries up");

    let client = d.join("client");
    let client_dir = client.to_str().expect("utf-8 path");
    let ask_with = |data_dir: &Path, q: &str| -> Asked {
        let data_dir = data_dir.to_str().expect("utf-8 path");
        let out = run_bounded(
            QUIVER,
            &[
                "ask",
                "--data-dir",
                data_dir,
                "--bootstrap",
                &boot.tcp_addr,
                "--listen-ip",
                "127.0.0.1",
                "--verify",
                "--json",
                "--max-tokens",
                "24",
                "--temperature",
                "0",
                q,
            ],
            &[],
            ASK_LIMIT,
        );
        let json = serde_json::from_str(&out.stdout).ok();
        Asked { code: out.code(), stdout: out.stdout, json }
    };
    let ask = |q: &str| ask_with(&client, q);

    // One honest provider against a liar: one against one decides nothing, so an ask prints the
    // model's answer (if the liar took no part in the vote) or nothing, with exit code 6; never
    // the liar's text.
    for (q, want) in questions.iter().zip(&reference) {
        let asked = ask(q);
        match asked.code {
            Some(0) => {
                let v = asked.json.expect("--json output");
                assert_eq!(v["text"].as_str(), Some(want.as_str()), "a verified answer that is not the model's: {v}");
                assert_ne!(v["provider"].as_str(), Some(liar.peer_id.as_str()));
                assert!(!v["verified_by"].as_array().is_none_or(Vec::is_empty), "not verified: {v}");
            }
            Some(EXIT_UNVERIFIED) => assert_eq!(asked.stdout, "", "an unverified ask printed something"),
            other => panic!("quiver ask --verify exited {other:?}: {}", asked.stdout),
        }
    }
    step(t, "one honest provider: never the liar's text");

    // A second honest provider: now two agree, every answer is the model's, and the liar is
    // outvoted and banned.
    honest.push(NodeProc::start(PROVIDER, "honest-2", &provider_args, d));
    let second = honest[1].peer_id.clone();
    eventually(Duration::from_secs(60), "the bootstrap node hears the second honest provider", || {
        knows_provider(MODEL, &boot, &second)
    });
    let honest_ids: Vec<String> = honest.iter().map(|h| h.peer_id.clone()).collect();
    // What the client learned is in its data dir (a new `quiver ask` process each time).
    let store = Path::new(client_dir).join("ask").join("reputation.redb");
    let liar_id: quiver_node::PeerId = liar.peer_id.parse().expect("peer id");
    let open_store =
        || quiver_node::reputation::Reputation::open(&store, Default::default()).expect("the client's store");
    // The liar takes part when it is picked first or as a voter, which ranking leaves partly to
    // chance among providers of about equal cost (its lure makes it likely). Every answer must
    // be the model's, verified by the honest providers, and the liar must end banned: asked
    // until it is (each question at least once), within a bound (it usually takes one ask).
    let mut asks = 0;
    while asks < questions.len() || open_store().is_banned(liar_id, SystemTime::now()).is_none() {
        assert!(
            asks < 30,
            "the liar is not banned after {asks} asks: {:?}",
            open_store().snapshot(liar_id, SystemTime::now())
        );
        let (q, want) = (questions[asks % questions.len()], &reference[asks % questions.len()]);
        asks += 1;
        let asked = ask(q);
        assert_eq!(asked.code, Some(0), "ask {asks}, {q:?}: exit {:?}: {}", asked.code, asked.stdout);
        let v = asked.json.expect("--json output");
        assert_eq!(v["text"].as_str(), Some(want.as_str()), "not the model's answer: {v}");
        let provider = v["provider"].as_str().unwrap_or_default().to_owned();
        assert!(honest_ids.contains(&provider), "served by {provider}, not an honest provider");
        let by: Vec<&str> =
            v["verified_by"].as_array().expect("verified_by").iter().filter_map(Value::as_str).collect();
        assert!(!by.is_empty() && by.iter().all(|p| honest_ids.iter().any(|h| h == p)), "verified by {by:?}");
    }
    step(t, &format!("two honest providers: every answer the model's; the liar banned after {asks} asks"));

    // The same through a gateway that verifies everything (`--gateway-verify`), as the openai
    // client would ask it: a fresh node, to which the liar is a lure like to everybody new.
    let gateway = NodeProc::start(
        NODE,
        "gateway",
        &["--bootstrap", &hostport, "--port", "0", "--gateway", "127.0.0.1:0", "--gateway-verify"],
        d,
    );
    let mut everyone = honest_ids.clone();
    everyone.push(liar.peer_id.clone());
    eventually(Duration::from_secs(60), "the gateway hears the liar and both honest providers", || {
        everyone.iter().all(|p| knows_provider(MODEL, &gateway, p))
    });
    let gw = gateway.gateway.expect("the gateway's address");
    for (q, want) in questions.iter().zip(&reference) {
        let body = serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": q }],
                                       "max_tokens": 24, "temperature": 0 })
        .to_string();
        let (status, text) = support::http_post(gw, "/v1/chat/completions", &body).expect("an answer");
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["choices"][0]["message"]["content"].as_str(), Some(want.as_str()), "not the model's: {v}");
        let provider = v["quiver"]["provider"].as_str().unwrap_or_default().to_owned();
        assert!(honest_ids.contains(&provider), "served by {provider}, not an honest provider");
        let by: Vec<&str> =
            v["quiver"]["verified_by"].as_array().expect("verified_by").iter().filter_map(Value::as_str).collect();
        assert!(!by.is_empty() && by.iter().all(|p| honest_ids.iter().any(|h| h == p)), "verified by {by:?}");
    }
    step(t, "a verifying gateway: every answer the model's, confirmed by the honest providers");
    // The ban is kept in the store, so every later ask blocks the liar from the start.
    let reputation = open_store();
    assert!(reputation.is_banned(liar_id, SystemTime::now()).is_some());
    drop(reputation);

    // Only liars left: nothing can be confirmed, and nothing is printed. (A fresh client, to
    // which the liar is no banned peer but the lure it is to everybody new.)
    for h in &mut honest {
        h.kill();
    }
    let fresh = d.join("fresh-client");
    let asked = ask_with(&fresh, questions[0]);
    assert_eq!(asked.code, Some(EXIT_UNVERIFIED), "with only liars: exit {:?}: {}", asked.code, asked.stdout);
    assert_eq!(asked.stdout, "");
    step(t, "only liars: could not verify");
    drop((liar, garbage));
}

/// A long-running node with `--verify-rate 1` cross-checks its greedy requests without being
/// asked: through its gateway, with no `X-Quiver-Verify` header, the answer names the second
/// provider that reproduced it; a node without the flag does not check.
#[test]
fn a_node_with_a_verify_rate_cross_checks_unasked() {
    let _machine = support::heavy();
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let hostport = format!("127.0.0.1:{}", boot.tcp_port);
    let provider_args = ["--bootstrap", &hostport, "--port", "0", "--threads", "1", "--models-dir", models];
    let providers: Vec<NodeProc> =
        ["p1", "p2"].iter().map(|name| NodeProc::start(PROVIDER, name, &provider_args, d)).collect();
    let gateway_args = |rate: &'static str| -> Vec<String> {
        let mut v: Vec<String> = ["--bootstrap", &hostport, "--port", "0", "--gateway", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--verify-rate".to_string(), rate.to_string()]);
        v
    };
    let checking_args = gateway_args("1");
    let checking = NodeProc::start(NODE, "checking", &checking_args.iter().map(String::as_str).collect::<Vec<_>>(), d);
    let trusting_args = gateway_args("0");
    let trusting = NodeProc::start(NODE, "trusting", &trusting_args.iter().map(String::as_str).collect::<Vec<_>>(), d);
    eventually(Duration::from_secs(60), "both gateways hear both providers", || {
        [&checking, &trusting].iter().all(|g| providers.iter().all(|p| knows_provider(MODEL, g, &p.peer_id)))
    });
    step(t, "two providers and two gateways up");
    let body = serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": "Name a fruit." }],
                                   "max_tokens": 12, "temperature": 0 })
    .to_string();
    let ask = |g: &NodeProc| -> Value {
        let gw = g.gateway.expect("the gateway's address");
        let (status, text) = support::http_post(gw, "/v1/chat/completions", &body).expect("an answer");
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).expect("JSON")
    };
    let checked = ask(&checking);
    let served = checked["quiver"]["provider"].as_str().expect("provider").to_owned();
    let by = checked["quiver"]["verified_by"].as_array().expect("verified_by").clone();
    assert_eq!(by.len(), 1, "{checked}");
    assert_ne!(by[0].as_str(), Some(served.as_str()), "another provider reproduced it: {checked}");
    let trusted = ask(&trusting);
    assert_eq!(trusted["quiver"]["verified_by"], serde_json::json!([]), "{trusted}");
    assert_eq!(trusted["choices"][0]["message"]["content"], checked["choices"][0]["message"]["content"]);
    step(t, "--verify-rate 1 checked the answer; rate 0 did not");
}
