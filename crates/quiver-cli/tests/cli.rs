//! The command line's polish, with the real release binaries: `quiver init` writes a config the
//! node's loader takes (and whose every commented setting is valid once uncommented), a node
//! starts from it, `--log-format json` logs JSON, every command's `--help` has examples, and
//! `quiver completions` prints scripts for bash, zsh and fish.

use std::time::Duration;

use crate::support;
use quiver_node::config::FileConfig;
use serde_json::Value;
use support::{NodeProc, run_bounded};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const LIMIT: Duration = Duration::from_secs(30);

/// `--gpu-layers` takes a number or `auto`; anything else, from the flag, the environment or
/// the config file, is a usage error (exit 2) that names it, before any model is loaded.
#[test]
fn bad_gpu_layers_are_usage_errors() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    for bad in ["lots", "-1", "1.5", ""] {
        let out = run_bounded(PROVIDER, &[&format!("--gpu-layers={bad}"), "--data-dir", d], &[], LIMIT);
        assert_eq!(out.code(), Some(2), "--gpu-layers {bad:?}: {}", out.stderr);
        assert!(out.stderr.contains("--gpu-layers") && out.stderr.contains("auto"), "{}", out.stderr);
    }
    let out = run_bounded(PROVIDER, &["--data-dir", d], &[("QUIVER_GPU_LAYERS", "many")], LIMIT);
    assert_eq!(out.code(), Some(2), "QUIVER_GPU_LAYERS=many: {}", out.stderr);
    let cfg = dir.path().join("gpu.toml");
    std::fs::write(&cfg, "gpu_layers = \"most\"\n").expect("write config");
    let cfg = cfg.to_str().expect("utf-8 path");
    let out = run_bounded(PROVIDER, &["--config", cfg, "--data-dir", d], &[], LIMIT);
    assert_eq!(out.code(), Some(2), "gpu_layers = \"most\": {}", out.stderr);
    assert!(out.stderr.contains("gpu_layers") && out.stderr.contains("most"), "{}", out.stderr);
}

