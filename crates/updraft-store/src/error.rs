//! The store's one error type.

/// What can go wrong in the store. Callers map each variant to one HTTP status and code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row the operation needs does not exist (in this tenant).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// A uniqueness rule refused the write; `code` is stable (`artifact_exists`, …).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The write would break a rule of the model (incompatible artifact, artifact in use, …).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The blob store failed.
    #[error("blob store error: {0}")]
    Blob(#[from] std::io::Error),
    /// A stored value could not be read back; the store is damaged or from a newer version.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
