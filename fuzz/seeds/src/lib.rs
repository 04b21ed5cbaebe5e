//! What the fuzz targets and their seed corpora share: the fixed key, the input layouts, and
//! the seeds themselves, made from real encoded messages.

use futures::executor::block_on;
use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use quiver_proto::dht::node_record_key;
use quiver_proto::infer::{MAX_CLAIM_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use quiver_proto::*;

/// The key every seed is signed with and every target verifies against.
pub fn key() -> Keypair {
    // 32 bytes are always a valid Ed25519 secret; ed25519_from_bytes only fails on other lengths.
    Keypair::ed25519_from_bytes([0x51; 32]).unwrap_or_else(|_| Keypair::generate_ed25519())
}

pub fn peer() -> PeerId {
    key().public().to_peer_id()
}

/// The `frame` target's first byte picks what the stream carries and the reader's limit.
#[derive(Debug, Clone, Copy)]
pub enum FrameKind {
    Request,
    Response,
    Claim,
    ClaimAck,
    /// Signed records under a tiny limit: the limit check itself.
    SmallRecord,
}

impl FrameKind {
    pub const ALL: [FrameKind; 5] =
        [FrameKind::Request, FrameKind::Response, FrameKind::Claim, FrameKind::ClaimAck, FrameKind::SmallRecord];

    pub fn from_byte(b: u8) -> FrameKind {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    pub fn byte(self) -> u8 {
        self as u8
    }

    pub fn limit(self) -> usize {
        match self {
            FrameKind::Request => MAX_REQUEST_BYTES,
            FrameKind::Response => MAX_RESPONSE_BYTES,
            FrameKind::Claim | FrameKind::ClaimAck => MAX_CLAIM_BYTES,
            FrameKind::SmallRecord => 64,
        }
    }
}

/// The `node_record` target's input: one byte of key length, the key, then the value.
pub fn split_node_record(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        Some((&len, rest)) => rest.split_at(usize::from(len).min(rest.len())),
        None => (&[], &[]),
    }
}

pub fn join_node_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let len = u8::try_from(key.len()).unwrap_or(u8::MAX);
    [&[len][..], &key[..usize::from(len)], value].concat()
}

fn frames(kind: FrameKind, msgs: &[&dyn MessageFrame]) -> Vec<u8> {
    let mut out = vec![kind.byte()];
    for m in msgs {
        out.extend(m.framed());
    }
    out
}

/// A message written as one frame (object-safe stand-in for `write_frame`).
trait MessageFrame {
    fn framed(&self) -> Vec<u8>;
}

impl<M: Message> MessageFrame for M {
    fn framed(&self) -> Vec<u8> {
        let mut w = futures::io::Cursor::new(Vec::new());
        // Writing to memory cannot fail.
        let _ = block_on(write_frame(&mut w, self));
        w.into_inner()
    }
}

fn params() -> SamplingParams {
    SamplingParams { max_tokens: 100, temperature: 0.0, top_p: 1.0, seed: 42, stop: vec!["\n\n".into()] }
}

fn request() -> InferRequest {
    InferRequest {
        request_id: vec![7; 16],
        model: "smollm2-135m".into(),
        model_sha256: vec![0xb1; 32],
        input: Some(PromptInput {
            prompt: String::new(),
            messages: vec![
                ChatMessage { role: "system".into(), content: "Be brief.".into() },
                ChatMessage { role: "user".into(), content: "Hello, world!".into() },
            ],
        }),
        params: Some(params()),
    }
}

fn raw_request() -> InferRequest {
    InferRequest {
        input: Some(PromptInput { prompt: "Once upon a time".into(), messages: vec![] }),
        model_sha256: vec![],
        ..request()
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        peer_id: peer().to_bytes(),
        agent_version: "quiver/0.1.0".into(),
        listen_addrs: vec![
            vec![4, 127, 0, 0, 1, 6, 0x0f, 0xa1],
            vec![4, 10, 0, 0, 2, 0x91, 0x02, 0x0f, 0xa1, 0xcc, 0x03],
        ],
        models: vec![ModelInfo { name: "smollm2-135m".into(), sha256: vec![0xb1; 32], ..Default::default() }],
        cpu_load: 0.25,
        free_slots: 2,
        uptime_secs: 3600,
        timestamp_ms: 1_764_000_000_000,
        seq: 12,
        queue_depth: 1,
        tokens_per_sec: 155.5,
        batch_tokens_per_sec: 400.0,
        network_size_estimate: 950,
    }
}

fn receipt() -> Receipt {
    Receipt {
        request_id: vec![7; 16],
        provider: peer().to_bytes(),
        model_sha256: vec![0xb1; 32],
        prompt_hash: request().input.map(|i| i.hash().to_vec()).unwrap_or_default(),
        output_hash: infer::output_hash("Hi there.").to_vec(),
        prompt_tokens: 12,
        completion_tokens: 4,
        params: Some(params()),
        engine_build: "llama.cpp b6000".into(),
        threads: 1,
        finish_reason: "stop".into(),
        timestamp_ms: 1_764_000_000_000,
    }
}

