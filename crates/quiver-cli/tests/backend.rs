//! A provider behind `--backend openai` answers through the network. Its OpenAI-compatible
//! server is a real one: QUIVer's own gateway (`quiver gateway`), itself answered by a llama.cpp
//! provider on the network — so the request goes client → provider C (openai backend) →
//! gateway G → provider A (llama.cpp) and back.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support;
use serde_json::Value;
use support::{NodeProc, eventually};

const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");

/// A `quiver gateway` process; killed on drop.
struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(bootstrap: &str, dir: &std::path::Path) -> Gateway {
    let mut child = Command::new(QUIVER)
        .args(["gateway", "--listen", "127.0.0.1:0", "--bootstrap", bootstrap, "--port", "0"])
        .args(["--listen-ip", "127.0.0.1", "--api", "off", "--heartbeat-interval", "1", "--data-dir"])
        .arg(dir.join("gateway"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("gateway.log")).expect("log file")))
        .spawn()
        .expect("quiver gateway starts");
    let rx = support::stdout_lines(&mut child);
    let url = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                if let Some(u) = line.strip_prefix("gateway on ") {
                    break u.to_owned();
                }
            }
            Err(_) => panic!("the gateway did not print its address"),
        }
    };
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Gateway { child, url }
}

fn ask_json(bootstrap: &str, model: &str, prompt: &str) -> Value {
    let out = Command::new(QUIVER)
        .args(["ask", "--json", "--listen-ip", "127.0.0.1", "--max-tokens", "24", "--wait", "30"])
        .args(["--bootstrap", bootstrap, "--model", model, prompt])
        .output()
        .expect("quiver ask runs");
    assert!(out.status.success(), "quiver ask failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON result")
}

#[test]
fn a_provider_behind_an_openai_compatible_server_answers_through_the_network() {
    let _machine = support::heavy();
    let models = support::model_dir();
    let models = models.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = NodeProc::start(
        PROVIDER,
        "a",
        &["--bootstrap-node", "--port", "0", "--threads", "2", "--models-dir", models],
        dir.path(),
    );
    let gateway = start_gateway(&a.tcp_addr, dir.path());
    let c = NodeProc::start(
        PROVIDER,
        "c",
        &[
            "--bootstrap",
            &a.tcp_addr,
            "--port",
            "0",
            "--backend",
            "openai",
            "--backend-url",
            &gateway.url,
            "--backend-model",
            "smollm2-135m",
            "--model",
            "smollm2-remote",
        ],
        dir.path(),
    );
    // The bootstrap hears C announce the remote model.
    eventually(Duration::from_secs(60), "provider C's model is announced", || {
        a.status().is_some_and(|s| {
            s["known_nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["peer_id"] == c.peer_id.as_str() && n["models"].to_string().contains("smollm2-remote"))
        })
    });

    let prompt = "What is the capital of France?";
    let remote = ask_json(&a.tcp_addr, "smollm2-remote", prompt);
    let direct = ask_json(&a.tcp_addr, "smollm2-135m", prompt);
    assert_eq!(remote["provider"], c.peer_id.as_str(), "served by the openai-backed provider");
    assert_eq!(remote["receipt"]["engine_build"], "openai-compatible:smollm2-135m");
    assert_eq!(remote["receipt"]["verified"], true);
    assert_eq!(direct["provider"], a.peer_id.as_str());
    let text = remote["text"].as_str().expect("text");
    assert!(!text.is_empty());
    // Greedy all the way down: the same text as asking provider A directly.
    assert_eq!(text, direct["text"].as_str().expect("text"));
    assert_eq!(remote["usage"]["completion_tokens"], direct["usage"]["completion_tokens"]);
}
