//! A gateway for the integration tests: a real node on 127.0.0.1 (ephemeral ports) with the
//! OpenAI-compatible gateway served on an ephemeral port beside it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use quiver_gateway::GatewayOptions;
use quiver_node::{Node, NodeConfig};
use reqwest::StatusCode;
use serde_json::Value;

/// Bound on one HTTP exchange (a request for an unknown model searches the network first).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Gateway {
    pub node: Node,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gateway {
    /// A gateway on a node of its own with no provider in reach.
    pub async fn start(options: GatewayOptions) -> Gateway {
        Gateway::start_with(NodeConfig::default(), options).await
    }

    /// A gateway on a node started from `config`, listening on 127.0.0.1 only.
    pub async fn start_with(config: NodeConfig, options: GatewayOptions) -> Gateway {
        let node = Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
            ..config
        })
        .await
        .expect("node starts");
        let listener = quiver_gateway::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(quiver_gateway::serve_gateway(node.clone(), listener, options, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().expect("client");
        Gateway { node, addr, http, stop: Some(stop) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` and returns the status, headers and JSON body of the answer.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self.http.post(self.url(path)).body(body).send().await.expect("request answered");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        (status, headers, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("request answered")
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.node.shutdown().await;
    }
}

/// Asserts OpenAI's error shape and returns its `code`.
pub fn error_code(body: &Value) -> &str {
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error.message: {body}");
    assert!(e["type"].is_string(), "error.type: {body}");
    assert!(e.as_object().is_some_and(|o| o.contains_key("param")), "error.param: {body}");
    e["code"].as_str().unwrap_or_else(|| panic!("error.code: {body}"))
}
