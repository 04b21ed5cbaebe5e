//! Verification: the same request re-run on other providers, and their verdict.
//!
//! Who may vote and how votes count:
//! - Results are compared only within one *class*: the same model file (sha256), engine build
//!   and thread count, which give the same text for the same greedy (or seeded) request. A
//!   provider of another class can neither confirm nor refute an answer; it can only give an
//!   answer of its own class that others of that class confirm. A class is the provider's word,
//!   so it is held to it: heartbeats announce each model's class, and one that contradicts a
//!   receipt signed by the same process is a `heartbeat_lie` (`crate::builds`).
//! - A vote weighs 1 from an established provider and ½ from a newcomer (a fresh identity is
//!   cheap: two of them confirming each other must not outweigh one established provider).
//! - An output is confirmed when at least two distinct providers of one class produced it and
//!   their weight is more than that of every other output of that class together.
//! - Voters are asked established first, newcomers only when the established ones did not
//!   decide; peers that are banned or failed this client lately do not vote. When the candidates
//!   at hand run out, the providers of the model are looked up again (DHT and heartbeats) and
//!   those not yet asked may vote. At most [`MAX_VOTES`] re-runs are spent on one answer.
//! - A re-run counts as a job served (a success in the client's record) only for voters whose
//!   output was confirmed; with nothing confirmed, nobody earns credit.
//! - Every provider of the confirmed output's class whose output differs is penalised
//!   (`failed_verification`).

use super::*;

/// Re-runs spent at most on verifying one answer.
const MAX_VOTES: usize = 4;
/// Weight of an established provider's result in a vote.
const ESTABLISHED_WEIGHT: f64 = 1.0;
/// Weight of a newcomer's result: less than an established provider's.
const NEWCOMER_WEIGHT: f64 = 0.5;

/// What re-running a result on other providers showed.
pub(super) enum Verdict {
    /// These providers produced the same output.
    Agreed(Vec<PeerId>),
    /// Nobody confirmed it or any other answer (why, for the caller).
    Unconfirmed(String),
    /// Others of its class agreed on another output: theirs (the first one's result, confirmed by
    /// the others). The original's provider was penalised.
    Outvoted(Box<InferenceResult>),
    /// The original could not be compared with anyone (no other provider of its class), but
    /// providers of another class confirmed an answer of their own: theirs. Nobody is penalised.
    Replaced(Box<InferenceResult>),
}

/// One result in a vote.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Vote {
    pub(super) provider: PeerId,
    /// Model file, engine build and threads: results compare only within one class.
    pub(super) class: (String, String, u32),
    pub(super) output: String,
    pub(super) weight: f64,
}

impl Vote {
    fn of(result: &InferenceResult, weight: f64) -> Vote {
        let r = &result.receipt;
        Vote {
            provider: result.provider,
            class: (r.model_sha256.clone(), r.engine_build.clone(), r.threads),
            output: r.output_hash.clone(),
            weight,
        }
    }
}

/// The index of the first vote for the output the votes confirm, if any (see the module docs).
pub(super) fn decide(votes: &[Vote]) -> Option<usize> {
    votes.iter().enumerate().find_map(|(i, v)| {
        let same = |o: &&Vote| o.class == v.class && o.output == v.output;
        let mut providers: Vec<PeerId> = votes.iter().filter(same).map(|o| o.provider).collect();
        providers.sort();
        providers.dedup();
        let weight = |pred: &dyn Fn(&Vote) -> bool| -> f64 {
            // Each provider counts once, whatever it sent.
            let mut seen = HashSet::new();
            votes.iter().filter(|o| pred(o) && seen.insert(o.provider)).map(|o| o.weight).sum()
        };
        let for_it = weight(&|o| o.class == v.class && o.output == v.output);
        let against = weight(&|o| o.class == v.class && o.output != v.output);
        (providers.len() >= 2 && for_it > against).then_some(i)
    })
}

