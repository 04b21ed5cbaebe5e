//! `quiver`: the QUIVer command.

use clap::{Parser, Subcommand};
use quiver_cli::client::{self, ApiArgs};
use quiver_cli::node_cmd::{self, NodeArgs};

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "QUIVer: a decentralized peer-to-peer network for LLM inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (same flags as `quiver-node`).
    Node(NodeArgs),
    /// Show a running node's view: identity, addresses, peers, routing table, known nodes.
    Status(ApiArgs),
    /// List a running node's connected peers.
    Peers(ApiArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Node(args) => node_cmd::run(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Peers(args) => client::peers(args).await,
    }
}
