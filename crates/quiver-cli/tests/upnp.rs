//! `--upnp` against a real UPnP Internet Gateway Device, miniupnpd, in Linux network namespaces.
//!
//! ```text
//!                  "internet" 11.0.0.0/24 (a bridge in its own namespace)
//!        ┌─────────────────────┬──────────────────────────┬────────────────────┐
//!   bootstrap 11.0.0.1     home router 11.0.0.2          client 11.0.0.3
//!   quiver-node            MASQUERADE, drops the          quiver ask
//!   --bootstrap-node       unsolicited; miniupnpd
//!                               │ 192.168.1.0/24
//!                          provider 192.168.1.2
//!                          quiver-provider --upnp
//! ```
//!
//! The home router forwards nothing unsolicited from the internet and drops what is sent to
//! itself; it runs the real `miniupnpd` daemon (Debian's `miniupnpd-iptables`, in the foreground,
//! its own configuration in a temporary directory: external interface `wan`, SSDP and HTTP on
//! `lan`, secure mode, mappings of ports ≥ 1024 allowed for the LAN only). The provider behind it
//! is started with `--upnp`: it finds the router by SSDP (an M-SEARCH to 239.255.255.250:1900,
//! leaving by its default route through the router's LAN interface; the test checks that route),
//! asks for a mapping of its TCP and QUIC port, and the test shows that:
//! - miniupnpd redirects the port (its log) and the provider's log and `quiver status --json`
//!   show the external address `11.0.0.2:<port>`;
//! - AutoNAT confirms it (the bootstrap node dials it back through the mapping): reachability
//!   `public`, DHT mode `server`, no relay reservation, and the provider is in the bootstrap
//!   node's routing table, connected directly;
//! - from the internet, a TCP connection to the mapped port goes through, while one to a port
//!   with no mapping is dropped by the router;
//! - a client on the internet (`quiver ask`) gets a real answer (real default model, verified
//!   receipt) from the provider over a direct connection.
//!
//! It prints the router's count of connections that came in through the mapping.
//!
//! **Addresses.** libp2p-upnp accepts a gateway only if its external address is global
//! (`is_addr_global` in libp2p-upnp's `tokio.rs`: private, shared 100.64/10, 192.0.0/24,
//! documentation, benchmarking 198.18/15 and reserved addresses give `NonRoutableGateway`), and
//! miniupnpd 2.3.1 refuses to forward ports when its external interface has an address of *any*
//! special-purpose block ("Reserved / private IP address ... Port forwarding is impossible"; that
//! includes 192.88.99.0/24, the deprecated 6to4 relay anycast prefix, and every other block
//! libp2p would let through). So the internet here is ordinary unicast space, 11.0.0.0/24 (part
//! of 11.0.0.0/8, a US DoD block). It exists only inside the namespaces this test creates: the
//! test's own namespace gets no interface, address or route to it, so no packet can leave for
//! its real holder, and nothing from the real network can come in. The LAN is private
//! (libp2p-upnp maps only private listen addresses).
//!
//! **iptables.** The iptables variant of miniupnpd edits the ruleset through libiptc, which sees
//! only x_tables ("legacy") rules. Debian 12's `iptables` is iptables-nft: chains it makes are
//! invisible to miniupnpd ("chain MINIUPNPD not found", UPnP error 501 on every mapping). So this
//! router's rules (MASQUERADE, forwarding, and the MINIUPNPD chains that Debian's
//! `/etc/miniupnpd/iptables_init.sh` makes: nat and mangle PREROUTING, filter FORWARD, nat
//! POSTROUTING) are all written with `iptables-legacy`.
//!
//! Everything the test makes is deleted by guards, also on panic: miniupnpd and the nodes are
//! killed, the namespaces deleted; miniupnpd writes its pid file, leases and configuration only
//! in the test's temporary directory. Without root, `iptables-legacy`, `miniupnpd` (the
//! iptables build) or kernel support, the test prints a loud `SKIP:` and returns
//! (`QUIVER_REQUIRE_NETNS=1` makes that a failure). Install: scripts/install-deps.sh. Needs the
//! default model: scripts/fetch-model.sh.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use serde_json::Value;
use support::netns::{
    Host, Internet, IpError, Iptables, NatRouter, NsProc, Skip, Unsolicited, ask_args, tail, wait_for,
};
use support::{model_dir, run_command_bounded, step, strings, strip_ansi};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const PROVIDER: &str = env!("CARGO_BIN_EXE_quiver-provider");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");
const MODEL: &str = "smollm2-135m";

