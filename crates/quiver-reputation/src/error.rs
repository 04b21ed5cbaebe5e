//! Errors.

use std::path::PathBuf;

/// What can go wrong with the reputation store. A bad record never surfaces here from
/// [`crate::Reputation::open`]: it is logged and skipped.
#[derive(Debug, thiserror::Error)]
pub enum ReputationError {
    /// The database file could not be created or opened (permissions, held by another process,
    /// not a redb file, needs an upgrade).
    #[error("cannot open reputation database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    /// A read or write transaction failed.
    #[error("reputation storage: {0}")]
    Storage(#[from] redb::Error),
    /// A stored record could not be decoded (unknown format version, bad JSON, bad key).
    #[error("corrupt reputation record: {0}")]
    Corrupt(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ReputationError {
            fn from(e: $t) -> Self {
                ReputationError::Storage(e.into())
            }
        }
    )*};
}

storage_from!(redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError);
