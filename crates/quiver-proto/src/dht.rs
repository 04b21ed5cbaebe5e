//! DHT keys and the checks on records peers store in our DHT.
//!
//! These are pure functions of the key and value bytes, so the network layer calls them on every
//! inbound `PutRecord`/`AddProvider` and the fuzz targets can reach them without a swarm.

use libp2p_identity::PeerId;

use crate::{ProtoError, SignedHeartbeat};

/// Prefix of DHT keys holding signed node records: `/quiver/node/<PeerId bytes>`.
pub const NODE_RECORD_PREFIX: &[u8] = b"/quiver/node/";
/// Prefix of DHT provider keys for models: `/quiver/model/<sha256 hex>` or `/quiver/model/name/<name>`.
pub const MODEL_KEY_PREFIX: &[u8] = b"/quiver/model/";
/// Longest provider key accepted.
pub const MAX_PROVIDER_KEY_LEN: usize = 128;

/// The DHT key of `peer`'s node record.
pub fn node_record_key(peer: &PeerId) -> Vec<u8> {
    [NODE_RECORD_PREFIX, &peer.to_bytes()].concat()
}

/// Checks a node record a peer asks us to store: the key must be `/quiver/node/<PeerId>` and
/// the value a valid signed heartbeat (see [`SignedHeartbeat::decode`]) signed by that peer.
pub fn verify_node_record(key: &[u8], value: &[u8]) -> Result<SignedHeartbeat, ProtoError> {
    let peer_bytes = key
        .strip_prefix(NODE_RECORD_PREFIX)
        .ok_or(ProtoError::Invalid { field: "key", reason: "not a node record key" })?;
    let peer = PeerId::from_bytes(peer_bytes)
        .map_err(|_| ProtoError::Invalid { field: "key", reason: "does not end in a PeerId" })?;
    let hb = SignedHeartbeat::decode(value)?;
    if hb.peer_id != peer {
        return Err(ProtoError::PeerMismatch { named: peer.to_string(), signer: hb.peer_id.to_string() });
    }
    Ok(hb)
}

/// Whether `key` is one of ours to hold provider records for: a model key of bounded length.
pub fn valid_provider_key(key: &[u8]) -> bool {
    key.starts_with(MODEL_KEY_PREFIX) && key.len() <= MAX_PROVIDER_KEY_LEN
}

#[cfg(test)]
#[path = "tests/dht.rs"]
mod tests;
