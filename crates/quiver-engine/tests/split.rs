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
