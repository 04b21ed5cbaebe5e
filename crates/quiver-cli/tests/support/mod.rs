//! Running the real binaries as separate processes on 127.0.0.1 with ephemeral ports, or inside
//! Linux network namespaces the test makes itself ([`netns`]).
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The machine's two cores, shared by the tests of this binary (libtest runs two at once).
static MACHINE: RwLock<()> = RwLock::new(());

/// For a test that runs the model or many processes: runs alone. (A failed test's guard is
/// taken over, not refused: the next test still runs.)
pub fn heavy() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(PoisonError::into_inner)
}

/// For a test of a few short-lived processes: may run beside other such tests, never beside a
/// heavy one.
pub fn light() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(PoisonError::into_inner)
}

/// A running node process; killed when dropped.
pub struct NodeProc {
    pub name: String,
    pub child: Child,
    pub peer_id: String,
    /// Full TCP multiaddr with /p2p/.
    pub tcp_addr: String,
    pub tcp_port: u16,
    pub udp_port: Option<u16>,
    pub api: SocketAddr,
    /// The OpenAI-compatible gateway, for `quiver gateway` and `--gateway`.
    pub gateway: Option<SocketAddr>,
    /// The network namespace the process runs in (its `api` is on that namespace's loopback),
    /// or `None` for the test's own network.
    pub netns: Option<String>,
}

/// Whether a node started with `args` serves the OpenAI gateway (`quiver gateway`, `--gateway`).
pub fn serves_gateway(args: &[&str]) -> bool {
    args.iter().any(|a| *a == "gateway" || *a == "--gateway")
}

/// The gateway's address from the line a node prints for it (`gateway on http://ADDR/v1`).
pub fn gateway_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("gateway on http://")?.trim_end_matches("/v1").parse().ok()
}

fn port_of(addr: &str, proto: &str) -> Option<u16> {
    let mut parts = addr.split('/');
    while let Some(p) = parts.next() {
        if p == proto {
            return parts.next()?.parse().ok();
        }
    }
    None
}

impl NodeProc {
    /// Starts `bin` with `args` plus loopback-only, ephemeral-port and data-dir flags, and waits
    /// until it has printed its addresses and its API address.
    pub fn start(bin: &str, name: &str, args: &[&str], data_dir: &Path) -> NodeProc {
        Self::start_with_env(bin, name, args, &[], data_dir)
    }

