//! The few parts of ggml's RPC wire format that the head's tunnel reads, so that it can offer a
//! member the weights ggml's own client sends whole (those up to [`cache::HASH_THRESHOLD`]) by
//! hash first, the way ggml offers the bigger ones.
//!
//! A request is `cmd (1 byte) | size (u64 LE) | payload`; a response, when the command has one,
//! is `size (u64 LE) | payload`. ggml's client sends one command at a time and waits for its
//! response before the next, so the responses on a connection come in the order of the
//! commands that have one. Layouts here are those of protocol [`PROTO_MAJOR`]; the tunnel reads
//! the version from the member's HELLO answer and leaves a connection of any other version
//! alone.
//!
//! [`cache::HASH_THRESHOLD`]: super::cache::HASH_THRESHOLD

use super::cache::fnv1a64;

/// The major version of ggml's RPC protocol whose layouts this module knows.
pub const PROTO_MAJOR: u8 = 7;
pub const CMD_SET_TENSOR: u8 = 6;
pub const CMD_SET_TENSOR_HASH: u8 = 7;
pub const CMD_HELLO: u8 = 14;
/// Bytes of a HELLO request's payload (the client's transport capabilities).
pub const HELLO_REQUEST_BYTES: usize = 24;
/// Bytes of a request's header (command and payload size).
pub const REQUEST_HEADER: usize = 9;
/// Bytes of a response's header (payload size).
pub const RESPONSE_HEADER: usize = 8;
/// Bytes of a serialized tensor (`rpc_tensor`, packed).
pub const RPC_TENSOR_BYTES: usize = 296;
/// Bytes of a SET_TENSOR payload before the data: tensor, cache flag, offset.
pub const SET_TENSOR_PREFIX: usize = RPC_TENSOR_BYTES + 1 + 8;
/// Bytes of a SET_TENSOR_HASH payload: tensor, offset, hash.
pub const SET_TENSOR_HASH_BYTES: usize = RPC_TENSOR_BYTES + 8 + 8;

/// A request's command and payload size.
pub fn request_header(bytes: &[u8; REQUEST_HEADER]) -> (u8, u64) {
    let mut size = [0u8; 8];
    size.copy_from_slice(&bytes[1..]);
    (bytes[0], u64::from_le_bytes(size))
}

/// The header of a request `cmd` with a payload of `size` bytes.
pub fn encode_request_header(cmd: u8, size: u64) -> [u8; REQUEST_HEADER] {
    let mut h = [0u8; REQUEST_HEADER];
    h[0] = cmd;
    h[1..].copy_from_slice(&size.to_le_bytes());
    h
}

/// A whole HELLO request offering no transport upgrade: what every connection starts with.
pub fn hello_request() -> Vec<u8> {
    let mut out = encode_request_header(CMD_HELLO, HELLO_REQUEST_BYTES as u64).to_vec();
    out.resize(REQUEST_HEADER + HELLO_REQUEST_BYTES, 0);
    out
}

/// A response's payload size, once its header is complete.
pub fn response_size(frame: &[u8]) -> Option<u64> {
    let head: [u8; RESPONSE_HEADER] = frame.get(..RESPONSE_HEADER)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// A SET_TENSOR payload, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetTensor<'a> {
    pub tensor: &'a [u8],
    /// 1 when the client asks the server to keep the data in its cache (ggml sets it after the
    /// server lacked a tensor it offered by hash).
    pub cache_flag: u8,
    pub offset: u64,
    pub data: &'a [u8],
}

/// Reads a SET_TENSOR payload; `None` when it is too short to hold one.
pub fn parse_set_tensor(payload: &[u8]) -> Option<SetTensor<'_>> {
    if payload.len() < SET_TENSOR_PREFIX {
        return None;
    }
    let (tensor, rest) = payload.split_at(RPC_TENSOR_BYTES);
    let offset: [u8; 8] = rest[1..9].try_into().ok()?;
    Some(SetTensor { tensor, cache_flag: rest[0], offset: u64::from_le_bytes(offset), data: &rest[9..] })
}

/// Marks a SET_TENSOR payload as one the server should cache.
pub fn set_cache_flag(payload: &mut [u8]) {
    if let Some(flag) = payload.get_mut(RPC_TENSOR_BYTES) {
        *flag = 1;
    }
}

/// The whole SET_TENSOR_HASH request (header included) that offers `set`'s data by its hash.
pub fn hash_request(set: &SetTensor<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_HEADER + SET_TENSOR_HASH_BYTES);
    out.extend_from_slice(&encode_request_header(CMD_SET_TENSOR_HASH, SET_TENSOR_HASH_BYTES as u64));
    out.extend_from_slice(set.tensor);
    out.extend_from_slice(&set.offset.to_le_bytes());
    out.extend_from_slice(&fnv1a64(set.data).to_le_bytes());
    out
}

/// The bytes of the (contiguous) tensor a SET_TENSOR_HASH payload names: its outermost
/// dimension times that dimension's stride. `None` when the payload is too short.
pub fn hashed_tensor_bytes(payload: &[u8]) -> Option<u64> {
    // rpc_tensor: id u64, type u32, buffer u64, ne[4] u32, nb[4] u32, ...
    const NE: usize = 8 + 4 + 8;
    const NB: usize = NE + 16;
    let u32_at = |at: usize| -> Option<u64> {
        let b: [u8; 4] = payload.get(at..at + 4)?.try_into().ok()?;
        Some(u64::from(u32::from_le_bytes(b)))
    };
    if payload.len() < SET_TENSOR_HASH_BYTES {
        return None;
    }
    Some(u32_at(NE + 12)? * u32_at(NB + 12)?)
}

/// Whether a complete SET_TENSOR_HASH response says the server had the data. `None` for a
/// frame of another shape.
pub fn hash_found(frame: &[u8]) -> Option<bool> {
    (response_size(frame)? == 1 && frame.len() == RESPONSE_HEADER + 1).then(|| frame[RESPONSE_HEADER] != 0)
}

/// The major protocol version in a complete HELLO response.
pub fn hello_major(frame: &[u8]) -> Option<u8> {
    (response_size(frame)? >= 1).then(|| frame.get(RESPONSE_HEADER).copied()).flatten()
}

#[cfg(test)]
#[path = "../tests/split_wire.rs"]
mod tests;
