//! A member's weight cache, as ggml's RPC server reads it: before sending a weight tensor, the
//! head asks whether the server holds a file named by the FNV-1a hash of the tensor's bytes
//! (`<cache>/<16 hex digits>`); if so the server copies it in and nothing is sent. (ggml's client
//! asks so for tensors above [`HASH_THRESHOLD`], the head's relay for the smaller ones: see
//! [`super::relay`].) The server writes such
//! a file for each tensor it was sent to keep; [`fill_from_gguf`] writes them from the member's
//! own copy of the model, so that a member holding the model receives none of the tensors
//! offered by hash.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use llama_cpp_sys_2 as sys;

use super::SplitError;
use crate::models::{self, GgufTensor};

/// Size above which ggml's RPC client offers a weight tensor by hash (`HASH_THRESHOLD` in
/// ggml-rpc.cpp).
pub const HASH_THRESHOLD: u64 = 10 << 20;

/// FNV-1a, 64 bits (the hash ggml's RPC names cached tensors by).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The cache file name of a tensor whose bytes hash to `hash`.
pub fn cache_name(hash: u64) -> String {
    format!("{hash:016x}")
}

/// The bytes of `t` (its type's row size times its rows), or `None` for a type this build of
/// ggml does not know or dimensions that do not divide into its blocks.
pub fn tensor_bytes(t: &GgufTensor) -> Option<u64> {
    if t.ggml_type >= sys::GGML_TYPE_COUNT as u32 {
        return None;
    }
    let ty = t.ggml_type as sys::ggml_type;
    let ne0 = i64::try_from(*t.dims.first()?).ok()?;
    // SAFETY: `ty` is below GGML_TYPE_COUNT; these read ggml's type table.
    let block = unsafe { sys::ggml_blck_size(ty) };
    if block <= 0 || ne0 % block != 0 {
        return None;
    }
    // SAFETY: as above; `ne0` is a whole number of blocks.
    let row = unsafe { sys::ggml_row_size(ty, ne0) } as u64;
    t.dims[1..].iter().try_fold(row, |acc, &d| acc.checked_mul(d))
}

/// The block a tensor belongs to (`blk.N.*`).
fn block_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// What [`fill_from_gguf`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filled {
    /// Cache files written, and already there.
    pub written: u32,
    pub present: u32,
    /// Bytes of the tensors the cache now holds for the range.
    pub bytes: u64,
}

/// Writes to `cache_dir` every tensor of blocks `blocks` of the GGUF at `path` (the head offers
/// a member holding the model each of them by hash), unless its file is there already.
/// Files appear whole (written aside, then renamed).
pub fn fill_from_gguf(path: &Path, cache_dir: &Path, blocks: Range<u32>) -> Result<Filled, SplitError> {
    let io = |e: std::io::Error| SplitError::Worker(format!("weight cache: {e}"));
    let (tensors, data_start) = models::gguf_tensors(path).map_err(|e| SplitError::Worker(e.to_string()))?;
    std::fs::create_dir_all(cache_dir).map_err(io)?;
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut filled = Filled::default();
    let mut buf = Vec::new();
    for t in &tensors {
        if !block_of(&t.name).is_some_and(|b| blocks.contains(&b)) {
            continue;
        }
        let Some(size) = tensor_bytes(t).filter(|&n| n > 0) else { continue };
        let start = data_start.saturating_add(t.offset);
        if start.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(SplitError::Worker(format!("tensor {} runs past the end of {}", t.name, path.display())));
        }
        buf.resize(usize::try_from(size).map_err(|_| SplitError::Worker("tensor too large".into()))?, 0);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        let target = cache_dir.join(cache_name(fnv1a64(&buf)));
        filled.bytes += size;
        if target.is_file() {
            filled.present += 1;
            continue;
        }
        let aside = target.with_extension("part");
        File::create(&aside).and_then(|mut f| f.write_all(&buf)).map_err(io)?;
        std::fs::rename(&aside, &target).map_err(io)?;
        filled.written += 1;
    }
    Ok(filled)
}

#[cfg(test)]
#[path = "../tests/split_cache.rs"]
mod tests;
