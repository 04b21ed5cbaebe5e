//! A model split over a group of peers (ggml RPC through `/quiver/shard/1`), as users run it:
//! the release binaries as separate processes on 127.0.0.1. A head (`quiver-provider
//! --shard-peer`) and two members (`quiver-node --shard-host --shard-allow <head>`) serve the
//! default model; its greedy answer through the network equals the bare engine's; a head that
//! is not on a member's allow list is refused and counted; a member killed mid-answer fails the
//! job cleanly, the client fails over to another provider of the model, and the head serves
//! again on the member that remains; the member coming back is taken back (its weights from its
//! cache); a stalled member stops the head until it answers again. The member holding its own
//! copy of the model is sent none of its weights.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use support::{NodeProc, eventually, knows_provider, model_dir, run_bounded, step, wait_bounded};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";
const ASK_LIMIT: Duration = Duration::from_secs(120);
/// The default model's repeating blocks.
const BLOCKS: u64 = 30;

fn shard_head(node: &NodeProc) -> Option<Value> {
    node.status().map(|s| s["shard_head"].clone()).filter(|h| !h.is_null())
}

/// `a..b` (or `a..b + output`) as numbers.
fn range(v: &Value) -> Option<(u64, u64)> {
    let s = v.as_str()?;
    let (a, b) = s.trim_end_matches(" + output").split_once("..")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Whether the head serves with exactly the members `peers`, their ranges following its own
/// without a gap up to the last block, the head also computing the output layer.
fn serving_over(head: &Value, peers: &[&str]) -> bool {
    if head["state"] != "serving" {
        return false;
    }
    let Some((0, mut end)) = range(&head["head_layers"]) else { return false };
    let members = head["members"].as_array().cloned().unwrap_or_default();
    let holding: Vec<&Value> = members.iter().filter(|m| !m["layers"].is_null()).collect();
    if holding.len() != peers.len() {
        return false;
    }
    for (m, peer) in holding.iter().zip(peers) {
        match range(&m["layers"]) {
            Some((a, b)) if m["peer"] == *peer && a == end && b > a => end = b,
            _ => return false,
        }
    }
    end == BLOCKS && head["head_layers"].as_str().is_some_and(|l| l.ends_with("+ output"))
}

/// `quiver ask --json` through `boot`.
fn ask_json(boot: &NodeProc, max_tokens: &str, prompt: &str) -> Value {
    let args = [
        "ask",
        "--bootstrap",
        &boot.tcp_addr,
        "--listen-ip",
        "127.0.0.1",
        "--json",
        "--max-tokens",
        max_tokens,
        prompt,
    ];
    let asked = run_bounded(QUIVER, &args, &[], ASK_LIMIT).expect_success("quiver ask");
    serde_json::from_str(&asked.stdout).expect("quiver ask --json prints JSON")
}

#[test]
fn a_model_split_over_three_processes_answers_like_the_whole_model_and_survives_members_leaving_or_stalling() {
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let _machine = support::heavy();
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let prompt = "Write a short poem about the sea.";
    let max_tokens = "48";

    let local = support::local_answer(models, "2", max_tokens, prompt);
    let reference = local["text"].as_str().expect("text").to_owned();
    step(t, "bare engine answered");

    // The head's PeerId before it runs: its members must name it.
    let head_dir = d.join("head");
    let head_id = run_bounded(QUIVER, &["id", "--data-dir", head_dir.to_str().expect("utf-8")], &[], ASK_LIMIT)
        .expect_success("quiver id")
        .stdout
        .trim()
        .to_owned();
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let hostport = format!("127.0.0.1:{}", boot.tcp_port);
    let member = |name: &str, env: &[(&str, &str)]| {
        NodeProc::start_with_env(
            NODE,
            name,
            &["--bootstrap", &hostport, "--port", "0", "--shard-host", "--shard-allow", &head_id],
            env,
            d,
        )
    };
    // m1 has its own copy of the model: it fills its weight cache from it.
    let m1 = member("m1", &[("QUIVER_MODELS_DIR", models)]);
    let mut m2 = member("m2", &[]);
    // Every forwarded chunk waits 10 ms each way in the head's tunnels (a test-only knob), so
    // that an answer takes long enough to kill a member in the middle of it.
    let head = NodeProc::start_with_env(
        PROVIDER,
        "head",
        &[
            "--bootstrap",
            &hostport,
            "--port",
            "0",
            "--threads",
            "2",
            "--models-dir",
            models,
            "--shard-peer",
            &m1.peer_id,
            "--shard-peer",
            &m2.peer_id,
        ],
        &[("QUIVER_SHARD_TEST_DELAY_MS", "10")],
        d,
    );
    assert_eq!(head.peer_id, head_id, "quiver id printed the head's PeerId");
    // A head that is not on the members' allow lists.
    let intruder = NodeProc::start(
        PROVIDER,
        "intruder",
        &["--bootstrap", &hostport, "--port", "0", "--models-dir", models, "--shard-peer", &m1.peer_id],
        d,
    );
    eventually(Duration::from_secs(120), "the head serves the model split over both members", || {
        shard_head(&head).is_some_and(|h| serving_over(&h, &[&m1.peer_id, &m2.peer_id]))
    });
    step(t, "split model loaded over the head and two members");
    let m1_log = std::fs::read_to_string(d.join("m1.log")).unwrap_or_default();
    assert!(m1_log.contains("weight cache filled from the local copy"), "m1 used its own copy:\n{m1_log}");
    let m2_log = std::fs::read_to_string(d.join("m2.log")).unwrap_or_default();
    assert!(!m2_log.contains("weight cache filled"), "m2 has no copy of the model");
    let status = shard_head(&head).expect("shard status");
    for m in status["members"].as_array().expect("members") {
        assert!(m["rtt_ms"].as_f64().is_some_and(|r| r > 0.0), "a member's round trip is measured: {m}");
        assert!(m["bytes_sent"].as_u64().is_some_and(|b| b > 0), "RPC traffic went through the member's tunnel: {m}");
        // A CPU-only build's member serves its CPU.
        assert!(m["devices"][0].as_str().is_some_and(|d| d.starts_with("CPU")), "the member's devices: {m}");
    }
    // m1 took its weights from its own copy: none was sent. m2, with an empty cache, was sent
    // all of its share.
    assert_loaded_from_own_copy(&member_status(&status, &m1.peer_id));
    let m2_status = member_status(&status, &m2.peer_id);
    assert!(
        m2_status["weights_cached"] == 0 && m2_status["weights_sent"].as_u64().is_some_and(|b| b > 1 << 20),
        "m2 was sent its weights: {m2_status}"
    );
    let human = run_bounded(QUIVER, &["status", "--api", &head.api.to_string()], &[], ASK_LIMIT)
        .expect_success("quiver status")
        .stdout;
    for m in [&m1, &m2] {
        assert!(human.contains(&m.peer_id), "quiver status lists member {}:\n{human}", m.peer_id);
    }
    assert!(
        human.contains("+ output")
            && human.contains("ms")
            && human.contains("on CPU")
            && human.contains("from its cache"),
        "quiver status shows layer ranges, round trips, devices and weights:\n{human}"
    );

    eventually(Duration::from_secs(60), "the bootstrap node hears the head's model", || {
        knows_provider(MODEL, &boot, &head.peer_id)
    });
    let result = ask_json(&boot, max_tokens, prompt);
    assert_eq!(result["provider"], head.peer_id.as_str(), "the head served it: {result}");
    assert_eq!(
        result["text"].as_str(),
        Some(reference.as_str()),
        "the split model's greedy answer is the whole model's"
    );
    step(t, "greedy answer through the split model equals the bare engine's");

    // The intruder never got a byte to the RPC server: m1 refused and counted its streams, and
    // it never loaded.
    eventually(Duration::from_secs(30), "m1 counts the intruder's refused streams", || {
        m1.status().is_some_and(|s| s["shard_host"]["refused"].as_u64().is_some_and(|n| n >= 1))
    });
    let intruded = shard_head(&intruder).expect("the intruder's shard status");
    assert_ne!(intruded["state"], "serving", "a head not on the allow list loaded: {intruded}");
    assert_eq!(intruded["members"][0]["up"], false, "{intruded}");
    drop(intruder);
    step(t, "a head not on the allow list is refused");

    // A long answer on the split model; once it streams, another provider of the model joins,
    // then a member is killed: the job fails at the head and the client fails over.
    let mut long = Command::new(QUIVER)
        .args(["ask", "--bootstrap", &boot.tcp_addr, "--listen-ip", "127.0.0.1", "--json", "--raw"])
        .args(["--max-tokens", "400", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("quiver ask starts");
    let max_concurrent = head.status().and_then(|s| s["provider"]["max_concurrent"].as_u64()).expect("max_concurrent");
    eventually(Duration::from_secs(60), "the head runs the long job", || {
        head.status().and_then(|s| s["provider"]["free_slots"].as_u64()).is_some_and(|f| f < max_concurrent)
    });
    let other = NodeProc::start(
        PROVIDER,
        "whole",
        &["--bootstrap", &hostport, "--port", "0", "--threads", "2", "--gpu-layers", "0", "--models-dir", models],
        d,
    );
    eventually(Duration::from_secs(60), "the bootstrap node hears the second provider", || {
        knows_provider(MODEL, &boot, &other.peer_id)
    });
    assert!(matches!(long.try_wait(), Ok(None)), "the long answer ended before the member was killed");
    m2.kill();
    step(t, "member m2 killed while the head answered");
    let status = wait_bounded(&mut long, ASK_LIMIT, "the long quiver ask");
    let mut out = String::new();
    let mut err = String::new();
    let _ = long.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = long.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(status.success(), "the client did not fail over: {status:?}\n{err}");
    let result: Value = serde_json::from_str(&out).expect("quiver ask --json");
    assert_eq!(result["provider"], other.peer_id.as_str(), "the other provider finished it: {result}");
    assert!(result["attempts"].as_u64().is_some_and(|a| a >= 2), "{result}");
    step(t, "the client failed over to the other provider");

    // The head reloads on the member that remains and serves again.
    eventually(Duration::from_secs(120), "the head serves again over m1 alone", || {
        shard_head(&head).is_some_and(|h| serving_over(&h, &[&m1.peer_id]) && h["reloads"].as_u64() >= Some(1))
    });
    step(t, "the head reloaded over the remaining member");
    // m1 now holds more blocks; those too come from its own copy.
    assert_loaded_from_own_copy(&member_status(&shard_head(&head).expect("shard status"), &m1.peer_id));
    let other_peer = other.peer_id.clone();
    drop(other);
    eventually(Duration::from_secs(60), "the bootstrap node forgets the other provider", || {
        !knows_provider(MODEL, &boot, &other_peer)
    });
    let result = ask_json(&boot, max_tokens, prompt);
    assert_eq!(result["provider"], head.peer_id.as_str(), "{result}");
    assert_eq!(result["text"].as_str(), Some(reference.as_str()), "the reloaded split gives the same answer");
    step(t, "the head serves again after reloading");

    // m2 comes back (the same key and data directory): after a few probes the head finishes
    // its jobs, reloads over both members, and m2 takes the weights it was sent before from
    // its cache.
    m2 = member("m2", &[]);
    eventually(Duration::from_secs(120), "the head takes m2 back", || {
        shard_head(&head)
            .is_some_and(|h| serving_over(&h, &[&m1.peer_id, &m2.peer_id]) && h["reloads"].as_u64() >= Some(2))
    });
    let back = member_status(&shard_head(&head).expect("shard status"), &m2.peer_id);
    let (sent, cached) = (back["weights_sent"].as_u64().unwrap_or(0), back["weights_cached"].as_u64().unwrap_or(0));
    assert!(cached > 1 << 20 && sent < cached, "m2 kept the weights it was sent the first time: {back}");
    assert_loaded_from_own_copy(&member_status(&shard_head(&head).expect("shard status"), &m1.peer_id));
    let result = ask_json(&boot, max_tokens, prompt);
    assert_eq!(result["provider"], head.peer_id.as_str(), "{result}");
    assert_eq!(result["text"].as_str(), Some(reference.as_str()), "the same answer over both members again");
    step(t, "a member that came back is taken back, its weights from its cache");

    // A member that stalls without leaving (stopped: its connections stay open, it answers
    // nothing): the head stops serving within a few probes, and takes no job until it serves
    // again (over m2 alone, once it sees m1 gone); once m1 answers again the head is back
    // over both.
    signal(&m1, "STOP");
    eventually(Duration::from_secs(60), "the head notices the stalled member", || {
        // One snapshot: not serving, and no free slot announced.
        head.status().is_some_and(|s| {
            let stopped = s["shard_head"]["state"] != "serving";
            assert!(!stopped || s["provider"]["free_slots"] == 0, "a free slot while not serving: {s}");
            stopped
        })
    });
    step(t, "a stalled member stops the head");
    signal(&m1, "CONT");
    eventually(Duration::from_secs(120), "the head serves over both again once m1 answers", || {
        shard_head(&head)
            .is_some_and(|h| serving_over(&h, &[&m1.peer_id, &m2.peer_id]) && h["reloads"].as_u64() >= Some(3))
    });
    let result = ask_json(&boot, max_tokens, prompt);
    assert_eq!(result["provider"], head.peer_id.as_str(), "{result}");
    assert_eq!(result["text"].as_str(), Some(reference.as_str()));
    step(t, "the head serves again once the stalled member answers");
}

/// The status of member `peer` in a head's status.
fn member_status(head: &Value, peer: &str) -> Value {
    head["members"].as_array().and_then(|ms| ms.iter().find(|m| m["peer"] == peer)).cloned().unwrap_or(Value::Null)
}

/// A member whose last load took its weights from its own copy of the model: megabytes from
/// its cache, not a byte of weights sent.
fn assert_loaded_from_own_copy(member: &Value) {
    let (sent, cached) = (member["weights_sent"].as_u64(), member["weights_cached"].as_u64());
    assert!(sent == Some(0) && cached.is_some_and(|c| c > 1 << 20), "the member loaded from its own copy: {member}");
}

/// Sends `SIG<name>` to a node's process.
fn signal(node: &NodeProc, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(node.child.id().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {}", node.name);
}
