//! Nodes behind NAT serve and are served, with the real binaries in Linux network namespaces.
//!
//! ```text
//!               "internet" 198.18.0.0/24 (a bridge in its own namespace)
//!        ┌────────────────────┬─────────────────────────┬──────────────────────┐
//!   relay 198.18.0.1     NAT A 198.18.0.2            NAT B 198.18.0.3
//!   quiver-node          MASQUERADE, drops          MASQUERADE, refuses
//!   --bootstrap-node          │ 10.1.0.0/24              │ 10.2.0.0/24
//!                        provider 10.1.0.2           client 10.2.0.2
//!                        quiver-provider             quiver ask
//! ```
//!
//! NAT A drops unsolicited packets silently (as most home routers do), NAT B refuses them. The
//! provider behind NAT A and the client behind NAT B learn from AutoNAT that nobody can dial
//! them, stay DHT clients (never in the relay's routing table), reserve slots on the public node's
//! relay and advertise relayed addresses; the client's `quiver ask` gets a real answer from the
//! provider (real default model), over the relay or, after a DCUtR hole punch, directly; the test
//! prints which. The relay holds one reservation at most: a second NATed node (a plain node behind
//! NAT B) is refused one and stays private.
//!
//! Every address exists only inside the namespaces the test creates (198.18.0.0/15 is the
//! benchmarking range, 10.x the LANs); nothing routes to the host's network. Namespaces get the
//! test's pid in their names and are deleted by a guard, also on panic. Without root or kernel
//! support for namespaces, veth, bridges or NAT, the test prints SKIP and returns.
//!
//! Needs the default model: run scripts/fetch-model.sh first.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Finished, model_dir, run_bounded, stdout_lines};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";

/// Bound on one `quiver ask` (dev profile, relayed, with a claim window and retries).
const ASK_LIMIT: Duration = Duration::from_secs(120);
/// Bound on each command that builds the network.
const CMD_LIMIT: Duration = Duration::from_secs(20);

fn step(started: Instant, what: &str) {
    println!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
}

/// Runs `ip args` (or another tool), bounded; the result.
fn run(tool: &str, args: &[&str]) -> Finished {
    run_bounded(tool, args, &[], CMD_LIMIT)
}

/// Runs a command that must succeed to build the network; `Err` with its output otherwise.
fn must(tool: &str, args: &[&str]) -> Result<(), String> {
    let r = run(tool, args);
    if r.status.success() {
        Ok(())
    } else {
        Err(format!("`{tool} {}` failed: {}{}", args.join(" "), r.stdout, r.stderr.trim()))
    }
}

/// The namespaces of one test run; deleted (with any process still in them) when dropped.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn add(&mut self, name: &str) -> Result<(), String> {
        must("ip", &["netns", "add", name])?;
        self.names.push(name.to_owned());
        must("ip", &["-n", name, "link", "set", "lo", "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            // Processes this test started in the namespace (normally gone already).
            let pids = run("ip", &["netns", "pids", ns]);
            for pid in pids.stdout.split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
            let r = run("ip", &["netns", "del", ns]);
            if !r.status.success() {
                eprintln!("warning: could not delete namespace {ns}: {}", r.stderr.trim());
            }
        }
    }
}

/// Namespace names of this run.
struct Names {
    inet: String,
    relay: String,
    nat_a: String,
    nat_b: String,
    provider: String,
    client: String,
}

