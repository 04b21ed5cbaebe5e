//! `quiver`: the QUIVer command.

use clap::{Parser, Subcommand};
use quiver_cli::ask_cmd::{self, AskArgs};
use quiver_cli::client::{self, ApiArgs};
use quiver_cli::model_cmd::{self, ModelCommand};
use quiver_cli::node_cmd::{self, NodeArgs};
use quiver_cli::provider_cmd::ProviderCli;

#[derive(Parser)]
#[command(name = "quiver", version, about = "QUIVer: a decentralized peer-to-peer network for LLM inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node (same flags as `quiver-node`).
    Node(NodeArgs),
    /// Serve models to the network (same flags as `quiver-provider`).
    Provider(ProviderCli),
    /// Ask the network: stream the answer of a provider to stdout.
    ///
    /// Example: quiver ask --model smollm2-135m --max-tokens 100 "Hello, world!"
    Ask(AskArgs),
    /// Run a node that serves the OpenAI-compatible API, answered by the network.
    ///
    /// Example: quiver gateway --listen 127.0.0.1:8080 --bootstrap your-server.com:4001
    Gateway {
        /// Address of the gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Fetch and list models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Show a running node's view: identity, addresses, peers, routing table, known nodes.
    Status(ApiArgs),
    /// List a running node's connected peers.
    Peers(ApiArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    }
}
