//! Reading GGUF metadata from a model file's header.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use super::{ModelError, io_err};

/// The GGUF `general.name` of a model file, read from its header (GGUF v2/v3, little-endian).
pub fn gguf_general_name(path: &Path) -> Result<Option<String>, ModelError> {
    let file = File::open(path).map_err(io_err(path))?;
    GgufReader { r: BufReader::new(file) }.general_name()
}

/// What placing a model in memory needs, read from its GGUF header: the bytes of each repeating
/// block (`blk.N.*`, the layers llama.cpp offloads), of the output layer, and the KV cache one
/// token takes. Read from the file's own tensor table, so it is exact for the weights.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GgufLayout {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// Bytes of the weights of block 0, 1, ... (`{arch}.block_count` blocks).
    pub blocks: Vec<u64>,
    /// Bytes of the output layer (`output.weight` and `output_norm.*`; the token embedding when
    /// the output is tied to it), offloaded as the layer after the last block.
    pub output: u64,
    /// Bytes of the tensors that stay on the CPU (token embedding and anything else).
    pub other: u64,
    /// KV cache bytes of one token in one block (f16 keys and values of every KV head).
    pub kv_per_token_per_block: u64,
    /// Vocabulary size (the output layer's rows; 0 when unknown).
    pub n_vocab: u64,
    /// Attention heads (0 when unknown).
    pub n_head: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

impl GgufLayout {
    /// KV cache bytes one token takes in all blocks.
    pub fn kv_per_token(&self) -> u64 {
        self.kv_per_token_per_block.saturating_mul(self.blocks.len() as u64)
    }

    /// Layers llama.cpp can offload: the blocks and the output layer.
    pub fn offloadable_layers(&self) -> u32 {
        u32::try_from(self.blocks.len()).unwrap_or(u32::MAX).saturating_add(1)
    }
}

/// Reads a model file's [`GgufLayout`].
pub fn gguf_layout(path: &Path) -> Result<GgufLayout, ModelError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_bytes = file.metadata().map_err(io_err(path))?.len();
    GgufReader { r: BufReader::new(file) }.layout(file_bytes)
}

/// One tensor of a GGUF file's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    /// Its dimensions, the first varying fastest (ggml's `ne`).
    pub dims: Vec<u64>,
    /// Its ggml type (`GGML_TYPE_*`).
    pub ggml_type: u32,
    /// Where its bytes start, relative to the data section.
    pub offset: u64,
}

struct Header {
    ints: HashMap<String, u64>,
    architecture: String,
    table: Vec<GgufTensor>,
    /// File offset of the data section.
    data_start: u64,
}

/// A model file's tensor table, and the file offset its tensors' offsets count from.
pub fn gguf_tensors(path: &Path) -> Result<(Vec<GgufTensor>, u64), ModelError> {
    let file = File::open(path).map_err(io_err(path))?;
    let h = GgufReader { r: BufReader::new(file) }.header()?;
    Ok((h.table, h.data_start))
}

