//! Reading GGUF metadata from a model file's header.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use super::{ModelError, io_err};

/// The GGUF `general.name` of a model file, read from its header (GGUF v2/v3, little-endian).
pub fn gguf_general_name(path: &Path) -> Result<Option<String>, ModelError> {
    let file = File::open(path).map_err(io_err(path))?;
    GgufReader { r: BufReader::new(file) }.general_name()
}

/// Largest string accepted in GGUF metadata.
const GGUF_MAX_STRING: u64 = 1 << 20;
/// Most metadata entries accepted.
const GGUF_MAX_KV: u64 = 1 << 16;

pub(super) struct GgufReader<R> {
    pub(super) r: R,
}

impl<R: Read + Seek> GgufReader<R> {
    pub(super) fn general_name(&mut self) -> Result<Option<String>, ModelError> {
        let mut magic = [0u8; 4];
        self.bytes(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(ModelError::Gguf("no GGUF magic".into()));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Gguf(format!("unsupported GGUF version {version}")));
        }
        let _tensors = self.u64()?;
        let kv_count = self.u64()?;
        if kv_count > GGUF_MAX_KV {
            return Err(ModelError::Gguf(format!("{kv_count} metadata entries")));
        }
        for _ in 0..kv_count {
            let key = self.string()?;
            let ty = self.u32()?;
            if key == "general.name" && ty == 8 {
                return Ok(Some(self.string()?));
            }
            self.skip_value(ty, 0)?;
        }
        Ok(None)
    }

    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), ModelError> {
        self.r.read_exact(buf).map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string_len(&mut self) -> Result<u64, ModelError> {
        let len = self.u64()?;
        if len > GGUF_MAX_STRING {
            return Err(ModelError::Gguf(format!("string of {len} bytes")));
        }
        Ok(len)
    }

    fn string(&mut self) -> Result<String, ModelError> {
        let len = self.string_len()?;
        let mut buf = Vec::new();
        (&mut self.r)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))?;
        if buf.len() as u64 != len {
            return Err(ModelError::Gguf("truncated header".into()));
        }
        String::from_utf8(buf).map_err(|_| ModelError::Gguf("string is not UTF-8".into()))
    }

    fn skip(&mut self, n: u64) -> Result<(), ModelError> {
        let n = i64::try_from(n).map_err(|_| ModelError::Gguf("value too large".into()))?;
        self.r.seek_relative(n).map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))
    }

    fn skip_value(&mut self, ty: u32, depth: u32) -> Result<(), ModelError> {
        if let Some(size) = fixed_size(ty) {
            return self.skip(size);
        }
        match ty {
            8 => {
                let len = self.string_len()?;
                self.skip(len)
            }
            9 if depth == 0 => {
                let elem = self.u32()?;
                let count = self.u64()?;
                if let Some(size) = fixed_size(elem) {
                    let total = count.checked_mul(size).ok_or_else(|| ModelError::Gguf("array too large".into()))?;
                    return self.skip(total);
                }
                for _ in 0..count {
                    self.skip_value(elem, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(ModelError::Gguf(format!("bad metadata value type {ty}"))),
        }
    }
}

/// Size of the GGUF scalar value types.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}
