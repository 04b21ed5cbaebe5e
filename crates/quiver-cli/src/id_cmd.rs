//! `quiver id`: a node's PeerId, so that groups of nodes can name each other in their
//! configuration (allow lists, shard peers) before the node first runs.

use std::path::PathBuf;

use clap::Args;
use quiver_node::config::default_data_dir;

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Directory of the node's identity key (created with a new key when there is none).
    /// [default: $XDG_DATA_HOME/quiver]
    #[arg(long, value_name = "DIR", env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Prints the PeerId of the identity in the data dir, creating the identity if it has none.
pub fn run(args: IdArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.unwrap_or_else(default_data_dir);
    let key = quiver_node::identity::load_or_create(&dir)?;
    println!("{}", key.public().to_peer_id());
    Ok(())
}
