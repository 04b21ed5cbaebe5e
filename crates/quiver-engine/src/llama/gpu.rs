//! Offloading layers to a GPU: `--gpu-layers N|auto`, the devices llama.cpp's build has (ggml's
//! backend device list: CUDA, Vulkan, Metal when built with the feature), and how many layers
//! fit in a device's free memory.

use std::fmt;
use std::str::FromStr;

use llama_cpp_2::{LlamaBackendDeviceType, list_llama_ggml_backend_devices};
use serde::{Deserialize, Serialize};

use crate::models::GgufLayout;

/// How many layers to offload to the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuLayers {
    /// As many as fit in the device's free memory beside the KV cache of all slots (0 without
    /// a GPU device).
    #[default]
    Auto,
    /// This many (the last blocks first, then the output layer); more than the model has means
    /// all of them.
    Count(u32),
}

/// A `--gpu-layers` value that is neither `auto` nor a layer count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a number of layers (0 = CPU only) or \"auto\"; got {0:?}")]
pub struct GpuLayersError(pub String);

impl FromStr for GpuLayers {
    type Err = GpuLayersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(GpuLayers::Auto);
        }
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GpuLayersError(s.to_owned()));
        }
        // Any count past the model's layers means all of them.
        Ok(GpuLayers::Count(t.parse::<u64>().map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX))))
    }
}

impl fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuLayers::Auto => f.write_str("auto"),
            GpuLayers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Where an engine's layers run, as `quiver status` and heartbeats show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `cpu`, or ggml's device name with its description, e.g. `Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))`.
    pub device: String,
    /// The device's memory, total and free when the model was loaded (0 on the CPU).
    pub memory_total: u64,
    pub memory_free: u64,
    /// Layers offloaded to the device.
    pub gpu_layers: u32,
    /// Layers the model has (blocks and the output layer; 0 when unknown).
    pub layers: u32,
}

impl DeviceInfo {
    /// Everything on the CPU.
    pub fn cpu(layers: u32) -> DeviceInfo {
        DeviceInfo { device: "cpu".into(), memory_total: 0, memory_free: 0, gpu_layers: 0, layers }
    }
}

/// A GPU device of ggml's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// Index in ggml's device list (for `LlamaModelParams::with_devices`).
    pub index: usize,
    pub name: String,
    pub description: String,
    pub memory_total: u64,
    pub memory_free: u64,
}

impl GpuDevice {
    /// Its name for people and heartbeats (at most [`MAX_DEVICE_LABEL`] bytes).
    pub fn label(&self) -> String {
        let label = if self.description.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.description)
        };
        truncate(label, MAX_DEVICE_LABEL)
    }
}

/// Longest device label carried (heartbeats refuse longer ones).
pub const MAX_DEVICE_LABEL: usize = 64;

fn truncate(mut s: String, max: usize) -> String {
    crate::stream::truncate_at_char(&mut s, max);
    s
}

/// The GPU with the most free memory among ggml's devices (GPUs and integrated GPUs; the CPU
/// and accelerators such as BLAS hold no offloaded layers). `None` in a CPU-only build. Needs
/// the llama.cpp backend initialised.
pub fn best_gpu() -> Option<GpuDevice> {
    list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu))
        .map(|d| GpuDevice {
            index: d.index,
            name: d.name,
            description: d.description,
            memory_total: d.memory_total as u64,
            memory_free: d.memory_free as u64,
        })
        .max_by_key(|d| d.memory_free)
}

/// Memory a device keeps free beside weights and KV cache: llama.cpp's compute buffers (the
/// logits of a full batch and one batch's attention scores over all cells, f32) and 256 MiB for
/// the driver and everything else.
pub fn reserve_bytes(layout: &GgufLayout, batch: u64, kv_cells: u64) -> u64 {
    let logits = batch.saturating_mul(layout.n_vocab);
    let scores = batch.saturating_mul(kv_cells).saturating_mul(layout.n_head.max(1));
    (256u64 << 20).saturating_add(logits.saturating_add(scores).saturating_mul(4))
}

/// The layers to offload for `auto`: llama.cpp offloads the last `n` blocks (and, when `n`
/// exceeds the blocks, the output layer), so blocks are taken from the last one back, each with
/// its share of the KV cache (`kv_per_block`: all slots' cells in one block), while they fit in
/// `free` less `reserve`; the output layer once every block is in. Returns 0..=blocks+1.
pub fn auto_layers(blocks: &[u64], output: u64, kv_per_block: u64, free: u64, reserve: u64) -> u32 {
    let mut budget = free.saturating_sub(reserve);
    let mut n: u32 = 0;
    for &block in blocks.iter().rev() {
        let need = block.saturating_add(kv_per_block);
        if need > budget {
            return n;
        }
        budget -= need;
        n = n.saturating_add(1);
    }
    if output <= budget { n.saturating_add(1) } else { n }
}

/// The layers to offload: a count capped at the model's layers (blocks + output), or for `auto`
/// what [`auto_layers`] fits on `device`; 0 without a device.
pub fn layers_to_offload(
    want: GpuLayers,
    device: Option<&GpuDevice>,
    layout: &GgufLayout,
    kv_cells: u64,
    batch: u64,
) -> u32 {
    let Some(device) = device else { return 0 };
    let all = layout.offloadable_layers();
    match want {
        GpuLayers::Count(n) => n.min(all),
        GpuLayers::Auto => {
            let kv_per_block = layout.kv_per_token_per_block.saturating_mul(kv_cells);
            let reserve = reserve_bytes(layout, batch, kv_cells);
            auto_layers(&layout.blocks, layout.output, kv_per_block, device.memory_free, reserve)
        }
    }
}

#[cfg(test)]
#[path = "../tests/gpu.rs"]
mod tests;
