//! Ask a QUIVer network from Rust.
//!
//! ```text
//! cargo run -p quiver-node --example ask -- /ip4/127.0.0.1/tcp/4001/p2p/<PeerId> "Hello, world!"
//! ```
//!
//! The first argument is any node of the network (multiaddr or host:port), the second the
//! prompt. The answer is streamed to stdout, then the verified receipt is summarised.

use std::io::Write;
use std::time::Duration;

use quiver_node::{InferenceRequest, Node, NodeConfig, StreamEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(bootstrap), Some(prompt)) = (args.next(), args.next()) else {
        eprintln!("usage: ask <bootstrap address> <prompt>");
        std::process::exit(2);
    };
    let node = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/0.0.0.0/tcp/0".parse()?, "/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
        bootstrap_peers: vec![bootstrap.parse()?],
        dht_client_only: true,
        ..NodeConfig::default()
    })
    .await?;
    node.wait_for_peers(1, Duration::from_secs(10)).await;
    node.wait_for_provider("smollm2-135m", Duration::from_secs(30)).await;

    // The one-call API: node.send_inference_request("smollm2-135m", &prompt, 100).await?
    // Here, the streaming variant:
    let mut stream = node.infer_stream(InferenceRequest::chat("smollm2-135m", &prompt, 100))?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Token(text) => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            StreamEvent::Done(result) => {
                println!();
                eprintln!(
                    "{} tokens from {} ({:?}), receipt verified: {}",
                    result.usage.completion_tokens, result.provider, result.route, result.receipt.verified
                );
            }
        }
    }
    node.shutdown().await;
    Ok(())
}
