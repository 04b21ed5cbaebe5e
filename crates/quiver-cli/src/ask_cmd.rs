//! `quiver ask`: send a prompt to the network (or, with `--local`, to the bare engine) and
//! stream the answer to stdout.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use quiver_engine::llama::LlamaConfig;
use quiver_engine::{ChatMessage, Engine, GenEvent, GenerateRequest, Input, SamplingParams, models};
use quiver_net::{BootstrapAddr, Multiaddr, default_listen_addrs};
use quiver_node::{InferError, InferenceRequest, Node, NodeConfig, StreamEvent, Timing};
use serde_json::json;

use crate::{
    EXIT_ALL_FAILED, EXIT_NO_PROVIDER, EXIT_REJECTED, EXIT_UNVERIFIED, LogFormat, QUIET_LOG, init_logging, usage_error,
};

#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    /// The prompt.
    pub prompt: String,
    /// Model name on the network.
    #[arg(long, default_value = models::DEFAULT_MODEL, env = "QUIVER_ASK_MODEL")]
    pub model: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed (random when sampling and not given).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Continue the prompt as raw text instead of sending it as a chat message.
    #[arg(long)]
    pub raw: bool,
    /// Print the whole result as JSON (text, usage, provider, verified receipt) at the end
    /// instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Peer to join the network through (repeatable). [default: the local node of --data-dir,
    /// else peers found on the local network]
    #[arg(long, value_name = "ADDR", value_parser = |s: &str| s.parse::<BootstrapAddr>().map_err(|e| e.to_string()), env = "QUIVER_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<BootstrapAddr>,
    /// Data directory of the local node to join through when no --bootstrap is given.
    #[arg(long, value_name = "DIR", env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// IP address this client listens on (providers connect back to deliver claims).
    #[arg(long, value_name = "IP", default_value = "0.0.0.0", env = "QUIVER_LISTEN_IP")]
    pub listen_ip: IpAddr,
    /// Listen on exactly these multiaddrs instead of --listen-ip (repeatable), e.g.
    /// `/ip4/0.0.0.0/udp/0/quic-v1` for QUIC only.
    #[arg(long = "listen-addr", value_name = "MULTIADDR", value_parser = crate::node_cmd::parse_multiaddr)]
    pub listen_addr: Vec<Multiaddr>,
    /// No QUIC (TCP only): neither listen nor dial over UDP.
    #[arg(long)]
    pub no_quic: bool,
    /// Without --bootstrap and a local node, do not look for peers on the local network (mDNS).
    #[arg(long, env = "QUIVER_NO_MDNS")]
    pub no_mdns: bool,
    /// Print only an answer a second, independent provider reproduced (same model file, engine
    /// build and threads); on a mismatch more providers decide and the outvoted one is
    /// penalised. A sampled request is run with the same seed on both (drawn when --seed is not
    /// given). When nobody can confirm, nothing is printed and the exit code is 6.
    #[arg(long)]
    pub verify: bool,
    /// Fraction of the other reproducible requests (greedy, or with --seed) verified anyway.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub verify_rate: f64,
    /// Do not answer from the cache of identical earlier greedy requests.
    #[arg(long)]
    pub no_cache: bool,
    /// Skip the gossip announcement: ask providers found in the DHT directly.
    #[arg(long)]
    pub direct: bool,
    /// How long to wait for claims to the gossip announcement, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub claim_window_ms: u64,
    /// How long to look for a provider before giving up, in seconds.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Run the model here with the bare engine instead of asking the network.
    #[arg(long)]
    pub local: bool,
    /// CPU threads for --local. [default: all cores]
    #[arg(long)]
    pub threads: Option<u32>,
    /// Where models are kept, for --local. [default: <data-dir>/models]
    #[arg(long, value_name = "DIR", env = "QUIVER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Log format on stderr (warnings and errors only unless RUST_LOG says otherwise).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "QUIVER_LOG_FORMAT")]
    pub log_format: LogFormat,
}

