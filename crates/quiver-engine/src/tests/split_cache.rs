use super::*;

/// A GGUF v3 file with the tensors `(name, f32 values)`, 32-byte aligned.
fn gguf(tensors: &[(&str, Vec<f32>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.alignment";
    out.extend_from_slice(&(key.len() as u64).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&4u32.to_le_bytes()); // uint32
    out.extend_from_slice(&32u32.to_le_bytes());
    let mut offset = 0u64;
    for (name, values) in tensors {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // one dimension
        out.extend_from_slice(&(values.len() as u64).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
        out.extend_from_slice(&offset.to_le_bytes());
        offset += (values.len() as u64 * 4).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, values) in tensors {
        let start = out.len();
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        while (out.len() - start) % 32 != 0 {
            out.push(0);
        }
    }
    out
}

#[test]
fn fnv1a64_is_the_reference_hash() {
    // Test vectors of the FNV-1a 64-bit hash.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    assert_eq!(cache_name(0xab), "00000000000000ab");
}

#[test]
fn a_members_own_gguf_fills_the_cache_with_its_tensors_in_range() {
    let dir = tempfile::tempdir().unwrap();
    // 2.75 Mi floats = 11 MiB: offered by ggml's client; 64 Ki floats = 256 KiB and 1,000
    // floats: by the head's relay (to a member holding the model, whatever their size); a big
    // one in block 1.
    let big: Vec<f32> = (0..(11 << 18)).map(|i| i as f32 * 0.5).collect();
    let mid: Vec<f32> = (0..(1 << 16)).map(|i| i as f32 * 0.25).collect();
    let small: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let other: Vec<f32> = (0..(11 << 18)).map(|i| -(i as f32)).collect();
    let path = dir.path().join("m.gguf");
    std::fs::write(
        &path,
        gguf(&[
            ("blk.0.ffn_up.weight", big.clone()),
            ("blk.0.attn_norm.weight", small.clone()),
            ("blk.0.attn_q.weight", mid.clone()),
            ("blk.1.ffn_up.weight", other),
        ]),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let filled = fill_from_gguf(&path, &cache, 0..1).unwrap();
    let want = (11 << 20) + (256 << 10) + 4000;
    assert_eq!(filled, Filled { written: 3, present: 0, bytes: want });
    for tensor in [&big, &mid, &small] {
        let bytes: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = cache.join(cache_name(fnv1a64(&bytes)));
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bytes,
            "the cache file holds the tensor's bytes, named by their hash"
        );
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3, "nothing else: not block 1");
    // Again: already there.
    assert_eq!(fill_from_gguf(&path, &cache, 0..1).unwrap(), Filled { written: 0, present: 3, bytes: want });
    assert_eq!(fill_from_gguf(&path, &cache, 1..2).unwrap().written, 1);
}

#[test]
fn a_tensor_past_the_end_of_its_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<f32> = vec![1.0; 11 << 18];
    let mut bytes = gguf(&[("blk.0.ffn_up.weight", big)]);
    bytes.truncate(bytes.len() - 4096);
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    assert!(fill_from_gguf(&path, &dir.path().join("cache"), 0..1).is_err());
}
