//! The outbox's errors: [`OpenError`] for what stops a store from opening (each refusal names
//! its way out), [`StoreError`] for what fails once it runs. Both keep their causes as
//! sources; [`Chain`] prints an error with every cause, for logs and answers.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Why the outbox could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the data file or its journal (a running gateway).
    #[error("cannot open the outbox at {path}: {detail}")]
    InUse {
        /// The data file.
        path: String,
        /// Which file is held.
        detail: String,
    },
    /// A file or directory could not be created, opened, read, written or synced.
    #[error("cannot open the outbox at {path}: {what}")]
    Io {
        /// The data file.
        path: String,
        /// What was being done, and to which file.
        what: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// redb could not open the data file.
    #[error("cannot open the outbox at {path}")]
    Database {
        /// The data file.
        path: String,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },
    /// The files are in a state mfoundry will not open as they are; the reason says why and
    /// names the way out. Nothing was written.
    #[error("cannot open the outbox at {path}: {reason}")]
    Refused {
        /// The data file.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The store opened, but preparing it failed (tables, connectors, the retransmit index).
    #[error("cannot open the outbox at {path}")]
    Store {
        /// The data file.
        path: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
}

impl OpenError {
    /// True when a running gateway holds the files.
    pub fn is_in_use(&self) -> bool {
        matches!(self, Self::InUse { .. })
    }
}

/// Why the outbox could not do something once open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported a storage, transaction, table or commit error.
    #[error("storage error")]
    Storage {
        /// redb's error.
        #[source]
        source: redb::Error,
    },
    /// A record could not be encoded or decoded.
    #[error("record encoding error: {0}")]
    Encoding(String),
    /// A stored record or body fails its checksum (or is truncated): it was changed after
    /// it was written. Never read as if it were the record. The text names the record by
    /// table and key, never by content.
    #[error("stored record is damaged: {0}")]
    Damaged(String),
    /// The writer thread is gone (shutting down, or it could not reopen the database).
    #[error("the outbox writer is not running")]
    WriterGone,
    /// A connector id that the configuration does not have.
    #[error("connector id {0} is not in the configuration")]
    UnknownConnector(super::ConnectorId),
    /// The database is not open: reopening it after an error failed.
    #[error("the database is not open; reopening it failed")]
    NotOpen {
        /// Why the last reopen failed.
        #[source]
        source: Option<Arc<OpenError>>,
    },
    /// The transaction holding this request failed; every request in it gets this error.
    #[error("the commit holding this request failed")]
    CommitFailed {
        /// Why.
        #[source]
        source: Arc<StoreError>,
    },
}

macro_rules! storage_error_from {
    ($($source:ty),*) => {
        $(impl From<$source> for StoreError {
            fn from(error: $source) -> Self {
                Self::Storage { source: redb::Error::from(error) }
            }
        })*
    };
}
storage_error_from!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> Self {
        Self::Storage {
            source: redb::Error::Io(error),
        }
    }
}

/// Prints an error followed by each of its sources: `outer: inner: innermost`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(formatter, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_prints_every_cause_once() {
        let error = OpenError::Io {
            path: "/data/mfoundry.redb".to_owned(),
            what: "cannot create the directory".to_owned(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"),
        };
        assert_eq!(
            Chain(&error).to_string(),
            "cannot open the outbox at /data/mfoundry.redb: cannot create the directory: \
             permission denied"
        );
        assert_eq!(
            error.to_string(),
            "cannot open the outbox at /data/mfoundry.redb: cannot create the directory"
        );
    }
}
