//! Examples shown after `--help` on every command, and the `quiver-node` and `quiver-provider`
//! command lines (shared by their binaries and `quiver completions`).

use clap::{Args, Command, FromArgMatches, ValueEnum};

use crate::node_cmd::NodeArgs;
use crate::provider_cmd::ProviderCli;

pub const QUIVER: &str = "\
Examples:
  quiver model fetch                                  # the default model, smollm2-135m (98 MB)
  quiver provider --bootstrap your-server.com:4001    # serve it to the network
  quiver ask --model smollm2-135m \"Hello, world!\"     # ask the network
  quiver gateway --listen 127.0.0.1:8080              # OpenAI-compatible API + status page
  quiver status                                       # what the local node sees
  quiver init && quiver node --config quiver.toml     # start from a commented config

Every command has its own examples: quiver <command> --help";

pub const NODE: &str = "\
Examples:
  quiver node --bootstrap-node --port 4001                       # a bootstrap node others join through
  quiver node --bootstrap /ip4/192.168.1.100/tcp/4001/p2p/<PeerId>
  quiver node --bootstrap your-server.com:4001 --log-format json
  quiver node --config quiver.toml --gateway 127.0.0.1:8080      # also serve the OpenAI API
  quiver node --no-mdns --bootstrap your-server.com:4001         # only the bootstrap peer, not the LAN

Peers on the local network are found by mDNS unless --no-mdns.
The control API (status page at /, /api/v1/status, /metrics) listens on 127.0.0.1:4080 by default.";

pub const PROVIDER: &str = "\
Examples:
  quiver provider start                                  # default model, configured bootstrap peers and the LAN
  quiver provider --bootstrap-node --port 4001           # a provider that is also a bootstrap node
  quiver provider --bootstrap your-server.com:4001 --threads 2 --queue 16
  quiver provider --bootstrap your-server.com:4001 --gateway 127.0.0.1:8080
  quiver provider --backend openai --backend-url http://127.0.0.1:11434/v1 --backend-model llama3.2
  quiver provider --gpu-layers 0                         # CPU only, even in a GPU build

Defaults from this machine: --threads = physical cores; --context-size 2048 and --max-concurrent 4
when their KV cache fits in half the memory available beside the model (else fewer slots, then a
shorter context down to 512); --gpu-layers auto = as many layers as fit in the GPU's free memory
beside the KV cache (0 without a GPU).";

pub const ASK: &str = "\
Examples:
  quiver ask --model smollm2-135m --max-tokens 100 \"Hello, world!\"
  quiver ask --bootstrap your-server.com:4001 \"Why is the sky blue?\"
  quiver ask \"Hello\"                                      # the local node, else peers found on the LAN
  quiver ask --json --verify \"2+2=\"                       # whole result with its signed receipt
  quiver ask --local \"Hello\"                              # the bare engine here, no network

Exit codes: 3 no provider, 4 all providers failed, 5 the request was refused.";

pub const GATEWAY: &str = "\
Examples:
  quiver gateway --listen 127.0.0.1:8080 --bootstrap your-server.com:4001
  quiver gateway --listen 0.0.0.0:8080 --api-key \"$QUIVER_KEY\" --bootstrap your-server.com:4001
  curl http://127.0.0.1:8080/v1/chat/completions \\
    -d '{\"model\": \"smollm2-135m\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'

Serves POST /v1/chat/completions, POST /v1/completions (with \"stream\": true for SSE),
GET /v1/models, the status page at /, and /metrics. CORS is off unless --cors-origin is given.";

pub const MODEL: &str = "\
Examples:
  quiver model fetch                       # smollm2-135m into <data-dir>/models, sha256 checked
  quiver model fetch --models-dir ./models
  quiver model list";

pub const STATUS: &str = "\
Examples:
  quiver status                            # the node of the default data directory
  quiver status --api 127.0.0.1:4080 --json";

pub const PEERS: &str = "\
Examples:
  quiver peers
  quiver peers --data-dir /var/lib/quiver --json";

pub const INIT: &str = "\
Examples:
  quiver init                              # writes ./quiver.toml
  quiver init /etc/quiver/quiver.toml --force
  quiver node --config quiver.toml";

pub const ID: &str = "\
Examples:
  quiver id                                # the PeerId of this machine's node
  quiver id --data-dir /var/lib/quiver     # another node's (its key is created if missing)";

pub const COMPLETIONS: &str = "\
Examples:
  quiver completions bash > /etc/bash_completion.d/quiver
  quiver completions zsh > \"${fpath[1]}/_quiver\"
  quiver completions fish > ~/.config/fish/completions/quiver.fish
  quiver completions bash --bin quiver-provider > /etc/bash_completion.d/quiver-provider";

pub const NODE_BIN: &str = "\
Examples:
  quiver-node --bootstrap-node --port 4001
  quiver-node --bootstrap /ip4/192.168.1.100/tcp/4001/p2p/<PeerId>
  quiver-node --bootstrap your-server.com:4001 --gateway 127.0.0.1:8080";

pub const PROVIDER_BIN: &str = "\
Examples:
  quiver-provider start                              # default model, configured bootstrap peers and the LAN
  quiver-provider --bootstrap-node --port 4001       # a provider that is also a bootstrap node
  quiver-provider --bootstrap your-server.com:4001
  quiver-provider --backend openai --backend-url http://127.0.0.1:11434/v1 --backend-model llama3.2
  quiver-provider --gpu-layers 20                    # the last 20 layers on the GPU (a cuda/vulkan/metal build)

Defaults from this machine: --threads = physical cores; --context-size 2048 and --max-concurrent 4
when their KV cache fits in half the memory available beside the model (else fewer slots, then a
shorter context down to 512); --gpu-layers auto = as many layers as fit in the GPU's free memory
beside the KV cache (0 without a GPU).";

/// The commands whose completions `quiver completions` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bin {
    Quiver,
    QuiverNode,
    QuiverProvider,
}

impl Bin {
    pub fn name(self) -> &'static str {
        match self {
            Bin::Quiver => "quiver",
            Bin::QuiverNode => "quiver-node",
            Bin::QuiverProvider => "quiver-provider",
        }
    }
}

/// The `quiver-node` command line.
pub fn node_command() -> Command {
    let cmd = Command::new("quiver-node")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run a QUIVer node: a DHT and gossip peer of the network")
        .after_help(NODE_BIN);
    NodeArgs::augment_args(cmd)
}

/// The `quiver-provider` command line.
pub fn provider_command() -> Command {
    let cmd = Command::new("quiver-provider")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Serve models to the QUIVer network")
        .after_help(PROVIDER_BIN);
    ProviderCli::augment_args(cmd)
}

/// Parses the process arguments with `cmd` into `T`, exiting with clap's message on an error.
pub fn parse<T: FromArgMatches>(cmd: Command) -> T {
    let matches = cmd.get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