impl Node {
    /// Verifies `original` by running the request again on other providers (`others` first, then
    /// providers looked up anew, never those in `tried`) until an output is confirmed or
    /// [`MAX_VOTES`] re-runs are spent. See the module docs for the rules.
    pub(super) async fn cross_check(
        &self,
        request: &InferenceRequest,
        original: &InferenceResult,
        others: Vec<Candidate>,
        tried: &HashSet<PeerId>,
        wire_request: &InferRequest,
    ) -> Verdict {
        // Re-runs are silent: their tokens go nowhere.
        let (sink, mut drain) = mpsc::channel(64);
        tokio::spawn(async move { while drain.recv().await.is_some() {} });
        let weight_of = |peer: PeerId| {
            self.with_reputation(|r, _| if r.is_newcomer(peer) { NEWCOMER_WEIGHT } else { ESTABLISHED_WEIGHT })
        };
        let mut results = vec![original.clone()];
        let mut votes = vec![Vote::of(original, weight_of(original.provider))];
        // What each re-run cost, credited once the vote is decided (the original's is the
        // caller's to credit).
        let mut runs_stats: Vec<Option<JobStats>> = vec![None];
        let mut asked: HashSet<PeerId> = tried.clone();
        asked.insert(original.provider);
        let mut pool = self.voters(others, &asked, &original.receipt.model_sha256);
        let mut looked_further = false;
        let mut runs = 0;
        let mut failed = 0;
        while decide(&votes).is_none() && runs < MAX_VOTES {
            let Some(candidate) = pool.pop_front() else {
                if std::mem::replace(&mut looked_further, true) {
                    break;
                }
                // The candidates at hand could not decide: look for more providers of the model.
                let found = self.provider_candidates(request).await;
                pool = self.voters(found, &asked, &original.receipt.model_sha256);
                continue;
            };
            if !asked.insert(candidate.peer) {
                continue;
            }
            runs += 1;
            let mut delivery = Delivery {
                tx: &sink,
                text: String::new(),
                model_sha256: None,
                started: Instant::now(),
                first_token: None,
            };
            let mut fresh = wire_request.clone();
            fresh.request_id = random_id();
            let attempt_started = Instant::now();
            let other = match self.attempt(&candidate, &fresh, &mut delivery, 1).await {
                Ok(r) => r,
                Err(AttemptError::Retry(offence, reason)) => {
                    debug!(voter = %candidate.peer, %reason, "a verification run failed");
                    self.record_offence(candidate.peer, offence, true).await;
                    failed += 1;
                    continue;
                }
                Err(_) => {
                    failed += 1;
                    continue;
                }
            };
            let stats = JobStats {
                latency: attempt_started.elapsed(),
                ttft: delivery.first_token.map(|t| t.saturating_sub(attempt_started.duration_since(delivery.started))),
                tokens: u64::from(other.usage.completion_tokens),
                tokens_per_sec: None,
            };
            runs_stats.push(Some(stats));
            votes.push(Vote::of(&other, weight_of(other.provider)));
            results.push(other);
        }
        let Some(winner) = decide(&votes) else {
            let reason = if votes.len() == 1 {
                format!("no other provider could re-run it ({runs} asked, {failed} failed)")
            } else {
                format!("{} providers answered, and no answer was confirmed by a majority of its class", votes.len())
            };
            return Verdict::Unconfirmed(reason);
        };
        let confirmed = votes[winner].clone();
        // A re-run is a job served only when the vote confirmed its output: a voter whose answer
        // nobody confirmed, like a tie of one against one, earns nothing (a liar must not
        // gather credit as a voter while it cannot yet be outvoted).
        for (v, stats) in votes.iter().zip(runs_stats) {
            if let Some(stats) = stats
                && v.class == confirmed.class
                && v.output == confirmed.output
            {
                self.with_reputation(|r, now| r.record_success(v.provider, stats, now));
            }
        }
        // Everyone of the confirmed class who said otherwise lied about the work.
        for v in votes.iter().filter(|v| v.class == confirmed.class && v.output != confirmed.output) {
            info!(provider = %v.provider, "outvoted in verification");
            self.record_offence(v.provider, Offence::FailedVerification, true).await;
        }
        let by: Vec<PeerId> = votes
            .iter()
            .filter(|v| {
                v.class == confirmed.class && v.output == confirmed.output && v.provider != votes[winner].provider
            })
            .map(|v| v.provider)
            .collect();
        if winner == 0 {
            return Verdict::Agreed(by);
        }
        let mut chosen = results.swap_remove(winner);
        chosen.verified_by = by;
        if confirmed.class == votes[0].class {
            Verdict::Outvoted(Box::new(chosen))
        } else {
            Verdict::Replaced(Box::new(chosen))
        }
    }

    /// The candidates that may vote, in the order they are asked: not asked before, not banned,
    /// no negative score; established before newcomers, and those that advertised the model
    /// file being checked before the others.
    fn voters(
        &self,
        candidates: Vec<Candidate>,
        asked: &HashSet<PeerId>,
        model_sha256_hex: &str,
    ) -> VecDeque<Candidate> {
        let mut voters: Vec<(Candidate, bool, bool)> = self.with_reputation(|r, now| {
            candidates
                .into_iter()
                .filter(|c| !asked.contains(&c.peer))
                .filter(|c| r.is_banned(c.peer, now).is_none() && r.score(c.peer, now) >= 0.0)
                .map(|c| {
                    let other_file = c.advertised_sha256.as_ref().is_some_and(|s| hex(s) != model_sha256_hex);
                    let newcomer = r.is_newcomer(c.peer);
                    (c, newcomer, other_file)
                })
                .collect()
        });
        // Stable: within each group the ranking's order stays.
        voters.sort_by_key(|(_, newcomer, other_file)| (*newcomer, *other_file));
        voters.into_iter().map(|(c, ..)| c).collect()
    }
}

#[cfg(test)]
#[path = "../tests/verify.rs"]
mod tests;
