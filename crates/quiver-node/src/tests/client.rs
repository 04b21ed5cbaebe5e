use std::time::Duration;

use super::route::expected_completion;
use super::{DEFAULT_TOKENS_PER_SEC, Load};

const IDLE: Option<Load> = Some(Load::new(1, 0, 0.0, 100.0));

#[test]
fn an_idle_provider_costs_its_job_and_one_round_trip() {
    let cost = expected_completion(IDLE, None, Some(Duration::from_millis(20)), 100);
    assert!((cost - (1.0 + 0.02)).abs() < 1e-9, "{cost}");
}

#[test]
fn a_farther_provider_costs_more() {
    let near = expected_completion(IDLE, None, Some(Duration::from_millis(1)), 100);
    let far = expected_completion(IDLE, None, Some(Duration::from_millis(300)), 100);
    assert!(far > near);
    assert!((far - near - 0.299).abs() < 1e-9, "the difference is the extra round trip: {}", far - near);
}

#[test]
fn a_provider_not_connected_counts_at_a_typical_round_trip() {
    let typical = expected_completion(IDLE, None, Some(super::UNKNOWN_RTT), 100);
    assert!((expected_completion(IDLE, None, None, 100) - typical).abs() < 1e-9);
}

#[test]
fn queue_missing_slots_and_cpu_load_lengthen_the_wait() {
    let rtt = Some(Duration::ZERO);
    let idle = expected_completion(IDLE, None, rtt, 100);
    assert!((expected_completion(Some(Load::new(1, 2, 0.0, 100.0)), None, rtt, 100) - 3.0 * idle).abs() < 1e-9);
    assert!((expected_completion(Some(Load::new(0, 0, 0.0, 100.0)), None, rtt, 100) - 2.0 * idle).abs() < 1e-9);
    assert!((expected_completion(Some(Load::new(1, 0, 2.0, 100.0)), None, rtt, 100) - 1.5 * idle).abs() < 1e-9);
}

#[test]
fn own_measurement_wins_over_the_advertised_speed() {
    let rtt = Some(Duration::ZERO);
    let claimed_fast = expected_completion(Some(Load::new(1, 0, 0.0, 1000.0)), Some(10.0), rtt, 100);
    assert!((claimed_fast - 10.0).abs() < 1e-9, "measured 10 tok/s: {claimed_fast}");
}

#[test]
fn without_a_heartbeat_a_provider_counts_as_busy_at_the_default_speed() {
    let cost = expected_completion(None, None, Some(Duration::ZERO), 100);
    let job = 100.0 / DEFAULT_TOKENS_PER_SEC;
    assert!((cost - 3.0 * job).abs() < 1e-9, "{cost}");
}

#[test]
fn nonsense_figures_from_a_peer_do_not_poison_the_cost() {
    for load in [
        Load::new(1, 0, f32::NAN, f32::NAN),
        Load::new(0, 0, f32::INFINITY, f32::INFINITY),
        Load::new(0, 3, -5.0, -1.0),
    ] {
        let cost = expected_completion(Some(load), Some(f64::NAN), None, u32::MAX);
        assert!(cost.is_finite() && cost > 0.0, "{load:?}: {cost}");
    }
    assert!(expected_completion(IDLE, None, None, 0) > 0.0);
}

mod claim_gathering {
    use std::collections::HashMap;

    use quiver_net::PeerId;
    use quiver_proto::Claim;

    use super::super::route::{expected_completion, gathered_enough};

    fn claim(free_slots: u32, queue_depth: u32, tokens_per_sec: f32) -> Claim {
        Claim {
            job_id: vec![1; 16],
            model_sha256: vec![2; 32],
            free_slots,
            queue_depth,
            tokens_per_sec,
            batch_tokens_per_sec: 0.0,
        }
    }

    fn cost((free, queue, cpu, speed): (u32, u32, f32, f32)) -> f64 {
        expected_completion(Some(super::Load::new(free, queue, cpu, speed)), None, None, 100)
    }

    #[test]
    fn every_known_provider_claimed_ends_the_window() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let known = [(a, cost((0, 3, 0.0, 10.0))), (b, cost((0, 3, 0.0, 10.0)))];
        // Both busy: only claims from both end the wait.
        let one = [(a, claim(0, 3, 10.0), (), ())];
        assert!(!gathered_enough(&one, &known, 100, &HashMap::new()));
        let both = [(a, claim(0, 3, 10.0), (), ()), (b, claim(0, 2, 10.0), (), ())];
        assert!(gathered_enough(&both, &known, 100, &HashMap::new()));
    }

    #[test]
    fn a_free_claim_as_good_as_any_other_known_provider_ends_the_window() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let known = [(a, cost((1, 0, 0.0, 50.0))), (b, cost((1, 0, 0.0, 50.0)))];
        assert!(gathered_enough(&[(a, claim(1, 0, 50.0), (), ())], &known, 100, &HashMap::new()));
        // No free slot: another provider may still claim with one.
        assert!(!gathered_enough(&[(a, claim(0, 0, 50.0), (), ())], &known, 100, &HashMap::new()));
        // Free, but a known provider that has not claimed yet is faster: worth waiting for.
        let fast_b = [(a, cost((1, 0, 0.0, 50.0))), (b, cost((1, 0, 0.0, 500.0)))];
        assert!(!gathered_enough(&[(a, claim(1, 0, 50.0), (), ())], &fast_b, 100, &HashMap::new()));
        // Unless our own measurement of the claimant says it is at least as fast.
        let measured = HashMap::from([(a, 500.0)]);
        assert!(gathered_enough(&[(a, claim(1, 0, 50.0), (), ())], &fast_b, 100, &measured));
    }

    #[test]
    fn the_only_provider_claiming_ends_the_window() {
        let a = PeerId::random();
        assert!(gathered_enough(
            &[(a, claim(0, 5, 1.0), (), ())],
            &[(a, cost((0, 5, 0.0, 1.0)))],
            100,
            &HashMap::new()
        ));
        assert!(gathered_enough(&[(a, claim(0, 5, 1.0), (), ())], &[], 100, &HashMap::new()));
    }
}