fn responses() -> Vec<InferResponse> {
    use infer_response::Kind;
    vec![
        InferResponse {
            kind: Some(Kind::Accepted(Accepted {
                model_sha256: vec![0xb1; 32],
                engine_build: "llama.cpp b6000".into(),
                threads: 1,
            })),
        },
        InferResponse { kind: Some(Kind::Chunk(TokenChunk { text: "Hi thére.".into(), tokens: 4 })) },
        InferResponse { kind: Some(Kind::Busy(Busy { queue_depth: 3, retry_after_ms: 500 })) },
        InferResponse {
            kind: Some(Kind::Error(InferError { code: "context_overflow".into(), message: "too long".into() })),
        },
        InferResponse { kind: Some(Kind::Receipt(receipt().sign(&key()))) },
        InferResponse { kind: Some(Kind::Queued(Queued { position: 2 })) },
    ]
}

fn claim() -> Claim {
    Claim { job_id: vec![9; 16], model_sha256: vec![0xb1; 32], free_slots: 1, queue_depth: 0, tokens_per_sec: 150.0 }
}

fn announcement() -> JobAnnouncement {
    JobAnnouncement {
        job_id: vec![9; 16],
        model: "smollm2-135m".into(),
        max_tokens: 100,
        deadline_ms: 1_764_000_002_000,
        client_addrs: vec![vec![4, 127, 0, 0, 1, 6, 0x0f, 0xa1]],
    }
}

/// The `claim` target's first byte picks the message: 0 announcement, 1 claim, 2 acknowledgement.
pub const CLAIM_KINDS: u8 = 3;

/// Seeds of each target, named `(target, seed name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let kp = key();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| out.push((target, name.to_owned(), bytes));

    let resp = responses();
    let resp_refs: Vec<&dyn MessageFrame> = resp.iter().map(|r| r as &dyn MessageFrame).collect();
    add("frame", "request", frames(FrameKind::Request, &[&request()]));
    add("frame", "raw-request", frames(FrameKind::Request, &[&raw_request()]));
    add("frame", "response-stream", frames(FrameKind::Response, &resp_refs));
    add("frame", "claim", frames(FrameKind::Claim, &[&claim()]));
    add("frame", "claim-ack", frames(FrameKind::ClaimAck, &[&ClaimAck { chosen: true }]));
    add("frame", "small-record", frames(FrameKind::SmallRecord, &[&sign(&kp, "x", vec![1, 2, 3])]));
    add("frame", "empty-frame", vec![FrameKind::ClaimAck.byte(), 0]);

    let hb = heartbeat();
    let signed_hb = hb.sign_and_encode(&kp);
    add("signed_record", "heartbeat", signed_hb.clone());
    add("signed_record", "receipt", receipt().sign(&kp).encode_to_vec());
    add("signed_record", "empty-payload", sign(&kp, HEARTBEAT_DOMAIN, Vec::new()).encode_to_vec());

    add("heartbeat", "signed", signed_hb.clone());
    add("heartbeat", "unsigned", hb.encode_to_vec());
    let minimal = Heartbeat { peer_id: peer().to_bytes(), timestamp_ms: 1, ..Default::default() };
    add("heartbeat", "minimal-signed", minimal.sign_and_encode(&kp));

    add("infer", "request-chat", request().encode_to_vec());
    add("infer", "request-raw", raw_request().encode_to_vec());
    for (i, r) in resp.iter().enumerate() {
        add("infer", &format!("response-{i}"), r.encode_to_vec());
    }

    add("receipt", "signed", receipt().sign(&kp).encode_to_vec());
    add("receipt", "minimal", Receipt { provider: peer().to_bytes(), ..Default::default() }.sign(&kp).encode_to_vec());

    add("claim", "announcement", [&[0u8][..], &announcement().encode_to_vec()].concat());
    add("claim", "claim", [&[1u8][..], &claim().encode_to_vec()].concat());
    add("claim", "ack", [&[2u8][..], &ClaimAck { chosen: true }.encode_to_vec()].concat());

    add("node_record", "valid", join_node_record(&node_record_key(&peer()), &signed_hb));
    add("node_record", "minimal", join_node_record(&node_record_key(&peer()), &minimal.sign_and_encode(&kp)));

    let other = Keypair::ed25519_from_bytes([0x52; 32]).map(|k| k.public().to_peer_id()).unwrap_or_else(|_| peer());
    let report = ReputationReport {
        timestamp_ms: 1_764_000_000_000,
        observations: vec![
            Observation { peer_id: peer().to_bytes(), successes: 12, failures: 1 },
            Observation { peer_id: other.to_bytes(), successes: 0, failures: 3 },
        ],
    };
    add("reputation", "report", report.encode_to_vec());

    add("config", "full", CONFIG_SEED.as_bytes().to_vec());
    add("config", "empty", Vec::new());
    out
}

const CONFIG_SEED: &str = r#"# A QUIVer node
data_dir = "/var/lib/quiver"
port = 4001
listen_ip = "0.0.0.0"
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
bootstrap = ["bootstrap.example.org:4001", "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
bootstrap_node = false
api = "127.0.0.1:4080"
quic = true
heartbeat_interval_secs = 10
log_format = "json"
"#;
