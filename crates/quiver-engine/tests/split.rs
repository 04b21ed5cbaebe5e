//! The engine worker's protocol (`quiver_engine::split`): a real engine behind
//! [`worker::serve_io`], reached through [`WorkerEngine`] over an in-memory pipe. The split
//! placement itself runs across processes in `quiver-cli`'s `split` process test.

use std::sync::Arc;
use std::time::Duration;

use quiver_engine::split::process::WorkerEngine;
use quiver_engine::split::worker;
use quiver_engine::{Engine, EngineError, GenEvent, GenerateRequest, Input};
use tokio::io::BufReader;
use tokio::sync::{mpsc, watch};

use crate::llama::{chat, greedy, own_engine, run};

/// A worker serving `engine` over a pipe; the handle ends it (its output closes, as when the
/// process dies) and says why through `exited`.
struct Pipe {
    engine: WorkerEngine,
    /// The worker's own runtime: shutting it down drops all its tasks and its ends of the pipe,
    /// as a process's death does.
    worker: Option<tokio::runtime::Runtime>,
    exited: watch::Sender<Option<String>>,
}

impl Pipe {
    /// The worker dies: everything it ran stops, its ends of the pipe close.
    fn kill(&mut self) {
        if let Some(rt) = self.worker.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(engine: Arc<quiver_engine::llama::LlamaEngine>) -> Pipe {
    let (parent, child) = tokio::io::duplex(1 << 20);
    let (child_read, child_write) = tokio::io::split(child);
    let (parent_read, parent_write) = tokio::io::split(parent);
    let id = engine.model().clone();
    let worker = runtime();
    worker.spawn(async move {
        let _ = worker::serve_io(engine, BufReader::new(child_read), child_write).await;
    });
    let (exited, exited_rx) = watch::channel(None);
    let (kill, _kill_rx) = mpsc::channel(1);
    let engine = tokio::time::timeout(
        Duration::from_secs(30),
        WorkerEngine::connect(BufReader::new(parent_read), parent_write, id, exited_rx, kill),
    )
    .await
    .expect("the worker says it is loaded")
    .expect("connects");
    Pipe { engine, worker: Some(worker), exited }
}

/// A raw continuation the model keeps going with until `max_tokens`.
fn counting() -> GenerateRequest {
    GenerateRequest::new(Input::Prompt("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,".into()), greedy(2000))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_worker_answers_as_its_engine_does() {
    let engine = Arc::new(own_engine(2));
    let direct = run(engine.generate(chat("Name a colour.", greedy(16))).unwrap());
    let rt = runtime();
    let through = rt.block_on(async {
        let pipe = connect(Arc::clone(&engine)).await;
        assert_eq!(pipe.engine.build_id(), engine.build_id());
        assert_eq!((pipe.engine.threads(), pipe.engine.context_size()), (engine.threads(), engine.context_size()));
        assert!(pipe.engine.ready());
        let mut g = pipe.engine.generate(chat("Name a colour.", greedy(16))).unwrap();
        let mut text = String::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(60), g.next()).await.expect("an event in time") {
                Some(Ok(GenEvent::Token { text: t, .. })) => text.push_str(&t),
                Some(Ok(GenEvent::Done { usage, .. })) => break (text, usage),
                Some(Ok(GenEvent::Logprob(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(through.0, direct.text, "the same greedy text through the worker");
    assert_eq!(
        (through.1.prompt_tokens, through.1.completion_tokens),
        (direct.usage.prompt_tokens, direct.usage.completion_tokens)
    );
}

#[test]
fn a_dropped_generation_is_cancelled_in_the_worker() {
    let engine = Arc::new(own_engine(2));
    let rt = runtime();
    rt.block_on(async {
        let pipe = connect(Arc::clone(&engine)).await;
        let mut g = pipe.engine.generate(counting()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(60), g.next()).await.expect("a first event");
        assert!(matches!(first, Some(Ok(GenEvent::Token { .. }))), "{first:?}");
        assert_eq!(engine.running_generations(), 1);
        drop(g);
        // The worker hears of it with the next event and drops the engine's generation.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while engine.running_generations() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the generation still runs in the worker");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pipe.engine.in_flight(), 0);
    });
}

#[test]
fn a_worker_that_dies_fails_its_generations_and_refuses_new_ones() {
    let engine = Arc::new(own_engine(2));
    let rt = runtime();
    rt.block_on(async {
        let mut pipe = connect(Arc::clone(&engine)).await;
        let mut g = pipe.engine.generate(counting()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(60), g.next()).await.expect("a first event");
        assert!(matches!(first, Some(Ok(GenEvent::Token { .. }))), "{first:?}");
        // The process dies: its output ends and its exit status is known.
        pipe.kill();
        let _ = pipe.exited.send(Some("the engine worker exited (signal: 6 (SIGABRT))".into()));
        let failed = loop {
            match tokio::time::timeout(Duration::from_secs(30), g.next()).await.expect("the generation ends in time") {
                Some(Ok(GenEvent::Token { .. } | GenEvent::Logprob(_))) => continue,
                other => break other,
            }
        };
        match failed {
            Some(Err(EngineError::Inference(why))) => assert!(why.contains("SIGABRT"), "{why}"),
            other => panic!("expected the generation to fail, got {other:?}"),
        }
        assert!(!pipe.engine.ready() && !pipe.engine.alive());
        assert!(pipe.engine.generate(chat("Hello", greedy(4))).is_err(), "a dead worker takes no work");
        assert_eq!(pipe.engine.ended().await, "the engine worker exited (signal: 6 (SIGABRT))");
    });
}

unsafe extern "C" {
    fn ggml_backend_rpc_buffer_type(
        endpoint: *const std::ffi::c_char,
        device: u32,
    ) -> llama_cpp_sys_2::ggml_backend_buffer_type_t;
}

/// A real ggml RPC server (a thread here, as a member runs it) caching in a new directory: the
/// directory (removed on drop), its cache and the server's endpoint once it listens.
fn rpc_server() -> (tempfile::TempDir, std::path::PathBuf, String) {
    use std::net::{TcpListener, TcpStream};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("127.0.0.1:{port}");
    let (ep, cache_dir) = (server.clone(), cache.clone());
    std::thread::spawn(move || quiver_engine::split::rpc::serve_forever(&ep, &cache_dir, 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&server).is_err() {
        assert!(std::time::Instant::now() < deadline, "the RPC server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, cache, server)
}

/// `n` f32 weights made from `seed`, as bytes.
fn weight_bytes(n: usize, seed: f32) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32 * seed).to_le_bytes()).collect()
}

/// Weight tensors of `sizes` floats each, allocated on the RPC server behind `endpoint` (ggml's
/// own client), set and read back.
struct RemoteWeights {
    ctx: *mut llama_cpp_sys_2::ggml_context,
    buffer: llama_cpp_sys_2::ggml_backend_buffer_t,
    tensors: Vec<*mut llama_cpp_sys_2::ggml_tensor>,
}

impl RemoteWeights {
    fn new(endpoint: &str, sizes: &[usize]) -> RemoteWeights {
        use llama_cpp_sys_2 as sys;
        let endpoint = std::ffi::CString::new(endpoint).unwrap();
        // SAFETY: ggml's C API on objects made here; the server runs for the rest of the process.
        unsafe {
            let buft = ggml_backend_rpc_buffer_type(endpoint.as_ptr(), 0);
            assert!(!buft.is_null());
            let params = sys::ggml_init_params {
                mem_size: sys::ggml_tensor_overhead() * (sizes.len() + 1),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            };
            let ctx = sys::ggml_init(params);
            let tensors = sizes.iter().map(|&n| sys::ggml_new_tensor_1d(ctx, sys::GGML_TYPE_F32, n as i64)).collect();
            let buffer = sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft);
            assert!(!buffer.is_null());
            sys::ggml_backend_buffer_set_usage(buffer, sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            RemoteWeights { ctx, buffer, tensors }
        }
    }

    /// Sets tensor `i` and waits until the server has it (a small read after it).
    fn set(&self, i: usize, bytes: &[u8]) {
        // SAFETY: `bytes` holds exactly the tensor's size (checked by ggml).
        unsafe {
            llama_cpp_sys_2::ggml_backend_tensor_set(self.tensors[i], bytes.as_ptr().cast(), 0, bytes.len());
            let mut probe = [0u8; 4];
            llama_cpp_sys_2::ggml_backend_tensor_get(self.tensors[i], probe.as_mut_ptr().cast(), 0, 4);
        }
    }

    fn get(&self, i: usize, len: usize) -> Vec<u8> {
        let mut back = vec![0u8; len];
        // SAFETY: as in `set`.
        unsafe { llama_cpp_sys_2::ggml_backend_tensor_get(self.tensors[i], back.as_mut_ptr().cast(), 0, len) };
        back
    }
}

impl Drop for RemoteWeights {
    fn drop(&mut self) {
        // SAFETY: made in `new`, freed once.
        unsafe {
            llama_cpp_sys_2::ggml_backend_buffer_free(self.buffer);
            llama_cpp_sys_2::ggml_free(self.ctx);
        }
    }
}

/// ggml's RPC client, asked to set a weight tensor above the hash threshold, sends nothing but
/// its hash when the server's cache holds a file of that name (as `cache::fill_from_gguf`
/// writes from a member's own copy of the model); a tensor not in the cache is sent whole, once,
/// and cached by the server. A real RPC server behind a proxy that counts the client's bytes.
#[test]
fn a_weight_in_the_members_cache_is_not_sent_again() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};

    use quiver_engine::split::cache::{HASH_THRESHOLD, cache_name, fnv1a64};

    let (_dir, cache, server) = rpc_server();
    // The proxy: each connection carried to the server (which serves one at a time, so a closed
    // side closes the other), the client's bytes counted.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&sent);
    std::thread::spawn(move || {
        let carry = |mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>| {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if let Some(c) = &count {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        };
        for client in proxy.incoming() {
            let Ok(client) = client else { break };
            let upstream = TcpStream::connect(&server).unwrap();
            let (c2, u2, count) = (client.try_clone().unwrap(), upstream.try_clone().unwrap(), Arc::clone(&counted));
            std::thread::spawn(move || carry(c2, u2, Some(count)));
            std::thread::spawn(move || carry(upstream, client, None));
        }
    });

    let floats = ((HASH_THRESHOLD + (1 << 20)) / 4) as usize;
    let (held, new) = (weight_bytes(floats, 0.5), weight_bytes(floats, -0.25));
    // The member's own copy put `held` in the cache.
    std::fs::write(cache.join(cache_name(fnv1a64(&held))), &held).unwrap();

    let remote = RemoteWeights::new(&proxy_addr, &[floats, floats]);
    let before = sent.load(Ordering::SeqCst);
    remote.set(0, &held);
    let cached_cost = sent.load(Ordering::SeqCst) - before;
    assert!(cached_cost < 4096, "a cached weight cost {cached_cost} bytes to set");

    let before = sent.load(Ordering::SeqCst);
    remote.set(1, &new);
    assert!(remote.get(1, new.len()) == new, "the sent weight's bytes on the server");
    let uncached_cost = sent.load(Ordering::SeqCst) - before;
    assert!(uncached_cost >= new.len() as u64, "a weight not in the cache is sent whole ({uncached_cost} bytes)");
    assert_eq!(std::fs::read(cache.join(cache_name(fnv1a64(&new)))).unwrap(), new, "and cached by the server");
    // What the server holds is what was meant.
    assert!(remote.get(0, held.len()) == held, "the cached weight's bytes on the server");
}

/// The head's relay offers by hash the weights ggml's client would send whole (those below its
/// threshold): one the member holds costs an offer; one it lacks is sent once, kept, and costs
/// an offer the next time; what the server holds is what the client set. The relay's counters
/// say so, including a big weight ggml's client offered itself. A real RPC server behind
/// `relay::relay`, with ggml's own client.
#[test]
fn the_heads_relay_offers_small_weights_by_hash_too() {
    use quiver_engine::split::cache::{HASH_THRESHOLD, cache_name, fnv1a64};
    use quiver_engine::split::relay::{self, Traffic};
    use std::sync::atomic::Ordering;

    let (_dir, cache, server) = rpc_server();
    let traffic = Arc::new(Traffic::default());
    let rt = runtime();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let relay_addr = listener.local_addr().unwrap().to_string();
    let t = Arc::clone(&traffic);
    rt.spawn(async move {
        while let Ok((worker, _)) = listener.accept().await {
            let member = tokio::net::TcpStream::connect(&server).await.unwrap();
            let t = Arc::clone(&t);
            tokio::spawn(async move { relay::relay(worker, member, &t, Duration::ZERO).await });
        }
    });

    let small = (256 << 10) / 4; // 256 KiB: below ggml's threshold, above the relay's minimum
    let big = ((HASH_THRESHOLD + (1 << 20)) / 4) as usize;
    let (held, new, held_big) = (weight_bytes(small, 0.5), weight_bytes(small, -0.25), weight_bytes(big, 0.125));
    for bytes in [&held, &held_big] {
        std::fs::write(cache.join(cache_name(fnv1a64(bytes))), bytes).unwrap();
    }
    let remote = RemoteWeights::new(&relay_addr, &[small, small, big, small]);

    traffic.begin_load();
    let before = traffic.sent.load(Ordering::Relaxed);
    remote.set(0, &held);
    let cost = traffic.sent.load(Ordering::Relaxed) - before;
    assert!(cost < 4096, "a held weight below ggml's threshold cost {cost} bytes to set");
    assert_eq!(traffic.weights_cached.load(Ordering::Relaxed), held.len() as u64);

    let before = traffic.sent.load(Ordering::Relaxed);
    remote.set(1, &new);
    let cost = traffic.sent.load(Ordering::Relaxed) - before;
    assert!(cost >= new.len() as u64, "a weight the member lacks is sent whole ({cost} bytes)");
    assert_eq!(std::fs::read(cache.join(cache_name(fnv1a64(&new)))).unwrap(), new, "and kept by the member");
    assert_eq!(traffic.weights_sent.load(Ordering::Relaxed), new.len() as u64);

    remote.set(2, &held_big);
    assert_eq!(
        traffic.weights_cached.load(Ordering::Relaxed),
        (held.len() + held_big.len()) as u64,
        "the big weight ggml's client offered itself counts as cached"
    );

    // The next load: the weight sent once is not sent again.
    traffic.begin_load();
    let before = traffic.sent.load(Ordering::Relaxed);
    remote.set(3, &new);
    let cost = traffic.sent.load(Ordering::Relaxed) - before;
    assert!(cost < 4096, "a weight kept from the last load cost {cost} bytes");
    assert_eq!(traffic.weights_sent.load(Ordering::Relaxed), 0);
    traffic.end_load();

    for (i, bytes) in [(0, &held), (1, &new), (2, &held_big), (3, &new)] {
        assert!(remote.get(i, bytes.len()) == *bytes, "tensor {i} holds what was set");
    }
    // Once loaded, nothing is offered: a set goes whole.
    let before = traffic.sent.load(Ordering::Relaxed);
    remote.set(0, &held);
    assert!(traffic.sent.load(Ordering::Relaxed) - before >= held.len() as u64);
}
