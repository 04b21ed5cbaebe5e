//! The hedge race with scripted attempts: each side streams into its channel on cue, so the
//! orderings that matter (one side finishing within one poll of the other taking the lead)
//! happen every run instead of by chance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::{FinishReason, Usage};
use quiver_net::PeerId;
use quiver_reputation::Offence;
use tokio::sync::{Notify, mpsc};

use super::{Charge, Run, Side, race};
use crate::client::{AttemptError, Delivery, InferError, InferenceResult, ReceiptInfo, Route, StreamEvent, Timing};

type Events = mpsc::Sender<Result<StreamEvent, InferError>>;

fn result(text: &str) -> InferenceResult {
    InferenceResult {
        text: text.into(),
        logprobs: Vec::new(),
        usage: Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 0 },
        finish_reason: FinishReason::Stop,
        provider: PeerId::random(),
        route: Route::Direct,
        attempts: 1,
        receipt: ReceiptInfo {
            request_id: String::new(),
            provider: String::new(),
            model_sha256: String::new(),
            prompt_hash: String::new(),
            output_hash: String::new(),
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 0,
            engine_build: String::new(),
            threads: 1,
            finish_reason: "stop".into(),
            timestamp_ms: 0,
            logprobs_hash: String::new(),
            signed: String::new(),
            verified: true,
        },
        timing: Timing::default(),
        cached: false,
        verified_by: Vec::new(),
    }
}

/// An attempt that waits for `cue` (when given), then streams `tokens` and ends with `end`, all
/// in one poll once cued; it notifies `done` as it ends.
async fn scripted(
    tx: Events,
    first: Option<&'static str>,
    cue: Option<Arc<Notify>>,
    rest: &'static [&'static str],
    end: Result<&'static str, (Offence, &'static str)>,
    done: Arc<Notify>,
) -> Run {
    if let Some(t) = first {
        let _ = tx.send(Ok(StreamEvent::Token(t.into()))).await;
    }
    if let Some(cue) = cue {
        cue.notified().await;
    }
    for t in rest {
        let _ = tx.send(Ok(StreamEvent::Token((*t).into()))).await;
    }
    done.notify_one();
    let result = match end {
        Ok(text) => Ok(result(text)),
        Err((offence, why)) => Err(AttemptError::Retry(offence, why.into())),
    };
    (result, None)
}

fn tokens(rx: &mut mpsc::Receiver<Result<StreamEvent, InferError>>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Ok(StreamEvent::Token(t)) = event {
            out.push(t);
        }
    }
    out
}

fn delivery(tx: &Events) -> Delivery<'_> {
    Delivery { tx, text: String::new(), model_sha256: None, started: Instant::now(), first_token: None }
}

