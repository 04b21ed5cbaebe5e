//! `quiver-adversary`: a provider that misbehaves on purpose, for testing a QUIVer network from
//! the outside (never part of a release). It joins like any node and serves the given GGUF
//! model, but in the chosen mode it lies, stalls or sends garbage.
//!
//! ```text
//! quiver-adversary --mode wrong-output --model target/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --bootstrap 127.0.0.1:4001
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use quiver_engine::llama::{LlamaConfig, LlamaEngine};
use quiver_node::adversary::{Adversary, Misbehaviour};
use quiver_node::{BootstrapAddr, Node, NodeConfig, ProviderConfig};

#[derive(Parser, Debug)]
#[command(version, about = "A QUIVer provider that misbehaves on purpose (for tests only)")]
struct Args {
    /// garbage-frames, wrong-output, bad-signature, wrong-model, slow-loris, drop-mid-stream,
    /// close-unanswered, claim-never-serve, lying-heartbeats, non-forwarder,
    /// refuse-after-streaming, inflated-tokens, unique-build, receipt-mismatch or idle-streams
    /// (a client that holds streams open to providers without writing).
    #[arg(long)]
    mode: Misbehaviour,
    /// Serve this many jobs honestly first.
    #[arg(long, default_value_t = 0)]
    honest_jobs: u32,
    /// Do not advertise a fake speed and free slots in heartbeats.
    #[arg(long)]
    no_lure: bool,
    /// Peers to join through (multiaddr or host:port).
    #[arg(long)]
    bootstrap: Vec<BootstrapAddr>,
    /// TCP and QUIC port (0 = any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The GGUF file to serve.
    #[arg(long)]
    model: PathBuf,
    /// Name the model is served under.
    #[arg(long, default_value = "smollm2-135m")]
    model_name: String,
    #[arg(long, default_value_t = 1)]
    threads: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let engine = LlamaEngine::load(
        &args.model,
        &args.model_name,
        None,
        LlamaConfig { threads: args.threads, context_size: 2048, slots: 0, ..LlamaConfig::default() },
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let node = Node::start(NodeConfig {
        listen_addrs: quiver_net::default_listen_addrs(std::net::Ipv4Addr::UNSPECIFIED.into(), args.port, true),
        bootstrap_peers: args.bootstrap,
        provider: Some(ProviderConfig::new(vec![Arc::new(engine)], 1, 4)),
        adversary: Some(Adversary { mode: args.mode, honest_jobs: args.honest_jobs, lure: !args.no_lure }),
        ..NodeConfig::default()
    })
    .await?;
    println!("peer_id: {}", node.peer_id());
    println!("misbehaving: {}", args.mode);
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}