    /// [`NodeProc::start`] with extra environment variables.
    pub fn start_with_env(bin: &str, name: &str, args: &[&str], env: &[(&str, &str)], data_dir: &Path) -> NodeProc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .args(["--listen-ip", "127.0.0.1", "--api", "127.0.0.1:0", "--heartbeat-interval", "1"])
            .arg("--data-dir")
            .arg(data_dir.join(name))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        Self::launch(cmd, name, data_dir, serves_gateway(args), None)
    }

    /// Spawns `cmd` (program, flags and environment already set) with its stderr in
    /// `<data_dir>/<name>.log`, and waits until it has printed its PeerId, addresses and API
    /// address (and its gateway address when `wants_gateway`). `netns` names the network
    /// namespace `cmd` runs in, so that [`NodeProc::get`] reaches the API inside it.
    pub fn launch(
        mut cmd: Command,
        name: &str,
        data_dir: &Path,
        wants_gateway: bool,
        netns: Option<String>,
    ) -> NodeProc {
        let bin = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(data_dir.join(format!("{name}.log"))).expect("log file")));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let rx = stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut peer_id, mut tcp_addr, mut udp_port, mut api, mut gateway) = (None, None, None, None, None);
        while api.is_none() || tcp_addr.is_none() || udp_port.is_none() || (wants_gateway && gateway.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(data_dir.join(format!("{name}.log"))).unwrap_or_default();
                    let tail: String =
                        log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                    panic!("{name} did not print its addresses within 30 s (or exited); its log ends with:\n{tail}");
                }
            };
            if let Some(rest) = line.strip_prefix("QUIVer node ") {
                peer_id = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(a) = line.strip_prefix("listening on ") {
                if a.contains("/tcp/") {
                    tcp_addr = Some(a.to_owned());
                } else if a.contains("/quic-v1") {
                    udp_port = port_of(a, "udp");
                }
            } else if let Some(a) = line.strip_prefix("api on http://") {
                api = a.parse().ok();
            } else if let Some(a) = gateway_line(&line) {
                gateway = Some(a);
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let tcp_addr = tcp_addr.expect("tcp address");
        let tcp_port = port_of(&tcp_addr, "tcp").expect("tcp port");
        NodeProc {
            name: name.to_owned(),
            child,
            peer_id: peer_id.expect("peer id printed"),
            tcp_addr,
            tcp_port,
            udp_port,
            api: api.expect("api address"),
            gateway,
            netns,
        }
    }

    /// GET `path` from the control API as JSON (from inside the node's namespace, if it has one).
    pub fn get(&self, path: &str) -> Option<Value> {
        match &self.netns {
            None => http_get_json(self.api, path),
            Some(ns) => netns::in_netns(ns, || http_get_json(self.api, path)).ok().flatten(),
        }
    }

    pub fn status(&self) -> Option<Value> {
        self.get("/api/v1/status")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and returns the exit status if the process ends within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET over loopback, so the tests depend on no HTTP client crate.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_exchange(
        addr,
        Duration::from_secs(10),
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `request` as is and reads the whole response: its status code and (de-chunked) body.
fn http_exchange(addr: SocketAddr, read_timeout: Duration, request: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn http_get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (code, body) = http_get(addr, path)?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Polls `check` every 250 ms until it holds; panics with `what` after `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: not within {limit:?}");
}

/// The strings in the array `v[key]`.
pub fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect()
}

/// PeerIds in a node's routing table.
pub fn routing_table(status: &Value) -> Vec<String> {
    strings(status, "routing_table")
}

/// PeerIds a node has heard heartbeats from within `fresh_secs`.
pub fn known_nodes(status: &Value, fresh_secs: f64) -> Vec<String> {
    status["known_nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["last_seen_secs"].as_f64().is_some_and(|s| s <= fresh_secs))
        .filter_map(|k| k["peer_id"].as_str().map(str::to_owned))
        .collect()
}

/// Whether `node` has heard a fresh heartbeat (at most 3 s old) from `peer` announcing `model`.
pub fn knows_provider(model: &str, node: &NodeProc, peer: &str) -> bool {
    let Some(status) = node.status() else { return false };
    status["known_nodes"].as_array().into_iter().flatten().any(|k| {
        k["peer_id"] == peer
            && k["last_seen_secs"].as_f64().is_some_and(|s| s <= 3.0)
            && k["models"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == model))
    })
}

/// Whether `node` has every one of `others` (except itself) in its routing table and has heard
/// a fresh heartbeat from each.
pub fn sees_all(node: &NodeProc, others: &[&str]) -> bool {
    let Some(status) = node.status() else {
        return false;
    };
    let table = routing_table(&status);
    let known = known_nodes(&status, 3.0);
    others
        .iter()
        .filter(|id| **id != node.peer_id)
        .all(|id| table.iter().any(|t| t == id) && known.iter().any(|k| k == id))
}

/// Catalogue hash of the default model (`smollm2-135m`).
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// File name of the default model.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The repository root.
/// The child's stdout, line by line, read on a thread of its own.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory holding the default model: `$QUIVER_MODEL_DIR` (relative to the repository
/// root, as scripts/fetch-model.sh reads it) or `target/models`. Panics, saying how to fetch it,
/// when the model file is not there.
pub fn model_dir() -> PathBuf {
    let dir = match std::env::var_os("QUIVER_MODEL_DIR") {
        Some(d) if !d.is_empty() => repo_root().join(d),
        _ => repo_root().join("target/models"),
    };
    let file = dir.join(MODEL_FILE);
    if !file.is_file() {
        panic!(
            "the default model is missing: {} does not exist. Run scripts/fetch-model.sh (it puts the model in \
             ${{QUIVER_MODEL_DIR:-target/models}}) and run the tests again.",
            file.display()
        );
    }
    dir
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with everything the command printed unless it exited 0.
    pub fn expect_success(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Reads a pipe to its end in a thread.
fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit within `limit`; kills it and panics naming `what` if it does not.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?} (killed)");
            }
            Err(e) => panic!("{what}: cannot wait for it: {e}"),
        }
    }
}

/// The bare engine's greedy answer (`quiver ask --local --json`, no network) on the default
/// model in `models` with `threads` threads: the reference an answer through the network is
/// compared with.
pub fn local_answer(models: &str, threads: &str, max_tokens: &str, prompt: &str) -> Value {
    let args =
        ["ask", "--local", "--threads", threads, "--models-dir", models, "--json", "--max-tokens", max_tokens, prompt];
    let local = run_bounded(env!("CARGO_BIN_EXE_quiver"), &args, &[], Duration::from_secs(120))
        .expect_success("quiver ask --local");
    serde_json::from_str(&local.stdout).unwrap_or_else(|e| panic!("quiver ask --local --json: {e}\n{}", local.stdout))
}

/// Runs `bin args` with `env` and no stdin, waits at most `limit` (then kills it and panics),
/// and returns its exit status and output.
pub fn run_bounded(bin: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Finished {
    let mut cmd = Command::new(bin);
    cmd.args(args).envs(env.iter().copied());
    run_command_bounded(cmd, limit)
}

/// [`run_bounded`] for a prepared command (e.g. one that enters a network namespace first).
pub fn run_command_bounded(mut cmd: Command, limit: Duration) -> Finished {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let what = format!(
        "{} {}",
        Path::new(&program).file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
        args.join(" ")
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_bounded(&mut child, limit, &what);
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    Finished { status, stdout, stderr }
}

/// A minimal HTTP/1.1 POST of a JSON body over loopback: the status code and the body.
pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, Duration::from_secs(120), &request)
}

/// The value of the sample `series` (name with labels, exactly as written) in metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `series` in a metrics text, 0 when absent (a counter never incremented).
pub fn metric_or_zero(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

/// A node's metrics text.
pub fn metrics_of(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics") {
        Some((200, body)) => body,
        other => panic!("/metrics of {addr} answered {other:?}"),
    }
}

/// Prints a progress line with the seconds since `started`, so a test's output shows where its
/// time went.
pub fn step(started: std::time::Instant, what: &str) {
    println!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
}

/// `text` without ANSI colour sequences (the nodes' logs are coloured).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