/// The internet's /24 (see the module documentation for why not a special-purpose block).
const INTERNET: [u8; 3] = [11, 0, 0];
/// The home LAN's /24.
const LAN: [u8; 3] = [192, 168, 1];
/// Where SSDP searches go.
const SSDP_GROUP: &str = "239.255.255.250";
/// Bound on one `quiver ask`.
const ASK_LIMIT: Duration = Duration::from_secs(120);
/// What the nodes log.
const LOG: &str = "info,quiver_net=debug,libp2p_upnp=debug";

/// The network of one run; every namespace is deleted (with any process still in it) when
/// dropped.
struct Net {
    boot: Host,
    client: Host,
    home: NatRouter,
    internet: Internet,
}

fn build() -> Result<Net, Skip> {
    let internet = Internet::new(INTERNET, &["iptables-legacy", "miniupnpd"])?;
    miniupnpd_uses_iptables()?;
    let hosts = || -> Result<(Host, Host, NatRouter), IpError> {
        let boot = internet.host("boot", 1)?;
        let home = internet.nat_router("home", 2, LAN, Unsolicited::Drop, Iptables::Legacy)?;
        let client = internet.host("client", 3)?;
        // miniupnpd's chains, as Debian's /etc/miniupnpd/iptables_init.sh makes them: its
        // redirections (nat), its filter rules letting them through (filter, before the
        // router's own FORWARD rules), and the chains it expects in mangle and nat POSTROUTING.
        for (table, chain, hook) in [
            ("nat", "MINIUPNPD", ["PREROUTING", "-i", "wan"]),
            ("mangle", "MINIUPNPD", ["PREROUTING", "-i", "wan"]),
            ("nat", "MINIUPNPD-POSTROUTING", ["POSTROUTING", "-o", "wan"]),
        ] {
            home.iptables(&["-t", table, "-N", chain])?;
            home.iptables(&[&["-t", table, "-I"][..], &hook, &["-j", chain]].concat())?;
        }
        home.iptables(&["-t", "filter", "-N", "MINIUPNPD"])?;
        home.iptables(&["-t", "filter", "-I", "FORWARD", "-i", "wan", "!", "-o", "wan", "-j", "MINIUPNPD"])?;
        Ok((boot, client, home))
    };
    let (boot, client, home) = hosts().map_err(|e| Skip(e.0))?;
    Ok(Net { boot, client, home, internet })
}

/// Skips unless the installed miniupnpd is the iptables build (the nftables one keeps its rules
/// elsewhere; this test sets up the iptables chains).
fn miniupnpd_uses_iptables() -> Result<(), Skip> {
    let mut cmd = std::process::Command::new("miniupnpd");
    cmd.arg("--version");
    let out = run_command_bounded(cmd, Duration::from_secs(10));
    let text = format!("{}{}", out.stdout, out.stderr);
    if text.contains("netfilter(iptables)") {
        Ok(())
    } else {
        Err(Skip(format!(
            "the installed miniupnpd is not the iptables build (miniupnpd-iptables): {}",
            text.trim().replace('\n', "; ")
        )))
    }
}

/// miniupnpd running in the foreground inside the router's namespace; killed when dropped.
struct Miniupnpd {
    child: Child,
    log: PathBuf,
}

