//! Hedging: a second provider started when the first one's first token is late.

use super::*;

impl Node {
    /// When to start a second provider if `peer` has not streamed its first token: its own
    /// p95 time to first token, once known.
    pub(super) fn hedge_delay(&self, peer: PeerId) -> Option<Duration> {
        let p95 = self.with_reputation(|r, now| r.snapshot(peer, now).and_then(|v| v.ttft_p95_ms))?;
        Some(Duration::from_secs_f64(p95 / 1000.0).clamp(MIN_HEDGE_DELAY, FIRST_FRAME_TIMEOUT))
    }

    /// Runs `primary`, and `backup` too if no token came from `primary` within `delay`. The
    /// first to stream a token wins. A losing backup is cancelled at once; a losing primary runs
    /// on unheard until its first token (then it is cancelled: late, not at fault) or until the
    /// backup has served the whole request (then it is penalised as timed out). One that fails
    /// before streaming leaves the field to the other.
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
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Side {
            Primary,
            Backup,
        }
        let (tx_a, mut rx_a) = mpsc::channel(64);
        let (tx_b, mut rx_b) = mpsc::channel(64);
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
        let mut b_started = a_started;
        let mut fa = Some(Box::pin(run(&primary, &tx_a, attempts)));
        let mut fb = None;
        let hedge_timer = tokio::time::sleep(delay);
        tokio::pin!(hedge_timer);
        let mut hedged = false;
        let mut leader: Option<Side> = None;
        let gone = |candidate: Candidate, started| Outcome { candidate, started, result: Err(AttemptError::Gone) };
        loop {
            if fa.is_none() && fb.is_none() {
                return gone(primary, a_started);
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
                        return gone(primary, a_started);
                    }
                }
                Some(ev) = rx_b.recv(), if leader != Some(Side::Primary) => {
                    if leader.is_none() {
                        debug!(late = %primary.peer, hedge = %backup.peer, "the hedge streamed first");
                    }
                    leader = Some(Side::Backup);
                    if !forward(delivery, ev).await {
                        return gone(backup, b_started);
                    }
                }
                () = &mut hedge_timer, if !hedged && leader.is_none() => {
                    hedged = true;
                    if tried.insert(backup.peer) {
                        info!(slow = %primary.peer, hedge = %backup.peer, ?delay, "first token late; hedging");
                        self.with_reputation(|r, now| r.note_routed(backup.peer, now));
                        b_started = Instant::now();
                        fb = Some(Box::pin(run(&backup, &tx_b, attempts + 1)));
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
                            return gone(primary, a_started);
                        }
                    }
                    match result {
                        // Outrun by the hedge: only a real failure counts against it.
                        result if leader == Some(Side::Backup) => {
                            if let Err(AttemptError::Retry(offence, reason)) = result {
                                self.attempt_failed(&primary, offence, &reason).await;
                            }
                        }
                        Err(AttemptError::Retry(offence, reason)) if leader.is_none() && fb.is_some() => {
                            self.attempt_failed(&primary, offence, &reason).await;
                        }
                        result => {
                            delivery.model_sha256 = delivery.model_sha256.take().or(model);
                            return Outcome { candidate: primary, started: a_started, result };
                        }
                    }
                }
                Some((result, model)) = futures::future::OptionFuture::from(fb.as_mut()), if fb.is_some() => {
                    fb = None;
                    while leader != Some(Side::Primary)
                        && let Ok(ev) = rx_b.try_recv()
                    {
                        leader = Some(Side::Backup);
                        if !forward(delivery, ev).await {
                            return gone(backup, b_started);
                        }
                    }
                    match result {
                        Err(AttemptError::Retry(offence, reason)) if leader.is_none() && fa.is_some() => {
                            self.attempt_failed(&backup, offence, &reason).await;
                        }
                        result => {
                            if leader == Some(Side::Backup) && fa.is_some() {
                                // A whole job elsewhere and still no first token: a fault.
                                info!(late = %primary.peer, "no first token while the hedge served the whole request");
                                self.record_offence(primary.peer, Offence::Timeout, false).await;
                            }
                            delivery.model_sha256 = delivery.model_sha256.take().or(model);
                            return Outcome { candidate: backup, started: b_started, result };
                        }
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
