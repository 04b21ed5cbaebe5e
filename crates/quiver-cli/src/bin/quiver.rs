//! `quiver`: the QUIVer command.

use clap::{CommandFactory, Parser, Subcommand};
use quiver_cli::ask_cmd::{self, AskArgs};
use quiver_cli::client::{self, ApiArgs};
use quiver_cli::help::{self, Bin};
use quiver_cli::id_cmd::{self, IdArgs};
use quiver_cli::init_cmd::{self, InitArgs};
use quiver_cli::model_cmd::{self, ModelCommand};
use quiver_cli::node_cmd::{self, NodeArgs};
use quiver_cli::provider_cmd::ProviderCli;

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "QUIVer: a decentralized peer-to-peer network for LLM inference",
    after_help = help::QUIVER
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node (same flags as `quiver-node`).
    #[command(after_help = help::NODE)]
    Node(NodeArgs),
    /// Serve models to the network (same flags as `quiver-provider`).
    #[command(after_help = help::PROVIDER)]
    Provider(ProviderCli),
    /// Ask the network: stream the answer of a provider to stdout.
    #[command(after_help = help::ASK)]
    Ask(AskArgs),
    /// Run a node that serves the OpenAI-compatible API (and the status page), answered by the
    /// network.
    #[command(after_help = help::GATEWAY)]
    Gateway {
        /// Address of the gateway.
        #[arg(long, default_value = "127.0.0.1:8080", env = "QUIVER_GATEWAY_LISTEN")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Fetch and list models.
    #[command(subcommand, after_help = help::MODEL)]
    Model(ModelCommand),
    /// Show a running node's view: identity, addresses, peers, routing table, known nodes.
    #[command(after_help = help::STATUS)]
    Status(ApiArgs),
    /// List a running node's connected peers and their reputation.
    #[command(after_help = help::PEERS)]
    Peers(ApiArgs),
    /// Print this node's PeerId (the identity in its data dir, created if there is none).
    #[command(after_help = help::ID)]
    Id(IdArgs),
    /// Write a commented default config file.
    #[command(after_help = help::INIT)]
    Init(InitArgs),
    /// Print a shell completion script for quiver, quiver-node or quiver-provider.
    #[command(after_help = help::COMPLETIONS)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
        /// The command to complete.
        #[arg(long, value_enum, default_value_t = Bin::Quiver)]
        bin: Bin,
    },
}

fn main() -> anyhow::Result<()> {
    // A split model's engine runs in a child process of this same program (quiver_engine::split).
    quiver_cli::run_engine_worker_if_asked();
    quiver_cli::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Node(args) => node_cmd::run(args).await,
        Command::Provider(cli) => cli.run().await,
        Command::Ask(args) => ask_cmd::run(args).await,
        Command::Gateway { listen, mut node } => {
            node.gateway = Some(listen);
            node_cmd::run(node).await
        }
        Command::Model(cmd) => model_cmd::run(cmd).await,
        Command::Status(args) => client::status(args).await,
        Command::Peers(args) => client::peers(args).await,
        Command::Init(args) => init_cmd::run(args),
        Command::Id(args) => id_cmd::run(args),
        Command::Completions { shell, bin } => {
            let mut cmd = match bin {
                Bin::Quiver => Cli::command(),
                Bin::QuiverNode => help::node_command(),
                Bin::QuiverProvider => help::provider_command(),
            };
            clap_complete::generate(shell, &mut cmd, bin.name(), &mut std::io::stdout());
            Ok(())
        }
    }
}
