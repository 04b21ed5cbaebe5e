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
//! prints which. Then a client that listens only on QUIC and one that listens only on TCP each
//! ask again and are served; the test prints, per transport, whether a DCUtR hole punch through
//! both NATs made the connection direct. The relay holds one reservation at most: a second NATed node (a plain node behind
//! NAT B) is refused one and stays private.
//!
//! The network is built with [`support::netns`] ([`support::netns::Internet`] and its NAT
//! routers). Every address exists only inside the namespaces the test creates (198.18.0.0/15 is
//! the benchmarking range, 10.x the LANs); nothing routes to the host's network. Namespaces get
//! the test's pid in their names and are deleted by their guards, also on panic. Without root,
//! `iptables` or kernel support for namespaces, veth, bridges or NAT, the test prints a loud
//! `SKIP:` and returns (`QUIVER_REQUIRE_NETNS=1` makes that a failure).
//!
//! Needs the default model: run scripts/fetch-model.sh first.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::netns::{Host, Internet, Iptables, NatRouter, NsProc, Skip, Unsolicited, ask_args, wait_for};
use support::{metric, model_dir, run_command_bounded, step, strings};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";

/// Bound on one `quiver ask` (dev profile, relayed, with a claim window and retries).
const ASK_LIMIT: Duration = Duration::from_secs(120);
/// What the nodes log.
const LOG: &str = "info,quiver_net=debug,libp2p_dcutr=debug,libp2p_relay=debug";

/// The network of one run; every namespace is deleted (with any process still in it) when
/// dropped.
struct Net {
    /// The public node's host, 198.18.0.1.
    relay: Host,
    /// 198.18.0.2, LAN 10.1.0.0/24 with the provider.
    nat_a: NatRouter,
    /// 198.18.0.3, LAN 10.2.0.0/24 with the client.
    nat_b: NatRouter,
    _internet: Internet,
}

fn build() -> Result<Net, Skip> {
    let internet = Internet::new([198, 18, 0], &["iptables"])?;
    let routers = || {
        let relay = internet.host("relay", 1)?;
        // NAT A drops what it was not asked for (AutoNAT's dial-backs to the provider hang until
        // the dialer gives up), NAT B refuses it (they fail at once): both must end up private.
        let nat_a = internet.nat_router("nata", 2, [10, 1, 0], Unsolicited::Drop, Iptables::System)?;
        let nat_b = internet.nat_router("natb", 3, [10, 2, 0], Unsolicited::Refuse, Iptables::System)?;
        Ok((relay, nat_a, nat_b))
    };
    let (relay, nat_a, nat_b) = routers().map_err(|e: support::netns::IpError| Skip(e.0))?;
    Ok(Net { relay, nat_a, nat_b, _internet: internet })
}

/// One `quiver ask` from behind NAT B, answered with a verified receipt by `provider`.
struct Asked {
    result: Value,
    stderr: String,
    /// The client logged a successful DCUtR hole punch.
    punched: bool,
}

fn ask_from_nat_b(
    client_ns: &support::netns::Netns,
    boot: &str,
    max_tokens: &str,
    extra: &[&str],
    provider: &str,
) -> Asked {
    let mut ask = client_ns.command(QUIVER);
    ask.args(ask_args(boot, max_tokens)).args(extra).env("RUST_LOG", "info,quiver_net=debug,libp2p_dcutr=debug");
    let ask = run_command_bounded(ask, ASK_LIMIT);
    assert!(ask.status.success(), "quiver ask behind NAT B failed:\nstdout: {}\nstderr: {}", ask.stdout, ask.stderr);
    let result: Value =
        serde_json::from_str(&ask.stdout).unwrap_or_else(|e| panic!("ask --json ({e}): {}", ask.stdout));
    assert_eq!(result["provider"], provider, "answered by the NATed provider: {result}");
    assert!(!result["text"].as_str().unwrap_or_default().trim().is_empty(), "a real answer: {result}");
    assert_eq!(result["receipt"]["verified"], true, "the receipt verifies: {result}");
    let punched = ask.stderr.contains("hole punch succeeded");
    Asked { result, stderr: ask.stderr, punched }
}

