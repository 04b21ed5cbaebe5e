//! A network partition with the real binaries on eight hosts, each in its own Linux network
//! namespace on one bridge ([`support::netns`]): a bootstrap node, four plain nodes and two
//! providers of the default model, every node told only the bootstrap node, as the README says.
//!
//! 1. All join: every routing table holds every other node, every node hears every heartbeat;
//!    `quiver ask` is answered.
//! 2. The bridge is split in two halves, a provider in each, the bootstrap node in half A. Each
//!    side forgets the other (no connection left, heartbeats gone from the node table) and each
//!    half's client is served by its own half's provider. Kademlia keeps the other half's
//!    entries, disconnected, through the split (printed): they are what reconnects the halves.
//! 3. Healed: every node is connected to the other half again, every routing table and node
//!    table holds every node (heartbeats cross), every heartbeat-topic mesh grows back to at
//!    least its size within a half, and a client in half A whose own provider has been stopped
//!    is served from half B.
//!
//! The time each phase took is printed (informational; the waits are generous bounds). Skips
//! with a loud `SKIP:` line where namespaces cannot be made (not root, no `ip`); with
//! `QUIVER_REQUIRE_NETNS=1` that is a failure. Needs the default model: scripts/fetch-model.sh.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support;
use serde_json::Value;
use support::netns::TestNet;
use support::{
    NodeProc, eventually, known_nodes, knows_provider, model_dir, routing_table, run_command_bounded, sees_all, step,
};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";

/// Hosts: 0 bootstrap, 1-2 nodes, 3 provider (half A); 4-6 nodes, 7 provider (half B).
const HOSTS: usize = 8;
const HALF_A: [usize; 4] = [0, 1, 2, 3];
const HALF_B: [usize; 4] = [4, 5, 6, 7];
const PROVIDER_A: usize = 3;
const PROVIDER_B: usize = 7;

/// Bound on every wait for the network to settle (join, split, heal).
const SETTLE: Duration = Duration::from_secs(240);
/// Bound on one `quiver ask`.
const ASK_LIMIT: Duration = Duration::from_secs(120);

/// What a node's status says about a set of peers.
struct View {
    connected: usize,
    in_table: usize,
    /// Listed in the node table at all (heard within its time to live).
    known: usize,
    /// Heard within the last 3 s.
    fresh: usize,
}

fn view(status: &Value, peers: &HashSet<String>) -> View {
    let count = |list: Vec<String>| list.iter().filter(|p| peers.contains(*p)).count();
    let connected: Vec<String> =
        status["peers"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect();
    View {
        connected: count(connected),
        in_table: count(routing_table(status)),
        known: count(known_nodes(status, f64::MAX)),
        fresh: count(known_nodes(status, 3.0)),
    }
}

/// The lowest gossip score `node` gives any connected peer among `peers`.
fn lowest_score(node: &NodeProc, peers: &HashSet<String>) -> Option<f64> {
    let list = node.get("/api/v1/peers")?;
    let list = list.get("peers").unwrap_or(&list).as_array()?.clone();
    list.iter()
        .filter(|p| p["peer_id"].as_str().is_some_and(|id| peers.contains(id)))
        .filter_map(|p| p["gossip_score"].as_f64())
        .reduce(f64::min)
}

/// Mesh peers on the heartbeat topic.
fn nodes_mesh(status: &Value) -> u64 {
    status["gossip_mesh"]["quiver/1/nodes"].as_u64().unwrap_or(0)
}

/// One line per node: connections, routing-table entries and node-table entries towards
/// `other(i)`, and its heartbeat-topic mesh size.
fn print_views(nodes: &[NodeProc], other: impl Fn(usize) -> HashSet<String>, label: &str) {
    println!("  {label}:");
    for (i, n) in nodes.iter().enumerate() {
        match n.status() {
            Some(s) => {
                let v = view(&s, &other(i));
                println!(
                    "    {:<6} connected {}  routing table {}  node table {} (fresh {})  mesh {}  lowest gossip score \
                     there {}",
                    n.name,
                    v.connected,
                    v.in_table,
                    v.known,
                    v.fresh,
                    nodes_mesh(&s),
                    lowest_score(n, &other(i)).map_or("-".into(), |s| format!("{s:.1}"))
                );
            }
            None => println!("    {:<6} (no status)", n.name),
        }
    }
}

/// `quiver ask --json` from host `host`, joining through `via`; the parsed result.
fn ask(net: &TestNet, host: usize, via: &NodeProc, prompt: &str) -> Value {
    let mut cmd = net.host(host).command(QUIVER);
    cmd.args(["ask", "--bootstrap", &via.tcp_addr, "--listen-ip", &net.host(host).addr.to_string()])
        .args(["--json", "--no-cache", "--max-tokens", "8", "--wait", "60", prompt])
        .env("RUST_LOG", "warn,quiver_node::client=debug")
        .env("NO_COLOR", "1");
    let out =
        run_command_bounded(cmd, ASK_LIMIT).expect_success(&format!("quiver ask on host {host} through {}", via.name));
    let result: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("quiver ask did not print JSON ({e}): {}\nstderr: {}", out.stdout, out.stderr));
    assert!(result["text"].as_str().is_some_and(|t| !t.trim().is_empty()), "an empty answer: {result}");
    assert_eq!(result["receipt"]["verified"], true, "the receipt verifies: {result}");
    result
}