/// Connects `a` (interface `a_if`) and `b` (`b_if`) with a veth pair.
fn veth(a: &str, a_if: &str, b: &str, b_if: &str) -> Result<(), String> {
    must("ip", &["-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b])?;
    must("ip", &["-n", a, "link", "set", a_if, "up"])?;
    must("ip", &["-n", b, "link", "set", b_if, "up"])
}

/// Plugs `ns` into the internet bridge as `ip`, through a veth whose bridge end is `port`.
fn to_internet(n: &Names, ns: &str, port: &str, ip: &str) -> Result<(), String> {
    veth(&n.inet, port, ns, "wan")?;
    must("ip", &["-n", &n.inet, "link", "set", port, "master", "br0"])?;
    must("ip", &["-n", ns, "addr", "add", ip, "dev", "wan"])
}

/// How a NAT router treats unsolicited packets from the internet to its own address.
#[derive(Clone, Copy, PartialEq)]
enum Unsolicited {
    /// Its kernel answers (a TCP reset, ICMP port unreachable): a dial fails at once.
    Refuse,
    /// Dropped without an answer, as most home routers do: a dial hangs until it times out.
    Drop,
}

/// A NAT router `nat` between the internet (`wan_ip`) and the LAN `lan_ip` of `host`
/// (`host_ip`): forwarding on, MASQUERADE out of `wan`, nothing new forwarded in, unsolicited
/// packets to the router itself refused or dropped.
#[allow(clippy::too_many_arguments)]
fn nat(
    n: &Names,
    nat: &str,
    port: &str,
    wan_ip: &str,
    host: &str,
    lan_ip: &str,
    host_ip: &str,
    unsolicited: Unsolicited,
) -> Result<(), String> {
    to_internet(n, nat, port, wan_ip)?;
    veth(nat, "lan", host, "eth0")?;
    must("ip", &["-n", nat, "addr", "add", lan_ip, "dev", "lan"])?;
    must("ip", &["-n", host, "addr", "add", host_ip, "dev", "eth0"])?;
    let gw = lan_ip.split('/').next().unwrap_or_default();
    must("ip", &["-n", host, "route", "add", "default", "via", gw])?;
    must("ip", &["netns", "exec", nat, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    let ipt = |rule: &[&str]| {
        let mut args = vec!["netns", "exec", nat, "iptables"];
        args.extend_from_slice(rule);
        must("ip", &args)
    };
    ipt(&["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"])?;
    ipt(&[
        "-A",
        "FORWARD",
        "-i",
        "wan",
        "-o",
        "lan",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ])?;
    ipt(&["-A", "FORWARD", "-i", "wan", "-o", "lan", "-j", "DROP"])?;
    if unsolicited == Unsolicited::Drop {
        ipt(&["-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"])?;
    }
    Ok(())
}

fn build(n: &Names, ns: &mut Netns) -> Result<(), String> {
    for name in [&n.inet, &n.relay, &n.nat_a, &n.nat_b, &n.provider, &n.client] {
        ns.add(name)?;
    }
    must("ip", &["-n", &n.inet, "link", "add", "br0", "type", "bridge"])?;
    must("ip", &["-n", &n.inet, "link", "set", "br0", "up"])?;
    to_internet(n, &n.relay, "p-relay", "198.18.0.1/24")?;
    // NAT A drops what it was not asked for (AutoNAT's dial-backs to the provider hang until the
    // dialer gives up), NAT B refuses it (they fail at once): both must end up private.
    nat(n, &n.nat_a, "p-nata", "198.18.0.2/24", &n.provider, "10.1.0.1/24", "10.1.0.2/24", Unsolicited::Drop)?;
    nat(n, &n.nat_b, "p-natb", "198.18.0.3/24", &n.client, "10.2.0.1/24", "10.2.0.2/24", Unsolicited::Refuse)
}

/// A node process inside a namespace, killed when dropped.
struct NsProc {
    child: Child,
    ns: String,
    peer_id: String,
    api: String,
    log: std::path::PathBuf,
}

impl NsProc {
    fn start(ns: &str, bin: &str, name: &str, args: &[&str], dir: &Path) -> NsProc {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, bin])
            .args(args)
            .args(["--listen-ip", "0.0.0.0", "--port", "0", "--api", "127.0.0.1:0", "--heartbeat-interval", "1"])
            .arg("--data-dir")
            .arg(dir.join(name))
            .env("RUST_LOG", "info,quiver_net=debug,libp2p_dcutr=debug,libp2p_relay=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} in {ns}: {e}"));
        let rx = stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut peer_id, mut api) = (None, None);
        while peer_id.is_none() || api.is_none() {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not start within 60 s; log:\n{}", tail(&log));
            };
            if let Some(rest) = line.strip_prefix("QUIVer node ") {
                peer_id = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(a) = line.strip_prefix("api on http://") {
                api = Some(a.to_owned());
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        NsProc { child, ns: ns.to_owned(), peer_id: peer_id.unwrap_or_default(), api: api.unwrap_or_default(), log }
    }

    /// `quiver status --json` run inside the node's namespace (its API is on that loopback).
    fn status(&self) -> Option<Value> {
        let r = run("ip", &["netns", "exec", &self.ns, QUIVER, "status", "--api", &self.api, "--json"]);
        if !r.status.success() {
            return None;
        }
        serde_json::from_str(&r.stdout).ok()
    }

    fn peers(&self) -> Option<Value> {
        let r = run("ip", &["netns", "exec", &self.ns, QUIVER, "peers", "--api", &self.api, "--json"]);
        serde_json::from_str(&r.stdout).ok()
    }

    fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.api);
        run("ip", &["netns", "exec", &self.ns, "curl", "-s", "--max-time", "10", &url]).stdout
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `check` every 500 ms until it gives a value; panics with `what` and the logs after `limit`.
fn wait_for<T>(limit: Duration, what: &str, logs: &[&NsProc], mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = check() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: String = logs.iter().map(|p| format!("\n--- {} ---\n{}", p.log.display(), tail(&p.log))).collect();
    panic!("{what}: not within {limit:?}{logs}");
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Whether this machine lets us build the network: root, `ip netns`, veth, bridges, iptables NAT.
fn can_build() -> Result<(), String> {
    let uid = run("id", &["-u"]);
    if uid.stdout.trim() != "0" {
        return Err("not root".into());
    }
    for tool in ["ip", "iptables", "curl"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).stdout.trim().is_empty() {
            return Err(format!("{tool} is not installed (scripts/install-deps.sh installs it)"));
        }
    }
    Ok(())
}

#[test]
fn nated_provider_serves_a_nated_client_through_relay_and_hole_punch() {
    if let Err(why) = can_build() {
        println!("\n*** SKIP nat test: {why}; network namespaces and NAT cannot be built here ***\n");
        return;
    }
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let t = Instant::now();
    let pid = std::process::id();
    let n = Names {
        inet: format!("qn{pid}-inet"),
        relay: format!("qn{pid}-relay"),
        nat_a: format!("qn{pid}-nata"),
        nat_b: format!("qn{pid}-natb"),
        provider: format!("qn{pid}-prov"),
        client: format!("qn{pid}-cli"),
    };
    let mut ns = Netns { names: Vec::new() };
    if let Err(why) = build(&n, &mut ns) {
        println!("\n*** SKIP nat test: cannot build the namespaces ({why}) ***\n");
        return;
    }
    step(t, "namespaces, bridge and two NAT routers built");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // The public node: bootstrap and relay, one reservation at most.
    let relay = NsProc::start(
        &n.relay,
        NODE,
        "relay",
        &["--bootstrap-node", "--relay-max-reservations", "1", "--relay-max-circuits", "8"],
        d,
    );
    let relay_status = wait_for(Duration::from_secs(30), "the relay listens on the internet", &[&relay], || {
        relay.status().filter(|s| strings(s, "listen_addrs").iter().any(|a| a.starts_with("/ip4/198.18.0.1/tcp/")))
    });
    let boot = strings(&relay_status, "listen_addrs")
        .into_iter()
        .find(|a| a.starts_with("/ip4/198.18.0.1/tcp/"))
        .expect("tcp address");
    step(t, &format!("relay up at {boot}"));

    let provider = NsProc::start(
        &n.provider,
        PROVIDER,
        "provider",
        &["--bootstrap", &boot, "--threads", "2", "--models-dir", models],
        d,
    );
    // The provider finds itself unreachable and gets a relayed address.
    let p_status = wait_for(Duration::from_secs(90), "the provider is relayed", &[&provider, &relay], || {
        provider.status().filter(|s| s["reachability"] == "relayed")
    });
    let p_relayed = strings(&p_status, "relayed_addrs");
    println!("provider reachability: relayed, addresses others can use: {p_relayed:?}");
    assert!(
        p_relayed.iter().all(|a| a.contains("/p2p-circuit/") && a.ends_with(&provider.peer_id)),
        "relayed addresses go through the relay to the provider: {p_relayed:?}"
    );
    assert_eq!(p_status["kad_mode"], "client", "an unreachable provider does not serve the DHT");
    assert!(strings(&p_status, "public_addrs").is_empty(), "no direct address was confirmed behind NAT A");
    step(t, "provider behind NAT A: private, relayed");

    // The relay hears the provider's heartbeats, but never has it in its routing table.
    wait_for(Duration::from_secs(60), "the relay hears the provider's models", &[&provider, &relay], || {
        let s = relay.status()?;
        s["known_nodes"]
            .as_array()?
            .iter()
            .any(|k| {
                k["peer_id"] == provider.peer_id.as_str()
                    && k["models"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == MODEL))
            })
            .then_some(())
    });
    let r_status = relay.status().expect("relay status");
    assert_eq!(r_status["reachability"], "public", "the relay on the internet is dialed back: {r_status}");
    assert_eq!(r_status["relay_service"], true);
    assert!(
        !strings(&r_status, "routing_table").contains(&provider.peer_id),
        "the NATed provider must not be in the relay's routing table as a DHT server: {r_status}"
    );

    // The relay's limit holds: a second NATed node finds itself unreachable, is refused a
    // reservation (the provider holds the only one) and stays private.
    let lan_b = NsProc::start(&n.client, NODE, "lan-b", &["--bootstrap", &boot], d);
    wait_for(Duration::from_secs(90), "the relay refuses a second reservation", &[&lan_b, &relay], || {
        (metric(&relay.metrics(), "quiver_relay_service_refused_total{what=\"reservation\"}") >= 1.0).then_some(())
    });
    let b_status = lan_b.status().expect("status of the second NATed node");
    assert_eq!(b_status["reachability"], "private", "refused a relay slot, the node stays private: {b_status}");
    assert!(strings(&b_status, "relayed_addrs").is_empty());
    assert_eq!(metric(&relay.metrics(), "quiver_relay_service_reservations"), 1.0, "one reservation, the provider's");
    println!("relay: 1 reservation held (the limit), the second NATed node's refused; it stays private");
    drop(lan_b);
    step(t, "relay reservation limit held");

    // The client behind NAT B asks; the provider dials its claim back through the relay.
    let ask = run_bounded(
        "ip",
        &[
            "netns",
            "exec",
            &n.client,
            QUIVER,
            "ask",
            "--bootstrap",
            &boot,
            "--listen-ip",
            "0.0.0.0",
            "--json",
            "--wait",
            "60",
            "--max-tokens",
            "24",
            "Name three colours.",
        ],
        &[("RUST_LOG", "info,quiver_net=debug,libp2p_dcutr=debug")],
        ASK_LIMIT,
    );
    assert!(ask.status.success(), "quiver ask behind NAT B failed:\nstdout: {}\nstderr: {}", ask.stdout, ask.stderr);
    let result: Value =
        serde_json::from_str(&ask.stdout).unwrap_or_else(|e| panic!("ask --json ({e}): {}", ask.stdout));
    assert_eq!(result["provider"], provider.peer_id.as_str(), "answered by the NATed provider: {result}");
    let text = result["text"].as_str().unwrap_or_default();
    assert!(!text.trim().is_empty(), "a real answer: {result}");
    assert_eq!(result["receipt"]["verified"], true, "the receipt verifies: {result}");
    let connection = result["connection"].as_str().unwrap_or("?").to_owned();
    let punched = ask.stderr.contains("hole punch succeeded");
    println!(
        "client behind NAT B answered by the provider behind NAT A over route {}: connection {connection}{}; text {text:?}",
        result["route"],
        if punched { " (hole punch succeeded)" } else { " (no hole punch)" },
    );
    assert!(connection != "none", "the client was connected to the provider when the answer arrived: {result}");
    step(t, "NATed client answered by NATed provider");

    // Why a hole punch failed (or that it worked), from both sides' logs.
    let punch_lines = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.contains("hole punch")).map(|l| l.chars().take(300).collect()).take(6).collect()
    };
    for line in punch_lines(&std::fs::read_to_string(&provider.log).unwrap_or_default()) {
        println!("  provider log: {line}");
    }
    for line in punch_lines(&ask.stderr) {
        println!("  client log: {line}");
    }
    // The provider's side of the same story.
    let p_status = provider.status().expect("provider status");
    println!(
        "provider: reachability {}, hole punches {} direct / {} failed; peers: {}",
        p_status["reachability"],
        p_status["hole_punches_succeeded"],
        p_status["hole_punches_failed"],
        provider
            .peers()
            .map(|p| p
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| format!(
                    "{}={}",
                    x["peer_id"].as_str().unwrap_or("?"),
                    if x["direct"] == true { "direct" } else { "relayed" }
                ))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );

    let r_status = relay.status().expect("relay status");
    assert!(
        !strings(&r_status, "routing_table").contains(&provider.peer_id),
        "still not in the relay's routing table: {r_status}"
    );
    step(t, "done");
    drop(provider);
    drop(relay);
    drop(ns);
}