impl Miniupnpd {
    /// Writes its configuration into `dir` and starts it; waits until it serves the LAN.
    fn start(router: &NatRouter, dir: &Path) -> Miniupnpd {
        let conf = dir.join("miniupnpd.conf");
        let [a, b, c] = LAN;
        let config = format!(
            "ext_ifname=wan\n\
             listening_ip=lan\n\
             http_port=0\n\
             enable_upnp=yes\n\
             enable_natpmp=no\n\
             ipv6_disable=yes\n\
             secure_mode=yes\n\
             system_uptime=no\n\
             uuid=00000000-0000-4000-8000-{pid:012x}\n\
             lease_file={leases}\n\
             minissdpdsocket={sock}\n\
             allow 1024-65535 {a}.{b}.{c}.0/24 1024-65535\n\
             deny 0-65535 0.0.0.0/0 0-65535\n",
            pid = std::process::id(),
            leases = dir.join("upnp.leases").display(),
            sock = dir.join("minissdpd.sock").display(),
        );
        std::fs::write(&conf, config).expect("write miniupnpd.conf");
        let log = dir.join("miniupnpd.log");
        let out = std::fs::File::create(&log).expect("miniupnpd log");
        let err = out.try_clone().expect("miniupnpd log");
        let child = router
            .ns
            .command("miniupnpd")
            .arg("-d")
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start miniupnpd: {e}"));
        let daemon = Miniupnpd { child, log };
        wait_for(Duration::from_secs(10), "miniupnpd serves the LAN", &[], &[&daemon.log], || {
            daemon.log_text().contains("HTTP listening on port").then_some(())
        });
        daemon
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `text` containing `needle`, each from `needle` on (no timestamp or level), at
/// most 200 characters.
fn lines_with(text: &str, needle: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.find(needle).map(|at| l[at..].chars().take(200).collect())).collect()
}

/// Packets that hit the router's DNAT rules (one per connection: the nat table sees only each
/// connection's first packet), per protocol: (TCP, UDP).
fn mapped_connections(router: &NatRouter) -> (u64, u64) {
    let table = router.iptables(&["-t", "nat", "-L", "MINIUPNPD", "-n", "-v", "-x"]).unwrap_or_default();
    let (mut tcp, mut udp) = (0, 0);
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 3 && f[2] == "DNAT" {
            let pkts: u64 = f[0].parse().unwrap_or(0);
            match f[3] {
                "6" | "tcp" => tcp += pkts,
                "17" | "udp" => udp += pkts,
                _ => {}
            }
        }
    }
    (tcp, udp)
}

/// Opens a TCP connection from `host` to `to`; `Ok` if it was accepted within `limit`.
fn tcp_from(host: &Host, to: SocketAddr, limit: Duration) -> std::io::Result<()> {
    host.run(|| TcpStream::connect_timeout(&to, limit).map(drop)).and_then(|r| r)
}

/// The port of a `/ip4/<ip>/tcp/<port>...` address with that `ip`.
fn tcp_port(addr: &str, ip: Ipv4Addr) -> Option<u16> {
    addr.strip_prefix(&format!("/ip4/{ip}/tcp/"))?.split('/').next()?.parse().ok()
}

