//! The node's Ed25519 identity, kept in `<data-dir>/identity.key`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use quiver_net::Keypair;

/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// Largest identity file read (a protobuf-encoded Ed25519 keypair is 68 bytes).
const MAX_KEY_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read identity key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write identity key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "identity key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` if the key was not exposed, or move it away to get a new identity"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "identity key {path} is not a libp2p Ed25519 key ({reason}); it was not replaced: move it away to get a new identity"
    )]
    Invalid { path: PathBuf, reason: String },
}

/// Loads the keypair from `<dir>/identity.key`, or creates one (mode 0600) if the file does not
/// exist. An existing file that is unreadable, shared with other users, or not a key is an
/// error: it is never silently replaced, since that would change the node's PeerId.
pub fn load_or_create(dir: &Path) -> Result<Keypair, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path, mode });
            }
            if meta.len() > MAX_KEY_FILE {
                return Err(IdentityError::Invalid { path, reason: "file too large".into() });
            }
            let bytes = fs::read(&path).map_err(|source| IdentityError::Read { path: path.clone(), source })?;
            let key = Keypair::from_protobuf_encoding(&bytes)
                .map_err(|e| IdentityError::Invalid { path: path.clone(), reason: e.to_string() })?;
            if key.key_type() != quiver_net::KeyType::Ed25519 {
                return Err(IdentityError::Invalid { path, reason: format!("{} key", key.key_type()) });
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

fn create(dir: &Path, path: &Path) -> Result<Keypair, IdentityError> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::CreateDir { path: dir.to_owned(), source })?;
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    let write_err = |source| IdentityError::Write { path: path.to_owned(), source };
    // create_new: never overwrite a key another process wrote in the meantime.
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write_err)?;
    file.write_all(&bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(key)
}

#[cfg(test)]
#[path = "tests/identity.rs"]
mod tests;
