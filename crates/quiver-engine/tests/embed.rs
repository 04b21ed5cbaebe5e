//! Embeddings with the real default model (a chat model: mean-pooled hidden states).

use futures::executor::block_on;
use quiver_engine::{Engine, EngineError};

use super::llama::engine;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn similar_texts_are_closer_than_unrelated_ones() {
    let e = engine();
    assert!(e.embeds());
    let texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "The stock market fell sharply today."]
        .map(String::from)
        .to_vec();
    let out = block_on(e.embed(texts.clone())).expect("embeds");
    assert_eq!(out.vectors.len(), 3);
    let dims = out.vectors[0].len();
    assert!(dims > 100, "{dims} dimensions");
    for v in &out.vectors {
        assert_eq!(v.len(), dims);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "normalised: {norm}");
    }
    let (cat, kitten, stocks) = (&out.vectors[0], &out.vectors[1], &out.vectors[2]);
    assert!(cosine(cat, kitten) > cosine(cat, stocks), "{} vs {}", cosine(cat, kitten), cosine(cat, stocks));
    assert!(out.prompt_tokens > 15);

    // The same text gives the same vector, alone or in a batch.
    let again = block_on(e.embed(vec![texts[1].clone()])).expect("embeds");
    assert_eq!(again.vectors[0], out.vectors[1]);
}

#[test]
fn bad_inputs_are_refused() {
    let e = engine();
    assert!(matches!(block_on(e.embed(vec![])), Err(EngineError::InvalidRequest(_))));
    let long = "word ".repeat(5000);
    assert!(matches!(block_on(e.embed(vec![long])), Err(EngineError::ContextOverflow { .. })));
}
