//! Unit tests of `identity.rs`.

use super::*;

#[test]
fn created_once_then_reused_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let a = load_or_create(dir.path()).unwrap();
    let b = load_or_create(dir.path()).unwrap();
    assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    let mode = fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn data_dir_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    load_or_create(&nested).unwrap();
    assert!(nested.join(IDENTITY_FILE).exists());
}

#[test]
fn shared_key_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    load_or_create(dir.path()).unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    let before = fs::read(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(load_or_create(dir.path()), Err(IdentityError::Permissions { .. })));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn garbage_key_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap()
        .write_all(b"not a key")
        .unwrap();
    let err = load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Invalid { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"not a key");
}
