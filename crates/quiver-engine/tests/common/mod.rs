//! A tiny scripted HTTP/1.1 server on 127.0.0.1 for tests: every connection gets its request
//! recorded and is answered by writing the pieces a handler returns, with pauses between them,
//! then closed.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Part of an answer.
#[derive(Clone)]
pub enum Piece {
    Bytes(Vec<u8>),
    Pause(Duration),
}

/// A request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// Request line and headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

type Handler = dyn Fn(&Request) -> Vec<Piece> + Send + Sync;

pub struct FakeServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Set when writing an answer failed because the client had gone.
    pub client_gone: Arc<tokio::sync::Notify>,
}

impl FakeServer {
    pub async fn start(handler: impl Fn(&Request) -> Vec<Piece> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let client_gone = Arc::new(tokio::sync::Notify::new());
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, gone) = (requests.clone(), client_gone.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (handler, reqs, gone) = (handler.clone(), reqs.clone(), gone.clone());
                tokio::spawn(async move { serve_one(&mut socket, &reqs, &*handler, &gone).await });
            }
        });
        FakeServer { addr, requests, client_gone }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_one(
    socket: &mut TcpStream,
    reqs: &Mutex<Vec<Request>>,
    handler: &Handler,
    gone: &tokio::sync::Notify,
) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = Request { head, body: buf[head_end..head_end + len].to_vec() };
    reqs.lock().unwrap().push(request.clone());
    for piece in handler(&request) {
        match piece {
            Piece::Pause(d) => tokio::time::sleep(d).await,
            Piece::Bytes(b) => {
                if socket.write_all(&b).await.is_err() || socket.flush().await.is_err() {
                    gone.notify_one();
                    return None;
                }
            }
        }
    }
    let _ = socket.shutdown().await;
    Some(())
}

/// A complete answer with a body.
pub fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<Piece> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    vec![Piece::Bytes(out)]
}

/// The head of a server-sent-events answer; its body runs until the connection closes.
pub fn sse_head() -> Piece {
    Piece::Bytes(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n".to_vec())
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
