//! `quiver-sim`: runs a scenario over many in-process nodes and writes its report.
//!
//! ```text
//! quiver-sim --nodes 100,300,1000 --scenario dht --seed 1 --out bench/sim
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use quiver_sim::cluster::{ProcessCost, Security};
use quiver_sim::report::{Machine, Outcome, Report};
use quiver_sim::scenario::{self, Scenario, SimParams};

/// Thousands of connections' small buffers come and go: mimalloc's per-thread free lists keep
/// that cheaper and less fragmented than glibc's allocator (see bench/SIM.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs many real QUIVer nodes in one process over libp2p's memory transport and measures a
/// scenario; writes `<out>/<scenario>-n<N>-s<seed>.json` and `.md`.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  quiver-sim --nodes 100,300,1000 --scenario dht --seed 1 --out bench/sim\n  quiver-sim --nodes 100 --scenario gossip --seed 1 --out bench/sim\n  quiver-sim --nodes 200 --scenario churn --seed 1 --out bench/sim\n  quiver-sim --nodes 50 --scenario load --providers 4 --clients 8 --requests 200 --out bench/sim"
)]
struct Args {
    /// Number of nodes; a comma-separated list runs the scenario once per size.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<usize>,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Seed of node keys and of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the reports.
    #[arg(long, default_value = "bench/sim")]
    out: PathBuf,
    /// DHT lookups (dht), or records checked of departed and of surviving nodes each (churn).
    #[arg(long)]
    lookups: Option<usize>,
    /// Lookups in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Nodes started per second.
    #[arg(long)]
    join_rate: Option<f64>,
    /// Single-threaded runtimes the nodes are dealt over (default: one per core; 0: all on one
    /// multi-threaded runtime).
    #[arg(long)]
    runtimes: Option<usize>,
    /// Joins in flight at most: the next node starts only once fewer nodes than this are still
    /// joining (0: no bound, only --join-rate).
    #[arg(long)]
    max_joining: Option<usize>,
    /// Heartbeat period in seconds (default: 3600 for dht and churn, nodes/10 but at least 5 for
    /// gossip, 5 for load).
    #[arg(long)]
    heartbeat_secs: Option<f64>,
    /// Idle connections close after this many seconds.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Connection security: noise (as on a real network) or plaintext (identities checked,
    /// nothing encrypted; for the largest runs).
    #[arg(long, value_enum)]
    security: Option<Security>,
    /// Measurement window in seconds (gossip).
    #[arg(long)]
    window_secs: Option<u64>,
    /// Pause between putting the node records and the lookups, in seconds.
    #[arg(long)]
    settle_secs: Option<u64>,
    /// Fraction of nodes stopped (churn).
    #[arg(long)]
    churn_fraction: Option<f64>,
    /// Providers, clients, requests, tokens per second of the paced engine, max tokens (load).
    #[arg(long)]
    providers: Option<usize>,
    #[arg(long)]
    clients: Option<usize>,
    #[arg(long)]
    requests: Option<usize>,
    #[arg(long)]
    tokens_per_sec: Option<f64>,
    #[arg(long)]
    max_tokens: Option<u32>,
}

impl Args {
    fn params(&self, nodes: usize) -> SimParams {
        let mut p = SimParams::new(self.scenario, nodes, self.seed);
        if let Some(v) = self.lookups {
            p.lookups = v;
        }
        if let Some(v) = self.concurrency {
            p.concurrency = v;
        }
        if let Some(v) = self.join_rate {
            p.cluster.joins_per_sec = v;
        }
        if let Some(v) = self.runtimes {
            p.cluster.runtimes = v;
        }
        if let Some(v) = self.max_joining {
            p.cluster.max_joining = v;
        }
        if let Some(v) = self.heartbeat_secs {
            p.cluster.heartbeat_interval = Duration::from_secs_f64(v.max(0.1));
        }
        if let Some(v) = self.security {
            p.cluster.security = v;
        }
        if let Some(v) = self.idle_secs {
            p.cluster.idle_connection_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.window_secs {
            p.window = Duration::from_secs(v);
        }
        if let Some(v) = self.settle_secs {
            p.settle = Duration::from_secs(v);
        }
        if let Some(v) = self.churn_fraction {
            p.churn_fraction = v;
        }
        if let Some(v) = self.providers {
            p.providers = v;
        }
        if let Some(v) = self.clients {
            p.clients = v;
        }
        if let Some(v) = self.requests {
            p.requests = v;
        }
        if let Some(v) = self.tokens_per_sec {
            p.tokens_per_sec = v;
        }
        if let Some(v) = self.max_tokens {
            p.max_tokens = v;
        }
        p
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("quiver_sim=info,error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    for &nodes in &args.nodes {
        let params = args.params(nodes);
        let stem = format!("{}-n{}-s{}", args.scenario.name(), nodes, args.seed);
        let cpu_before = ProcessCost::now().cpu_secs;
        let start = Instant::now();
        let name = args.scenario.name();
        let (json, md) = runtime.block_on(async {
            let ctx = || format!("scenario {name} with {nodes} nodes");
            match args.scenario {
                Scenario::Dht => {
                    let r = scenario::dht::run(&params).await.with_context(ctx)?;
                    finish(&args, &command, params, r, start, cpu_before, &stem)
                }
                Scenario::Gossip => {
                    let r = scenario::gossip::run(&params).await.with_context(ctx)?;
                    finish(&args, &command, params, r, start, cpu_before, &stem)
                }
                Scenario::Churn => {
                    let r = scenario::churn::run(&params).await.with_context(ctx)?;
                    finish(&args, &command, params, r, start, cpu_before, &stem)
                }
                Scenario::Load => {
                    let r = scenario::load::run(&params).await.with_context(ctx)?;
                    finish(&args, &command, params, r, start, cpu_before, &stem)
                }
            }
        })?;
        eprintln!("wrote {} and {}", json.display(), md.display());
    }
    Ok(())
}

/// Wraps the results in a report, prints its Markdown and writes both files.
fn finish<R: Outcome>(
    args: &Args,
    command: &str,
    params: SimParams,
    results: R,
    start: Instant,
    cpu_before: f64,
    stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut cost = ProcessCost::now();
    cost.cpu_secs -= cpu_before;
    let report = Report {
        scenario: args.scenario.name().to_owned(),
        command: command.to_owned(),
        seed: args.seed,
        nodes: params.cluster.nodes,
        machine: Machine::this(),
        wall_time_secs: start.elapsed().as_secs_f64(),
        cost,
        parameters: params,
        results,
    };
    println!("{}", report.markdown()?);
    Ok(report.write(&args.out, stem)?)
}
