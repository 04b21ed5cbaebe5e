//! `quiver-provider`: serve models to the QUIVer network (the command the design document
//! promises).
//!
//! ```text
//! quiver-provider start                              # default model, configured bootstrap peers
//! quiver-provider --bootstrap-node --port 4001       # a provider that is also a bootstrap node
//! quiver-provider --bootstrap your-server.com:4001
//! quiver-provider --backend openai --backend-url http://127.0.0.1:11434/v1 --backend-model llama3.2
//! ```

use clap::Parser;
use quiver_cli::provider_cmd::ProviderCli;

#[derive(Parser)]
#[command(name = "quiver-provider", version, about = "Serve models to the QUIVer network")]
struct Cli {
    #[command(flatten)]
    inner: ProviderCli,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().inner.run().await
}
