//! `quiver status`, `quiver peers` and `quiver model list --network`: read a running node's
//! control API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use quiver_node::config::default_data_dir;
use serde_json::Value;

use crate::api_addr_file;
use crate::node_cmd::DEFAULT_API;

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Control API of the node to ask. [default: the address the node in --data-dir recorded,
    /// else 127.0.0.1:4080]
    #[arg(long, value_name = "ADDR:PORT", env = "QUIVER_API")]
    pub api: Option<SocketAddr>,
    /// Data directory of the node to ask.
    #[arg(long, value_name = "DIR", env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl ApiArgs {
    fn api_addr(&self) -> SocketAddr {
        if let Some(a) = self.api {
            return a;
        }
        let dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        std::fs::read_to_string(api_addr_file(&dir)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(DEFAULT_API)
    }
}

pub(crate) async fn get(args: &ApiArgs, path: &str) -> anyhow::Result<Value> {
    let addr = args.api_addr();
    let url = format!("http://{addr}{path}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("no QUIVer node answers at {addr} (is it running? see --api / --data-dir)"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    resp.json().await.with_context(|| format!("{url} did not answer JSON"))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn short(id: &str) -> String {
    if id.len() > 16 { format!("{}…{}", &id[..8], &id[id.len() - 6..]) } else { id.to_owned() }
}

/// Where a model's layers run, from its status or heartbeat entry: `cpu, 0 of 31 layers
/// offloaded` or `Vulkan0 (...) (3.2/8.0 GiB free), 31 of 31 layers offloaded`.
fn placement(m: &Value) -> String {
    let device = m["device"].as_str().filter(|d| !d.is_empty()).unwrap_or("cpu");
    let (total, free) = (n(m, "device_memory_total"), n(m, "device_memory_free"));
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let memory = if total > 0 { format!(" ({:.1}/{:.1} GiB free)", gib(free), gib(total)) } else { String::new() };
    let layers = match n(m, "layers") {
        0 => format!("{} layers offloaded", n(m, "gpu_layers")),
        all => format!("{} of {all} layers offloaded", n(m, "gpu_layers")),
    };
    format!("{device}{memory}, {layers}")
}

pub async fn status(args: ApiArgs) -> anyhow::Result<()> {
    let v = get(&args, "/api/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("Peer ID:         {}", s(&v, "peer_id"));
    println!(
        "Version:         {}{}",
        s(&v, "version"),
        if v["bootstrap_node"] == true { " (bootstrap node)" } else { "" }
    );
    println!("Uptime:          {}s", n(&v, "uptime_secs"));
    println!("Listening on:");
    for a in v["listen_addrs"].as_array().into_iter().flatten() {
        println!("  {}", a.as_str().unwrap_or("?"));
    }
    let reach = s(&v, "reachability");
    println!(
        "Reachability:    {reach}{}",
        match reach {
            "public" => " (peers can dial this node directly)",
            "private" => " (behind a NAT; no relay slot yet)",
            "relayed" => " (behind a NAT; reachable through a relay, direct after a hole punch)",
            _ => " (not probed yet)",
        }
    );
    let usable: Vec<&str> = ["public_addrs", "relayed_addrs"]
        .iter()
        .flat_map(|k| v[*k].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if !usable.is_empty() {
        println!("Others dial:");
        for a in usable {
            println!("  {a}");
        }
    }
    if v["relay_service"] == true {
        println!("Relay service:   on (relays for NATed peers)");
    }
    let (punched, failed) = (n(&v, "hole_punches_succeeded"), n(&v, "hole_punches_failed"));
    if punched + failed > 0 {
        println!("Hole punches:    {punched} direct, {failed} failed");
    }
    println!("Connected peers: {}", n(&v, "connected_peers"));
    println!("LAN discovery:   {}", if v["mdns"] == true { "on (mDNS)" } else { "off" });
    if let Some(note) = v["no_peers"].as_str() {
        println!("Note:            {note}");
    }
    println!("Routing table:   {} peers (DHT mode: {})", n(&v, "routing_table_size"), s(&v, "kad_mode"));
    if let Some(p) = v.get("provider").filter(|p| !p.is_null()) {
        let models: Vec<&str> =
            p["models"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str()).collect();
        println!(
            "Serving:         {} ({}/{} slots free, {} queued, {:.0} tok/s)",
            models.join(", "),
            n(p, "free_slots"),
            n(p, "max_concurrent"),
            n(p, "queue_depth"),
            p["tokens_per_sec"].as_f64().unwrap_or(0.0)
        );
        for m in p["models"].as_array().into_iter().flatten() {
            println!("  {} on {}", m["name"].as_str().unwrap_or("?"), placement(m));
        }
    }
    if let Some(h) = v.get("shard_head").filter(|h| !h.is_null()) {
        print_shard_head(h);
    }
    if let Some(h) = v.get("shard_host").filter(|h| !h.is_null()) {
        let allowed = h["allowed"].as_array().map_or(0, Vec::len);
        println!(
            "Shard host:      {} heads allowed, {} tunnels open, {} streams refused, {} threads",
            allowed,
            n(h, "tunnels"),
            n(h, "refused"),
            n(h, "threads")
        );
    }
    if let Some(network) = v.get("network").filter(|n| !n.is_null()) {
        print_network(network);
    }
    let known = v["known_nodes"].as_array().cloned().unwrap_or_default();
    println!("Known nodes:     {} (from heartbeats)", known.len());
    for k in &known {
        println!(
            "  {:<20} {:<14} load {:>4.2}  slots {:>2}  up {:>6}s  seen {:>4.1}s ago  {}",
            short(s(k, "peer_id")),
            s(k, "agent_version"),
            k["cpu_load"].as_f64().unwrap_or(0.0),
            n(k, "free_slots"),
            n(k, "uptime_secs"),
            k["last_seen_secs"].as_f64().unwrap_or(0.0),
            k["models"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        for m in k["models"].as_array().into_iter().flatten().filter(|m| n(m, "gpu_layers") > 0) {
            println!("    {} on {}", m["name"].as_str().unwrap_or("?"), placement(m));
        }
    }
    Ok(())
}

/// A split model's head: its state, then one line per member (`ShardHeadStatus` as JSON).
fn print_shard_head(h: &Value) {
    let head = h["head_layers"].as_str().map_or_else(|| "none yet".to_string(), |r| format!("layers {r} here"));
    println!("Split model:     {} {} ({head}, {} reloads)", s(h, "model"), s(h, "state"), n(h, "reloads"));
    if let Some(e) = h["last_error"].as_str() {
        println!("  last error: {e}");
    }
    for m in h["members"].as_array().into_iter().flatten() {
        let rtt = m["rtt_ms"].as_f64().map_or_else(|| "-".to_string(), |r| format!("{r:.1} ms"));
        let free = m["memory_available"]
            .as_u64()
            .map_or_else(|| "-".to_string(), |b| format!("{:.1} GiB free", b as f64 / f64::from(1u32 << 30)));
        let mib = |key: &str| n(m, key) as f64 / f64::from(1u32 << 20);
        println!(
            "  {}  {:<4}  layers {:<16}  rtt {:<9}  {}  {} round trips, {} MiB out, {} MiB in; \
             last load: {:.1} MiB of weights sent, {:.1} MiB from its cache",
            s(m, "peer"),
            if m["up"] == true { "up" } else { "down" },
            m["layers"].as_str().unwrap_or("-"),
            rtt,
            free,
            n(m, "round_trips"),
            n(m, "bytes_sent") >> 20,
            n(m, "bytes_received") >> 20,
            mib("weights_sent"),
            mib("weights_cached"),
        );
        let devices: Vec<&str> = m["devices"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !devices.is_empty() {
            println!("      on {}", devices.join(", "));
        }
    }
}

/// `quiver model list --network`: the network's size and every model served on it.
pub async fn network(args: ApiArgs) -> anyhow::Result<()> {
    let v = get(&args, "/api/v1/network").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_network(&v);
    Ok(())
}

/// The network at a glance (`NetworkView` as JSON): its size, then one row per model.
fn print_network(v: &Value) {
    println!("Network size:    {}", s(&v["size"], "summary"));
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("Models:          none served that this node knows of");
        return;
    }
    println!("Models on the network:");
    let width = models.iter().map(|m| s(m, "name").chars().count()).max().unwrap_or(5).clamp(5, 48);
    println!("  {:<width$}  {:>9}  {:>10}  {:>6}  {:>11}", "MODEL", "PROVIDERS", "FREE SLOTS", "QUEUED", "TOK/S (ALL)");
    for m in &models {
        // Names come from other peers: no terminal control characters.
        let name: String = s(m, "name").chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let (providers, measured) = (n(m, "providers"), n(m, "measured_providers"));
        let speed = if measured == 0 {
            "–".to_owned()
        } else {
            format!("{:.0}", m["tokens_per_sec"].as_f64().unwrap_or(0.0))
        };
        let note = if measured < providers { format!("  ({measured} of {providers} measured)") } else { String::new() };
        println!(
            "  {name:<width$}  {:>9}  {:>10}  {:>6}  {:>11}{note}",
            providers,
            n(m, "free_slots"),
            n(m, "queue_depth"),
            speed,
        );
    }
}

pub async fn peers(args: ApiArgs) -> anyhow::Result<()> {
    let v = get(&args, "/api/v1/peers").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let peers = v.as_array().cloned().unwrap_or_default();
    let connected = peers.iter().filter(|p| p["connected"] == true).count();
    println!("{connected} connected peers, {} known", peers.len());
    println!(
        "{:<20} {:>7} {:>7} {:>7} {:>6} {:>5}/{:<5} {:>8} {:>8} {:<10} {:<14} address",
        "peer", "conn", "rtt ms", "gossip", "score", "ok", "fail", "lat ms", "p95 ms", "ban", "agent"
    );
    let f = |x: &Value, k: &str, digits: usize| {
        x[k].as_f64().map(|r| format!("{r:.digits$}")).unwrap_or_else(|| "-".into())
    };
    for p in &peers {
        let r = &p["reputation"];
        let addr = p["addresses"].as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("-");
        let ban =
            if r["banned_until_ms"].is_null() { "-".to_owned() } else { format!("banned×{}", n(r, "ban_count")) };
        println!(
            "{:<20} {:>7} {:>7} {:>7} {:>6} {:>5}/{:<5} {:>8} {:>8} {:<10} {:<14} {}",
            short(s(p, "peer_id")),
            match (p["connected"] == true, p["direct"] == true, p["relayed"] == true) {
                (false, _, _) => "no",
                (true, false, true) => "relayed",
                _ => "direct",
            },
            f(p, "rtt_ms", 1),
            f(p, "gossip_score", 1),
            f(r, "score", 2),
            n(r, "successes"),
            n(r, "failures"),
            f(r, "latency_ewma_ms", 0),
            f(r, "latency_p95_ms", 0),
            ban,
            p["agent_version"].as_str().unwrap_or("-"),
            addr
        );
    }
    Ok(())
}
