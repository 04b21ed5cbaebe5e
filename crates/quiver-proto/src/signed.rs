//! Payloads signed by a libp2p identity, with domain separation.
//!
//! The signed bytes are `u32_be(len(domain)) || domain || payload`, so a signature made for one
//! kind of record can never be accepted as another.

use libp2p_identity::{Keypair, PeerId, PublicKey};
use prost::Message;

use crate::{ProtoError, SignedRecord, check_len};

/// Largest domain string accepted.
const MAX_DOMAIN_LEN: usize = 64;

fn signing_input(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + domain.len() + payload.len());
    // Domains are short constants of this crate; the length fits u32 by construction.
    buf.extend_from_slice(&(domain.len() as u32).to_be_bytes());
    buf.extend_from_slice(domain.as_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// Signs `payload` for `domain` with `keypair`.
pub fn sign(keypair: &Keypair, domain: &str, payload: Vec<u8>) -> SignedRecord {
    let signature = keypair
        .sign(&signing_input(domain, &payload))
        // Ed25519 signing cannot fail; other key types are never used by QUIVer.
        .unwrap_or_default();
    SignedRecord { public_key: keypair.public().encode_protobuf(), domain: domain.to_owned(), payload, signature }
}

/// A verified payload and who signed it.
#[derive(Debug, Clone)]
pub struct SignedPayload {
    pub signer: PeerId,
    pub public_key: PublicKey,
    pub payload: Vec<u8>,
}

impl SignedRecord {
    /// Decodes a `SignedRecord` of at most `max` bytes and verifies it was signed for `domain`.
    pub fn decode_verified(bytes: &[u8], domain: &'static str, max: usize) -> Result<SignedPayload, ProtoError> {
        check_len(bytes, max)?;
        let record = SignedRecord::decode(bytes)?;
        record.verify(domain)
    }

    /// Verifies the signature and the domain, consuming the record.
    pub fn verify(self, domain: &'static str) -> Result<SignedPayload, ProtoError> {
        if self.domain.len() > MAX_DOMAIN_LEN || self.domain != domain {
            // Cut a peer's overlong domain for the error message, on a character boundary
            // (`String::truncate` panics inside a character).
            let mut found = self.domain;
            let cut = (0..=MAX_DOMAIN_LEN.min(found.len())).rev().find(|&i| found.is_char_boundary(i)).unwrap_or(0);
            found.truncate(cut);
            return Err(ProtoError::WrongDomain { expected: domain, found });
        }
        let public_key = PublicKey::try_decode_protobuf(&self.public_key).map_err(|_| ProtoError::BadKey)?;
        if !public_key.verify(&signing_input(domain, &self.payload), &self.signature) {
            return Err(ProtoError::BadSignature);
        }
        Ok(SignedPayload { signer: public_key.to_peer_id(), public_key, payload: self.payload })
    }
}

#[cfg(test)]
#[path = "tests/signed.rs"]
mod tests;
