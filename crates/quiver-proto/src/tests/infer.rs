//! Unit tests of `infer.rs`.

use super::*;
use crate::{ChatMessage, EmbedInput};

fn params() -> SamplingParams {
    SamplingParams { max_tokens: 10, temperature: 0.0, top_p: 1.0, seed: 1, stop: vec![], ..Default::default() }
}

#[test]
fn requests_are_validated() {
    let ok = InferRequest {
        request_id: vec![1; 16],
        model: "smollm2-135m".into(),
        model_sha256: vec![],
        input: Some(PromptInput {
            prompt: String::new(),
            messages: vec![ChatMessage { role: "user".into(), content: "hi".into(), ..Default::default() }],
            ..Default::default()
        }),
        params: Some(params()),
        embed: None,
    };
    assert!(ok.validate().is_ok());
    let mut bad = ok.clone();
    bad.model = "../etc/passwd".into();
    assert!(bad.validate().is_err());
    let mut bad = ok.clone();
    bad.params = Some(SamplingParams { temperature: f32::NAN, ..params() });
    assert!(bad.validate().is_err());
    let mut bad = ok.clone();
    bad.params = Some(SamplingParams { max_tokens: 0, ..params() });
    assert!(bad.validate().is_err());
    let mut bad = ok.clone();
    bad.input = Some(PromptInput {
        prompt: "x".into(),
        messages: vec![ChatMessage { role: "user".into(), content: "hi".into(), ..Default::default() }],
        ..Default::default()
    });
    assert!(bad.validate().is_err());
    let mut bad = ok;
    bad.input = Some(PromptInput {
        prompt: String::new(),
        messages: vec![ChatMessage { role: "root".into(), content: "x".into(), ..Default::default() }],
        ..Default::default()
    });
    assert!(bad.validate().is_err());
}

#[test]
fn receipts_verify_only_for_their_signer() {
    let kp = Keypair::generate_ed25519();
    let me = kp.public().to_peer_id();
    let r = Receipt { request_id: vec![2; 16], provider: me.to_bytes(), completion_tokens: 5, ..Default::default() };
    let signed = r.sign(&kp);
    assert_eq!(Receipt::verify(signed.clone(), &me).unwrap(), r);
    let other = PeerId::random();
    assert!(Receipt::verify(signed.clone(), &other).is_err());
    let mut tampered = signed;
    tampered.payload[0] ^= 1;
    assert!(Receipt::verify(tampered, &me).is_err());
    // Signed by the key, but naming someone else.
    let r2 = Receipt { provider: other.to_bytes(), ..r };
    assert!(Receipt::verify(r2.sign(&kp), &me).is_err());
}

#[test]
fn embedding_requests_and_frames() {
    let texts = EmbedInput { inputs: vec!["a cat".into(), "a dog".into()] };
    let ok = InferRequest {
        request_id: vec![1; JOB_ID_LEN],
        model: "m".into(),
        model_sha256: vec![],
        input: None,
        params: None,
        embed: Some(texts.clone()),
    };
    ok.validate().expect("valid");
    assert_eq!(ok.input_hash(), texts.hash());
    let mut both = ok.clone();
    both.params = Some(params());
    assert!(both.validate().is_err(), "texts to embed and sampling parameters");
    let mut none = ok.clone();
    none.embed = Some(EmbedInput { inputs: vec![] });
    assert!(none.validate().is_err());
    let mut empty = ok;
    empty.embed = Some(EmbedInput { inputs: vec!["x".into(), String::new()] });
    assert!(empty.validate().is_err());

    let v = vec![0.5f32, -0.25, 1.0];
    assert_eq!(embedding_values(&embedding_bytes(&v)), Some(v.clone()));
    assert_eq!(embedding_values(&[0, 0, 0]), None, "not whole f32s");
    assert_eq!(embedding_values(&embedding_bytes(&[f32::NAN])), None);
    assert_eq!(embedding_values(&[]), None);
    assert_eq!(embedding_values(&vec![0; 4 * (MAX_EMBEDDING_DIMS + 1)]), None);
    assert_ne!(embeddings_hash(&[v.clone()]), embeddings_hash(&[vec![0.5, -0.25, 1.5]]));
}
