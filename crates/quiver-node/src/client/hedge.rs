//! Hedging: a second provider started when the first one's first token is late.

use super::*;

impl Node {
    /// When to start a second provider if `peer` has not streamed its first token: its own
    /// p95 time to first token, once known.
    pub(super) fn hedge_delay(&self, peer: PeerId) -> Option<Duration> {
        let p95 = self.with_reputation(|r, now| r.snapshot(peer, now).and_then(|v| v.ttft_p95_ms))?;
        Some(Duration::from_secs_f64(p95 / 1000.0).clamp(MIN_HEDGE_DELAY, FIRST_FRAME_TIMEOUT))
    }

    /// Runs `primary`, and `backup` too if no token came from `primary` within `delay` (see
    /// [`race`]), then charges what the race found against the loser.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt_hedged(
        &self,
        primary: Candidate,
        backup: Candidate,
        delay: Duration,
        request: &InferRequest,
        delivery: &mut Delivery<'_>,
        tried: &mut HashSet<PeerId>,
        attempts: u32,
    ) -> Outcome {
        let (tx_a, rx_a) = mpsc::channel(64);
        let (tx_b, rx_b) = mpsc::channel(64);
        let (started, sha) = (delivery.started, delivery.model_sha256.clone());
        // Each side streams into its own channel; only the leader's tokens reach the caller.
        let run = |candidate: &Candidate, tx, attempts| {
            let candidate = candidate.clone();
            let sha = sha.clone();
            async move {
                let mut d = Delivery { tx, text: String::new(), model_sha256: sha, started, first_token: None };
                let result = self.attempt(&candidate, request, &mut d, attempts).await;
                (result, d.model_sha256)
            }
        };
        let a_started = Instant::now();
        let start_backup = || {
            if !tried.insert(backup.peer) {
                return None;
            }
            info!(slow = %primary.peer, hedge = %backup.peer, ?delay, "first token late; hedging");
            self.with_reputation(|r, now| r.note_routed(backup.peer, now));
            Some(run(&backup, &tx_b, attempts + 1))
        };
        let end = race(run(&primary, &tx_a, attempts), start_backup, delay, rx_a, rx_b, delivery).await;
        for charge in end.charges {
            match charge {
                Charge::Failed(side, offence, reason) => {
                    let loser = if side == Side::Primary { &primary } else { &backup };
                    self.attempt_failed(loser, offence, &reason).await;
                }
                Charge::NoFirstToken => {
                    info!(late = %primary.peer, "no first token while the hedge served the whole request");
                    self.record_offence(primary.peer, Offence::Timeout, false).await;
                }
            }
        }
        delivery.model_sha256 = delivery.model_sha256.take().or(end.model);
        match end.side {
            Side::Primary => Outcome { candidate: primary, started: a_started, result: end.result },
            Side::Backup => {
                Outcome { candidate: backup, started: end.backup_started.unwrap_or(a_started), result: end.result }
            }
        }
    }
}

/// Which attempt of a hedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Primary,
    Backup,
}

/// A fault a hedge race found, charged once it is over.
#[derive(Debug)]
pub(super) enum Charge {
    /// This side failed (not merely outrun).
    Failed(Side, Offence, String),
    /// The primary sent no first token while the backup served the whole request.
    NoFirstToken,
}

/// How a hedge race ended: whose result it is, the model file its provider served, and the
/// faults found on the way.
pub(super) struct RaceEnd {
    pub(super) side: Side,
    pub(super) result: Result<InferenceResult, AttemptError>,
    pub(super) model: Option<Vec<u8>>,
    pub(super) charges: Vec<Charge>,
    pub(super) backup_started: Option<Instant>,
}

/// What one attempt of a race returns: its result and the model file its provider served.
pub(super) type Run = (Result<InferenceResult, AttemptError>, Option<Vec<u8>>);

