//! One error type for the repository, with a kind per thing an operator can act on.
//!
//! Messages are lowercase fragments ("failed to ...") that name the endpoint, bucket, set
//! and object involved and say what to do. Nothing secret (credentials, keys) is ever part
//! of a message: the SDK's and age's errors are reduced to their codes and messages.

use std::io;

/// Everything that can go wrong in the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The S3 endpoint does not answer (connection refused, DNS, timeout).
    #[error("failed to reach the S3 endpoint {endpoint} ({detail}); check that the server runs and that `repository.endpoint` in drctl.yml is right")]
    Unreachable { endpoint: String, detail: String },

    /// 403 / InvalidAccessKeyId / SignatureDoesNotMatch / AccessDenied.
    #[error("failed to authenticate to {endpoint} for bucket `{bucket}` ({detail}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or `repository.credentials_file`, and that the key may use the bucket")]
    BadCredentials {
        endpoint: String,
        bucket: String,
        detail: String,
    },

    /// No credentials at all.
    #[error("failed to find S3 credentials for {endpoint}: {detail}")]
    MissingCredentials { endpoint: String, detail: String },

    /// NoSuchBucket.
    #[error("failed to find bucket `{bucket}` at {endpoint}; create it, or fix the bucket in `repository.url`")]
    MissingBucket { endpoint: String, bucket: String },

    /// An object the manifest (or the caller) names is not in the store.
    #[error("failed to find object `{key}`{}; the set is damaged: restore from another set (`drctl backups list`)", in_set(set))]
    ObjectMissing { set: Option<String>, key: String },

    /// The stored bytes do not hash to what the manifest recorded.
    #[error("failed to verify object `{key}` of set {set}: its SHA-256 is {actual} but the manifest recorded {expected}; the stored object is corrupt: restore from another set")]
    ChecksumMismatch {
        set: String,
        key: String,
        expected: String,
        actual: String,
    },

    /// Fewer (or more) stored bytes than the manifest recorded.
    #[error("failed to verify object `{key}` of set {set}: {actual} bytes stored, the manifest recorded {expected}; the object is truncated or was replaced: restore from another set")]
    Truncated {
        set: String,
        key: String,
        expected: u64,
        actual: u64,
    },

    /// The stored bytes hash right but do not decrypt / decompress to what was recorded.
    #[error("failed to decode object `{key}` of set {set}: {detail}; restore from another set")]
    Corrupt {
        set: String,
        key: String,
        detail: String,
    },

    /// The configured key is not the one that sealed the set.
    #[error("failed to decrypt set {set}{}: it was sealed with key {expected}, the configured key is {actual}; configure the key that sealed it (`repository.encryption`)", object(key))]
    WrongKey {
        set: String,
        key: Option<String>,
        expected: String,
        actual: String,
    },

    /// The set is encrypted and no key is configured.
    #[error("failed to decrypt set {set}: it is encrypted (key {expected}) and no key is configured; set `repository.encryption` in drctl.yml ({{ key_file: PATH }} or {{ key_env: VAR }})")]
    MissingKey { set: String, expected: String },

    /// The key source could not be read or does not hold an age X25519 identity.
    #[error("failed to load the encryption key from {origin}: {detail}")]
    KeyLoad { origin: String, detail: String },

    /// No complete set matches a selection.
    #[error("failed to find a backup set for `{selection}`: {detail}")]
    NoSetMatches { selection: String, detail: String },

    /// A set exists but has no manifest (a backup that failed or still runs).
    #[error("failed to use set {id}: it is incomplete (no manifest: the backup failed or is still running); choose another set (`drctl backups list`)")]
    SetIncomplete { id: String },

    /// A manifest that does not parse or has an unknown format.
    #[error("failed to read the manifest of set {set}: {detail}")]
    BadManifest { set: String, detail: String },

    /// Invalid repository settings.
    #[error("failed to open the repository: {0}")]
    Config(String),

    /// The data source (a volume stream, a dump) failed while it was read.
    #[error("failed to read the data of item `{item}`: {source}")]
    Source {
        item: String,
        #[source]
        source: io::Error,
    },

    /// Local file system errors (disk full, permissions).
    #[error("failed to {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// Any other S3 error, with its code.
    #[error("failed to {op} at {endpoint}: {detail}")]
    S3 {
        op: String,
        endpoint: String,
        detail: String,
    },

    /// The object needs more than 10,000 parts even with grown parts.
    #[error("failed to store object `{key}`: it is larger than the {limit} bytes that {parts} parts can hold; raise the part size")]
    TooLarge { key: String, limit: u64, parts: u32 },

    /// A selection the repository cannot resolve itself.
    #[error("failed to resolve `{0}` in the repository: the executor resolves it from the run's journal")]
    Unsupported(String),

    /// A bug or a task that died; should not happen.
    #[error("failed to {0} (internal error)")]
    Internal(String),
}

fn in_set(set: &Option<String>) -> String {
    set.as_ref()
        .map(|s| format!(" of set {s}"))
        .unwrap_or_default()
}

fn object(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" (object `{k}`)"))
        .unwrap_or_default()
}

impl RepoError {
    /// Something drctl needs is unreachable or missing (exit code 3): the endpoint, the
    /// credentials, the bucket.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RepoError::Unreachable { .. }
                | RepoError::BadCredentials { .. }
                | RepoError::MissingCredentials { .. }
                | RepoError::MissingBucket { .. }
        )
    }

    /// The stored data is damaged (missing, corrupt, truncated object).
    pub fn is_damaged(&self) -> bool {
        matches!(
            self,
            RepoError::ObjectMissing { .. }
                | RepoError::ChecksumMismatch { .. }
                | RepoError::Truncated { .. }
                | RepoError::Corrupt { .. }
        )
    }

    /// The `RepoError` inside an `io::Error` returned by an [`crate::ItemReader`], if any.
    pub fn from_io(e: &io::Error) -> Option<&RepoError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<RepoError>())
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        RepoError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        let kind = if self.is_damaged() {
            io::ErrorKind::InvalidData
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, self)
    }

    /// Attach a set id to errors that were raised without one (backends do not know sets).
    pub(crate) fn in_set(self, id: &str) -> Self {
        match self {
            RepoError::ObjectMissing { set: None, key } => RepoError::ObjectMissing {
                set: Some(id.to_string()),
                key,
            },
            other => other,
        }
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;
