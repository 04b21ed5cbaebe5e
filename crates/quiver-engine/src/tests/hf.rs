//! Unit tests of `models/hf.rs`: split names, quantisation matching and picking, names.

use super::*;

fn file(path: &str) -> HubFile {
    HubFile { path: path.into(), size: Some(1), sha256: None }
}

fn paths(files: &[HubFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn split_names() {
    assert_eq!(split_part("m-00002-of-00003.gguf"), Some(("m", 2, 3)));
    assert_eq!(split_part("dir/a-b-00001-of-00001.GGUF"), Some(("dir/a-b", 1, 1)));
    for s in ["m-00004-of-00003.gguf", "m-00000-of-00003.gguf", "m-0001-of-0003.gguf", "m-00001-of-00003.bin", "m.gguf"]
    {
        assert_eq!(split_part(s), None, "{s}");
    }
    assert_eq!(
        all_parts("Q8/m-00002-of-00003.gguf"),
        ["Q8/m-00001-of-00003.gguf", "Q8/m-00002-of-00003.gguf", "Q8/m-00003-of-00003.gguf"]
    );
    assert_eq!(all_parts("m.gguf"), ["m.gguf"]);
}

#[test]
fn names_of_fetched_files() {
    assert_eq!(model_name("SmolLM2-135M-Instruct-Q4_K_M.gguf"), "smollm2-135m-instruct-q4_k_m");
    assert_eq!(model_name("Q8_0/Big-Model-Q8_0-00001-of-00004.gguf"), "big-model-q8_0");
    assert_eq!(model_name("weird name+é.GGUF"), "weird-name--");
    assert_eq!(model_name(".gguf"), "model");
    assert!(model_name(&format!("{}.gguf", "x".repeat(500))).len() <= 128);
}

#[test]
fn quantisations_match_between_separators() {
    assert!(quant_matches("SmolLM2-135M-Instruct-Q4_K_M.gguf", "q4_k_m"));
    assert!(quant_matches("model.Q4_K_M.gguf", "Q4_K_M"));
    assert!(quant_matches("Q8_0/model-00001-of-00002.gguf", "q8_0"));
    assert!(quant_matches("model-Q8_0-00001-of-00002.gguf", "Q8_0"));
    assert!(!quant_matches("model-Q4_K_M.gguf", "Q4_K"));
    assert!(!quant_matches("model-Q4_K_M.gguf", "K_M"));
    assert!(!quant_matches("model-Q4_0_4_4.gguf", "Q4_0"));
    assert!(!quant_matches("model-Q4_0.gguf", ""));
}

#[test]
fn picking_a_quantisation() {
    let listing = [
        file("README.md"),
        file("Tiny-Q4_K_M.gguf"),
        file("Tiny-Q4_K_S.gguf"),
        file("Tiny-q8_0.gguf"),
        file("mmproj-Tiny-Q8_0.gguf"),
        file("Big/Tiny-F16-00002-of-00002.gguf"),
        file("Big/Tiny-F16-00001-of-00002.gguf"),
    ];
    assert_eq!(paths(&pick(&listing, Some("Q4_K_M"), "o/r").unwrap()), ["Tiny-Q4_K_M.gguf"]);
    assert_eq!(paths(&pick(&listing, Some("Q8_0"), "o/r").unwrap()), ["Tiny-q8_0.gguf"]);
    assert_eq!(
        paths(&pick(&listing, Some("f16"), "o/r").unwrap()),
        ["Big/Tiny-F16-00001-of-00002.gguf", "Big/Tiny-F16-00002-of-00002.gguf"]
    );
    match pick(&listing, Some("Q5_K_M"), "o/r") {
        Err(e @ ModelError::NoSuchQuant { .. }) => {
            let message = e.to_string();
            assert!(message.contains("Q5_K_M") && message.contains("Tiny-Q4_K_S.gguf"), "{message}");
            assert!(!message.contains("mmproj"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match pick(&listing, None, "o/r") {
        Err(ModelError::AmbiguousQuant { candidates, .. }) => assert_eq!(candidates.len(), 4, "{candidates:?}"),
        other => panic!("{other:?}"),
    }
    let twice = [file("a/M-Q4_0.gguf"), file("b/M-Q4_0.gguf")];
    assert!(matches!(pick(&twice, Some("q4_0"), "o/r"), Err(ModelError::AmbiguousQuant { .. })));
    assert_eq!(paths(&pick(&twice[..1], None, "o/r").unwrap()), ["a/M-Q4_0.gguf"]);
    let missing_part = [file("M-Q4_0-00001-of-00003.gguf"), file("M-Q4_0-00003-of-00003.gguf")];
    assert!(matches!(pick(&missing_part, Some("Q4_0"), "o/r"), Err(ModelError::Hub { .. })));
}

#[test]
fn urls_are_encoded() {
    let hub = Hub { endpoint: "http://127.0.0.1:9/".into(), token: None };
    let r = HfRef { owner: "o".into(), repo: "r".into(), target: HfTarget::Quant(None), revision: "refs/pr/1".into() };
    assert_eq!(
        hub.resolve_url(&r, "sub/m Q.gguf").unwrap().as_str(),
        "http://127.0.0.1:9/o/r/resolve/refs%2Fpr%2F1/sub/m%20Q.gguf"
    );
    assert!(Hub { endpoint: "not a url".into(), token: None }.resolve_url(&r, "m.gguf").is_err());
}