/// The race condition hedging must never lose: the hedge streams first and takes the lead,
/// then the late primary's whole answer arrives and its attempt ends in the same poll. The
/// caller gets the hedge's text alone; none of the primary's bytes are spliced into it.
#[tokio::test]
async fn a_primary_finishing_right_after_losing_the_lead_is_not_spliced_in() {
    let (caller_tx, mut caller_rx) = mpsc::channel(64);
    let (tx_a, rx_a) = mpsc::channel(64);
    let (tx_b, rx_b) = mpsc::channel(64);
    let (primary_go, backup_go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (primary_done, backup_done) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let primary = scripted(
        tx_a,
        None,
        Some(primary_go.clone()),
        &["Primary ", "answer."],
        Ok("Primary answer."),
        primary_done.clone(),
    );
    let backup =
        scripted(tx_b, Some("Hedge "), Some(backup_go.clone()), &["answer."], Ok("Hedge answer."), backup_done);
    let mut d = delivery(&caller_tx);
    let driver = async {
        // The hedge's first token reached the caller: it leads. Now the primary streams all
        // it has and ends, in one poll; then the hedge finishes.
        let first = caller_rx.recv().await;
        assert!(matches!(first, Some(Ok(StreamEvent::Token(ref t))) if t == "Hedge "), "{first:?}");
        primary_go.notify_one();
        primary_done.notified().await;
        tokio::task::yield_now().await;
        backup_go.notify_one();
    };
    let (end, ()) = tokio::join!(race(primary, || Some(backup), Duration::ZERO, rx_a, rx_b, &mut d), driver);
    assert_eq!(end.side, Side::Backup);
    assert_eq!(end.result.as_ref().map(|r| r.text.as_str()).ok(), Some("Hedge answer."));
    assert_eq!(tokens(&mut caller_rx), ["answer."], "after the hedge's first token, only its own");
    assert_eq!(d.text, "Hedge answer.");
    assert!(end.charges.is_empty(), "the primary streamed, late: not at fault ({:?})", end.charges);
}

/// The mirror case: the primary's first token comes while the hedge is starting; the hedge is
/// dropped and only the primary's text reaches the caller.
#[tokio::test]
async fn a_primary_that_streams_first_keeps_the_lead() {
    let (caller_tx, mut caller_rx) = mpsc::channel(64);
    let (tx_a, rx_a) = mpsc::channel(64);
    let (tx_b, rx_b) = mpsc::channel(64);
    let never = Arc::new(Notify::new());
    let primary = scripted(tx_a, Some("One"), None, &[" two"], Ok("One two"), Arc::new(Notify::new()));
    let backup = scripted(tx_b, None, Some(never), &["Other"], Ok("Other"), Arc::new(Notify::new()));
    let mut d = delivery(&caller_tx);
    let end = race(primary, || Some(backup), Duration::from_secs(3600), rx_a, rx_b, &mut d).await;
    assert_eq!(end.side, Side::Primary);
    assert!(end.backup_started.is_none(), "no hedge before the delay");
    assert_eq!(tokens(&mut caller_rx), ["One", " two"]);
}

/// A primary that fails before streaming, while the hedge runs, is charged for its own
/// failure and the hedge's answer is the result; a primary that never streams while the hedge
/// serves the whole request is charged for the missing first token.
#[tokio::test]
async fn faults_are_charged_to_the_side_that_made_them() {
    let (caller_tx, mut caller_rx) = mpsc::channel(64);
    let (tx_a, rx_a) = mpsc::channel(64);
    let (tx_b, rx_b) = mpsc::channel(64);
    let (go, backup_go, primary_done) = (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()));
    let primary = scripted(tx_a, None, Some(go.clone()), &[], Err((Offence::Timeout, "stalled")), primary_done.clone());
    let backup = scripted(tx_b, None, Some(backup_go.clone()), &["Fine"], Ok("Fine"), Arc::new(Notify::new()));
    let mut d = delivery(&caller_tx);
    // The primary fails once the hedge has started, before anyone streamed; then the hedge
    // answers.
    let start_backup = || {
        go.notify_one();
        Some(backup)
    };
    let driver = async {
        primary_done.notified().await;
        tokio::task::yield_now().await;
        backup_go.notify_one();
    };
    let (end, ()) = tokio::join!(race(primary, start_backup, Duration::ZERO, rx_a, rx_b, &mut d), driver);
    assert_eq!(end.side, Side::Backup);
    assert_eq!(tokens(&mut caller_rx), ["Fine"]);
    assert!(
        matches!(end.charges.as_slice(), [Charge::Failed(Side::Primary, Offence::Timeout, _)]),
        "{:?}",
        end.charges
    );

    let (tx_a, rx_a) = mpsc::channel(64);
    let (tx_b, rx_b) = mpsc::channel(64);
    let silent = scripted(tx_a, None, Some(Arc::new(Notify::new())), &[], Ok("never"), Arc::new(Notify::new()));
    let backup = scripted(tx_b, Some("Whole"), None, &[], Ok("Whole"), Arc::new(Notify::new()));
    let end = race(silent, || Some(backup), Duration::ZERO, rx_a, rx_b, &mut d).await;
    assert_eq!(end.side, Side::Backup);
    assert!(matches!(end.charges.as_slice(), [Charge::NoFirstToken]), "{:?}", end.charges);
}
