//! `quiver-provider`: serve models to the QUIVer network (the command the design document
//! promises).
//!
//! ```text
//! quiver-provider start                              # default model, configured bootstrap peers
//! quiver-provider --bootstrap-node --port 4001       # a provider that is also a bootstrap node
//! quiver-provider --bootstrap your-server.com:4001
//! quiver-provider --backend openai --backend-url http://127.0.0.1:11434/v1 --backend-model llama3.2
//! ```

use quiver_cli::help;
use quiver_cli::provider_cmd::ProviderCli;

fn main() -> anyhow::Result<()> {
    // A split model's engine runs in a child process of this same program (quiver_engine::split).
    quiver_cli::run_engine_worker_if_asked();
    quiver_cli::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    help::parse::<ProviderCli>(help::provider_command()).run().await
}