#[test]
fn upnp_mapping_on_a_real_gateway_makes_a_provider_behind_nat_public() {
    let _machine = support::heavy();
    let t = Instant::now();
    let net = match build() {
        Ok(net) => net,
        Err(skip) => return skip.report("upnp_mapping_on_a_real_gateway_makes_a_provider_behind_nat_public"),
    };
    let models = model_dir();
    let models = models.to_str().expect("utf-8 path");
    step(t, &format!("namespaces, bridge ({}/24) and home router built", net.internet.addr(0)));
    let lan_host = &net.home.host;

    // SSDP: the provider's search for a gateway has no multicast route of its own; the kernel
    // sends it out of the interface of the default route, eth0, the link to the router's `lan`.
    let route = lan_host.ns.exec("ip", &["route", "get", SSDP_GROUP]).expect("ip route get");
    let route = route.split_whitespace().collect::<Vec<_>>().join(" ");
    println!("route of an SSDP search from the provider's host: {route}");
    assert!(route.contains("dev eth0"), "multicast to {SSDP_GROUP} must leave by eth0, towards the router: {route}");

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upnpd = Miniupnpd::start(&net.home, d);
    let started = upnpd.log_text();
    for line in lines_with(&started, "version").into_iter().chain(lines_with(&started, "HTTP listening")) {
        println!("  miniupnpd: {line}");
    }
    step(t, "miniupnpd up on the router");

    // The public bootstrap node.
    let boot = NsProc::start(&net.boot.ns, NODE, "boot", &["--bootstrap-node"], LOG, d);
    let boot_ip = net.boot.addr;
    let boot_addr =
        wait_for(Duration::from_secs(30), "the bootstrap node listens on the internet", &[&boot], &[], || {
            let s = boot.status()?;
            strings(&s, "listen_addrs").into_iter().find(|a| tcp_port(a, boot_ip).is_some())
        });
    step(t, &format!("bootstrap node up at {boot_addr}"));

    // The provider behind the router, with --upnp. One engine thread: llama.cpp's threads
    // spin-wait for each other, and on a busy shared machine two of them can stall a stream for
    // longer than the client's stall timeout (15 s without a token; seen here while another
    // build ran), which has nothing to do with UPnP.
    let provider = NsProc::start(
        &lan_host.ns,
        PROVIDER,
        "provider",
        &["--upnp", "--bootstrap", &boot_addr, "--threads", "1", "--models-dir", models],
        LOG,
        d,
    );
    let wan = net.home.wan;
    let port = wait_for(
        Duration::from_secs(30),
        "the provider's status shows a UPnP-mapped address",
        &[&provider],
        &[&upnpd.log],
        || {
            let s = provider.status()?;
            strings(&s, "public_addrs").iter().find_map(|a| tcp_port(a, wan))
        },
    );
    let upnp_log = upnpd.log_text();
    let searches = lines_with(&upnp_log, "SSDP M-SEARCH from");
    let search = searches.iter().find(|l| l.contains(&format!("from {}:", lan_host.addr)));
    println!("  miniupnpd: {}", search.map_or("(no search from the provider)", |l| l.as_str()));
    assert!(search.is_some(), "miniupnpd heard the provider's SSDP search:\n{upnp_log}");
    let redirects = lines_with(&upnp_log, "redirecting port");
    for line in &redirects {
        println!("  miniupnpd: {line}");
    }
    for proto in ["TCP", "UDP"] {
        let want = format!("redirecting port {port} to {}:{port} protocol {proto}", lan_host.addr);
        assert!(redirects.iter().any(|l| l.contains(&want)), "miniupnpd's log has no `{want}`:\n{upnp_log}");
    }
    let p_log = strip_ansi(&provider.log_text());
    let mapped = lines_with(&p_log, "UPnP port mapping made");
    for line in &mapped {
        println!("  provider: {line}");
    }
    for ext in [format!("/ip4/{wan}/tcp/{port}"), format!("/ip4/{wan}/udp/{port}/quic-v1")] {
        assert!(
            mapped.iter().any(|l| l.contains(&format!("external_addr={ext}"))),
            "the provider logs the mapping to {ext}:\n{p_log}"
        );
    }
    step(t, &format!("miniupnpd mapped {wan}:{port} (TCP and UDP) to the provider's {}:{port}", lan_host.addr));

    // AutoNAT: the bootstrap node dials the provider back through the mapping.
    let p_status = wait_for(
        Duration::from_secs(30),
        "the provider is public and a DHT server",
        &[&provider, &boot],
        &[&upnpd.log],
        || provider.status().filter(|s| s["reachability"] == "public" && s["kad_mode"] == "server"),
    );
    let mut public = strings(&p_status, "public_addrs");
    // The same address can be listed twice: once as UPnP confirmed it, once as AutoNAT did.
    public.sort();
    public.dedup();
    println!("provider reachability: public, DHT mode: server, addresses others can use: {public:?}");
    assert!(
        public.iter().all(|a| a.contains(&format!("/ip4/{wan}/"))),
        "only the mapped address is public: {public:?}"
    );
    assert!(strings(&p_status, "relayed_addrs").is_empty(), "no relayed address: {p_status}");
    assert!(strings(&p_status, "relays").is_empty(), "no relay reservation: {p_status}");
    for line in lines_with(&strip_ansi(&provider.log_text()), "a peer dialed us back").into_iter().take(2) {
        println!("  provider: {line}");
    }
    step(t, "provider public (AutoNAT dial-back through the mapping), DHT server");

    // The bootstrap node has it in its routing table, over a direct connection.
    wait_for(
        Duration::from_secs(30),
        "the bootstrap node has the provider in its routing table",
        &[&provider, &boot],
        &[],
        || boot.status().filter(|s| strings(s, "routing_table").contains(&provider.peer_id)),
    );
    let boot_peers = boot.peers().expect("bootstrap peers");
    let entry = boot_peers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["peer_id"] == provider.peer_id.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(entry["direct"], true, "the bootstrap node is connected to the provider directly: {entry}");
    assert_eq!(entry["relayed"], false, "and not through a relay: {entry}");
    assert_eq!(entry["in_routing_table"], true, "{entry}");
    println!("bootstrap node: provider in its routing table, connection direct, not relayed");
    step(t, "provider in the bootstrap node's routing table");

    // From the internet: the mapped port lets a connection in, an unmapped one is dropped.
    let mapped_port = SocketAddr::V4(SocketAddrV4::new(wan, port));
    let other = SocketAddr::V4(SocketAddrV4::new(wan, if port < u16::MAX { port + 1 } else { port - 1 }));
    tcp_from(&net.client, mapped_port, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("TCP to the mapped {mapped_port} from the internet: {e}"));
    let refused = tcp_from(&net.client, other, Duration::from_secs(2));
    assert!(
        refused.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
        "TCP to the unmapped {other} must be dropped by the router (time out): {refused:?}"
    );
    println!("from the internet: TCP to {mapped_port} (mapped) connects, to {other} (not mapped) is dropped");

    // A client on the internet is served by the provider, directly.
    wait_for(
        Duration::from_secs(30),
        "the bootstrap node hears the provider's model",
        &[&provider, &boot],
        &[],
        || {
            let s = boot.status()?;
            s["known_nodes"]
                .as_array()?
                .iter()
                .any(|k| {
                    k["peer_id"] == provider.peer_id.as_str()
                        && k["models"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == MODEL))
                })
                .then_some(())
        },
    );
    let before = mapped_connections(&net.home);
    let mut ask = net.client.command(QUIVER);
    ask.args(ask_args(&boot_addr, "24")).env("RUST_LOG", "info");
    let ask = run_command_bounded(ask, ASK_LIMIT);
    assert!(
        ask.status.success(),
        "quiver ask on the internet failed:\nstdout: {}\nstderr: {}\n--- provider ---\n{}",
        ask.stdout,
        strip_ansi(&ask.stderr),
        strip_ansi(&tail(&provider.log))
    );
    let result: Value =
        serde_json::from_str(&ask.stdout).unwrap_or_else(|e| panic!("ask --json ({e}): {}", ask.stdout));
    assert_eq!(result["provider"], provider.peer_id.as_str(), "answered by the provider behind the router: {result}");
    let text = result["text"].as_str().unwrap_or_default();
    assert!(!text.trim().is_empty(), "a real answer: {result}");
    assert_eq!(result["receipt"]["verified"], true, "the receipt verifies: {result}");
    assert_eq!(result["connection"], "direct", "the client reached the provider directly: {result}");
    let after = mapped_connections(&net.home);
    println!(
        "client on the internet answered by the provider behind the router over route {}: connection {}; text {text:?}",
        result["route"], result["connection"]
    );
    println!(
        "router: connections in through the mapping: {} TCP, {} UDP in all; {} TCP, {} UDP during the request",
        after.0,
        after.1,
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1)
    );
    let p_status = provider.status().expect("provider status");
    assert_eq!(p_status["reachability"], "public", "still public: {p_status}");
    step(t, "client on the internet served directly");
    drop(provider);
    drop(boot);
    drop(upnpd);
    drop(net);
}
