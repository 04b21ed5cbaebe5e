//! Nodes behind NAT serve and are served, with the real binaries in Linux network namespaces.
//!
//! ```text
//!               "internet" 198.18.0.0/24 (a bridge in its own namespace)
//!        ┌───────────────────┬──────────────────────┬──────────────────────┐
//!   relay 198.18.0.1    NAT A 198.18.0.2       NAT B 198.18.0.3       NAT C 198.18.0.4
//!   quiver-node         MASQUERADE, drops      MASQUERADE, refuses    MASQUERADE, drops
//!   --bootstrap-node         │ 10.1.0.0/24          │ 10.2.0.0/24          │ 10.3.0.0/24
//!                       provider 10.1.0.2      client 10.2.0.2        home nodes 10.3.0.2
//!                       quiver-provider        quiver ask             quiver-node --gateway
//! ```
//!
//! NAT A and NAT C drop unsolicited packets silently (as most home routers do), NAT B refuses
//! them. The provider behind NAT A and the client behind NAT B learn from AutoNAT that nobody can
//! dial them, stay DHT clients (never in the relay's routing table), reserve slots on the public
//! node's relay and advertise relayed addresses; the client's `quiver ask` gets a real answer
//! from the provider (real default model), over the relay or, after a DCUtR hole punch,
//! directly; the test prints which (behind a refusing NAT on these sub-millisecond links the
//! punch is a coin toss: see `docs/ARCHITECTURE.md`, DCUtR). The relay holds one reservation at
//! most: a second NATed node (a plain node behind NAT B) is refused one and stays private.
//!
//! Then DCUtR per transport, asserted: behind NAT C, a node that listens only on QUIC and one
//! that speaks only TCP (`--no-quic`) each serve the OpenAI gateway and ask the provider through
//! it; each one's relayed connection to the provider must become a direct connection to NAT A's
//! address over its own transport. Hole-punched by NATed peers, the provider must still be
//! unreachable for everyone else: relayed, and not in the relay's routing table.
//!
//! The network is built with [`support::netns`] ([`support::netns::Internet`] and its NAT
//! routers). Every address exists only inside the namespaces the test creates (198.18.0.0/15 is
//! the benchmarking range, 10.x the LANs); nothing routes to the host's network. Namespaces get
//! the test's pid in their names and are deleted by their guards, also on panic. Without root,
//! `iptables` or kernel support for namespaces, veth, bridges or NAT, the test prints a loud
//! `SKIP:` and returns (`QUIVER_REQUIRE_NETNS=1` makes that a failure).
//!
//! Needs the default model: run scripts/fetch-model.sh first.

use std::time::{Duration, Instant};

use crate::support;
use serde_json::Value;
use support::netns::{Host, Internet, Iptables, NatRouter, NsProc, Skip, Unsolicited, ask_args, wait_for};
use support::{metric_or_zero, model_dir, run_command_bounded, step, strings};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";

/// Bound on one `quiver ask` (dev profile, relayed, with a claim window and retries).
const ASK_LIMIT: Duration = Duration::from_secs(120);
/// What the nodes log.
const LOG: &str = "info,quiver_net=debug,libp2p_dcutr=debug,libp2p_relay=debug,libp2p_autonat=debug";

/// The network of one run; every namespace is deleted (with any process still in it) when
/// dropped.
struct Net {
    /// The public node's host, 198.18.0.1.
    relay: Host,
    /// 198.18.0.2, LAN 10.1.0.0/24 with the provider.
    nat_a: NatRouter,
    /// 198.18.0.3, LAN 10.2.0.0/24 with the client.
    nat_b: NatRouter,
    /// 198.18.0.4, LAN 10.3.0.0/24 with the home nodes that show each transport's hole punch.
    nat_c: NatRouter,
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
        let nat_c = internet.nat_router("natc", 4, [10, 3, 0], Unsolicited::Drop, Iptables::System)?;
        Ok((relay, nat_a, nat_b, nat_c))
    };
    let (relay, nat_a, nat_b, nat_c) = routers().map_err(|e: support::netns::IpError| Skip(e.0))?;
    Ok(Net { relay, nat_a, nat_b, nat_c, _internet: internet })
}

/// One `quiver ask` from behind NAT B, answered with a verified receipt by `provider`.
struct Asked {
    result: Value,
    stderr: String,
    /// The client logged a successful DCUtR hole punch.
    punched: bool,
}

