//! proptest strategies for every wire message, shared by the property tests. Strings and lists
//! go past the protocol's limits on purpose, so validators see both sides of each bound.
#![allow(dead_code)]

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use quiver_proto::*;

/// Modest case counts and a fixed seed: the suite is deterministic and takes seconds.
pub fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, rng_seed: RngSeed::Fixed(0x5155_4956), ..Config::default() }
}

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Short strings of any characters, multi-byte ones included.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect())
}

/// Every f32 but NaN (which is never equal to itself, so a decoded message could not compare equal).
pub fn float() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        Just(0.0f32),
        Just(1.0f32),
        0.0f32..2.0,
        any::<f32>().prop_filter("not NaN", |f| !f.is_nan()),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
    ]
}

/// Every f32, NaNs with any payload included.
pub fn any_float() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![float(), any::<u32>().prop_map(f32::from_bits)]
}

pub fn signed_record() -> impl Strategy<Value = SignedRecord> {
    (bytes(64), text(80), bytes(512), bytes(80)).prop_map(|(public_key, domain, payload, signature)| SignedRecord {
        public_key,
        domain,
        payload,
        signature,
    })
}

pub fn model_info() -> impl Strategy<Value = ModelInfo> {
    (text(140), bytes(40)).prop_map(|(name, sha256)| ModelInfo { name, sha256, ..Default::default() })
}

pub fn heartbeat_with(floats: impl Strategy<Value = f32> + Clone) -> impl Strategy<Value = Heartbeat> {
    (
        (
            bytes(40),
            text(140),
            vec(bytes(270), 0..40),
            vec(model_info(), 0..40),
            floats.clone(),
            any::<u32>(),
            any::<u64>(),
            prop_oneof![Just(0u64), any::<u64>()],
            any::<u64>(),
            any::<u32>(),
            floats.clone(),
            floats,
        ),
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(
            |(
                (
                    peer_id,
                    agent_version,
                    listen_addrs,
                    models,
                    cpu_load,
                    free_slots,
                    uptime_secs,
                    timestamp_ms,
                    seq,
                    queue_depth,
                    tokens_per_sec,
                    batch_tokens_per_sec,
                ),
                network_size_estimate,
            )| Heartbeat {
                peer_id,
                agent_version,
                listen_addrs,
                models,
                cpu_load,
                free_slots,
                uptime_secs,
                timestamp_ms,
                seq,
                queue_depth,
                tokens_per_sec,
                batch_tokens_per_sec,
                network_size_estimate,
            },
        )
}

pub fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    heartbeat_with(float())
}

pub fn sampling_params_with(floats: impl Strategy<Value = f32> + Clone) -> impl Strategy<Value = SamplingParams> {
    (prop_oneof![0u32..20_000, any::<u32>()], floats.clone(), floats, any::<u64>(), vec(text(70), 0..10)).prop_map(
        |(max_tokens, temperature, top_p, seed, stop)| SamplingParams {
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            ..Default::default()
        },
    )
}

pub fn chat_message() -> impl Strategy<Value = ChatMessage> {
    let role = prop_oneof![
        Just("system".to_owned()),
        Just("user".to_owned()),
        Just("assistant".to_owned()),
        Just("tool".to_owned()),
        Just("developer".to_owned()),
        text(12),
    ];
    (role, text(200)).prop_map(|(role, content)| ChatMessage { role, content, ..Default::default() })
}

pub fn prompt_input() -> impl Strategy<Value = PromptInput> {
    (text(300), vec(chat_message(), 0..8)).prop_map(|(prompt, messages)| PromptInput {
        prompt,
        messages,
        ..Default::default()
    })
}

pub fn model_name() -> impl Strategy<Value = String> {
    prop_oneof![Just("smollm2-135m".to_owned()), "[A-Za-z0-9._:-]{1,130}", text(40)]
}

pub fn id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 16), bytes(40)]
}

pub fn sha() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 32), bytes(40)]
}

