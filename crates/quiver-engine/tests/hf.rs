//! Fetching from a Hugging Face hub: a real HTTP server on 127.0.0.1 that answers as the hub
//! does (the file listing, the resolve route's redirect with `X-Linked-Etag`/`X-Linked-Size`,
//! Range requests on the redirect's target): by file and by quantisation, resuming after a cut
//! connection and after an earlier run, a wrong sha256 refused with nothing left behind,
//! `HF_TOKEN` sent as a bearer token, a split GGUF fetched whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{FakeServer, Piece, Request, response};
use quiver_engine::models::hf::{self, Hub};
use quiver_engine::models::{FetchProgress, HfRef, ModelError, ModelRef, hex, list_local, resolve_local};
use sha2::{Digest, Sha256};

/// How the test hub behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Cut the connection after this many body bytes on the first download.
    cut_first_at: Option<usize>,
    /// Claim this sha256 instead of the true one.
    claimed_sha256: Option<String>,
    /// Answer 401 without this bearer token.
    token: Option<String>,
}

fn bytes(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(seed) % 251) as u8).collect()
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// A hub serving repository `o/r` at revision `main` with `files`.
async fn hub(files: Vec<(&str, Vec<u8>)>, behaviour: Behaviour) -> (FakeServer, Hub) {
    let files: Vec<(String, Vec<u8>)> = files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
    let downloads = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(move |r| answer(r, &files, &behaviour, &downloads)).await;
    let hub = Hub { endpoint: server.url(""), token: None };
    (server, hub)
}

fn answer(r: &Request, files: &[(String, Vec<u8>)], how: &Behaviour, downloads: &AtomicUsize) -> Vec<Piece> {
    let path = r.path();
    let authorised = how.token.as_ref().is_none_or(|t| r.header("authorization") == Some(format!("Bearer {t}")));
    if (path.starts_with("/api/") || path.contains("/resolve/")) && !authorised {
        return response("401 Unauthorized", "application/json", br#"{"error":"Invalid credentials"}"#);
    }
    if path == "/api/models/o/r/tree/main?recursive=true" {
        let mut listing: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, b)| {
                serde_json::json!({"type": "file", "oid": "0123", "size": b.len(), "path": p,
                    "lfs": {"oid": sha(b), "size": b.len(), "pointerSize": 134}})
            })
            .collect();
        listing.push(serde_json::json!({"type": "file", "oid": "4567", "size": 12, "path": "README.md"}));
        listing.push(serde_json::json!({"type": "directory", "oid": "89ab", "size": 0, "path": "sub"}));
        return response("200 OK", "application/json", serde_json::Value::from(listing).to_string().as_bytes());
    }
    if let Some(file) = path.strip_prefix("/o/r/resolve/main/") {
        let Some((_, b)) = files.iter().find(|(p, _)| p == file) else {
            return response("404 Not Found", "text/plain", b"Entry not found");
        };
        let etag = how.claimed_sha256.clone().unwrap_or_else(|| sha(b));
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: /cdn/{file}?signed=1\r\nX-Linked-Etag: \"{etag}\"\r\n\
             X-Linked-Size: {}\r\nETag: W/\"0123\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b.len()
        );
        return vec![Piece::Bytes(head.into_bytes())];
    }
    if let Some(file) = path.strip_prefix("/cdn/").and_then(|p| p.strip_suffix("?signed=1")) {
        let Some((_, b)) = files.iter().find(|(p, _)| p == file) else {
            return response("404 Not Found", "text/plain", b"no");
        };
        let n = downloads.fetch_add(1, Ordering::SeqCst);
        if let Some(range) = r.header("range") {
            let from: usize = range.strip_prefix("bytes=").and_then(|s| s.strip_suffix('-')).unwrap().parse().unwrap();
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                b.len() - 1,
                b.len(),
                b.len() - from
            );
            return vec![Piece::Bytes(head.into_bytes()), Piece::Bytes(b[from..].to_vec())];
        }
        if let (Some(cut), 0) = (how.cut_first_at, n) {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len());
            return vec![Piece::Bytes(head.into_bytes()), Piece::Bytes(b[..cut].to_vec())];
        }
        return response("200 OK", "application/octet-stream", b);
    }
    response("404 Not Found", "text/plain", b"no")
}

