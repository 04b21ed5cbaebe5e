//! Zero-configuration start on a LAN (mDNS), in Linux network namespaces of the test's own:
//!
//! ```text
//!   198.18.7.0/24 (one bridge: multicast reaches every host)        10.9.0.0/24 (routed, no multicast)
//!   node 198.18.7.10        provider 198.18.7.11     router 198.18.7.1 ── far 10.9.0.2
//!   quiver-node             quiver-provider start
//!   quiver ask (no --bootstrap)
//! ```
//!
//! - No process is given a bootstrap peer or a config file. The node, alone at first, says once
//!   that it has no peers and looks on the local network (log and `quiver status`); the provider
//!   and it find each other by mDNS, and the note goes away; `quiver ask` on the node's host with
//!   no `--bootstrap` (and no local node in its data directory) is answered by the provider.
//!   The far node, routed from the segment but not on it, is never found (multicast does not
//!   cross the router), though it is reachable by unicast. Then a node on the segment given the
//!   far node as its bootstrap peer connects to it and to its LAN peers alike.
//! - A flood of mDNS answers naming 1,000 fake peers (`py/mdns_flood.py`, real packets to
//!   224.0.0.251:5353 from another host of the segment, twice over) stays within the caps, by
//!   the node's own metrics: the book of LAN peers never held more than 64, dials within the
//!   token bucket's bound for the node's uptime, unusable addresses dropped, failed peers
//!   quarantined (a bounded memory); and a real node that then joins the segment is still found.
//!
//! Needs root and `ip` (SKIP otherwise; `QUIVER_REQUIRE_NETNS=1`: a failure) and, for the first
//! test, the default model (scripts/fetch-model.sh).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support;
use serde_json::Value;
use support::netns::{Host, Internet, NsProc, Skip, wait_for};
use support::{metric_or_zero, model_dir, repo_root, run_command_bounded, step, strings};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const LOG: &str = "info,quiver_net=debug";
/// What a node alone says (quiver-node's `NO_PEERS_LOOKING`).
const ALONE: &str = "no peers yet: looking on the local network; to join a network elsewhere use --bootstrap \
                     host:port or QUIVER_BOOTSTRAP";
/// The caps of `quiver-net/src/lan.rs` (`LanLimits::default`).
const MAX_PENDING: f64 = 64.0;
const MAX_QUARANTINED: f64 = 256.0;
const DIAL_BURST: f64 = 8.0;
const DIALS_PER_SEC: f64 = 4.0;

/// One segment (a bridge) with hosts at `lasts`, each with a route for multicast, and the
/// internet the caller keeps.
fn segment(lasts: &[(&str, u8)]) -> Result<(Internet, Vec<Host>), Skip> {
    let internet = Internet::new([198, 18, 7], &["python3"])?;
    let mut hosts = Vec::new();
    for (name, last) in lasts {
        let host = internet.host(name, *last).map_err(|e| Skip(e.0))?;
        host.ns.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"]).map_err(|e| Skip(e.0))?;
        hosts.push(host);
    }
    Ok((internet, hosts))
}