pub fn infer_request_with(floats: impl Strategy<Value = f32> + Clone) -> impl Strategy<Value = InferRequest> {
    (
        id(),
        model_name(),
        sha(),
        proptest::option::of(prompt_input()),
        proptest::option::of(sampling_params_with(floats)),
    )
        .prop_map(|(request_id, model, model_sha256, input, params)| InferRequest {
            request_id,
            model,
            model_sha256,
            input,
            params,
            embed: None,
        })
}

pub fn infer_request() -> impl Strategy<Value = InferRequest> {
    infer_request_with(float())
}

pub fn job_announcement() -> impl Strategy<Value = JobAnnouncement> {
    (id(), model_name(), any::<u32>(), any::<u64>(), vec(bytes(270), 0..20)).prop_map(
        |(job_id, model, max_tokens, deadline_ms, client_addrs)| JobAnnouncement {
            job_id,
            model,
            max_tokens,
            deadline_ms,
            client_addrs,
        },
    )
}

pub fn claim() -> impl Strategy<Value = Claim> {
    (id(), sha(), any::<u32>(), any::<u32>(), float(), float()).prop_map(
        |(job_id, model_sha256, free_slots, queue_depth, tokens_per_sec, batch_tokens_per_sec)| Claim {
            job_id,
            model_sha256,
            free_slots,
            queue_depth,
            tokens_per_sec,
            batch_tokens_per_sec,
        },
    )
}

pub fn receipt() -> impl Strategy<Value = Receipt> {
    (
        (id(), bytes(40), sha(), sha(), sha()),
        (any::<u32>(), any::<u32>(), proptest::option::of(sampling_params_with(float()))),
        (text(40), any::<u32>(), text(10), any::<u64>(), any::<u32>()),
    )
        .prop_map(
            |(
                (request_id, provider, model_sha256, prompt_hash, output_hash),
                (prompt_tokens, completion_tokens, params),
                (engine_build, threads, finish_reason, timestamp_ms, cached_tokens),
            )| Receipt {
                request_id,
                provider,
                model_sha256,
                prompt_hash,
                output_hash,
                prompt_tokens,
                completion_tokens,
                params,
                engine_build,
                threads,
                finish_reason,
                timestamp_ms,
                cached_tokens,
                logprobs_hash: Vec::new(),
            },
        )
}

pub fn infer_response() -> impl Strategy<Value = InferResponse> {
    use infer_response::Kind;
    let kind =
        prop_oneof![
            (sha(), text(40), any::<u32>()).prop_map(|(model_sha256, engine_build, threads)| Kind::Accepted(
                Accepted { model_sha256, engine_build, threads }
            )),
            (text(200), any::<u32>()).prop_map(|(text, tokens)| Kind::Chunk(TokenChunk {
                text,
                tokens,
                ..Default::default()
            })),
            (any::<u32>(), any::<u32>())
                .prop_map(|(queue_depth, retry_after_ms)| Kind::Busy(Busy { queue_depth, retry_after_ms })),
            (text(30), text(200)).prop_map(|(code, message)| Kind::Error(InferError { code, message })),
            signed_record().prop_map(Kind::Receipt),
            any::<u32>().prop_map(|position| Kind::Queued(Queued { position })),
        ];
    proptest::option::of(kind).prop_map(|kind| InferResponse { kind })
}

/// PeerIds mostly valid (of fixed keys), sometimes junk; counts around the plausible limit.
pub fn observation() -> impl Strategy<Value = Observation> {
    let peer_id = prop_oneof![
        4 => (0u8..64).prop_map(|n| libp2p_identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("32 bytes")
            .public()
            .to_peer_id()
            .to_bytes()),
        1 => bytes(40),
    ];
    let count = prop_oneof![1 => Just(0u32), 6 => 0u32..10, 1 => 99_990u32..100_010, 1 => any::<u32>()];
    (peer_id, count.clone(), count).prop_map(|(peer_id, successes, failures)| Observation {
        peer_id,
        successes,
        failures,
    })
}

pub fn reputation_report() -> impl Strategy<Value = ReputationReport> {
    (any::<u64>(), prop_oneof![vec(observation(), 1..4), vec(observation(), 0..36)])
        .prop_map(|(timestamp_ms, observations)| ReputationReport { timestamp_ms, observations })
}
