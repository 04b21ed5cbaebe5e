//! Models people already have, with the real binaries: a model in Ollama's store (laid out as
//! Ollama lays it out, the blob a hard link to the default model) served by `quiver-provider
//! --model ollama:NAME` and answered through the network as `quiver ask --model NAME`; clear
//! errors for a missing or malformed manifest, a missing blob and a blob that is no GGUF; and
//! `quiver model fetch hf:...` from a local hub (a std HTTP server on 127.0.0.1 answering the
//! listing, the resolve route's redirect and the download) whose file `quiver ask --local
//! --model hf:...` then loads without the network.
//!
//! Needs the default model: run scripts/fetch-model.sh first.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support;
use serde_json::{Value, json};
use support::{MODEL_FILE, MODEL_SHA256, NodeProc, eventually, knows_provider, model_dir, run_bounded, step};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const LIMIT: Duration = Duration::from_secs(90);

/// An Ollama store in `dir` holding `name:latest`, whose model layer is the default model.
fn ollama_store(dir: &Path, name: &str) -> PathBuf {
    let store = dir.join("ollama-models");
    let blobs = store.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let model = model_dir().join(MODEL_FILE);
    let blob = blobs.join(format!("sha256-{MODEL_SHA256}"));
    if std::fs::hard_link(&model, &blob).is_err() {
        std::fs::copy(&model, &blob).unwrap();
    }
    let config = br#"{"model_format":"gguf","model_family":"llama"}"#;
    let config_digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(config));
    std::fs::write(blobs.join(format!("sha256-{config_digest}")), config).unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{MODEL_SHA256}"),
             "size": std::fs::metadata(&model).unwrap().len()},
            {"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:00", "size": 1}
        ]
    });
    write_manifest(&store, name, &manifest.to_string());
    store
}

fn write_manifest(store: &Path, name: &str, text: &str) {
    let dir = store.join("manifests/registry.ollama.ai/library").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latest"), text).unwrap();
}

#[test]
fn a_model_in_ollamas_store_is_served_under_its_name() {
    let _machine = support::heavy();
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = ollama_store(d, "smolly");
    let store = store.to_str().unwrap();
    let empty = d.join("no-models");
    let env = [("OLLAMA_MODELS", store)];

    let listed =
        run_bounded(QUIVER, &["model", "list", "--json", "--models-dir", empty.to_str().unwrap()], &env, LIMIT)
            .expect_success("quiver model list");
    let listed: Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let ours = listed.as_array().unwrap().iter().find(|m| m["source"] == "ollama:smolly:latest");
    let ours = ours.unwrap_or_else(|| panic!("Ollama's model is not listed: {listed}"));
    assert_eq!(
        (&ours["name"], &ours["ollama"], &ours["sha256"]),
        (&json!("smolly"), &json!(true), &json!(MODEL_SHA256))
    );

    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let hostport = format!("127.0.0.1:{}", boot.tcp_port);
    let args = ["--bootstrap", &hostport, "--port", "0", "--threads", "2", "--no-fetch", "--model", "ollama:smolly"];
    let mut args = args.to_vec();
    args.extend(["--models-dir", empty.to_str().unwrap()]);
    let provider = NodeProc::start_with_env(PROVIDER, "provider", &args, &env, d);
    eventually(Duration::from_secs(60), "the bootstrap node hears of the provider's model", || {
        knows_provider("smolly", &boot, &provider.peer_id)
    });
    let log = std::fs::read_to_string(d.join("provider.log")).unwrap_or_default();
    assert!(log.contains("ollama:smolly:latest"), "the provider's log names where the model comes from:\n{log}");
    let copied = std::fs::read_dir(&empty).map(|d| d.count()).unwrap_or(0);
    assert_eq!(copied, 0, "nothing was copied into the models directory");
    step(t, "provider serves Ollama's model");

    let asked = run_bounded(
        QUIVER,
        &["ask", "--bootstrap", &boot.tcp_addr, "--listen-ip", "127.0.0.1", "--model", "smolly", "--json"]
            .into_iter()
            .chain(["--max-tokens", "8", "Say hello."])
            .collect::<Vec<_>>(),
        &[],
        LIMIT,
    )
    .expect_success("quiver ask --model smolly");
    let result: Value = serde_json::from_str(&asked.stdout).expect("JSON");
    assert_eq!(result["provider"], provider.peer_id.as_str(), "{result}");
    assert!(!result["text"].as_str().unwrap_or("").is_empty(), "{result}");
    assert_eq!(result["receipt"]["verified"], true, "{result}");
    step(t, "answered through the network");
}