/// Runs `primary`, and the attempt `start_backup` gives (if any) too when no token came from
/// `primary` within `delay`. Each attempt streams into its own channel (`rx_a`, `rx_b`). The
/// first to stream a token leads, and from then on only the leader's events reach the caller:
/// exactly one attempt's text, from the first byte on, even when the other finishes at once
/// after losing the lead. A losing backup is cancelled at once; a losing primary runs on unheard
/// until its first token (then it is cancelled: late, not at fault) or until the backup has
/// served the whole request (then it is charged [`Charge::NoFirstToken`]). One that fails before
/// streaming leaves the field to the other.
pub(super) async fn race<A, B>(
    primary: A,
    start_backup: impl FnOnce() -> Option<B>,
    delay: Duration,
    mut rx_a: mpsc::Receiver<Result<StreamEvent, InferError>>,
    mut rx_b: mpsc::Receiver<Result<StreamEvent, InferError>>,
    delivery: &mut Delivery<'_>,
) -> RaceEnd
where
    A: Future<Output = Run>,
    B: Future<Output = Run>,
{
    let mut start_backup = Some(start_backup);
    let mut backup_started = None;
    let mut charges = Vec::new();
    let mut fa = Some(Box::pin(primary));
    let mut fb: Option<std::pin::Pin<Box<B>>> = None;
    let hedge_timer = tokio::time::sleep(delay);
    tokio::pin!(hedge_timer);
    let mut hedged = false;
    let mut leader: Option<Side> = None;
    macro_rules! end {
        ($side:expr, $result:expr, $model:expr) => {
            return RaceEnd { side: $side, result: $result, model: $model, charges, backup_started }
        };
    }
    loop {
        if fa.is_none() && fb.is_none() {
            end!(Side::Primary, Err(AttemptError::Gone), None);
        }
        tokio::select! {
            Some(ev) = rx_a.recv(), if leader != Some(Side::Backup) || fa.is_some() => {
                if leader == Some(Side::Backup) {
                    // Outrun, but it did stream: late, not at fault. Its text goes nowhere.
                    fa = None;
                    continue;
                }
                leader = Some(Side::Primary);
                fb = None;
                if !forward(delivery, ev).await {
                    end!(Side::Primary, Err(AttemptError::Gone), None);
                }
            }
            Some(ev) = rx_b.recv(), if leader != Some(Side::Primary) => {
                if leader.is_none() {
                    debug!("the hedge streamed first");
                }
                leader = Some(Side::Backup);
                if !forward(delivery, ev).await {
                    end!(Side::Backup, Err(AttemptError::Gone), None);
                }
            }
            () = &mut hedge_timer, if !hedged && leader.is_none() => {
                hedged = true;
                if let Some(backup) = start_backup.take().and_then(|start| start()) {
                    backup_started = Some(Instant::now());
                    fb = Some(Box::pin(backup));
                }
            }
            Some((result, model)) = futures::future::OptionFuture::from(fa.as_mut()), if fa.is_some() => {
                fa = None;
                // What it sent last goes on only if it leads (or nobody does yet): once the
                // hedge leads, the primary's text must never reach the caller.
                while leader != Some(Side::Backup)
                    && let Ok(ev) = rx_a.try_recv()
                {
                    leader = Some(Side::Primary);
                    if !forward(delivery, ev).await {
                        end!(Side::Primary, Err(AttemptError::Gone), None);
                    }
                }
                match result {
                    // Outrun by the hedge: only a real failure counts against it.
                    result if leader == Some(Side::Backup) => {
                        if let Err(AttemptError::Retry(offence, reason)) = result {
                            charges.push(Charge::Failed(Side::Primary, offence, reason));
                        }
                    }
                    Err(AttemptError::Retry(offence, reason)) if leader.is_none() && fb.is_some() => {
                        charges.push(Charge::Failed(Side::Primary, offence, reason));
                    }
                    result => end!(Side::Primary, result, model),
                }
            }
            Some((result, model)) = futures::future::OptionFuture::from(fb.as_mut()), if fb.is_some() => {
                fb = None;
                while leader != Some(Side::Primary)
                    && let Ok(ev) = rx_b.try_recv()
                {
                    leader = Some(Side::Backup);
                    if !forward(delivery, ev).await {
                        end!(Side::Backup, Err(AttemptError::Gone), None);
                    }
                }
                match result {
                    Err(AttemptError::Retry(offence, reason)) if leader.is_none() && fa.is_some() => {
                        charges.push(Charge::Failed(Side::Backup, offence, reason));
                    }
                    result => {
                        if leader == Some(Side::Backup) && fa.is_some() {
                            // A whole job elsewhere and still no first token: a fault.
                            charges.push(Charge::NoFirstToken);
                        }
                        end!(Side::Backup, result, model);
                    }
                }
            }
        }
    }
}

/// Passes one event of the leading attempt of a hedge on to the caller; false when the caller
/// is gone.
pub(super) async fn forward(delivery: &mut Delivery<'_>, event: Result<StreamEvent, InferError>) -> bool {
    if let Ok(StreamEvent::Token(t)) = &event {
        let started = delivery.started;
        delivery.first_token.get_or_insert_with(|| started.elapsed());
        delivery.text.push_str(t);
    }
    delivery.tx.send(event).await.is_ok()
}

#[cfg(test)]
#[path = "../tests/hedge.rs"]
mod tests;
