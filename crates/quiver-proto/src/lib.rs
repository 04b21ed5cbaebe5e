//! QUIVer's wire messages and the checks every decoder applies.
//!
//! The `.proto` file in `proto/` is the specification; this crate adds what protobuf cannot
//! say: size limits, signatures with domain separation, and field validation. Everything a peer
//! sends is decoded through functions here, which never panic on any input.

pub mod dht;
pub mod frame;
pub mod heartbeat;
pub mod infer;
pub mod reputation;
pub mod shard;
pub mod signed;

mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/quiver.v1.rs"));
}

pub use frame::{FrameError, read_frame, write_frame};
pub use heartbeat::{HEARTBEAT_DOMAIN, MAX_HEARTBEAT_BYTES, SignedHeartbeat};
pub use pb::{
    Accepted, Busy, ChatMessage, Claim, ClaimAck, EmbedInput, Embedding, Heartbeat, InferError, InferRequest,
    InferResponse, JobAnnouncement, LogitBias, ModelInfo, Observation, PromptInput, Queued, Receipt, ReputationReport,
    SamplingParams, ShardHello, ShardInfo, SignedRecord, TokenChunk, TokenLogprob, ToolCall, ToolDef, TopLogprob,
    infer_response, shard_hello,
};
pub use signed::{SignedPayload, sign};

/// Why a message from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("undecodable protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("signer public key is not a valid libp2p key")]
    BadKey,
    #[error("signed for domain {found:?}, expected {expected:?}")]
    WrongDomain { expected: &'static str, found: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("record names peer {named} but is signed by {signer}")]
    PeerMismatch { named: String, signer: String },
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
}

/// Refuses `bytes` longer than `max` before any decoding work is done.
pub fn check_len(bytes: &[u8], max: usize) -> Result<(), ProtoError> {
    if bytes.len() > max {
        return Err(ProtoError::TooLarge { len: bytes.len(), max });
    }
    Ok(())
}
