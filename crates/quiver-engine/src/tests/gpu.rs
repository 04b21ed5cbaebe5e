//! Unit tests of `llama/gpu.rs` (`--gpu-layers` and how many layers fit) and of the GGUF layout
//! it reads (`models/gguf.rs`).

use super::*;
use crate::models::gguf_layout;

#[test]
fn parses_gpu_layers() {
    assert_eq!("auto".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
    assert_eq!(" AUTO ".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
    assert_eq!("0".parse::<GpuLayers>(), Ok(GpuLayers::Count(0)));
    assert_eq!("33".parse::<GpuLayers>(), Ok(GpuLayers::Count(33)));
    // More than any model has: all layers.
    assert_eq!("99999999999999999999999".parse::<GpuLayers>(), Ok(GpuLayers::Count(u32::MAX)));
    for bad in ["", " ", "-1", "+3", "1.5", "all", "auto2", "0x10", "１"] {
        let err = bad.parse::<GpuLayers>().unwrap_err();
        assert!(err.to_string().contains("\"auto\""), "{bad:?}: {err}");
    }
    assert_eq!(GpuLayers::Auto.to_string(), "auto");
    assert_eq!(GpuLayers::Count(7).to_string(), "7");
    assert_eq!(GpuLayers::default(), GpuLayers::Auto);
}

#[test]
fn auto_layers_fill_free_memory_from_the_last_block() {
    let blocks = [100, 100, 100, 100];
    // Everything fits: the 4 blocks, their KV and the output layer.
    assert_eq!(auto_layers(&blocks, 50, 10, 10_000, 0), 5);
    // Exactly the blocks with their KV, no room left for the output layer.
    assert_eq!(auto_layers(&blocks, 50, 10, 440, 0), 4);
    assert_eq!(auto_layers(&blocks, 50, 10, 490, 0), 5);
    // Two blocks and their KV.
    assert_eq!(auto_layers(&blocks, 50, 10, 220, 0), 2);
    assert_eq!(auto_layers(&blocks, 50, 10, 219, 0), 1);
    // The reserve comes off first.
    assert_eq!(auto_layers(&blocks, 50, 10, 440, 220), 2);
    assert_eq!(auto_layers(&blocks, 50, 10, 100, 200), 0);
    // The KV cache of all slots counts: with a big KV per block, fewer blocks fit.
    assert_eq!(auto_layers(&blocks, 50, 340, 1000, 0), 2);
    // Uneven blocks: the last ones are taken first and counting stops at the first that does not fit.
    assert_eq!(auto_layers(&[10, 500, 10], 0, 0, 100, 0), 1);
    // No memory, no blocks.
    assert_eq!(auto_layers(&blocks, 50, 10, 0, 0), 0);
    assert_eq!(auto_layers(&[], 50, 10, 100, 0), 1);
    // Sizes that overflow saturate instead of wrapping.
    assert_eq!(auto_layers(&[u64::MAX], u64::MAX, u64::MAX, u64::MAX, 0), 1);
    assert_eq!(auto_layers(&[u64::MAX, 1], 0, u64::MAX, u64::MAX - 1, 0), 0);
}

fn layout(blocks: usize) -> GgufLayout {
    GgufLayout {
        architecture: "llama".into(),
        blocks: vec![1 << 20; blocks],
        output: 4 << 20,
        other: 4 << 20,
        kv_per_token_per_block: 256,
        n_vocab: 1000,
        n_head: 4,
        file_bytes: 0,
    }
}

fn device(free: u64) -> GpuDevice {
    GpuDevice { index: 1, name: "Vulkan0".into(), description: "test".into(), memory_total: free, memory_free: free }
}

#[test]
fn layers_to_offload_counts_and_auto() {
    let l = layout(10);
    assert_eq!(l.offloadable_layers(), 11);
    // No GPU device: 0 whatever was asked.
    assert_eq!(layers_to_offload(GpuLayers::Auto, None, &l, 4096, 512), 0);
    assert_eq!(layers_to_offload(GpuLayers::Count(5), None, &l, 4096, 512), 0);
    // A count is capped at the model's layers.
    let big = device(1 << 40);
    assert_eq!(layers_to_offload(GpuLayers::Count(5), Some(&big), &l, 4096, 512), 5);
    assert_eq!(layers_to_offload(GpuLayers::Count(1000), Some(&big), &l, 4096, 512), 11);
    assert_eq!(layers_to_offload(GpuLayers::Count(0), Some(&big), &l, 4096, 512), 0);
    // Auto: all on a big device, none on one smaller than the reserve, some in between.
    assert_eq!(layers_to_offload(GpuLayers::Auto, Some(&big), &l, 4096, 512), 11);
    let reserve = reserve_bytes(&l, 512, 4096);
    assert!(reserve >= 256 << 20);
    assert_eq!(layers_to_offload(GpuLayers::Auto, Some(&device(reserve)), &l, 4096, 512), 0);
    let per_block = (1 << 20) + 256 * 4096;
    assert_eq!(layers_to_offload(GpuLayers::Auto, Some(&device(reserve + 3 * per_block)), &l, 4096, 512), 3);
    // More KV cells (more slots or a longer context) leave room for fewer blocks: each block's
    // KV doubles, and so do the attention scores in the reserve.
    let reserve_2x = reserve_bytes(&l, 512, 8192);
    assert!(reserve_2x > reserve);
    let per_block_2x = (1 << 20) + 256 * 8192;
    assert_eq!(layers_to_offload(GpuLayers::Auto, Some(&device(reserve_2x + 2 * per_block)), &l, 8192, 512), 1);
    assert_eq!(layers_to_offload(GpuLayers::Auto, Some(&device(reserve_2x + 2 * per_block_2x)), &l, 8192, 512), 2);
}

#[test]
fn device_labels_are_bounded() {
    let mut d = device(1);
    assert_eq!(d.label(), "Vulkan0 (test)");
    d.description = "é".repeat(100);
    assert!(d.label().len() <= MAX_DEVICE_LABEL);
    assert!(d.label().starts_with("Vulkan0 (é"));
    d.description.clear();
    assert_eq!(d.label(), "Vulkan0");
    assert_eq!(
        DeviceInfo::cpu(31),
        DeviceInfo { device: "cpu".into(), memory_total: 0, memory_free: 0, gpu_layers: 0, layers: 31 }
    );
}

fn kv_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn kv_u32(out: &mut Vec<u8>, key: &str, v: u32) {
    kv_string(out, key);
    out.extend(4u32.to_le_bytes());
    out.extend(v.to_le_bytes());
}

/// A GGUF with 2 blocks of 2 tensors, a tied output (no `output.weight`) and a token embedding.
fn sample_gguf(tied: bool) -> Vec<u8> {
    let mut tensors: Vec<(&str, u64, u64)> = vec![
        ("token_embd.weight", 0, 640),
        ("blk.0.attn_q.weight", 640, 96),
        ("blk.0.ffn_up.weight", 736, 160),
        ("blk.1.attn_q.weight", 896, 96),
        ("blk.1.ffn_up.weight", 992, 160),
        ("output_norm.weight", 1152, 32),
    ];
    if !tied {
        tensors.push(("output.weight", 1184, 640));
    }
    let mut v = b"GGUF".to_vec();
    v.extend(3u32.to_le_bytes());
    v.extend((tensors.len() as u64).to_le_bytes());
    v.extend(7u64.to_le_bytes());
    kv_string(&mut v, "general.architecture");
    v.extend(8u32.to_le_bytes());
    kv_string(&mut v, "llama");
    kv_u32(&mut v, "llama.block_count", 2);
    kv_u32(&mut v, "llama.embedding_length", 64);
    kv_u32(&mut v, "llama.attention.head_count", 4);
    kv_u32(&mut v, "llama.attention.head_count_kv", 2);
    kv_string(&mut v, "tokenizer.ggml.tokens");
    v.extend(9u32.to_le_bytes());
    v.extend(8u32.to_le_bytes());
    v.extend(1u64.to_le_bytes());
    kv_string(&mut v, "a");
    kv_u32(&mut v, "general.alignment", 32);
    for (name, offset, _) in &tensors {
        kv_string(&mut v, name);
        v.extend(2u32.to_le_bytes());
        v.extend(64u64.to_le_bytes());
        v.extend(10u64.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(offset.to_le_bytes());
    }
    while !v.len().is_multiple_of(32) {
        v.push(0);
    }
    let data: u64 = tensors.iter().map(|t| t.2).sum();
    v.extend(std::iter::repeat_n(0u8, data as usize));
    v
}

#[test]
fn gguf_layout_from_the_tensor_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, sample_gguf(false)).unwrap();
    let l = gguf_layout(&path).unwrap();
    assert_eq!(l.architecture, "llama");
    assert_eq!(l.blocks, vec![256, 256]);
    assert_eq!(l.output, 32 + 640);
    assert_eq!(l.other, 640);
    // 2 KV heads × (16 + 16) dims × 2 bytes.
    assert_eq!(l.kv_per_token_per_block, 128);
    assert_eq!(l.kv_per_token(), 256);
    assert_eq!(l.n_head, 4);
    assert_eq!(l.n_vocab, 10);
    assert_eq!(l.offloadable_layers(), 3);

    // Tied output: the embedding's copy goes with the output layer.
    std::fs::write(&path, sample_gguf(true)).unwrap();
    let l = gguf_layout(&path).unwrap();
    assert_eq!(l.output, 32 + 640);
    assert_eq!(l.blocks, vec![256, 256]);

    // Truncated headers are errors, never panics.
    let full = sample_gguf(false);
    for cut in (0..600).step_by(7) {
        std::fs::write(&path, &full[..cut]).unwrap();
        let _ = gguf_layout(&path);
    }
    std::fs::write(&path, b"not a model").unwrap();
    assert!(gguf_layout(&path).is_err());
}

/// The real default model, when the tests have it (`QUIVER_MODEL_DIR`).
#[test]
fn gguf_layout_of_the_default_model() {
    let Some(dir) = std::env::var_os("QUIVER_MODEL_DIR") else { return };
    let Some(entry) = crate::models::find(crate::models::DEFAULT_MODEL) else { return };
    let path = std::path::Path::new(&dir).join(&entry.file_name);
    if !path.exists() {
        return;
    }
    let l = gguf_layout(&path).unwrap();
    // SmolLM2-135M: 30 blocks, 3 KV heads of 64 dims, 49152 tokens, tied output.
    assert_eq!(l.blocks.len(), 30);
    assert_eq!(l.kv_per_token_per_block, 3 * 128 * 2);
    assert_eq!(l.n_vocab, 49_152);
    let total: u64 = l.blocks.iter().sum::<u64>() + l.other + l.output;
    assert!(total <= l.file_bytes + l.output, "{total} of {}", l.file_bytes);
    assert!(l.blocks.iter().all(|&b| b > 0 && b == l.blocks[0]), "{:?}", l.blocks);
}