#[test]
fn init_writes_a_commented_config_that_loads() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("etc/quiver.toml");
    let path_s = path.to_str().expect("utf-8 path");
    let out = run_bounded(QUIVER, &["init", path_s], &[], LIMIT).expect_success("quiver init");
    assert_eq!(out.stdout.trim(), path_s);

    // As written: every setting commented out, so it loads as the defaults.
    let text = std::fs::read_to_string(&path).expect("config written");
    assert_eq!(FileConfig::load(&path).expect("the node's loader takes it"), FileConfig::default());
    assert!(text.lines().filter(|l| l.starts_with("# ") && l.contains(" = ")).count() >= 10, "{text}");

    // Each commented setting is valid: uncommented, all of them load and every field is set.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) =>
            {
                rest.to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let all = FileConfig::parse(&uncommented).unwrap_or_else(|e| panic!("uncommented config: {e}\n{uncommented}"));
    assert!(all.data_dir.is_some() && all.port == Some(4001) && all.listen_ip.is_some() && all.listen.is_some());
    assert!(
        all.bootstrap.is_some() && all.bootstrap_node == Some(false) && all.api.as_deref() == Some("127.0.0.1:4080")
    );
    assert!(
        all.quic == Some(true) && all.heartbeat_interval_secs == Some(10) && all.log_format.as_deref() == Some("text")
    );
    assert!(all.dht_mode.as_deref() == Some("auto") && all.upnp == Some(false) && all.relay_service == Some(true));
    assert_eq!(all.gpu_layers, Some(quiver_node::config::LayersSetting::Word("auto".into())));
    assert!(all.shard_host == Some(false) && all.shard_allow.as_ref().is_some_and(|a| a.len() == 1));
    let relay = quiver_net::RelayLimits::default();
    assert_eq!(
        (all.relay_max_reservations, all.relay_max_circuits, all.relay_max_circuit_bytes),
        (Some(relay.max_reservations), Some(relay.max_circuits), Some(relay.max_circuit_bytes))
    );
    // `quiver node --help` states the same defaults.
    let help = run_bounded(QUIVER, &["node", "--help"], &[], LIMIT).expect_success("quiver node --help").stdout;
    for default in [
        relay.max_reservations as u64,
        relay.max_reservations_per_peer as u64,
        relay.max_circuits as u64,
        relay.max_circuit_duration.as_secs(),
        relay.max_circuit_bytes,
    ] {
        assert!(help.contains(&format!("[default: {default}]")), "{default} missing in:\n{help}");
    }

    // Never replaced by accident.
    let again = run_bounded(QUIVER, &["init", path_s], &[], LIMIT);
    assert_eq!(again.code(), Some(1), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    std::fs::write(&path, "port = 1\n").expect("overwrite");
    run_bounded(QUIVER, &["init", path_s, "--force"], &[], LIMIT).expect_success("quiver init --force");
    assert_eq!(std::fs::read_to_string(&path).expect("config"), text);

    // A node starts from it (flags on top), logging JSON as asked.
    let mut node =
        NodeProc::start(NODE, "from-config", &["--config", path_s, "--port", "0", "--log-format", "json"], dir.path());
    assert!(node.status().is_some_and(|s| s["peer_id"] == node.peer_id.as_str()));
    assert!(node.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "SIGTERM exits 0");
    let log = std::fs::read_to_string(dir.path().join("from-config.log")).expect("log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn every_command_has_examples_in_its_help() {
    let _machine = support::light();
    let commands: &[(&str, &[&str])] = &[
        (QUIVER, &[]),
        (QUIVER, &["node"]),
        (QUIVER, &["provider"]),
        (QUIVER, &["provider", "start"]),
        (QUIVER, &["ask"]),
        (QUIVER, &["gateway"]),
        (QUIVER, &["model"]),
        (QUIVER, &["model", "fetch"]),
        (QUIVER, &["model", "list"]),
        (QUIVER, &["status"]),
        (QUIVER, &["peers"]),
        (QUIVER, &["init"]),
        (QUIVER, &["completions"]),
        (NODE, &[]),
        (PROVIDER, &[]),
        (PROVIDER, &["start"]),
    ];
    for (bin, sub) in commands {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = run_bounded(bin, &args, &[], LIMIT).expect_success(&format!("{bin} {}", args.join(" ")));
        let examples = out.stdout.split_once("Examples:").map(|(_, e)| e).unwrap_or("");
        assert!(
            examples.lines().any(|l| l.trim_start().starts_with("quiver") || l.trim_start().starts_with("curl")),
            "{bin} {} --help shows no example:\n{}",
            sub.join(" "),
            out.stdout
        );
    }
    let gateway = run_bounded(QUIVER, &["gateway", "--help"], &[], LIMIT).stdout;
    for flag in ["--listen", "--api-key", "--cors-origin", "--log-format"] {
        assert!(gateway.contains(flag), "quiver gateway --help lacks {flag}");
    }
}

#[test]
fn completions_for_every_shell_and_binary() {
    let _machine = support::light();
    for shell in ["bash", "zsh", "fish"] {
        let out =
            run_bounded(QUIVER, &["completions", shell], &[], LIMIT).expect_success(&format!("completions {shell}"));
        for word in ["gateway", "init", "completions", "--bootstrap"] {
            assert!(out.stdout.contains(word), "{shell} completions lack {word}");
        }
        let out = run_bounded(QUIVER, &["completions", shell, "--bin", "quiver-provider"], &[], LIMIT)
            .expect_success(&format!("completions {shell} --bin quiver-provider"));
        assert!(out.stdout.contains("quiver-provider") && out.stdout.contains("backend-url"), "{shell}");
    }
    let bad = run_bounded(QUIVER, &["completions", "tcsh"], &[], LIMIT);
    assert_eq!(bad.code(), Some(2), "an unknown shell is a usage error");
}

/// `quiver id --data-dir DIR` prints the PeerId a node started with that data dir has,
/// creating the key when there is none (so groups can name each other before a first start),
/// and the same one every time.
#[test]
fn id_prints_the_peer_id_the_node_will_have() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("member");
    let data_s = data.to_str().expect("utf-8 path");
    let first = run_bounded(QUIVER, &["id", "--data-dir", data_s], &[], LIMIT).expect_success("quiver id");
    let id = first.stdout.trim().to_owned();
    assert!(id.parse::<quiver_node::PeerId>().is_ok(), "not a PeerId: {id:?}");
    assert!(data.join("identity.key").exists(), "the key was created");
    let again = run_bounded(QUIVER, &["id", "--data-dir", data_s], &[], LIMIT).expect_success("quiver id again");
    assert_eq!(again.stdout.trim(), id);
    let node = NodeProc::start(NODE, "member", &["--port", "0"], dir.path());
    assert_eq!(node.peer_id, id, "the node runs under the printed identity");
}