fn metric_or_zero(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

#[test]
fn nated_provider_serves_a_nated_client_through_relay_and_hole_punch() {
    let t = Instant::now();
    let net = match build() {
        Ok(net) => net,
        Err(skip) => return skip.report("nated_provider_serves_a_nated_client_through_relay_and_hole_punch"),
    };
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let (provider_ns, client_ns) = (&net.nat_a.host.ns, &net.nat_b.host.ns);
    step(t, "namespaces, bridge and two NAT routers built");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // The public node: bootstrap and relay, one reservation at most.
    let relay = NsProc::start(
        &net.relay.ns,
        NODE,
        "relay",
        &["--bootstrap-node", "--relay-max-reservations", "1", "--relay-max-circuits", "8"],
        LOG,
        d,
    );
    let relay_status = wait_for(Duration::from_secs(30), "the relay listens on the internet", &[&relay], &[], || {
        relay.status().filter(|s| strings(s, "listen_addrs").iter().any(|a| a.starts_with("/ip4/198.18.0.1/tcp/")))
    });
    let boot = strings(&relay_status, "listen_addrs")
        .into_iter()
        .find(|a| a.starts_with("/ip4/198.18.0.1/tcp/"))
        .expect("tcp address");
    step(t, &format!("relay up at {boot}"));

    // One engine thread: llama.cpp's threads spin-wait for each other, and on a busy shared
    // machine two of them made a 24-token answer take over 30 s (the client then gives up:
    // "stalled or too slow"), which has nothing to do with NAT.
    let provider = NsProc::start(
        provider_ns,
        PROVIDER,
        "provider",
        &["--bootstrap", &boot, "--threads", "1", "--models-dir", models],
        LOG,
        d,
    );
    // The provider finds itself unreachable and gets a relayed address.
    let p_status = wait_for(Duration::from_secs(90), "the provider is relayed", &[&provider, &relay], &[], || {
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
    wait_for(Duration::from_secs(60), "the relay hears the provider's models", &[&provider, &relay], &[], || {
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
    let lan_b = NsProc::start(client_ns, NODE, "lan-b", &["--bootstrap", &boot], LOG, d);
    wait_for(Duration::from_secs(90), "the relay refuses a second reservation", &[&lan_b, &relay], &[], || {
        (metric_or_zero(&relay.metrics(), "quiver_relay_service_refused_total{what=\"reservation\"}") >= 1.0)
            .then_some(())
    });
    let b_status = lan_b.status().expect("status of the second NATed node");
    assert_eq!(b_status["reachability"], "private", "refused a relay slot, the node stays private: {b_status}");
    assert!(strings(&b_status, "relayed_addrs").is_empty());
    assert_eq!(
        metric_or_zero(&relay.metrics(), "quiver_relay_service_reservations"),
        1.0,
        "one reservation, the provider's"
    );
    println!("relay: 1 reservation held (the limit), the second NATed node's refused; it stays private");
    drop(lan_b);
    step(t, "relay reservation limit held");

    // The client behind NAT B asks; the provider dials its claim back through the relay. Both
    // listen on TCP and QUIC: the report says which way the answer came.
    let first = ask_from_nat_b(client_ns, &boot, "24", &[], &provider.peer_id);
    println!(
        "client behind NAT B answered by the provider behind NAT A over route {}: connection {}{}, direct {:?}; text {:?}",
        first.result["route"],
        first.result["connection"],
        if first.punched { " (hole punch succeeded)" } else { " (no hole punch)" },
        first.result["direct_addrs"],
        first.result["text"],
    );
    assert!(first.result["connection"] != "none", "the client was connected to the provider when the answer arrived");
    step(t, "NATed client answered by NATed provider");

    // DCUtR over each transport on its own: a client that listens only on QUIC (and joins over
    // QUIC), then one that listens only on TCP, each a new identity. Each is served by the NATed
    // provider; the report says whether a hole punch upgraded its connection to a direct one
    // over that transport. NAT A drops every packet it was not asked for, so a direct connection
    // to its address exists only if the provider punched the hole from inside. Not asserted: in
    // 2 of 13 runs no punch finished before the answer did (see issue 8's notes).
    let boot_quic = strings(&relay_status, "listen_addrs")
        .into_iter()
        .find(|a| a.starts_with("/ip4/198.18.0.1/udp/") && a.contains("/quic-v1/"))
        .expect("quic address");
    for (transport, boot, listen, marker) in [
        ("QUIC", boot_quic.as_str(), "/ip4/0.0.0.0/udp/0/quic-v1", "/quic-v1"),
        ("TCP", boot.as_str(), "/ip4/0.0.0.0/tcp/0", "/tcp/"),
    ] {
        // A longer answer leaves the punch (a few milliseconds after the relayed connection
        // here) time to finish before the client exits.
        let extra = ["--listen-addr", listen, "--no-cache"];
        let asked = ask_from_nat_b(client_ns, boot, "64", &extra, &provider.peer_id);
        let direct = strings(&asked.result, "direct_addrs");
        let punched = direct.iter().any(|a| a.contains(marker) && a.starts_with("/ip4/198.18.0.2/"));
        println!(
            "{transport}-only client: served; connection {}, direct connection(s) {direct:?}: {}",
            asked.result["connection"],
            if punched { "hole punch succeeded" } else { "no hole punch finished before the answer" }
        );
        if !punched {
            for line in asked.stderr.lines().filter(|l| l.contains("hole") || l.contains("dcutr")).take(6) {
                println!("  client log: {}", line.chars().take(300).collect::<String>());
            }
        }
        // A client that speaks only one transport can only have been punched through on it.
        assert!(
            direct.iter().all(|a| a.contains(marker)),
            "a {transport}-only client's direct connections are {transport}: {direct:?}"
        );
        step(t, &format!("{transport}-only client served"));
    }

    // Why a hole punch failed (or that it worked), from both sides' logs.
    let punch_lines = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.contains("hole punch")).map(|l| l.chars().take(300).collect()).take(6).collect()
    };
    for line in punch_lines(&std::fs::read_to_string(&provider.log).unwrap_or_default()) {
        println!("  provider log: {line}");
    }
    for line in punch_lines(&first.stderr) {
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
    drop(net);
}