#[test]
fn ollama_store_errors_are_clear() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = ollama_store(d, "good");
    write_manifest(&store, "broken", "{\"layers\": [ this is not JSON");
    write_manifest(
        &store,
        "nomodel",
        r#"{"layers": [{"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:00", "size": 1}]}"#,
    );
    let missing = format!(
        r#"{{"layers": [{{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:{}", "size": 5}}]}}"#,
        "cd".repeat(32)
    );
    write_manifest(&store, "noblob", &missing);
    let text = b"not a model, just text";
    let text_digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(text));
    std::fs::write(store.join(format!("blobs/sha256-{text_digest}")), text).unwrap();
    let notgguf = format!(
        r#"{{"layers": [{{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:{text_digest}", "size": {}}}]}}"#,
        text.len()
    );
    write_manifest(&store, "notgguf", &notgguf);

    let store = store.to_str().unwrap();
    let data = d.join("provider");
    let cases = [
        ("ollama:absent", vec!["Ollama has no model ollama:absent:latest", "ollama pull absent:latest"]),
        ("ollama:broken", vec!["Ollama manifest", "broken/latest", "not a manifest"]),
        ("ollama:nomodel", vec!["no model layer"]),
        ("ollama:noblob", vec!["Ollama blob", "missing"]),
        ("ollama:notgguf", vec!["not a usable GGUF"]),
        ("ollama:../etc", vec!["bad model reference"]),
    ];
    for (model, expected) in cases {
        let args = ["--model", model, "--no-fetch", "--port", "0", "--listen-ip", "127.0.0.1", "--data-dir"];
        let mut args = args.to_vec();
        args.push(data.to_str().unwrap());
        let run = run_bounded(PROVIDER, &args, &[("OLLAMA_MODELS", store)], LIMIT);
        assert_eq!(run.code(), Some(1), "quiver-provider --model {model}: {run:?}");
        for e in expected {
            assert!(run.stderr.contains(e), "quiver-provider --model {model}: no {e:?} in\n{}", run.stderr);
        }
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    let listed = run_bounded(
        QUIVER,
        &["model", "list", "--models-dir", d.join("m").to_str().unwrap()],
        &[("OLLAMA_MODELS", store)],
        LIMIT,
    )
    .expect_success("quiver model list");
    assert!(listed.stdout.contains("ollama:good:latest"), "{}", listed.stdout);
    assert!(listed.stdout.contains("ollama:broken:latest (ollama, unusable"), "{}", listed.stdout);
}

/// A hub on 127.0.0.1 serving repository `o/r` with one file; records each request's head.
fn hub(file: &'static str, path: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let size = std::fs::metadata(&path).unwrap().len();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) && !head.ends_with("\r\n\r\n") {}
            let target = head.split(' ').nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(head.clone());
            let ok = head.to_ascii_lowercase().contains("authorization: bearer hf_test") || target.starts_with("/cdn/");
            let answer = if !ok {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
            } else if target == "/api/models/o/r/tree/main?recursive=true" {
                let listing = json!([{"type": "file", "path": file, "size": size,
                                      "lfs": {"oid": MODEL_SHA256, "size": size}}])
                .to_string();
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{listing}", listing.len())
            } else if target == format!("/o/r/resolve/main/{file}") {
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: /cdn/{file}\r\nX-Linked-Etag: \"{MODEL_SHA256}\"\r\n\
                         X-Linked-Size: {size}\r\nContent-Length: 0\r\n\r\n"
                )
            } else if target == format!("/cdn/{file}") {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            let _ = stream.write_all(answer.as_bytes());
            if target.starts_with("/cdn/") {
                let _ = std::io::copy(&mut std::fs::File::open(&path).unwrap(), &mut stream);
            }
        }
    });
    (url, heads)
}

#[test]
fn a_hugging_face_model_is_fetched_and_loaded() {
    let _machine = support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    let models = models.to_str().unwrap();
    let (endpoint, heads) = hub("SmolLM2-135M-Instruct.Q4_1.gguf", model_dir().join(MODEL_FILE));
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "hf_test")];
    let fetched = run_bounded(QUIVER, &["model", "fetch", "hf:o/r:q4_1", "--models-dir", models], &env, LIMIT)
        .expect_success("quiver model fetch hf:o/r:q4_1");
    assert!(fetched.stdout.trim().ends_with("hf/o/r/SmolLM2-135M-Instruct.Q4_1.gguf"), "{}", fetched.stdout);
    assert!(fetched.stderr.contains("ready as smollm2-135m-instruct.q4_1"), "{}", fetched.stderr);
    assert_eq!(heads.lock().unwrap().len(), 3, "listing, resolve, download");

    // Loaded from the models directory, no hub needed.
    let local = run_bounded(
        QUIVER,
        &["ask", "--local", "--model", "hf:o/r:Q4_1", "--models-dir", models, "--json", "--max-tokens", "4", "Hi"],
        &[("HF_ENDPOINT", "http://127.0.0.1:9")],
        LIMIT,
    )
    .expect_success("quiver ask --local --model hf:o/r:Q4_1");
    let result: Value = serde_json::from_str(&local.stdout).expect("JSON");
    assert_eq!(result["model_sha256"], MODEL_SHA256, "{result}");
    assert_eq!(heads.lock().unwrap().len(), 3);
}
