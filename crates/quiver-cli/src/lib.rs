//! The command-line front of QUIVer: argument parsing, config merging, logging, and the
//! long-running node process. The binaries in `src/bin/` are thin wrappers around this.

pub mod ask_cmd;
pub mod client;
pub mod help;
pub mod id_cmd;
pub mod init_cmd;
pub mod model_cmd;
pub mod node_cmd;
pub mod provider_cmd;

use std::path::PathBuf;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Exit code for bad input (flags, config file), as clap uses for usage errors.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Default log filter of long-running commands.
/// (libp2p_mdns logs every peer address it hears at info: anyone on the LAN could fill the log.)
pub const SERVICE_LOG: &str = "info,llama-cpp-2=warn,libp2p_swarm=warn,libp2p_kad=error,libp2p_gossipsub=warn,libp2p_tcp=warn,\
                               libp2p_quic=warn,libp2p_mdns=warn";
/// Default log filter of one-shot commands, whose stdout is the answer.
pub const QUIET_LOG: &str = "warn,llama-cpp-2=warn,libp2p_kad=error,libp2p_gossipsub=error,libp2p_swarm=error";

/// Exit codes of `quiver ask`.
pub const EXIT_NO_PROVIDER: i32 = 3;
pub const EXIT_ALL_FAILED: i32 = 4;
pub const EXIT_REJECTED: i32 = 5;
/// `--verify` was asked and no second provider confirmed the answer (none is printed).
pub const EXIT_UNVERIFIED: i32 = 6;

/// Logs go to stderr so stdout stays for what users copy (addresses, answers). `RUST_LOG`
/// overrides `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs this process as an engine worker and exits, when its parent asked for one (see
/// `quiver_engine::split`). Every binary's `main` calls this first, before any runtime starts.
pub fn run_engine_worker_if_asked() {
    if std::env::var_os(quiver_engine::split::WORKER_ENV).is_some() {
        init_logging(LogFormat::Text, QUIET_LOG);
        std::process::exit(quiver_engine::split::worker::main());
    }
}

/// The multi-threaded runtime the binaries run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Prints a usage error naming what was wrong and exits with code 2.
pub fn usage_error(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(EXIT_USAGE)
}

/// File in the data directory where a running node writes its control API address.
pub fn api_addr_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("api.addr")
}
