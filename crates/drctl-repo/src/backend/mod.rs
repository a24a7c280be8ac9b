//! Object stores behind one small trait: a local folder and S3.
//!
//! Keys are `/`-separated and relative to the store's root (the bucket, or the folder).
//! Writes take a stream of [`Part`]s so that the producer (the compress / encrypt / hash
//! pipeline) decides the memory spent: every part holds permits from semaphores the
//! producer owns (the upload's own and the process-wide upload budget), released when the
//! backend is done with it.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use jiff::Timestamp;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::Result;

pub mod local;
pub mod s3;

pub use local::LocalBackend;
pub use s3::{S3Backend, S3Settings};

/// A chunk of an object on its way to the store. S3 uploads each as one part, so every
/// part but the last must be at least 5 MiB there.
pub struct Part {
    pub data: Bytes,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Part {
    pub fn new(data: Bytes) -> Part {
        Part {
            data,
            _permits: Vec::new(),
        }
    }
    /// A part that releases all of `permits` when the backend drops it.
    pub fn with_permits(data: Bytes, permits: Vec<OwnedSemaphorePermit>) -> Part {
        Part {
            data,
            _permits: permits,
        }
    }
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Part({} bytes)", self.data.len())
    }
}

/// The parts of an object; an `Err` item makes the backend abandon the write.
pub type PartStream<'a> = BoxStream<'a, Result<Part>>;

/// An object's bytes as they arrive.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<Timestamp>,
}

/// A write that never finished: an S3 multipart upload, or a local temp file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key the write was for.
    pub key: String,
    /// The S3 upload id, or the temp file's key.
    pub upload_id: String,
    pub started: Option<Timestamp>,
}

/// How the part sizes of one object are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    /// The size of the first parts.
    pub size: usize,
    /// Double the part size every this many parts (keeps S3's 10,000-part limit when the
    /// object's size is unknown); `None` for stores without a part limit.
    pub grow_every: Option<u32>,
    /// The most parts an object may have.
    pub max_parts: Option<u32>,
}

impl PartPlan {
    /// The size of part `n` (1-based).
    pub fn size_of(&self, n: u32) -> usize {
        match self.grow_every {
            Some(every) if every > 0 => {
                let doublings = ((n.saturating_sub(1)) / every).min(8);
                (self.size << doublings).min(s3::MAX_PART)
            }
            _ => self.size,
        }
    }
    /// The most bytes an object can hold under this plan.
    pub fn capacity(&self) -> u64 {
        match self.max_parts {
            None => u64::MAX,
            Some(max) => (1..=max).map(|n| self.size_of(n) as u64).sum(),
        }
    }
}

/// An object store.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// For messages: `s3://bucket at http://127.0.0.1:9000` or `/var/backups/drctl`.
    fn describe(&self) -> String;

    /// Part sizes for an object of about `size_hint` stored bytes.
    fn part_plan(&self, size_hint: Option<u64>) -> PartPlan;

    /// Store an object from its parts. On any failure (the store's, or an `Err` part)
    /// nothing is left behind: the multipart upload is aborted, the temp file removed.
    /// Returns the bytes stored.
    async fn put(&self, key: &str, parts: PartStream<'_>) -> Result<u64>;

    /// Read an object as a stream; [`crate::RepoError::ObjectMissing`] if absent.
    async fn get(&self, key: &str) -> Result<ByteStream>;

    /// An object's size, `None` if absent.
    async fn head(&self, key: &str) -> Result<Option<u64>>;

    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Remove an object; removing an absent one is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Writes under `prefix` that never finished (from a process that died).
    async fn list_pending(&self, prefix: &str) -> Result<Vec<PendingUpload>>;

    /// Drop a write that never finished.
    async fn abort_pending(&self, pending: &PendingUpload) -> Result<()>;

    /// Can the store be reached and used? (Lists the prefix; creates a local folder.)
    async fn check(&self, prefix: &str) -> Result<()>;
}

/// Store a small object in memory in one piece (manifests).
pub async fn put_bytes(backend: &dyn Backend, key: &str, data: Bytes) -> Result<u64> {
    let parts = futures_util::stream::once(async move { Ok(Part::new(data)) });
    backend.put(key, Box::pin(parts)).await
}

/// Read a whole small object into memory, refusing more than `limit` bytes.
pub async fn get_bytes(backend: &dyn Backend, key: &str, limit: usize) -> Result<Vec<u8>> {
    use futures_util::StreamExt;
    let mut s = backend.get(key).await?;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > limit {
            return Err(crate::error::RepoError::Internal(format!(
                "read `{key}`: it is larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Keys must be relative, `/`-separated, without `.`/`..`/empty segments.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if ok {
        Ok(())
    } else {
        Err(crate::error::RepoError::Internal(format!(
            "use object key `{key}`: it is not a relative key"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_plans() {
        let mib = 1 << 20;
        // The S3 default without a size hint: 8 MiB parts, doubling every 2,000 parts.
        let p = PartPlan {
            size: s3::DEFAULT_PART,
            grow_every: Some(2000),
            max_parts: Some(10_000),
        };
        assert_eq!(p.size_of(2000), 8 * mib);
        assert_eq!(p.size_of(2001), 16 * mib);
        assert_eq!(p.size_of(10_000), 128 * mib);
        // 2,000 x (8 + 16 + 32 + 64 + 128) MiB: about 484 GiB.
        assert_eq!(p.capacity(), 2000 * 248 * mib as u64);
        let p = PartPlan {
            size: 16 * mib,
            grow_every: Some(2000),
            max_parts: Some(10_000),
        };
        assert_eq!(p.size_of(1), 16 * mib);
        assert_eq!(p.size_of(2000), 16 * mib);
        assert_eq!(p.size_of(2001), 32 * mib);
        assert_eq!(p.size_of(10_000), 256 * mib);
        // About 969 GiB without a size hint.
        assert!(p.capacity() > 900 * 1024 * mib as u64);
        assert!(check_key("a/b.c").is_ok());
        assert!(check_key("a//b").is_err());
        assert!(check_key("../x").is_err());
        assert!(check_key("/x").is_err());
    }
}
