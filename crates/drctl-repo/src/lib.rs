//! drctl backup repository.
//!
//! Backup sets (objects plus a manifest written last) on a local folder or S3, written as
//! streams: source -> zstd -> age (optional) -> SHA-256 -> multipart upload, with memory
//! bounded whatever the size of the data: `concurrency x part size` per upload and
//! `upload_budget x part size` for all uploads of the process ([`Options`]). Reading back
//! reverses the path and verifies the SHA-256 of the stored bytes and age's authentication.
//! Restores check every object before they destroy anything ([`Repository::check_item`]:
//! size, SHA-256 and age header, no decode); `drctl backups verify` decodes every object in
//! full ([`Repository::verify_set`], [`Repository::verify_item`]).
//!
//! ```no_run
//! # async fn demo(cfg: &drctl_core::config::Config) -> Result<(), drctl_repo::RepoError> {
//! use drctl_repo::{ItemSpec, Repository};
//! let env = |k: &str| std::env::var(k).ok();
//! let repo = Repository::open(cfg, &env)?;
//! let set = repo.begin_set(&cfg.stack.project, vec!["nightly".into()]);
//! set.put(ItemSpec::new("volume/app-sessions", "volume", "volume app-sessions"), &b"..."[..])
//!     .await?;
//! let manifest = set.finish().await?;
//! let report = repo.verify_set(&manifest.id).await?;
//! assert!(report.ok());
//! # Ok(()) }
//! ```

pub mod backend;
mod crypto;
mod error;
pub mod manifest;
mod pipeline;
mod repo;
pub mod retention;

pub use backend::{Backend, LocalBackend, S3Backend, S3Settings};
pub use crypto::Key;
pub use error::{RepoError, Result};
pub use manifest::{Compression, Encryption, EncryptionInfo, ItemRecord, Manifest};
pub use pipeline::ItemReader;
pub use repo::{
    parse_before, ItemCheck, ItemSpec, Options, PruneEntry, PrunePlan, Repository, SetInfo,
    SetWriter, VerifyReport,
};
