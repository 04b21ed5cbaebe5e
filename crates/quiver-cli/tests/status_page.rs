//! The status page in headless Debian Chromium against a live network of three processes of
//! the real release binaries on 127.0.0.1 (ephemeral ports): a bootstrap node, a provider of the
//! real default model, and `quiver gateway`. Chromium loads `GET /` of the gateway, runs its
//! script (which polls the node's JSON), and the test asserts what the page shows; a
//! screenshot is kept in target/artifacts/status.png. The provider's own control API serves the
//! same page, showing its provider card.
//!
//! Needs the default model (scripts/fetch-model.sh) and Chromium (scripts/install-deps.sh).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support;
use serde_json::json;
use support::{NodeProc, eventually, http_post, model_dir, repo_root, run_bounded, step};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";
/// Bound on one Chromium run.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

/// Where test artifacts go: `$CARGO_TARGET_DIR/artifacts`, else `target/artifacts`.
fn artifacts_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join("target"),
    };
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Headless Chromium, as the CI machine has it, with a profile of its own in `profile`; `mode`
/// is `--dump-dom` or `--screenshot=...`. The virtual time budget lets the page's script poll
/// the node a few times before the page is read.
fn chromium(url: &str, profile: &Path, mode: &[&str]) -> String {
    let profile = format!("--user-data-dir={}", profile.display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        "--virtual-time-budget=10000",
        &profile,
    ];
    args.extend_from_slice(mode);
    args.push(url);
    if run_bounded("sh", &["-c", "command -v chromium"], &[], Duration::from_secs(10)).stdout.trim().is_empty() {
        panic!("chromium is not installed: run scripts/install-deps.sh (Debian packages chromium, chromium-driver)");
    }
    let out = run_bounded("chromium", &args, &[], BROWSER_LIMIT);
    assert!(out.status.success(), "chromium {} failed ({}):\n{}", mode.join(" "), out.status, out.stderr);
    out.stdout
}

/// The text of the element with `id` in a DOM dump (the page sets only text in those).
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = dom.find(&marker).map(|i| i + marker.len()).unwrap_or_else(|| panic!("no #{id} in the page"));
    dom[start..].split('<').next().unwrap_or("").to_owned()
}

fn status(addr: SocketAddr) -> serde_json::Value {
    support::http_get_json(addr, "/api/v1/status").expect("status JSON")
}