impl AskArgs {
    fn input(&self) -> Input {
        if self.raw {
            Input::Prompt(self.prompt.clone())
        } else {
            Input::Chat(vec![ChatMessage { role: "user".into(), content: self.prompt.clone(), ..Default::default() }])
        }
    }

    fn params(&self) -> SamplingParams {
        let seed = self.seed.unwrap_or_else(|| if self.temperature > 0.0 { rand::random() } else { 0 });
        SamplingParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed,
            stop: self.stop.clone(),
            ..SamplingParams::default()
        }
    }
}

pub async fn run(args: AskArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, QUIET_LOG);
    if args.local {
        return run_local(args).await;
    }
    let bootstrap = if args.bootstrap.is_empty() { local_node_addrs(&args).await } else { args.bootstrap.clone() };
    // With nobody to join through, the LAN: peers found by mDNS.
    let lan = bootstrap.is_empty();
    if lan && args.no_mdns {
        usage_error(NO_PEER);
    }
    let quic = !args.no_quic;
    let node = Node::start(NodeConfig {
        listen_addrs: if args.listen_addr.is_empty() {
            default_listen_addrs(args.listen_ip, 0, quic)
        } else {
            args.listen_addr.clone()
        },
        quic,
        bootstrap_peers: bootstrap,
        mdns: lan,
        dht_client_only: true,
        verify_rate: args.verify_rate,
        // With --data-dir, what this client learns of providers (a liar outvoted, a ban) is kept
        // for the next ask, in a folder of its own beside a node's.
        data_dir: args.data_dir.as_ref().map(|d| d.join("ask")),
        ..NodeConfig::default()
    })
    .await?;
    if lan && !node.status().await.is_ok_and(|s| s.mdns) {
        // Listening on loopback only, or mDNS could not start (its warning says why).
        node.shutdown().await;
        usage_error(NO_PEER);
    }
    let outcome = ask_network(&node, &args).await;
    node.shutdown().await;
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("error: {e}");
            if lan && matches!(e, InferError::NoProvider { .. }) {
                eprintln!(
                    "no provider was found on the local network; to join a network elsewhere use --bootstrap \
                     host:port or QUIVER_BOOTSTRAP"
                );
            }
            std::process::exit(match e {
                InferError::NoProvider { .. } => EXIT_NO_PROVIDER,
                InferError::AllProvidersFailed { .. }
                | InferError::Diverged
                | InferError::Net(_)
                | InferError::VerificationFailed { .. } => EXIT_ALL_FAILED,
                InferError::Unverified { .. } => EXIT_UNVERIFIED,
                InferError::Rejected { .. } | InferError::Invalid(_) => EXIT_REJECTED,
            });
        }
    }
}

async fn ask_network(node: &Node, args: &AskArgs) -> Result<(), InferError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(args.wait);
    if !node.wait_for_peers(1, deadline.saturating_duration_since(std::time::Instant::now())).await {
        return Err(InferError::NoProvider { model: args.model.clone() });
    }
    // Behind a NAT, providers can only dial back (to claim the job) through a relay: give the
    // reachability probe and the relay reservation a moment (loopback and public hosts pass at
    // the first probe).
    let reach = node
        .wait_for_reachability(REACHABILITY_WAIT.min(deadline.saturating_duration_since(std::time::Instant::now())))
        .await;
    tracing::debug!(reachability = reach.as_str(), "asking");
    if !node.wait_for_provider(&args.model, deadline.saturating_duration_since(std::time::Instant::now())).await {
        return Err(InferError::NoProvider { model: args.model.clone() });
    }
    let request = InferenceRequest {
        input: args.input(),
        params: args.params(),
        broadcast: !args.direct,
        use_cache: !args.no_cache,
        verify: args.verify,
        claim_window: Duration::from_millis(args.claim_window_ms),
        ..InferenceRequest::chat(&args.model, "", args.max_tokens)
    };
    let mut stream = node.infer_stream(request)?;
    let mut out = std::io::stdout().lock();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Token(t) => {
                if !args.json {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                }
            }
            StreamEvent::Done(result) => {
                if args.json {
                    let mut v = serde_json::to_value(&result).unwrap_or_default();
                    let (connection, direct_addrs) = connection_to(node, &result.provider).await;
                    v["connection"] = json!(connection);
                    v["direct_addrs"] = json!(direct_addrs);
                    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    let _ = writeln!(out);
                }
                return Ok(());
            }
        }
    }
    Err(InferError::Net("the request ended without a result".into()))
}

