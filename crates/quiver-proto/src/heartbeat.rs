//! Heartbeats: the signed node information every node publishes on `quiver/1/nodes`.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;

use crate::{Heartbeat, ProtoError, SignedRecord, sign};

/// Domain the heartbeat's signature is made for.
pub const HEARTBEAT_DOMAIN: &str = "quiver/heartbeat/1";
/// Largest encoded signed heartbeat accepted from a peer.
pub const MAX_HEARTBEAT_BYTES: usize = 8 * 1024;
/// Limits on the fields of a heartbeat.
pub const MAX_LISTEN_ADDRS: usize = 32;
pub const MAX_ADDR_BYTES: usize = 256;
pub const MAX_MODELS: usize = 32;
pub const MAX_MODEL_NAME: usize = 128;
pub const MAX_AGENT_LEN: usize = 128;
pub const MAX_ENGINE_BUILD: usize = 128;
/// Most threads a model's engine may announce.
pub const MAX_THREADS: u32 = 4096;
/// Longest `ModelInfo.device`.
pub const MAX_DEVICE_LEN: usize = 64;
/// Most layers a model may claim (`ModelInfo.layers`).
pub const MAX_LAYERS: u32 = 4096;
/// Largest network size estimate accepted (as `quiver-net`'s estimator caps its own).
pub const MAX_NETWORK_SIZE_ESTIMATE: u64 = 1_000_000_000;

/// A heartbeat whose signature, signer and fields have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedHeartbeat {
    pub peer_id: PeerId,
    pub heartbeat: Heartbeat,
}

impl Heartbeat {
    /// Field checks applied to every heartbeat, ours before sending and peers' after decoding.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let invalid = |field, reason| Err(ProtoError::Invalid { field, reason });
        if self.agent_version.len() > MAX_AGENT_LEN {
            return invalid("agent_version", "too long");
        }
        if self.listen_addrs.len() > MAX_LISTEN_ADDRS {
            return invalid("listen_addrs", "too many");
        }
        if self.listen_addrs.iter().any(|a| a.is_empty() || a.len() > MAX_ADDR_BYTES) {
            return invalid("listen_addrs", "empty or too long address");
        }
        if self.models.len() > MAX_MODELS {
            return invalid("models", "too many");
        }
        for m in &self.models {
            if m.name.is_empty() || m.name.len() > MAX_MODEL_NAME {
                return invalid("models.name", "empty or too long");
            }
            if m.sha256.len() != 32 {
                return invalid("models.sha256", "not 32 bytes");
            }
            if m.engine_build.len() > MAX_ENGINE_BUILD || m.threads > MAX_THREADS {
                return invalid("models.engine_build", "a build of at most 128 bytes and at most 4096 threads");
            }
            if m.device.len() > MAX_DEVICE_LEN || m.device.chars().any(char::is_control) {
                return invalid("models.device", "too long or not printable");
            }
            let most = if m.layers == 0 { MAX_LAYERS } else { m.layers };
            if m.layers > MAX_LAYERS || m.gpu_layers > most {
                return invalid("models.gpu_layers", "more layers than the model has, or too many");
            }
            if m.device_memory_free > m.device_memory_total {
                return invalid("models.device_memory_free", "more than the device's total");
            }
        }
        if !self.cpu_load.is_finite() || self.cpu_load < 0.0 || self.cpu_load > 1024.0 {
            return invalid("cpu_load", "not a finite load in 0..=1024");
        }
        if !self.tokens_per_sec.is_finite() || self.tokens_per_sec < 0.0 || self.tokens_per_sec > 1e6 {
            return invalid("tokens_per_sec", "not a finite speed in 0..=1e6");
        }
        let batch = self.batch_tokens_per_sec;
        if !batch.is_finite() || !(0.0..=1e6).contains(&batch) {
            return invalid("batch_tokens_per_sec", "not a finite speed in 0..=1e6");
        }
        if self.network_size_estimate > MAX_NETWORK_SIZE_ESTIMATE {
            return invalid("network_size_estimate", "over 1e9");
        }
        if self.timestamp_ms == 0 {
            return invalid("timestamp_ms", "missing");
        }
        Ok(())
    }

    /// Signs this heartbeat with the node's key and encodes it for gossip.
    pub fn sign_and_encode(&self, keypair: &Keypair) -> Vec<u8> {
        sign(keypair, HEARTBEAT_DOMAIN, self.encode_to_vec()).encode_to_vec()
    }
}

impl SignedHeartbeat {
    /// Decodes and checks a heartbeat received from the network.
    ///
    /// Refused: more than [`MAX_HEARTBEAT_BYTES`], undecodable bytes, a signature that does not
    /// verify, a heartbeat naming another peer than its signer, fields out of their limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let signed = SignedRecord::decode_verified(bytes, HEARTBEAT_DOMAIN, MAX_HEARTBEAT_BYTES)?;
        let heartbeat = Heartbeat::decode(signed.payload.as_slice())?;
        let named = PeerId::from_bytes(&heartbeat.peer_id)
            .map_err(|_| ProtoError::Invalid { field: "peer_id", reason: "not a PeerId" })?;
        if named != signed.signer {
            return Err(ProtoError::PeerMismatch { named: named.to_string(), signer: signed.signer.to_string() });
        }
        heartbeat.validate()?;
        Ok(SignedHeartbeat { peer_id: named, heartbeat })
    }
}

#[cfg(test)]
#[path = "tests/heartbeat.rs"]
mod tests;