/// Most tensors accepted in one file.
const GGUF_MAX_TENSORS: u64 = 1 << 20;
/// Most dimensions of one tensor.
const GGUF_MAX_DIMS: u32 = 8;

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

    /// Reads the header: metadata integers, the architecture, the tensor table, and where the
    /// data section starts.
    fn header(&mut self) -> Result<Header, ModelError> {
        let bad = |m: &str| ModelError::Gguf(m.to_owned());
        let mut magic = [0u8; 4];
        self.bytes(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(bad("no GGUF magic"));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Gguf(format!("unsupported GGUF version {version}")));
        }
        let tensors = self.u64()?;
        let kv_count = self.u64()?;
        if kv_count > GGUF_MAX_KV || tensors > GGUF_MAX_TENSORS {
            return Err(ModelError::Gguf(format!("{kv_count} metadata entries, {tensors} tensors")));
        }
        let mut ints: HashMap<String, u64> = HashMap::new();
        let mut architecture = String::new();
        for _ in 0..kv_count {
            let key = self.string()?;
            let ty = self.u32()?;
            match ty {
                8 if key == "general.architecture" => architecture = self.string()?,
                4 => {
                    let v = self.u32()?;
                    ints.insert(key, u64::from(v));
                }
                10 => {
                    let v = self.u64()?;
                    ints.insert(key, v);
                }
                _ => self.skip_value(ty, 0)?,
            }
        }
        // Tensor table: name, dimensions, type, offset into the data section.
        let mut table: Vec<GgufTensor> = Vec::with_capacity(tensors.min(4096) as usize);
        for _ in 0..tensors {
            let name = self.string()?;
            let n_dims = self.u32()?;
            if n_dims > GGUF_MAX_DIMS {
                return Err(ModelError::Gguf(format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| self.u64()).collect::<Result<Vec<u64>, _>>()?;
            let ggml_type = self.u32()?;
            let offset = self.u64()?;
            table.push(GgufTensor { name, dims, ggml_type, offset });
        }
        let alignment = ints.get("general.alignment").copied().filter(|a| *a > 0).unwrap_or(32);
        let here = self.r.stream_position().map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))?;
        let data_start = here.div_ceil(alignment).saturating_mul(alignment);
        Ok(Header { ints, architecture, table, data_start })
    }

    /// Reads the header and tensor table (see [`GgufLayout`]); `file_bytes` is the file's size.
    pub(super) fn layout(&mut self, file_bytes: u64) -> Result<GgufLayout, ModelError> {
        let Header { ints, architecture, table, data_start } = self.header()?;
        let table: Vec<(String, u64, u64)> =
            table.into_iter().map(|t| (t.name, t.offset, t.dims.get(1).copied().unwrap_or(0))).collect();
        let data_bytes = file_bytes.saturating_sub(data_start);
        // A tensor's bytes run to the next tensor's offset (the last one's to the end of file).
        let mut offsets: Vec<u64> = table.iter().map(|t| t.1).collect();
        offsets.sort_unstable();
        let size_of = |offset: u64| {
            let next = offsets.partition_point(|&o| o <= offset);
            offsets.get(next).copied().unwrap_or(data_bytes).saturating_sub(offset)
        };
        let key = |k: &str| ints.get(&format!("{architecture}.{k}")).copied();
        let n_blocks = key("block_count").unwrap_or(0).min(4096) as usize;
        let mut blocks = vec![0u64; n_blocks];
        let (mut output, mut other, mut embedding, mut n_vocab, mut tied) = (0u64, 0u64, 0u64, 0u64, true);
        for (name, offset, rows) in &table {
            let size = size_of(*offset);
            let block = name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|&i| i < n_blocks);
            match block {
                Some(i) => blocks[i] = blocks[i].saturating_add(size),
                None if name.starts_with("output") => {
                    output = output.saturating_add(size);
                    if name == "output.weight" {
                        tied = false;
                        n_vocab = *rows;
                    }
                }
                None => {
                    if name == "token_embd.weight" {
                        embedding = size;
                        if n_vocab == 0 {
                            n_vocab = *rows;
                        }
                    }
                    other = other.saturating_add(size);
                }
            }
        }
        if tied {
            // llama.cpp places a copy of the tied embedding on the output layer's device.
            output = output.saturating_add(embedding);
        }
        let n_embd = key("embedding_length").unwrap_or(0);
        let n_head = key("attention.head_count").unwrap_or(0);
        let n_head_kv = key("attention.head_count_kv").unwrap_or(n_head);
        let head_dim = n_embd.checked_div(n_head).unwrap_or(0);
        let k_len = key("attention.key_length").unwrap_or(head_dim);
        let v_len = key("attention.value_length").unwrap_or(head_dim);
        // f16 keys and values: 2 bytes each.
        let kv_per_token_per_block = n_head_kv.saturating_mul(k_len.saturating_add(v_len)).saturating_mul(2);
        Ok(GgufLayout { architecture, blocks, output, other, kv_per_token_per_block, n_vocab, n_head, file_bytes })
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