/// What `quiver ask` says when it has nobody to join through and may not look on the LAN.
const NO_PEER: &str = "no peer to join through: pass --bootstrap ADDR (or run a local node: quiver-node)";

/// Longest wait for the reachability verdict (and a relay slot behind a NAT) before asking.
const REACHABILITY_WAIT: Duration = Duration::from_secs(8);

/// How this node is connected to `peer` now: `direct`, `relayed`, `direct+relayed` (a hole
/// punch succeeded while the relayed connection is still open) or `none`; and the remote
/// address of each direct connection.
async fn connection_to(node: &Node, peer: &quiver_net::PeerId) -> (&'static str, Vec<String>) {
    let peers = node.peers().await.unwrap_or_default();
    let Some(p) = peers.iter().find(|p| p.peer_id == *peer) else { return ("none", Vec::new()) };
    let kind = match (p.direct, p.relayed) {
        (true, false) => "direct",
        (false, true) => "relayed",
        (true, true) => "direct+relayed",
        (false, false) => "none",
    };
    (kind, p.direct_addrs.iter().map(ToString::to_string).collect())
}

/// Addresses of the local node recorded in `<data-dir>/api.addr`, as bootstrap peers.
async fn local_node_addrs(args: &AskArgs) -> Vec<BootstrapAddr> {
    let api = crate::client::ApiArgs { api: None, data_dir: args.data_dir.clone(), json: true };
    let Ok(status) = crate::client::get(&api, "/api/v1/status").await else { return Vec::new() };
    status["listen_addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| a.contains("/tcp/"))
        .filter_map(|a| a.replace("/ip4/0.0.0.0/", &format!("/ip4/{}/", Ipv4Addr::LOCALHOST)).parse().ok())
        .collect()
}

/// The bare engine, no network: the reference the network's answers are compared with.
async fn run_local(args: AskArgs) -> anyhow::Result<()> {
    let dir = crate::model_cmd::models_dir(args.models_dir.as_deref(), args.data_dir.as_deref());
    let model = crate::provider_cmd::local_model(&args.model, &dir, true).await?;
    let config =
        LlamaConfig { threads: args.threads.unwrap_or(0), context_size: 2048, slots: 1, ..LlamaConfig::default() };
    let engine = crate::provider_cmd::load_llama(model, config).await?;
    let started = std::time::Instant::now();
    let mut first_token = None;
    let mut generation =
        engine.generate(GenerateRequest { input: args.input(), params: args.params(), tools: Default::default() })?;
    let mut text = String::new();
    let mut out = std::io::stdout().lock();
    while let Some(event) = generation.next().await {
        match event? {
            // `quiver ask` does not ask for them.
            GenEvent::Logprob(_) => {}
            GenEvent::Token { text: t, .. } => {
                first_token.get_or_insert_with(|| started.elapsed());
                text.push_str(&t);
                if !args.json {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                }
            }
            GenEvent::Done { finish_reason, usage } => {
                if args.json {
                    let v = json!({
                        "text": text, "usage": usage, "finish_reason": finish_reason,
                        "model_sha256": engine.model().sha256_hex(), "engine_build": engine.build_id(),
                        "threads": engine.threads(),
                        "timing": Timing::measure(first_token.unwrap_or_default(), started.elapsed(), usage.completion_tokens),
                    });
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    writeln!(out)?;
                }
                return Ok(());
            }
        }
    }
    anyhow::bail!("the engine ended without a result")
}

/// A fraction in [0, 1].
pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}