mod receipts {
    use quiver_proto::infer::output_hash;
    use quiver_proto::{Accepted, InferRequest, PromptInput, Receipt, SamplingParams};

    use crate::client::attempt::{check_counts, check_receipt};

    const TEXT: &str = "The sea is wide.";

    fn params() -> SamplingParams {
        SamplingParams { max_tokens: 16, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![], ..Default::default() }
    }

    fn request() -> InferRequest {
        InferRequest {
            request_id: vec![7; 16],
            model: "smollm2-135m".into(),
            model_sha256: vec![],
            input: Some(PromptInput { prompt: "Hello".into(), ..PromptInput::default() }),
            params: Some(params()),
            embed: None,
        }
    }

    fn accepted() -> Accepted {
        Accepted { model_sha256: vec![1; 32], engine_build: "b1".into(), threads: 2 }
    }

    /// The receipt an honest provider signs for `request()` answered with `TEXT` in 5 tokens.
    fn honest() -> Receipt {
        let r = request();
        Receipt {
            request_id: r.request_id.clone(),
            provider: vec![],
            model_sha256: vec![1; 32],
            prompt_hash: r.input.as_ref().map(|i| i.hash().to_vec()).unwrap_or_default(),
            output_hash: output_hash(TEXT).to_vec(),
            prompt_tokens: 3,
            completion_tokens: 5,
            params: Some(params()),
            engine_build: "b1".into(),
            threads: 2,
            finish_reason: "stop".into(),
            timestamp_ms: 1,
            cached_tokens: 0,
            logprobs_hash: vec![],
        }
    }

    fn check(receipt: &Receipt) -> Result<(), &'static str> {
        check_receipt(receipt, &request(), &accepted(), TEXT, 5, &[])
    }

    #[test]
    fn log_probabilities_are_bound_when_asked_and_absent_otherwise() {
        let lp = quiver_proto::TokenLogprob { token: b"The".to_vec(), logprob: -0.25, top: vec![] };
        let asked =
            InferRequest { params: Some(quiver_proto::SamplingParams { logprobs: true, ..params() }), ..request() };
        let bound = quiver_proto::infer::logprobs_hash(std::slice::from_ref(&lp)).to_vec();
        let receipt = Receipt { logprobs_hash: bound, params: asked.params.clone(), ..honest() };
        assert_eq!(check_receipt(&receipt, &asked, &accepted(), TEXT, 5, std::slice::from_ref(&lp)), Ok(()));
        let other = quiver_proto::TokenLogprob { logprob: -3.0, ..lp.clone() };
        assert_eq!(check_receipt(&receipt, &asked, &accepted(), TEXT, 5, &[other]), Err("log probabilities"));
        // Not asked: a receipt that binds some anyway does not match.
        assert_eq!(check(&Receipt { logprobs_hash: vec![1; 32], ..honest() }), Err("log probabilities"));
    }

    #[test]
    fn an_honest_receipt_passes() {
        assert_eq!(check(&honest()), Ok(()));
    }

    #[test]
    fn another_requests_id_is_refused() {
        assert_eq!(check(&Receipt { request_id: vec![8; 16], ..honest() }), Err("request id"));
    }

    #[test]
    fn another_model_file_than_accepted_is_refused() {
        assert_eq!(check(&Receipt { model_sha256: vec![2; 32], ..honest() }), Err("model hash"));
    }

    #[test]
    fn another_prompt_is_refused() {
        assert_eq!(check(&Receipt { prompt_hash: vec![0; 32], ..honest() }), Err("prompt hash"));
    }

    #[test]
    fn another_output_than_streamed_is_refused() {
        let other = output_hash("The sea is narrow.").to_vec();
        assert_eq!(check(&Receipt { output_hash: other, ..honest() }), Err("output hash"));
    }

    #[test]
    fn another_token_count_than_streamed_is_refused() {
        assert_eq!(check(&Receipt { completion_tokens: 6, ..honest() }), Err("token count"));
    }

    #[test]
    fn other_sampling_parameters_are_refused() {
        let hotter = SamplingParams { temperature: 0.7, ..params() };
        assert_eq!(check(&Receipt { params: Some(hotter), ..honest() }), Err("sampling parameters"));
    }

    #[test]
    fn another_engine_build_or_thread_count_than_accepted_is_refused() {
        assert_eq!(check(&Receipt { engine_build: "b2".into(), ..honest() }), Err("engine build"));
        assert_eq!(check(&Receipt { threads: 4, ..honest() }), Err("engine build"));
    }

    #[test]
    fn a_receipt_signed_by_another_key_is_refused() {
        let provider = quiver_net::Keypair::generate_ed25519();
        let forger = quiver_net::Keypair::generate_ed25519();
        let id = provider.public().to_peer_id();
        let receipt = Receipt { provider: id.to_bytes(), ..honest() };
        assert!(Receipt::verify(receipt.sign(&provider), &id).is_ok());
        assert!(Receipt::verify(receipt.sign(&forger), &id).is_err(), "a forged signature verified");
    }

    #[test]
    fn token_counts_are_bounded_by_max_tokens_and_the_text() {
        let p = params();
        assert_eq!(check_counts(TEXT, 5, &p), Ok(()));
        assert!(check_counts(TEXT, 17, &p).is_err(), "more than max_tokens");
        // Tokens that render as nothing are allowed within the slack, not without bound.
        let long = SamplingParams { max_tokens: 1000, ..p.clone() };
        assert_eq!(check_counts("", 64, &long), Ok(()));
        assert!(check_counts("", 65, &long).is_err(), "more tokens than bytes beyond the slack");
        // A stop string's tokens are counted and not sent: its length widens the slack.
        let stops = SamplingParams { stop: vec!["x".repeat(40)], ..long.clone() };
        assert_eq!(check_counts("", 104, &stops), Ok(()));
        // Text beyond what max_tokens tokens can stand for.
        assert!(check_counts(&"a".repeat(16 * 256 + 1), 16, &p).is_err());
        assert_eq!(check_counts(&"a".repeat(16 * 256), 16, &p), Ok(()));
    }
}

