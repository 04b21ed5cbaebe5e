//! Unit tests of `heartbeat.rs`.

use super::*;
use crate::ModelInfo;

fn sample(kp: &Keypair) -> Heartbeat {
    Heartbeat {
        peer_id: kp.public().to_peer_id().to_bytes(),
        agent_version: "quiver/test".into(),
        listen_addrs: vec![vec![4, 127, 0, 0, 1, 6, 0x0f, 0xa1]],
        models: vec![ModelInfo { name: "m".into(), sha256: vec![7; 32], ..Default::default() }],
        cpu_load: 0.25,
        free_slots: 2,
        uptime_secs: 10,
        timestamp_ms: 1_700_000_000_000,
        seq: 3,
        queue_depth: 0,
        tokens_per_sec: 150.0,
        batch_tokens_per_sec: 400.0,
        network_size_estimate: 950,
    }
}

#[test]
fn round_trip() {
    let kp = Keypair::generate_ed25519();
    let hb = sample(&kp);
    let got = SignedHeartbeat::decode(&hb.sign_and_encode(&kp)).unwrap();
    assert_eq!(got.peer_id, kp.public().to_peer_id());
    assert_eq!(got.heartbeat, hb);
}

#[test]
fn heartbeat_for_another_peer_is_refused() {
    let kp = Keypair::generate_ed25519();
    let other = Keypair::generate_ed25519();
    let hb = sample(&other);
    assert!(matches!(SignedHeartbeat::decode(&hb.sign_and_encode(&kp)), Err(ProtoError::PeerMismatch { .. })));
}

#[test]
fn invalid_fields_are_refused() {
    let kp = Keypair::generate_ed25519();
    let mut hb = sample(&kp);
    hb.cpu_load = f32::NAN;
    assert!(SignedHeartbeat::decode(&hb.sign_and_encode(&kp)).is_err());
    let mut hb = sample(&kp);
    hb.models[0].sha256 = vec![1; 3];
    assert!(SignedHeartbeat::decode(&hb.sign_and_encode(&kp)).is_err());
    let mut hb = sample(&kp);
    hb.listen_addrs = vec![vec![1]; MAX_LISTEN_ADDRS + 1];
    assert!(SignedHeartbeat::decode(&hb.sign_and_encode(&kp)).is_err());
    let mut hb = sample(&kp);
    hb.network_size_estimate = MAX_NETWORK_SIZE_ESTIMATE + 1;
    assert!(SignedHeartbeat::decode(&hb.sign_and_encode(&kp)).is_err());
    hb.network_size_estimate = MAX_NETWORK_SIZE_ESTIMATE;
    assert!(SignedHeartbeat::decode(&hb.sign_and_encode(&kp)).is_ok());
}

#[test]
fn device_fields_are_checked() {
    let kp = Keypair::generate_ed25519();
    let decode = |hb: &Heartbeat| SignedHeartbeat::decode(&hb.sign_and_encode(&kp));
    let mut hb = sample(&kp);
    hb.models[0] = ModelInfo {
        device: "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))".into(),
        gpu_layers: 31,
        layers: 31,
        device_memory_total: 24 << 30,
        device_memory_free: 20 << 30,
        ..hb.models[0].clone()
    };
    assert_eq!(decode(&hb).unwrap().heartbeat, hb);
    let ok = hb.clone();
    // Too long a device name, or a control character in it.
    hb.models[0].device = "x".repeat(MAX_DEVICE_LEN + 1);
    assert!(decode(&hb).is_err());
    hb.models[0].device = "GPU\n0".into();
    assert!(decode(&hb).is_err());
    // More layers offloaded than the model has, or an absurd layer count.
    let mut hb = ok.clone();
    hb.models[0].gpu_layers = 32;
    assert!(decode(&hb).is_err());
    hb.models[0].layers = MAX_LAYERS + 1;
    hb.models[0].gpu_layers = 1;
    assert!(decode(&hb).is_err());
    // More free memory than there is.
    let mut hb = ok.clone();
    hb.models[0].device_memory_free = hb.models[0].device_memory_total + 1;
    assert!(decode(&hb).is_err());
    // Old nodes send none of these fields: valid, and read as the CPU with nothing offloaded.
    let old = sample(&kp);
    let got = decode(&old).unwrap().heartbeat;
    assert_eq!((got.models[0].device.as_str(), got.models[0].gpu_layers), ("", 0));
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..2048 {
        let bytes: Vec<u8> = (0..len % 300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        assert!(SignedHeartbeat::decode(&bytes).is_err());
    }
    assert!(matches!(SignedHeartbeat::decode(&vec![0u8; MAX_HEARTBEAT_BYTES + 1]), Err(ProtoError::TooLarge { .. })));
}