fn peer_ids(peers: &Option<Value>) -> Vec<String> {
    peers
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p["peer_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn lan_peers_find_each_other_and_serve_without_bootstrap() {
    let _machine = support::heavy();
    let t = Instant::now();
    let (internet, hosts) = match segment(&[("node", 10), ("provider", 11)]) {
        Ok(net) => net,
        Err(skip) => return skip.report("lan_peers_find_each_other_and_serve_without_bootstrap"),
    };
    let (node_host, provider_host) = (&hosts[0], &hosts[1]);
    // The far host: behind a plain router, reachable from the segment by unicast only.
    let (_router, far_host) = internet.router("router", 1, [10, 9, 0]).expect("router");
    for h in &hosts {
        h.ns.ip(&["route", "add", "10.9.0.0/24", "via", "198.18.7.1"]).expect("route to the far LAN");
    }
    step(t, "segment, router and far LAN built");
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = std::env::var_os("QUIVER_TEST_KEEP_LOGS").map(std::path::PathBuf::from);
    let d = keep.as_deref().unwrap_or(dir.path());
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");

    let node = NsProc::start_lan(&node_host.ns, NODE, "node", &[], LOG, d);
    let far = NsProc::start_lan(&far_host.ns, NODE, "far", &[], LOG, d);
    // Alone: said once on the terminal and shown by `quiver status`.
    wait_for(Duration::from_secs(30), "the lone node says it looks on the LAN", &[&node], &[], || {
        node.log_text().contains(ALONE).then_some(())
    });
    let status = node.status().expect("status");
    assert_eq!(status["no_peers"], ALONE, "quiver status shows the note: {status}");
    assert_eq!(status["mdns"], true);
    let text = run_command_bounded(
        {
            let mut c = node_host.command(QUIVER);
            c.args(["status", "--api", &node.api]);
            c
        },
        Duration::from_secs(20),
    );
    assert!(text.stdout.contains(&format!("Note:            {ALONE}")), "quiver status text: {}", text.stdout);
    assert!(text.stdout.contains("LAN discovery:   on (mDNS)"), "quiver status text: {}", text.stdout);
    step(t, "the lone node said so");

    // The seed's command, no bootstrap, no config file: found by the node over mDNS.
    let provider = NsProc::start_lan(
        &provider_host.ns,
        PROVIDER,
        "provider",
        &["start", "--threads", "1", "--models-dir", models],
        LOG,
        d,
    );
    wait_for(Duration::from_secs(60), "node and provider connect over mDNS", &[&node, &provider], &[], || {
        let n = peer_ids(&node.peers());
        let p = peer_ids(&provider.peers());
        (n.contains(&provider.peer_id) && p.contains(&node.peer_id)).then_some(())
    });
    step(t, "node and provider found each other");
    let status = wait_for(Duration::from_secs(10), "the note goes away", &[&node], &[], || {
        node.status().filter(|s| s["no_peers"].is_null())
    });
    assert!(status["connected_peers"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert_eq!(node.log_text().matches(ALONE).count(), 1, "said once:\n{}", node.log_text());
    // Whichever heard the other first dialed it (the later one's first query is answered).
    let lan_connected: f64 =
        [&node, &provider].iter().map(|p| metric_or_zero(&p.metrics(), "quiver_mdns_connected_total")).sum();
    assert!(lan_connected >= 1.0, "one dialed the other as found on the LAN");

    // `quiver ask` on the node's host, no --bootstrap, no local node in its data directory:
    // it finds the network on the LAN and the provider answers.
    let ask_dir = d.join("ask-home");
    std::fs::create_dir_all(&ask_dir).expect("ask dir");
    let mut ask = node_host.command(QUIVER);
    ask.args(["ask", "--json", "--wait", "60", "--max-tokens", "16", "Name three colours."])
        .arg("--data-dir")
        .arg(&ask_dir)
        .env("HOME", &ask_dir)
        .env_remove("QUIVER_BOOTSTRAP")
        .env_remove("QUIVER_DATA_DIR")
        .env_remove("RUST_LOG");
    let asked = run_command_bounded(ask, Duration::from_secs(120));
    assert!(asked.status.success(), "quiver ask failed:\nstdout: {}\nstderr: {}", asked.stdout, asked.stderr);
    let result: Value =
        serde_json::from_str(&asked.stdout).unwrap_or_else(|e| panic!("ask --json ({e}): {}", asked.stdout));
    assert_eq!(result["provider"], provider.peer_id.as_str(), "answered by the LAN provider: {result}");
    assert!(!result["text"].as_str().unwrap_or_default().trim().is_empty(), "a real answer: {result}");
    assert_eq!(result["receipt"]["verified"], true, "the receipt verifies: {result}");
    assert!(asked.stderr.trim().is_empty(), "a normal ask prints nothing on stderr: {}", asked.stderr);
    step(t, "quiver ask without --bootstrap answered by the provider");

    // The far node was never found: not a peer of either, never named in their logs, alone
    // itself, though the segment reaches it by unicast.
    let far_status = far.status().expect("far status");
    let far_port = strings(&far_status, "listen_addrs")
        .iter()
        .find_map(|a| a.strip_prefix("/ip4/10.9.0.2/tcp/")?.split('/').next()?.parse::<u16>().ok())
        .expect("far node's TCP address");
    let far_addr = SocketAddr::from((far_host.addr, far_port));
    let reached = node_host
        .run(|| TcpStream::connect_timeout(&far_addr, Duration::from_secs(5)).is_ok())
        .expect("enter the node's namespace");
    assert!(reached, "the far node is reachable from the segment by unicast ({far_addr})");
    for p in [&node, &provider] {
        assert!(!peer_ids(&p.peers()).contains(&far.peer_id), "{} never connects to the far node", p.name);
        assert!(!p.log_text().contains(&far.peer_id), "{} never heard of the far node:\n{}", p.name, p.log_text());
    }
    let far_status = far.status().expect("far status");
    assert_eq!(far_status["connected_peers"], 0, "the far node found nobody: {far_status}");
    assert_eq!(far_status["no_peers"], ALONE, "and still says so: {far_status}");
    assert!(!far.log_text().contains(&node.peer_id) && !far.log_text().contains(&provider.peer_id));
    step(t, "the far node was never found");

    // A node given a bootstrap peer (the far node) on the segment uses both: the bootstrap peer
    // and the peers it finds on the LAN.
    let both_host = internet.host("both", 12).expect("host");
    both_host.ns.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"]).expect("multicast route");
    both_host.ns.ip(&["route", "add", "10.9.0.0/24", "via", "198.18.7.1"]).expect("route to the far LAN");
    let far_boot = format!("/ip4/{}/tcp/{far_port}/p2p/{}", far_host.addr, far.peer_id);
    let both = NsProc::start_lan(&both_host.ns, NODE, "both", &["--bootstrap", &far_boot], LOG, d);
    wait_for(Duration::from_secs(60), "a node uses its bootstrap peer and its LAN peers", &[&both, &far], &[], || {
        let peers = peer_ids(&both.peers());
        (peers.contains(&far.peer_id) && peers.contains(&node.peer_id) && peers.contains(&provider.peer_id))
            .then_some(())
    });
    let status = both.status().expect("status");
    assert!(status["no_peers"].is_null(), "a node with a bootstrap peer has no note: {status}");
    step(t, "a node with a bootstrap peer also joined its LAN peers");
}

#[test]
fn a_flood_of_mdns_answers_stays_within_the_caps() {
    let _machine = support::heavy();
    let t = Instant::now();
    let (_internet, hosts) = match segment(&[("target", 10), ("flood", 11), ("late", 12)]) {
        Ok(net) => net,
        Err(skip) => return skip.report("a_flood_of_mdns_answers_stays_within_the_caps"),
    };
    let (target_host, flood_host, late_host) = (&hosts[0], &hosts[1], &hosts[2]);
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = std::env::var_os("QUIVER_TEST_KEEP_LOGS").map(std::path::PathBuf::from);
    let d = keep.as_deref().unwrap_or(dir.path());
    let target = NsProc::start_lan(&target_host.ns, NODE, "target", &[], LOG, d);
    step(t, "target node up");

    let script = repo_root().join("crates/quiver-cli/tests/py/mdns_flood.py");
    let mut flood = flood_host.command("python3");
    flood.arg(&script).args(["--source", &flood_host.addr.to_string(), "--peers", "1000", "--rounds", "2"]);
    let sent = run_command_bounded(flood, Duration::from_secs(60));
    assert!(sent.status.success(), "the flood script failed: {}{}", sent.stdout, sent.stderr);
    step(t, &format!("flood sent: {}", sent.stdout.trim()));

    // Every fake peer's answer is heard (each names one address), and the book drains: every
    // usable fake is dialed (and fails: nothing listens) or pushed out.
    let heard = |m: &str| metric_or_zero(m, "quiver_mdns_discovered_total");
    let m = wait_for(Duration::from_secs(60), "the flood heard and the book drained", &[&target], &[], || {
        let m = target.metrics();
        (heard(&m) >= 1000.0 && metric_or_zero(&m, "quiver_mdns_pending") == 0.0).then_some(m)
    });
    let status = target.status().expect("status");
    let uptime = status["uptime_secs"].as_f64().expect("uptime");
    let dropped = |reason: &str| metric_or_zero(&m, &format!("quiver_mdns_dropped_total{{reason=\"{reason}\"}}"));
    let dials = metric_or_zero(&m, "quiver_mdns_dials_total");
    let peak = metric_or_zero(&m, "quiver_mdns_pending_peak");
    println!(
        "heard {}, dials {dials}, peak {peak}, uptime {uptime} s, dropped: invalid {} evicted {} unreachable {} \
         quarantined {} expired {}, quarantined now {}",
        heard(&m),
        dropped("invalid_address"),
        dropped("evicted"),
        dropped("unreachable"),
        dropped("quarantined"),
        dropped("expired"),
        metric_or_zero(&m, "quiver_mdns_quarantined"),
    );
    assert_eq!(peak, MAX_PENDING, "the book filled to its cap and never beyond");
    assert!(dropped("evicted") > 0.0, "the cap pushed fakes out");
    assert!(dropped("invalid_address") >= 100.0, "every unusable address dropped (100 per round)");
    assert!(dials >= 1.0 && dropped("unreachable") >= 1.0, "fakes were dialed and failed");
    // The node's own uptime bounds its dials: the bucket's burst plus its rate for every
    // second the node has run (one more for the partial second).
    let bound = DIAL_BURST + DIALS_PER_SEC * (uptime + 1.0);
    assert!(dials <= bound, "{dials} dials in {uptime} s: beyond the bucket's {bound}");
    assert!(metric_or_zero(&m, "quiver_mdns_quarantined") <= MAX_QUARANTINED);
    assert_eq!(status["connected_peers"], 0, "no fake became a peer: {status}");
    step(t, "caps held");

    // The node still finds a real peer on the segment.
    let late = NsProc::start_lan(&late_host.ns, NODE, "late", &[], LOG, d);
    wait_for(Duration::from_secs(60), "a real LAN peer still connects after the flood", &[&target, &late], &[], || {
        peer_ids(&target.peers()).contains(&late.peer_id).then_some(())
    });
    let m = target.metrics();
    assert!(metric_or_zero(&m, "quiver_mdns_pending_peak") <= MAX_PENDING);
    step(t, "a real peer found after the flood");
}
