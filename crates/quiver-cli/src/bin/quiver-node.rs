//! `quiver-node`: run a QUIVer node (the command the design document promises).
//!
//! ```text
//! quiver-node --bootstrap-node --port 4001
//! quiver-node --bootstrap /ip4/192.168.1.100/tcp/4001/p2p/<PeerId>
//! quiver-node --bootstrap your-server.com:4001
//! ```

use quiver_cli::help;
use quiver_cli::node_cmd::{self, NodeArgs};

fn main() -> anyhow::Result<()> {
    // A split model's engine runs in a child process of this same program (quiver_engine::split).
    quiver_cli::run_engine_worker_if_asked();
    quiver_cli::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    node_cmd::run(help::parse::<NodeArgs>(help::node_command())).await
}
