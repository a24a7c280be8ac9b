//! A local folder: the embedded default, so that drctl works with no S3 at all.
//!
//! Writes are atomic: a temp file in the object's own folder (same file system, so the
//! rename is atomic), fsync, rename, fsync of the folder. A crash leaves either the old
//! state or the whole new object, plus perhaps a `.NAME.tmp-XXXX` file that listing ignores
//! and prune removes.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{check_key, Backend, ByteStream, ObjectInfo, PartPlan, PartStream, PendingUpload};
use crate::error::{RepoError, Result};

const TMP_MARK: &str = ".tmp-";
/// Local writes need no big parts: small ones keep memory low.
const LOCAL_PART: usize = 1 << 20;
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP_MARK)
}

/// Removes the temp file unless disarmed (also when the write future is dropped).
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn modified(meta: &std::fs::Metadata) -> Option<Timestamp> {
    meta.modified()
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok())
}

/// Every regular file under `dir`, as keys relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).expect("under root");
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((key, entry.metadata()?));
        }
    }
    Ok(())
}

impl LocalBackend {
    /// The folder to walk for `prefix`: its longest folder part, so that listing a set does
    /// not walk the whole repository.
    fn walk_prefix(&self, prefix: &str) -> Result<Vec<(String, std::fs::Metadata)>> {
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let mut out = Vec::new();
        walk(&self.root, &start, &mut out)
            .map_err(|e| RepoError::io(format!("list {}", start.display()), e))?;
        out.retain(|(k, _)| k.starts_with(prefix));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Remove empty folders from `dir` up to (not including) the root.
    fn prune_dirs(&self, mut dir: &Path) {
        while dir != self.root && dir.starts_with(&self.root) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn part_plan(&self, _size_hint: Option<u64>) -> PartPlan {
        PartPlan {
            size: LOCAL_PART,
            grow_every: None,
            max_parts: None,
        }
    }

    async fn put(&self, key: &str, mut parts: PartStream<'_>) -> Result<u64> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a folder").to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| RepoError::io(format!("create folder {}", dir.display()), e))?;
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).expect("the OS random source works");
        let name = path
            .file_name()
            .expect("a key has a name")
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}{TMP_MARK}{}", hex::encode(rnd)));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let write_err = |e| RepoError::io(format!("write {}", tmp.display()), e);
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(write_err)?;
        let mut total = 0u64;
        while let Some(part) = parts.next().await {
            let part = part?;
            file.write_all(&part.data).await.map_err(write_err)?;
            total += part.data.len() as u64;
        }
        file.flush().await.map_err(write_err)?;
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await.map_err(|e| {
            RepoError::io(format!("rename {} to {}", tmp.display(), path.display()), e)
        })?;
        guard.0 = None;
        let d = dir.clone();
        tokio::task::spawn_blocking(move || fsync_dir(&d))
            .await
            .map_err(|e| RepoError::Internal(format!("sync folder: {e}")))?
            .map_err(|e| RepoError::io(format!("sync folder {}", dir.display()), e))?;
        Ok(total)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::ObjectMissing {
                    set: None,
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(RepoError::io(format!("open {}", path.display()), e)),
        };
        let stream = futures_util::stream::try_unfold((file, path), |(mut file, path)| async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let n = file
                .read_buf(&mut buf)
                .await
                .map_err(|e| RepoError::io(format!("read {}", path.display()), e))?;
            if n == 0 {
                Ok(None)
            } else {
                Ok(Some((Bytes::from(buf), (file, path))))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io(format!("stat {}", path.display()), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let this = self.clone();
        let prefix = prefix.to_string();
        let files = tokio::task::spawn_blocking(move || this.walk_prefix(&prefix))
            .await
            .map_err(|e| RepoError::Internal(format!("list: {e}")))??;
        Ok(files
            .into_iter()
            .filter(|(k, _)| !is_tmp_name(k.rsplit('/').next().unwrap_or(k)))
            .map(|(key, m)| ObjectInfo {
                key,
                size: m.len(),
                modified: modified(&m),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RepoError::io(format!("remove {}", path.display()), e)),
        }
        if let Some(dir) = path.parent() {
            self.prune_dirs(dir);
        }
        Ok(())
    }

    async fn list_pending(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let this = self.clone();
        let prefix = prefix.to_string();
        let files = tokio::task::spawn_blocking(move || this.walk_prefix(&prefix))
            .await
            .map_err(|e| RepoError::Internal(format!("list: {e}")))??;
        Ok(files
            .into_iter()
            .filter_map(|(k, m)| {
                let (dir, name) = k.rsplit_once('/').unwrap_or(("", &k));
                if !is_tmp_name(name) {
                    return None;
                }
                let target = &name[1..name.find(TMP_MARK)?];
                let key = if dir.is_empty() {
                    target.to_string()
                } else {
                    format!("{dir}/{target}")
                };
                Some(PendingUpload {
                    key,
                    upload_id: k.clone(),
                    started: modified(&m),
                })
            })
            .collect())
    }

    async fn abort_pending(&self, pending: &PendingUpload) -> Result<()> {
        self.delete(&pending.upload_id).await
    }

    async fn check(&self, _prefix: &str) -> Result<()> {
        tokio::fs::create_dir_all(&self.root).await.map_err(|e| {
            RepoError::io(
                format!("create the repository folder {}", self.root.display()),
                e,
            )
        })?;
        // Writable? A probe file, written and removed.
        let probe = self
            .root
            .join(format!(".drctl-probe{TMP_MARK}{}", std::process::id()));
        tokio::fs::write(&probe, b"probe").await.map_err(|e| {
            RepoError::io(
                format!("write to the repository folder {}", self.root.display()),
                e,
            )
        })?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}
