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

/// ggml's RPC client, asked to set a weight tensor above the hash threshold, sends nothing but
/// its hash when the server's cache holds a file of that name (as `cache::fill_from_gguf`
/// writes from a member's own copy of the model); a tensor not in the cache is sent whole, once,
/// and cached by the server. A real RPC server (a thread here, as a member runs it) behind a
/// proxy that counts the client's bytes.
#[test]
fn a_weight_in_the_members_cache_is_not_sent_again() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};

    use llama_cpp_sys_2 as sys;
    use quiver_engine::split::cache::{HASH_THRESHOLD, cache_name, fnv1a64};
    use quiver_engine::split::rpc;

    unsafe extern "C" {
        fn ggml_backend_rpc_buffer_type(
            endpoint: *const std::ffi::c_char,
            device: u32,
        ) -> sys::ggml_backend_buffer_type_t;
    }

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("127.0.0.1:{port}");
    let (ep, cache_dir) = (server.clone(), cache.clone());
    std::thread::spawn(move || rpc::serve_forever(&ep, &cache_dir, 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&server).is_err() {
        assert!(std::time::Instant::now() < deadline, "the RPC server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let bytes_of = |seed: f32| -> Vec<u8> { (0..floats).flat_map(|i| (i as f32 * seed).to_le_bytes()).collect() };
    let (held, new) = (bytes_of(0.5), bytes_of(-0.25));
    // The member's own copy put `held` in the cache.
    std::fs::write(cache.join(cache_name(fnv1a64(&held))), &held).unwrap();

    let endpoint = std::ffi::CString::new(proxy_addr).unwrap();
    // SAFETY: ggml's C API on objects made here; the server runs for the rest of the process.
    unsafe {
        let buft = ggml_backend_rpc_buffer_type(endpoint.as_ptr(), 0);
        assert!(!buft.is_null());
        let params = sys::ggml_init_params {
            mem_size: sys::ggml_tensor_overhead() * 4,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        let ctx = sys::ggml_init(params);
        let a = sys::ggml_new_tensor_1d(ctx, sys::GGML_TYPE_F32, floats as i64);
        let b = sys::ggml_new_tensor_1d(ctx, sys::GGML_TYPE_F32, floats as i64);
        let buffer = sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft);
        assert!(!buffer.is_null());
        sys::ggml_backend_buffer_set_usage(buffer, sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

        let before = sent.load(Ordering::SeqCst);
        sys::ggml_backend_tensor_set(a, held.as_ptr().cast(), 0, held.len());
        // A small read after it: everything the set sent has gone through by its answer.
        let mut probe = [0u8; 4];
        sys::ggml_backend_tensor_get(a, probe.as_mut_ptr().cast(), 0, 4);
        let cached_cost = sent.load(Ordering::SeqCst) - before;
        assert!(cached_cost < 4096, "a cached weight cost {cached_cost} bytes to set");

        let before = sent.load(Ordering::SeqCst);
        sys::ggml_backend_tensor_set(b, new.as_ptr().cast(), 0, new.len());
        // Setting does not wait for the server; reading back does, and comes after it.
        let mut back_b = vec![0u8; new.len()];
        sys::ggml_backend_tensor_get(b, back_b.as_mut_ptr().cast(), 0, back_b.len());
        assert!(back_b == new, "the sent weight's bytes on the server");
        let uncached_cost = sent.load(Ordering::SeqCst) - before;
        assert!(uncached_cost >= new.len() as u64, "a weight not in the cache is sent whole ({uncached_cost} bytes)");
        assert_eq!(std::fs::read(cache.join(cache_name(fnv1a64(&new)))).unwrap(), new, "and cached by the server");

        // What the server holds is what was meant: read both back.
        let mut back = vec![0u8; held.len()];
        sys::ggml_backend_tensor_get(a, back.as_mut_ptr().cast(), 0, back.len());
        assert!(back == held, "the cached weight's bytes on the server");
        sys::ggml_backend_buffer_free(buffer);
        sys::ggml_free(ctx);
    }
}