/// On a failure, prints the end of every node's log (they live in a temporary directory that
/// goes with the test).
struct LogsOnPanic<'a> {
    dir: &'a std::path::Path,
    names: Vec<String>,
}

impl Drop for LogsOnPanic<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in &self.names {
            let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            println!("---- {name}.log (last {} lines)", tail.len());
            for line in tail.into_iter().rev() {
                println!("{line}");
            }
        }
    }
}

/// Like [`support::eventually`], printing every node's view of the other half before failing.
fn settle(nodes: &[NodeProc], other: impl Fn(usize) -> HashSet<String> + Copy, what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < SETTLE {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    print_views(nodes, other, "at the failure, towards the other half");
    panic!("{what}: not within {SETTLE:?}");
}

fn provider_of(result: &Value) -> &str {
    result["provider"].as_str().unwrap_or_default()
}

#[test]
fn partition_and_heal() {
    let _machine = support::heavy();
    let net = match TestNet::new(HOSTS) {
        Ok(net) => net,
        Err(skip) => return skip.report("partition_and_heal"),
    };
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let t = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // quiver-node --bootstrap-node; everyone else: --bootstrap <the bootstrap node's multiaddr>.
    let boot = net.host(0).start_node(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let boot_addr = boot.tcp_addr.clone();
    let mut nodes = vec![boot];
    for i in 1..HOSTS {
        let node = if i == PROVIDER_A || i == PROVIDER_B {
            let name = if i == PROVIDER_A { "provA" } else { "provB" };
            let args = ["--bootstrap", &boot_addr, "--port", "0", "--threads", "1", "--models-dir", models];
            net.host(i).start_node(PROVIDER, name, &args, d)
        } else {
            let name = if HALF_A.contains(&i) { format!("a{i}") } else { format!("b{i}") };
            net.host(i).start_node(NODE, &name, &["--bootstrap", &boot_addr, "--port", "0"], d)
        };
        nodes.push(node);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    let half_of = |i: usize| if HALF_A.contains(&i) { &HALF_A } else { &HALF_B };
    let other_half = &|i: usize| -> HashSet<String> {
        let other = if HALF_A.contains(&i) { &HALF_B } else { &HALF_A };
        other.iter().map(|&j| ids[j].clone()).collect()
    };
    let (prov_a, prov_b) = (ids[PROVIDER_A].clone(), ids[PROVIDER_B].clone());
    let _logs = LogsOnPanic { dir: d, names: nodes.iter().map(|n| n.name.clone()).collect() };
    step(t, "8 processes started, each in its own namespace");

    // 1. Everyone sees everyone; requests are served.
    let took = eventually(SETTLE, "all 8 nodes see each other", || nodes.iter().all(|n| sees_all(n, &all)));
    println!("joined: every routing table and node table complete after {took:.1?}");
    eventually(SETTLE, "clients' entry nodes know both providers", || {
        [1, 4].iter().all(|&i| knows_provider(MODEL, &nodes[i], &prov_a) && knows_provider(MODEL, &nodes[i], &prov_b))
    });
    for (host, via) in [(1, 1), (4, 4)] {
        let result = ask(&net, host, &nodes[via], "Name a colour.");
        assert!([prov_a.as_str(), prov_b.as_str()].contains(&provider_of(&result)), "{result}");
    }
    print_views(&nodes, other_half, "before the split, towards the other half");
    step(t, "joined and served");

    // 2. Split: half A (bootstrap, a1, a2, provider A) | half B (b4, b5, b6, provider B).
    net.partition(&[&HALF_A, &HALF_B]).expect("partition");
    let split = Instant::now();
    settle(&nodes, other_half, "each half's node tables drop the other half", || {
        nodes.iter().enumerate().all(|(i, n)| n.status().is_some_and(|s| view(&s, &other_half(i)).known == 0))
    });
    println!("split: heartbeats of the other half forgotten after {:.1?}", split.elapsed());
    settle(&nodes, other_half, "no connection across the split is left", || {
        nodes.iter().enumerate().all(|(i, n)| n.status().is_some_and(|s| view(&s, &other_half(i)).connected == 0))
    });
    println!("split: connections across it gone after {:.1?}", split.elapsed());
    // Each half still hears itself.
    settle(&nodes, other_half, "each half still sees its own nodes", || {
        nodes.iter().enumerate().all(|(i, n)| {
            let own: Vec<&str> = half_of(i).iter().map(|&j| ids[j].as_str()).collect();
            sees_all(n, &own)
        })
    });
    print_views(&nodes, other_half, "split, towards the other half");
    let split_mesh: Vec<u64> = nodes.iter().map(|n| n.status().map_or(0, |s| nodes_mesh(&s))).collect();
    // Within each half, that half's provider serves.
    let in_a = ask(&net, 1, &nodes[1], "Name a fruit.");
    assert_eq!(provider_of(&in_a), prov_a, "half A's client is served by half A's provider: {in_a}");
    let in_b = ask(&net, 4, &nodes[4], "Name a fruit.");
    assert_eq!(provider_of(&in_b), prov_b, "half B's client is served by half B's provider: {in_b}");
    println!("split: served within each half (attempts: A {}, B {})", in_a["attempts"], in_b["attempts"]);
    step(t, "split: each half on its own");

    // 3. Heal: every table complete again, heartbeats from across heard again.
    net.heal().expect("heal");
    let healed = Instant::now();
    settle(&nodes, other_half, "after healing, every node is connected to the other half again", || {
        nodes.iter().enumerate().all(|(i, n)| n.status().is_some_and(|s| view(&s, &other_half(i)).connected > 0))
    });
    println!("healed: every node connected across again after {:.1?}", healed.elapsed());
    settle(&nodes, other_half, "after healing, all 8 nodes see each other again", || {
        nodes.iter().all(|n| sees_all(n, &all))
    });
    println!(
        "healed: every routing table and node table complete again (heartbeats cross) after {:.1?}",
        healed.elapsed()
    );
    settle(&nodes, other_half, "every node has mesh peers on the heartbeat topic", || {
        nodes.iter().all(|n| n.status().is_some_and(|s| nodes_mesh(&s) > 0))
    });
    println!("healed: every node has heartbeat-topic mesh peers after {:.1?}", healed.elapsed());
    print_views(&nodes, other_half, "healed, towards the other half");
    // Meshes grow back with the other half in them: at least as big as within a half alone.
    settle(&nodes, other_half, "every heartbeat-topic mesh at least as big as during the split", || {
        nodes.iter().zip(&split_mesh).all(|(n, &before)| n.status().is_some_and(|s| nodes_mesh(&s) >= before))
    });
    println!("healed: every mesh back to its size during the split after {:.1?}", healed.elapsed());
    step(t, "healed: tables and meshes recovered");

    // Requests resume across the healed link: half A's provider stops, half A's client is
    // served by half B's provider.
    nodes[PROVIDER_A].kill();
    let stopped = Instant::now();
    let across = ask(&net, 2, &nodes[2], "Name an animal.");
    assert_eq!(provider_of(&across), prov_b, "half A's client is served from half B after healing: {across}");
    println!(
        "healed: half A's client served by half B's provider {:.1?} after half A's provider stopped ({:.1?} after \
         healing; attempts {})",
        stopped.elapsed(),
        healed.elapsed(),
        across["attempts"]
    );
    step(t, "healed: served across the healed link");
}
