//! Unit tests of `models/reference.rs`: the forms of model references.

use super::*;

fn hf(owner: &str, repo: &str, target: HfTarget, revision: &str) -> ModelRef {
    ModelRef::Hf(HfRef { owner: owner.into(), repo: repo.into(), target, revision: revision.into() })
}

fn ollama(namespace: &str, name: &str, tag: &str) -> ModelRef {
    ModelRef::Ollama(OllamaRef { namespace: namespace.into(), name: name.into(), tag: tag.into() })
}

fn parse(s: &str) -> ModelRef {
    ModelRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn hugging_face_forms() {
    let file = |f: &str| HfTarget::File(f.into());
    assert_eq!(
        parse("hf:bartowski/Tiny-GGUF/Tiny-Q4_K_M.gguf"),
        hf("bartowski", "Tiny-GGUF", file("Tiny-Q4_K_M.gguf"), "main")
    );
    assert_eq!(parse("hf:a/b/sub/dir/x.GGUF@v1.0"), hf("a", "b", file("sub/dir/x.GGUF"), "v1.0"));
    assert_eq!(parse("hf:a/b/x.gguf@refs/pr/1"), hf("a", "b", file("x.gguf"), "refs/pr/1"));
    assert_eq!(parse("hf:a/b:Q4_K_M"), hf("a", "b", HfTarget::Quant(Some("Q4_K_M".into())), "main"));
    assert_eq!(parse("hf:a/b:q8_0@0123abc"), hf("a", "b", HfTarget::Quant(Some("q8_0".into())), "0123abc"));
    assert_eq!(parse("hf:a/b"), hf("a", "b", HfTarget::Quant(None), "main"));
    for s in ["hf:a/b/x.gguf", "hf:a/b/x.gguf@dev", "hf:a/b:Q4_K_M", "hf:a/b:q5_0@refs/pr/2", "hf:a/b"] {
        match parse(s) {
            ModelRef::Hf(r) => assert_eq!(r.to_string(), s),
            other => panic!("{s}: {other:?}"),
        }
    }
    let ModelRef::Hf(r) = parse("hf:Org/Repo:Q4_0@main") else { panic!() };
    assert_eq!((r.repo_id(), r.to_string()), ("Org/Repo".to_string(), "hf:Org/Repo:Q4_0".to_string()));
}

#[test]
fn ollama_forms() {
    assert_eq!(parse("ollama:smollm2"), ollama("library", "smollm2", "latest"));
    assert_eq!(parse("ollama:llama3.2:1b"), ollama("library", "llama3.2", "1b"));
    assert_eq!(parse("ollama:someone/model:q4"), ollama("someone", "model", "q4"));
    assert_eq!(parse("ollama:someone/model"), ollama("someone", "model", "latest"));
    let ModelRef::Ollama(r) = parse("ollama:someone/model") else { panic!() };
    assert_eq!((r.network_name(), r.to_string()), ("someone-model".into(), "ollama:someone/model:latest".into()));
    let ModelRef::Ollama(r) = parse("ollama:qwen2.5:0.5b") else { panic!() };
    assert_eq!((r.network_name(), r.to_string()), ("qwen2.5".into(), "ollama:qwen2.5:0.5b".into()));
}

#[test]
fn names_and_paths() {
    assert_eq!(parse("smollm2-135m"), ModelRef::Catalogue("smollm2-135m".into()));
    assert_eq!(parse("x.gguf"), ModelRef::Path("x.gguf".into()));
    assert_eq!(parse("./models/x"), ModelRef::Path("./models/x".into()));
}

#[test]
fn bad_forms_are_refused() {
    let long = format!("hf:a/b/{}.gguf", "x".repeat(2000));
    for s in [
        "hf:",
        "hf:owner",
        "hf:/repo/x.gguf",
        "hf:owner//x.gguf",
        "hf:owner/repo/x.bin",
        "hf:owner/repo/../x.gguf",
        "hf:owner/repo/.hidden.gguf",
        "hf:owner/repo/a//x.gguf",
        "hf:owner/repo:",
        "hf:owner/repo:Q4 K",
        "hf:owner/repo/x.gguf@",
        "hf:owner/repo/x.gguf@a/../b",
        "hf:ow ner/repo:Q4_0",
        "hf:owner/re?po:Q4_0",
        long.as_str(),
        "ollama:",
        "ollama::latest",
        "ollama:name:",
        "ollama:../name",
        "ollama:a/b/c",
        "ollama:na me",
        "ollama:name:ta/g",
        "",
    ] {
        match ModelRef::parse(s) {
            Err(e @ ModelError::BadReference { .. }) => {
                assert!(e.to_string().contains("model reference"), "{e}");
            }
            other => panic!("{s:?} gave {other:?}"),
        }
    }
}