fn reference(s: &str) -> HfRef {
    match ModelRef::parse(s).unwrap() {
        ModelRef::Hf(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Every file under `dir`, relative, sorted (`.part` files and records included).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn cdn_requests(server: &FakeServer) -> Vec<Request> {
    server.requests().into_iter().filter(|r| r.path().starts_with("/cdn/")).collect()
}

async fn fetch(r: &str, dir: &Path, hub: &Hub) -> Result<quiver_engine::models::LocalModel, ModelError> {
    hf::fetch(&reference(r), dir, hub, &mut |_| {}).await
}

#[tokio::test]
async fn fetch_by_file() {
    let payload = bytes(7, 300_000);
    let (server, hub) = hub(vec![("Tiny-Q4_K_M.gguf", payload.clone())], Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let r = reference("hf:o/r/Tiny-Q4_K_M.gguf");
    let model = hf::fetch(&r, dir.path(), &hub, &mut |p| events.push(p)).await.unwrap();
    let path: PathBuf = dir.path().join("hf/o/r/Tiny-Q4_K_M.gguf");
    assert_eq!(model.path, path);
    assert_eq!(model.name, "tiny-q4_k_m");
    assert_eq!(model.sha256.map(|s| hex(&s)), Some(sha(&payload)));
    assert_eq!(model.details.as_deref(), Some("hf:o/r/Tiny-Q4_K_M.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    assert_eq!(tree(dir.path()), ["hf/o/r/.Tiny-Q4_K_M.gguf.quiver.json", "hf/o/r/Tiny-Q4_K_M.gguf"]);
    assert_eq!(events.first(), Some(&FetchProgress::Source(server.url("/o/r/resolve/main/Tiny-Q4_K_M.gguf"))));
    let total = Some(payload.len() as u64);
    assert!(events.contains(&FetchProgress::Downloading { done: payload.len() as u64, total }), "{events:?}");
    assert_eq!(events.last(), Some(&FetchProgress::Done(path.clone())));

    // Found again without the network, by file and by quantisation, and listed.
    for s in ["hf:o/r/Tiny-Q4_K_M.gguf", "hf:o/r:q4_k_m", "hf:o/r"] {
        let found = resolve_local(s, dir.path()).unwrap();
        assert_eq!((found.path.as_path(), found.sha256), (path.as_path(), model.sha256), "{s}");
    }
    assert!(matches!(resolve_local("hf:o/r:Q8_0", dir.path()), Err(ModelError::NotFetched { .. })));
    assert!(matches!(resolve_local("hf:o/r/Tiny-Q4_K_M.gguf@v2", dir.path()), Err(ModelError::NotFetched { .. })));
    let listed: Vec<String> = list_local(dir.path()).into_iter().map(|m| m.name).collect();
    assert_eq!(listed, ["tiny-q4_k_m"]);

    // Fetched again: checked against the hub's sha256, not downloaded.
    fetch("hf:o/r/Tiny-Q4_K_M.gguf", dir.path(), &hub).await.unwrap();
    assert_eq!(cdn_requests(&server).len(), 1);

    // A file the hub does not have.
    let err = fetch("hf:o/r/None.gguf", dir.path(), &hub).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn fetch_by_quantisation() {
    let files = vec![
        ("Tiny-Q4_K_M.gguf", bytes(3, 10_000)),
        ("Tiny-Q4_K_S.gguf", bytes(5, 10_001)),
        ("Tiny-Q8_0.gguf", bytes(11, 10_002)),
        ("mmproj-Tiny-f16.gguf", bytes(13, 10_003)),
    ];
    let q8 = files[2].1.clone();
    let (server, hub) = hub(files, Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let model = fetch("hf:o/r:q8_0", dir.path(), &hub).await.unwrap();
    assert_eq!((model.name.as_str(), std::fs::read(&model.path).unwrap()), ("tiny-q8_0", q8));
    assert_eq!(model.details.as_deref(), Some("hf:o/r/Tiny-Q8_0.gguf"));
    let fetched: Vec<String> = cdn_requests(&server).iter().map(|r| r.path().to_string()).collect();
    assert_eq!(fetched, ["/cdn/Tiny-Q8_0.gguf?signed=1"]);

    let err = fetch("hf:o/r:Q5_K_M", dir.path(), &hub).await.unwrap_err();
    assert!(matches!(err, ModelError::NoSuchQuant { .. }), "{err:?}");
    assert!(err.to_string().contains("Tiny-Q4_K_S.gguf"), "{err}");
    let err = fetch("hf:o/r", dir.path(), &hub).await.unwrap_err();
    assert!(matches!(err, ModelError::AmbiguousQuant { .. }), "{err:?}");
    assert!(err.to_string().contains("hf:o/r:QUANT"), "{err}");
    assert_eq!(cdn_requests(&server).len(), 1);
}

#[tokio::test]
async fn resumes_after_a_cut_connection() {
    let payload = bytes(17, 500_000);
    let cut = 123_457;
    let behaviour = Behaviour { cut_first_at: Some(cut), ..Behaviour::default() };
    let (server, hub) = hub(vec![("Tiny-Q4_0.gguf", payload.clone())], behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let model = fetch("hf:o/r/Tiny-Q4_0.gguf", dir.path(), &hub).await.unwrap();
    assert_eq!(std::fs::read(&model.path).unwrap(), payload);
    let cdn = cdn_requests(&server);
    assert_eq!(cdn.len(), 2, "{cdn:?}");
    assert_eq!(cdn[0].header("range"), None);
    assert_eq!(cdn[1].header("range"), Some(format!("bytes={cut}-")));
    assert_eq!(tree(dir.path()), ["hf/o/r/.Tiny-Q4_0.gguf.quiver.json", "hf/o/r/Tiny-Q4_0.gguf"]);
}

#[tokio::test]
async fn resumes_a_part_left_by_an_earlier_run() {
    let payload = bytes(19, 200_000);
    let (server, hub) = hub(vec![("Tiny-Q4_0.gguf", payload.clone())], Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("hf/o/r");
    std::fs::create_dir_all(&repo).unwrap();
    // A part of this version, and one of a version the hub no longer has.
    std::fs::write(repo.join(format!(".Tiny-Q4_0.gguf.{}.part", sha(&payload))), &payload[..70_000]).unwrap();
    std::fs::write(repo.join(format!(".Tiny-Q4_0.gguf.{}.part", "ab".repeat(32))), b"old").unwrap();
    let model = fetch("hf:o/r/Tiny-Q4_0.gguf", dir.path(), &hub).await.unwrap();
    assert_eq!(std::fs::read(&model.path).unwrap(), payload);
    let cdn = cdn_requests(&server);
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].header("range").as_deref(), Some("bytes=70000-"));
    assert_eq!(tree(dir.path()), ["hf/o/r/.Tiny-Q4_0.gguf.quiver.json", "hf/o/r/Tiny-Q4_0.gguf"]);
}

#[tokio::test]
async fn a_wrong_sha256_leaves_nothing_behind() {
    let payload = bytes(23, 100_000);
    let claimed = sha(b"something else");
    let behaviour = Behaviour { claimed_sha256: Some(claimed.clone()), ..Behaviour::default() };
    let (_server, hub) = hub(vec![("Tiny-Q4_0.gguf", payload.clone())], behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let err = fetch("hf:o/r/Tiny-Q4_0.gguf", dir.path(), &hub).await.unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&claimed) && message.contains(&sha(&payload)), "{message}");
    assert!(tree(dir.path()).is_empty(), "{:?}", tree(dir.path()));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no directories left either");

    // The listing's sha256 and the resolve route's disagree: refused before any byte.
    let err = fetch("hf:o/r:Q4_0", dir.path(), &hub).await.unwrap_err();
    assert!(err.to_string().contains(&claimed), "{err}");
    assert!(tree(dir.path()).is_empty());
}

#[tokio::test]
async fn the_token_is_sent_as_a_bearer_token() {
    let payload = bytes(29, 50_000);
    let behaviour = Behaviour { token: Some("hf_secret".into()), ..Behaviour::default() };
    let (server, mut hub) = hub(vec![("Tiny-Q4_0.gguf", payload.clone())], behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let err = fetch("hf:o/r:Q4_0", dir.path(), &hub).await.unwrap_err();
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    hub.token = Some("hf_secret".into());
    let model = fetch("hf:o/r:Q4_0", dir.path(), &hub).await.unwrap();
    assert_eq!(std::fs::read(&model.path).unwrap(), payload);
    let to_hub: Vec<Request> =
        server.requests().into_iter().skip(1).filter(|r| !r.path().starts_with("/cdn/")).collect();
    assert_eq!(to_hub.len(), 2, "listing and resolve: {to_hub:?}");
    for r in to_hub {
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer hf_secret"), "{}", r.head);
    }
}

#[tokio::test]
async fn a_split_gguf_is_fetched_whole() {
    let parts = vec![
        ("Big-F16-00001-of-00003.gguf", bytes(31, 40_000)),
        ("Big-F16-00002-of-00003.gguf", bytes(37, 40_000)),
        ("Big-F16-00003-of-00003.gguf", bytes(41, 1_000)),
    ];
    let contents: Vec<Vec<u8>> = parts.iter().map(|(_, b)| b.clone()).collect();
    let (_server, hub) = hub(parts, Behaviour::default()).await;
    for r in ["hf:o/r/Big-F16-00002-of-00003.gguf", "hf:o/r:F16"] {
        let dir = tempfile::tempdir().unwrap();
        let model = fetch(r, dir.path(), &hub).await.unwrap();
        assert_eq!(model.path, dir.path().join("hf/o/r/Big-F16-00001-of-00003.gguf"), "{r}");
        assert_eq!(model.name, "big-f16");
        assert_eq!(model.sha256.map(|s| hex(&s)), Some(sha(&contents[0])));
        for (i, content) in contents.iter().enumerate() {
            let part = dir.path().join(format!("hf/o/r/Big-F16-0000{}-of-00003.gguf", i + 1));
            assert_eq!(&std::fs::read(part).unwrap(), content, "{r} part {}", i + 1);
        }
        assert_eq!(resolve_local(r, dir.path()).unwrap().path, model.path);
        // A missing part means the model is not there.
        std::fs::remove_file(dir.path().join("hf/o/r/Big-F16-00003-of-00003.gguf")).unwrap();
        assert!(matches!(resolve_local(r, dir.path()), Err(ModelError::NotFetched { .. })));
    }
}
