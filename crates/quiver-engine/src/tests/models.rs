//! Unit tests of `models/mod.rs` and `models/gguf.rs`.

use super::gguf::GgufReader;
use super::*;
use std::io::Cursor;

#[test]
fn hex_round_trip() {
    let e = &catalogue()[0];
    let s = hex(&e.sha256);
    assert_eq!(s, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert_eq!(parse_hex32(&s), Some(e.sha256));
    assert_eq!(parse_hex32(&s.to_uppercase()), Some(e.sha256));
    assert_eq!(parse_hex32(&s[1..]), None);
    assert_eq!(parse_hex32(&format!("{}g", &s[1..])), None);
    assert_eq!(parse_hex32(&"é".repeat(32)), None);
}

#[test]
fn catalogue_lookup() {
    assert_eq!(find(DEFAULT_MODEL).map(|e| e.size), Some(98_362_432));
    assert!(find("nope").is_none());
}

fn kv_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn sample_gguf(name: Option<&str>) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(3u32.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    v.extend((if name.is_some() { 5u64 } else { 4 }).to_le_bytes());
    kv_string(&mut v, "general.architecture");
    v.extend(8u32.to_le_bytes());
    kv_string(&mut v, "llama");
    kv_string(&mut v, "some.u32");
    v.extend(4u32.to_le_bytes());
    v.extend(7u32.to_le_bytes());
    kv_string(&mut v, "tokens");
    v.extend(9u32.to_le_bytes());
    v.extend(8u32.to_le_bytes());
    v.extend(2u64.to_le_bytes());
    kv_string(&mut v, "a");
    kv_string(&mut v, "bc");
    kv_string(&mut v, "scores");
    v.extend(9u32.to_le_bytes());
    v.extend(6u32.to_le_bytes());
    v.extend(3u64.to_le_bytes());
    v.extend([0u8; 12]);
    if let Some(name) = name {
        kv_string(&mut v, "general.name");
        v.extend(8u32.to_le_bytes());
        kv_string(&mut v, name);
    }
    v
}

fn parse(bytes: Vec<u8>) -> Result<Option<String>, ModelError> {
    GgufReader { r: Cursor::new(bytes) }.general_name()
}

#[test]
fn gguf_reads_general_name() {
    assert_eq!(parse(sample_gguf(Some("Tiny"))).ok(), Some(Some("Tiny".to_string())));
    assert_eq!(parse(sample_gguf(None)).ok(), Some(None));
}

#[test]
fn gguf_truncated_and_garbage() {
    let full = sample_gguf(Some("Tiny"));
    for cut in 0..full.len() {
        assert!(parse(full[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    assert!(parse(b"GGML\x03\0\0\0".to_vec()).is_err());
    let mut huge_string = full[..24].to_vec();
    huge_string.extend(u64::MAX.to_le_bytes());
    assert!(parse(huge_string).is_err());
    let mut seed = 99u64;
    for _ in 0..500 {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        for _ in 0..256 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            bytes.push((seed >> 56) as u8);
        }
        let _ = parse(bytes);
    }
}

#[test]
fn gguf_garbage_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"this is not a model").unwrap();
    assert!(matches!(gguf_general_name(&path), Err(ModelError::Gguf(_))));
    assert!(matches!(gguf_general_name(&dir.path().join("none")), Err(ModelError::Io { .. })));
}

#[test]
fn resolve_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let err = resolve_local(DEFAULT_MODEL, dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::NotFetched { .. }));
    assert!(err.to_string().contains("quiver model fetch smollm2-135m"), "{err}");
    match resolve_local("no-such-model", dir.path()) {
        Err(ModelError::Unknown { known, .. }) => assert!(known.contains(&DEFAULT_MODEL.into())),
        other => panic!("{other:?}"),
    }
    assert!(matches!(resolve_local("missing.gguf", dir.path()), Err(ModelError::Io { .. })));

    let entry = find(DEFAULT_MODEL).unwrap();
    std::fs::write(dir.path().join(&entry.file_name), b"x").unwrap();
    std::fs::write(dir.path().join("other.gguf"), b"x").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    let m = resolve_local(DEFAULT_MODEL, dir.path()).unwrap();
    assert_eq!(m.path, dir.path().join(&entry.file_name));
    assert_eq!(m.entry, Some(entry));
    let other = dir.path().join("other.gguf");
    let m = resolve_local(other.to_str().unwrap(), dir.path()).unwrap();
    assert_eq!((m.name.as_str(), m.entry), ("other", None));

    let names: Vec<String> = list_local(dir.path()).into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec![DEFAULT_MODEL.to_string(), "other".to_string()]);
    assert!(list_local(&dir.path().join("absent")).is_empty());
}

#[test]
fn sha256_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"abc").unwrap();
    let mut calls = Vec::new();
    let sum = sha256_file(&path, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(hex(&sum), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(calls, vec![(3, 3)]);
}