/// When fresh heartbeats already decide, the announcement is skipped; anything less (a stale or
/// missing load, too few free slots once our own jobs are counted, a newcomer, a cheaper
/// provider elsewhere) and the job is announced.
#[test]
fn fresh_heartbeats_decide_only_what_a_claim_could_not_improve() {
    use super::route::decided_by_heartbeats;
    let free = |slots| Some(Load::new(slots, 0, 0.0, 100.0));
    let now = Some(Duration::from_millis(500));
    assert!(decided_by_heartbeats(Some((free(4), now, 0)), true, &[1.0, 1.2]));
    assert!(decided_by_heartbeats(Some((free(4), now, 0)), true, &[1.05, 1.0]), "equal within tolerance");
    assert!(!decided_by_heartbeats(Some((free(4), now, 0)), true, &[2.0, 1.0]), "another is cheaper");
    assert!(!decided_by_heartbeats(Some((free(4), now, 0)), false, &[1.0]), "a newcomer");
    assert!(!decided_by_heartbeats(Some((free(4), Some(Duration::from_secs(5)), 0)), true, &[1.0]), "stale");
    assert!(!decided_by_heartbeats(Some((free(4), None, 0)), true, &[1.0]), "never seen");
    assert!(!decided_by_heartbeats(Some((None, now, 0)), true, &[1.0]), "no load");
    assert!(!decided_by_heartbeats(Some((free(1), now, 0)), true, &[1.0]), "one slot left");
    assert!(!decided_by_heartbeats(Some((free(3), now, 2)), true, &[1.0]), "our own jobs took two");
    assert!(!decided_by_heartbeats(None, true, &[]), "nobody known");
}

/// A full provider whose sequences decode together drains its queue faster than one job at a
/// time: behind the same queue, the batching one costs less; its claimed throughput counts at
/// most 8× one job's speed, and a provider with a free slot still costs less than both.
#[test]
fn a_batching_provider_drains_its_queue_faster() {
    let full = Load::new(0, 2, 0.0, 100.0);
    let serial = expected_completion(Some(full), None, Some(Duration::ZERO), 100);
    let batching = expected_completion(Some(full.batched(300.0)), None, Some(Duration::ZERO), 100);
    assert!((serial - 4.0).abs() < 1e-9, "three jobs ahead at one job's speed, then ours: {serial}");
    assert!((batching - 2.0).abs() < 1e-9, "three jobs ahead at 3× the speed, then ours: {batching}");
    let boast = expected_completion(Some(full.batched(1e6)), None, Some(Duration::ZERO), 100);
    assert!((boast - (1.0 + 3.0 / 8.0)).abs() < 1e-9, "a boast counts at most 8×: {boast}");
    let slow_claim = expected_completion(Some(full.batched(10.0)), None, Some(Duration::ZERO), 100);
    assert!((slow_claim - serial).abs() < 1e-9, "never slower than one job: {slow_claim}");
    let free = expected_completion(Some(Load::new(1, 0, 0.0, 100.0)), None, Some(Duration::ZERO), 100);
    assert!(free < boast, "a free slot first");
}