#[test]
fn status_page_in_headless_chromium_shows_the_live_network() {
    let _machine = support::heavy();
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let provider = NodeProc::start(
        PROVIDER,
        "provider",
        &[
            "--bootstrap",
            &boot.tcp_addr,
            "--port",
            "0",
            "--threads",
            "2",
            "--models-dir",
            models,
            "--gateway",
            "127.0.0.1:0",
        ],
        d,
    );
    let gateway = NodeProc::start(
        QUIVER,
        "gateway",
        &["gateway", "--listen", "127.0.0.1:0", "--bootstrap", &format!("127.0.0.1:{}", boot.tcp_port), "--port", "0"],
        d,
    );
    let gw = gateway.gateway.expect("the gateway printed its address");
    eventually(Duration::from_secs(60), "the gateway knows the provider and is connected to both peers", || {
        let s = status(gateway.api);
        s["connected_peers"] == 2
            && s["known_nodes"].as_array().is_some_and(|k| {
                k.iter().any(|n| n["peer_id"] == provider.peer_id.as_str() && n["models"][0]["name"] == MODEL)
            })
    });
    step(t, "network up");

    // One job through the gateway, so the page has a recent job to show.
    let (code, body) = http_post(
        gw,
        "/v1/chat/completions",
        &json!({ "model": MODEL, "messages": [{ "role": "user", "content": "Hello!" }], "max_tokens": 16,
                 "temperature": 0 })
        .to_string(),
    )
    .expect("an answer");
    assert_eq!(code, 200, "{body}");
    step(t, "one job served");

    let url = format!("http://{gw}/");
    let dom = chromium(&url, &d.join("chromium-gateway"), &["--dump-dom"]);
    std::fs::write(artifacts_dir().join("status.html"), &dom).expect("keep the DOM");
    step(t, "gateway page rendered");
    assert!(dom.contains("data-state=\"live\""), "the page's script did not load the node's data:\n{dom}");
    assert_eq!(text_of(&dom, "peer-id"), gateway.peer_id);
    let peers = status(gateway.api)["connected_peers"].as_u64().expect("connected_peers");
    assert_eq!(text_of(&dom, "peer-count"), peers.to_string(), "connected peers shown");
    assert_eq!(text_of(&dom, "model-count"), "1");
    assert_eq!(text_of(&dom, "provider-count"), "1");
    // Reachability as the node reports it (it may still have been probing when the page loaded).
    let shown = text_of(&dom, "reachability");
    let now = status(gateway.api)["reachability"].as_str().unwrap_or_default().to_owned();
    assert!(shown == now || shown == "unknown", "reachability shown {shown:?}, the node says {now:?}");
    assert!(!text_of(&dom, "reach-detail").is_empty(), "no reachability detail:\n{dom}");
    assert!(
        dom.contains(&format!("data-model=\"{MODEL}\" data-providers=\"1\"")),
        "the model is not listed with its provider:\n{dom}"
    );
    let models_section = &dom[dom.find("id=\"models\"").expect("models section")..];
    let models_section = &models_section[..models_section.find("id=\"peers\"").expect("peers section")];
    assert!(
        models_section.contains(&format!("data-peer=\"{}\"", provider.peer_id)),
        "the provider is not shown under its model"
    );
    let peers_section = &dom[dom.find("id=\"peers\"").expect("peers section")..];
    for p in [&boot.peer_id, &provider.peer_id] {
        assert!(peers_section.contains(&format!("class=\"peer\" data-peer=\"{p}\"")), "peer {p} not listed");
    }
    assert!(dom.contains("class=\"job\""), "no recent job shown");
    assert!(dom.contains(">ok<"), "the served job's outcome is not shown");

    // The network at a glance: its size (three nodes: too few DHT peers to estimate, and the
    // page says so) and one row for the model with its one provider.
    assert_eq!(text_of(&dom, "net-size"), "?");
    assert!(text_of(&dom, "net-size-detail").starts_with("unknown:"), "{dom}");
    assert!(
        dom.contains(&format!("class=\"net-model\" data-model=\"{MODEL}\" data-providers=\"1\"")),
        "the model's row is not in the network table:\n{dom}"
    );
    // `quiver model list --network` and `quiver status` show the same row, read from the API.
    let api = gateway.api.to_string();
    let limit = Duration::from_secs(30);
    let list = || {
        run_bounded(QUIVER, &["model", "list", "--network", "--api", &api], &[], limit)
            .expect_success("quiver model list --network")
            .stdout
    };
    assert!(list().contains("Network size:    unknown:"), "{}", list());
    let network_row = |text: &str| -> Vec<String> {
        let row = text.lines().find(|l| l.trim_start().starts_with(&format!("{MODEL} "))).unwrap_or_else(|| {
            panic!("no row for {MODEL}:\n{text}");
        });
        row.split_whitespace().map(str::to_owned).collect()
    };
    // Providers, free slots (every slot, once a heartbeat after the job has arrived), queued.
    let free = status(provider.api)["provider"]["max_concurrent"].to_string();
    eventually(Duration::from_secs(30), "the row shows the provider idle", || {
        let row = network_row(&list());
        (row[1].as_str(), row[2].as_str(), row[3].as_str()) == ("1", free.as_str(), "0")
    });
    let json = run_bounded(QUIVER, &["model", "list", "--network", "--json", "--api", &api], &[], limit)
        .expect_success("quiver model list --network --json");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["models"][0]["name"], MODEL, "{v}");
    assert_eq!(v["models"][0]["providers"], 1, "{v}");
    assert!(v["size"]["estimate"].is_null() && v["size"]["known_nodes"].as_u64() >= Some(2), "{v}");
    let st = run_bounded(QUIVER, &["status", "--api", &api], &[], limit).expect_success("quiver status");
    assert!(st.stdout.contains("Network size:"), "{}", st.stdout);
    assert_eq!(network_row(&st.stdout)[1], "1", "{}", st.stdout);
    step(t, "network at a glance: page, quiver model list --network, quiver status");

    let shot = artifacts_dir().join("status.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &d.join("chromium-shot"), &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a real screenshot");
    step(t, &format!("screenshot kept at {}", shot.display()));

    // The provider's own control API serves the same page, with its provider card; so does the
    // gateway it runs with --gateway, beside the OpenAI routes.
    let provider_gw = provider.gateway.expect("the provider printed its gateway address");
    let models = support::http_get_json(provider_gw, "/v1/models").expect("the provider's gateway lists models");
    assert_eq!(models["object"], "list", "{models}");
    let (code, page) = support::http_get(provider_gw, "/").expect("the provider's gateway serves /");
    assert_eq!(code, 200);
    assert_eq!(page, quiver_gateway::status::STATUS_PAGE);
    let dom = chromium(&format!("http://{}/", provider.api), &d.join("chromium-provider"), &["--dump-dom"]);
    assert!(dom.contains("data-state=\"live\""), "{dom}");
    assert_eq!(text_of(&dom, "peer-id"), provider.peer_id);
    let p = status(provider.api);
    let slots = format!("{}/{}", p["provider"]["free_slots"], p["provider"]["max_concurrent"]);
    assert_eq!(text_of(&dom, "local-slots"), slots);
    assert!(text_of(&dom, "role").contains("provider"));
    assert!(dom.contains(&format!("data-model=\"{MODEL}\" data-providers=\"1\"")), "{dom}");
    step(t, "provider page rendered");
}