fn ask_from_nat_b(client_ns: &support::netns::Netns, boot: &str, provider: &str) -> Asked {
    let mut ask = client_ns.command(QUIVER);
    ask.args(ask_args(boot, "24")).env("RUST_LOG", LOG);
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

#[test]
fn nated_provider_serves_a_nated_client_through_relay_and_hole_punch() {
    let _machine = support::heavy();
    let t = Instant::now();
    let net = match build() {
        Ok(net) => net,
        Err(skip) => return skip.report("nated_provider_serves_a_nated_client_through_relay_and_hole_punch"),
    };
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    let (provider_ns, client_ns) = (&net.nat_a.host.ns, &net.nat_b.host.ns);
    step(t, "namespaces, bridge and two NAT routers built");
    // Every node's data and log go to a temporary directory, or to $QUIVER_TEST_KEEP_LOGS.
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = std::env::var_os("QUIVER_TEST_KEEP_LOGS").map(std::path::PathBuf::from);
    let d = keep.as_deref().unwrap_or(dir.path());

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
    let first = ask_from_nat_b(client_ns, &boot, &provider.peer_id);
    let _ = std::fs::write(d.join("client.log"), &first.stderr);
    println!(
        "client behind NAT B answered by the provider behind NAT A over route {}: connection {}{}, direct {:?}; text {:?}",
        first.result["route"],
        first.result["connection"],
        if first.punched { " (hole punch succeeded)" } else { " (no hole punch)" },
        first.result["direct_addrs"],
        first.result["text"],
    );
    if first.result["connection"] != "direct" {
        for (name, router) in [("NAT A", &net.nat_a), ("NAT B", &net.nat_b)] {
            let table = router.ns.exec("cat", &["/proc/net/nf_conntrack"]).unwrap_or_default();
            for line in table.lines() {
                println!("  {name} conntrack: {line}");
            }
        }
    }
    assert!(first.result["connection"] != "none", "the client was connected to the provider when the answer arrived");
    step(t, "NATed client answered by NATed provider");

    // DCUtR over each transport on its own, between two home routers that drop what they were
    // not asked for (most do): a long-running node behind NAT C that listens only on QUIC, and
    // one that speaks only TCP (`--no-quic`: no UDP at all), each serving the OpenAI gateway.
    // Each asks the NATed provider through its gateway; the relayed connection must then become
    // direct, to NAT A's address, over that node's transport. Neither NAT lets anything in that
    // its host did not send out first, so a direct connection exists only if both punched.
    let boot_quic = strings(&relay_status, "listen_addrs")
        .into_iter()
        .find(|a| a.starts_with("/ip4/198.18.0.1/udp/") && a.contains("/quic-v1/"))
        .expect("quic address");
    let c_ns = &net.nat_c.host.ns;
    let only_quic: &[&str] = &["--listen-addr", "/ip4/0.0.0.0/udp/0/quic-v1"];
    let homes: Vec<(&str, &str, NsProc)> = [
        ("QUIC", "/quic-v1", "home-quic", boot_quic.as_str(), only_quic),
        ("TCP", "/tcp/", "home-tcp", boot.as_str(), &["--no-quic"][..]),
    ]
    .into_iter()
    .map(|(transport, marker, name, boot, only)| {
        let args = [&["--bootstrap", boot, "--gateway", "127.0.0.1:0"][..], only].concat();
        (transport, marker, NsProc::start(c_ns, NODE, name, &args, LOG, d))
    })
    .collect();
    for (transport, marker, home) in &homes {
        let gw = home.gateway.expect("the node printed its gateway address");
        wait_for(Duration::from_secs(60), "the home node's gateway lists the model", &[home, &provider], &[], || {
            let models = c_ns.run(|| support::http_get_json(gw, "/v1/models")).ok().flatten()?;
            models["data"].as_array()?.iter().any(|m| m["id"] == MODEL).then_some(())
        });
        let body = serde_json::json!({
            "model": MODEL, "messages": [{ "role": "user", "content": "Name three colours." }], "max_tokens": 16
        })
        .to_string();
        let (code, reply) = c_ns
            .run(|| support::http_post(gw, "/v1/chat/completions", &body))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no answer from the {transport} node's gateway"));
        assert_eq!(code, 200, "the {transport} node's gateway answered: {reply}");
        let reply: Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("chat completion JSON ({e}): {reply}"));
        let content = reply["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        assert!(!content.trim().is_empty(), "a real answer through the {transport} node: {reply}");
        // The relayed connection that carried the request is upgraded within seconds.
        let direct = wait_for(
            Duration::from_secs(30),
            &format!("the {transport} node's connection to the provider becomes direct (DCUtR)"),
            &[home, &provider],
            &[],
            || {
                let peers = home.peers()?;
                let p = peers.as_array()?.iter().find(|p| p["peer_id"] == provider.peer_id.as_str())?.clone();
                let direct = strings(&p, "direct_addrs");
                (!direct.is_empty()).then_some(direct)
            },
        );
        println!(
            "{transport}-only node behind NAT C: served ({content:?}); direct connection(s) after the hole punch: {direct:?}"
        );
        assert!(
            direct.iter().all(|a| a.starts_with("/ip4/198.18.0.2/") && a.contains(marker)),
            "the {transport}-only node's direct connections go to NAT A's address over {transport}: {direct:?}"
        );
        step(t, &format!("{transport}: relayed connection upgraded to a direct one"));
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

    // Directly connected to NATed peers by hole punches, the provider is still unreachable for
    // everyone else: none of them may confirm its address (they are no AutoNAT servers), so it
    // stays relayed and out of the relay's routing table.
    assert_eq!(p_status["reachability"], "relayed", "hole punches do not make the provider public: {p_status}");
    let r_status = relay.status().expect("relay status");
    assert!(
        !strings(&r_status, "routing_table").contains(&provider.peer_id),
        "still not in the relay's routing table: {r_status}"
    );
    step(t, "done");
    drop(homes);
    drop(provider);
    drop(relay);
    drop(net);
}
