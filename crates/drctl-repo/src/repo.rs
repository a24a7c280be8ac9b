//! The repository: backup sets on a backend, written, listed, selected, verified, pruned.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use drctl_core::config::{Config, RepoLocation, Retention};
use drctl_core::runbook::Selection;
use drctl_core::source::Env;
use futures_util::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;

use crate::backend::{self, Backend, LocalBackend, S3Backend, S3Settings};
use crate::crypto::{Key, AGE_SCHEME};
use crate::error::{RepoError, Result};
use crate::manifest::{
    is_set_id, new_set_id, safe_name, set_id_time, Compression, Encryption, EncryptionInfo,
    ItemRecord, Manifest, FORMAT_VERSION, MANIFEST_NAME, SETS_DIR,
};
use crate::pipeline::{self, Budget, EncodeSettings, Expect, ItemReader};
use crate::retention;

/// Tuning; the defaults suit a small VM. Uploads hold at most `upload_budget x part_size`
/// of parts (64 MiB with the defaults on S3), however many run at once; one upload alone
/// at most `concurrency x part_size` (32 MiB).
#[derive(Debug, Clone)]
pub struct Options {
    /// S3 part size, at least 5 MiB (default 8 MiB). Grows past 2,000 parts when the size
    /// is unknown, to stay under S3's 10,000-part limit.
    pub part_size: usize,
    /// Parts alive at once per item, being filled or uploading (default 4, at least 2).
    pub concurrency: usize,
    /// Parts alive at once across every upload of the process (default 8, at least 2):
    /// the memory of parallel uploads (safety backups taken side by side) is
    /// `upload_budget x part_size` however many there are, and uploads wait for parts
    /// that others give back. All repositories of the process opened with the same budget
    /// share it (one with another budget gets a pool of its own).
    pub upload_budget: usize,
    /// zstd level (default 3); `None` stores data uncompressed.
    pub zstd_level: Option<i32>,
    /// zstd worker threads (default 1: compression overlaps encryption and hashing, which
    /// about doubled upload throughput here for ~6 MiB; 0 compresses inline).
    pub zstd_workers: u32,
    /// Incomplete sets and unfinished uploads younger than this are left alone by prune:
    /// a backup may still be writing them (default 1 h).
    pub incomplete_grace: Duration,
    /// S3: one attempt of one request (default 5 min); the SDK retries 3 times.
    pub attempt_timeout: Duration,
    /// S3: how long a failed upload keeps trying to abort its multipart upload (30 s).
    pub abort_retry_for: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            part_size: backend::s3::DEFAULT_PART,
            concurrency: 4,
            upload_budget: 8,
            zstd_level: Some(3),
            zstd_workers: 1,
            incomplete_grace: Duration::from_secs(3600),
            attempt_timeout: Duration::from_secs(300),
            abort_retry_for: Duration::from_secs(30),
        }
    }
}

struct Inner {
    backend: Arc<dyn Backend>,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    key: Option<Key>,
    opts: Options,
    stack: Option<String>,
    /// The process-wide upload budget (`upload_budget(opts.upload_budget)`).
    uploads: Arc<Semaphore>,
}

/// The process's upload budget of `parts` parts: one semaphore per size, shared by every
/// repository opened with that size (the drctl binary may open several repositories, all
/// with the default; tests use small budgets of their own).
fn upload_budget(parts: usize) -> Arc<Semaphore> {
    static BUDGETS: OnceLock<Mutex<BTreeMap<usize, Arc<Semaphore>>>> = OnceLock::new();
    let parts = parts.clamp(2, Semaphore::MAX_PERMITS);
    let mut budgets = BUDGETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    budgets
        .entry(parts)
        .or_insert_with(|| Arc::new(Semaphore::new(parts)))
        .clone()
}

/// A backup repository. Cheap to clone.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.describe())
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

/// What a caller says about an item it stores.
#[derive(Debug, Clone)]
pub struct ItemSpec {
    pub name: String,
    pub kind: String,
    pub source: String,
    pub server_version: Option<String>,
    pub fingerprint: serde_json::Value,
    /// The raw size if known: lets S3 parts be sized for objects over ~70 GiB (without it
    /// an object can reach about 484 GiB, see [`crate::backend::s3::DEFAULT_PART`]).
    pub size_hint: Option<u64>,
}

impl ItemSpec {
    pub fn new(
        name: impl Into<String>,
        kind: impl Into<String>,
        source: impl Into<String>,
    ) -> ItemSpec {
        ItemSpec {
            name: name.into(),
            kind: kind.into(),
            source: source.into(),
            server_version: None,
            fingerprint: serde_json::Value::Null,
            size_hint: None,
        }
    }
}

/// A set as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SetInfo {
    pub id: String,
    /// Has a manifest: restorable.
    pub complete: bool,
    pub stack: Option<String>,
    pub tags: Vec<String>,
    /// From the manifest, or from the id for incomplete sets.
    pub started: Timestamp,
    pub finished: Option<Timestamp>,
    pub items: usize,
    /// Objects and bytes actually in the store (manifest included).
    pub objects: usize,
    pub stored_size: u64,
    pub key_fingerprint: Option<String>,
    /// Why a set with a manifest is still not usable (a damaged manifest).
    pub problem: Option<String>,
}

/// One item's verification.
#[derive(Debug, Clone, Serialize)]
pub struct ItemCheck {
    pub name: String,
    pub key: String,
    pub ok: bool,
    pub raw_size: u64,
    pub stored_size: u64,
    pub error: Option<String>,
}

/// What `verify_set` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub set: String,
    pub items: Vec<ItemCheck>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.ok)
    }
    pub fn failures(&self) -> impl Iterator<Item = &ItemCheck> {
        self.items.iter().filter(|i| !i.ok)
    }
}

/// One set in a prune plan.
#[derive(Debug, Clone, Serialize)]
pub struct PruneEntry {
    pub id: String,
    pub complete: bool,
    pub started: Timestamp,
    pub reasons: Vec<String>,
}

/// What prune keeps and removes, and why.
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub dry_run: bool,
    pub keep: Vec<PruneEntry>,
    pub remove: Vec<PruneEntry>,
    /// Unfinished uploads (S3 multipart, local temp files) removed (or to remove).
    pub aborted_uploads: Vec<String>,
}

impl Repository {
    /// The repository `drctl.yml` names; `select` and `prune` consider only this stack's sets.
    pub fn open(cfg: &Config, env: Env) -> Result<Repository> {
        let mut repo =
            Repository::open_with(&cfg.repository, &cfg.base_dir(), env, Options::default())?;
        Arc::get_mut(&mut repo.inner).expect("fresh").stack = Some(cfg.stack.project.clone());
        Ok(repo)
    }

    /// A repository from its `drctl.yml` section; relative paths are taken from `base`.
    /// Builds clients and loads the key, but touches no network (see [`Repository::check`]).
    pub fn open_with(
        cfg: &drctl_core::config::Repository,
        base: &Path,
        env: Env,
        opts: Options,
    ) -> Result<Repository> {
        let location = cfg.location(base).map_err(RepoError::Config)?;
        let key = cfg
            .encryption
            .as_ref()
            .map(|k| Key::load(k, base, env))
            .transpose()?;
        let (backend, prefix): (Arc<dyn Backend>, String) = match location {
            RepoLocation::Local { path } => (Arc::new(LocalBackend::new(path)), String::new()),
            RepoLocation::S3 { bucket, prefix } => {
                let mut s = S3Settings::from_config(cfg, &bucket, base, env)?;
                s.part_size = opts.part_size;
                s.attempt_timeout = opts.attempt_timeout;
                s.abort_retry_for = opts.abort_retry_for;
                (Arc::new(S3Backend::new(s)?), prefix)
            }
        };
        Ok(Repository::from_backend(backend, &prefix, key, opts))
    }

    /// A repository on any backend, under `prefix`.
    pub fn from_backend(
        backend: Arc<dyn Backend>,
        prefix: &str,
        key: Option<Key>,
        opts: Options,
    ) -> Repository {
        let p = prefix.trim_matches('/');
        Repository {
            inner: Arc::new(Inner {
                backend,
                prefix: if p.is_empty() {
                    String::new()
                } else {
                    format!("{p}/")
                },
                key,
                uploads: upload_budget(opts.upload_budget),
                opts,
                stack: None,
            }),
        }
    }

    /// Restrict `select` and `prune` to one stack's sets.
    pub fn with_stack(mut self, stack: Option<String>) -> Repository {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.stack = stack,
            None => {
                let i = &self.inner;
                self.inner = Arc::new(Inner {
                    backend: i.backend.clone(),
                    prefix: i.prefix.clone(),
                    key: i.key.clone(),
                    opts: i.opts.clone(),
                    stack,
                    uploads: i.uploads.clone(),
                });
            }
        }
        self
    }

    /// Where the repository is, for messages: `s3://bucket/prefix at URL` or a folder.
    pub fn describe(&self) -> String {
        let b = self.inner.backend.describe();
        if self.inner.prefix.is_empty() {
            b
        } else {
            match b.split_once(" at ") {
                Some((u, at)) => format!("{u}/{} at {at}", self.inner.prefix.trim_end_matches('/')),
                None => format!("{b}/{}", self.inner.prefix.trim_end_matches('/')),
            }
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The configured key's public fingerprint (`age1...`), if encryption is on.
    pub fn key_fingerprint(&self) -> Option<&str> {
        self.inner.key.as_ref().map(Key::fingerprint)
    }

    /// The full backend key of a repository-relative key.
    pub fn full_key(&self, rel: &str) -> String {
        format!("{}{rel}", self.inner.prefix)
    }

    fn sets_prefix(&self) -> String {
        self.full_key(&format!("{SETS_DIR}/"))
    }

    fn manifest_key(&self, id: &str) -> String {
        self.full_key(&format!("{SETS_DIR}/{id}/{MANIFEST_NAME}"))
    }

    /// Reach the store (S3: list the prefix; local: create the folder and write a probe).
    pub async fn check(&self) -> Result<()> {
        self.inner.backend.check(&self.inner.prefix).await
    }

    /// Start a set now.
    pub fn begin_set(&self, project: &str, tags: Vec<String>) -> SetWriter {
        self.begin_set_at(project, tags, Timestamp::now())
    }

    /// Start a set stamped `started` (imports, tests with synthetic times).
    pub fn begin_set_at(&self, project: &str, tags: Vec<String>, started: Timestamp) -> SetWriter {
        SetWriter {
            repo: self.clone(),
            id: new_set_id(started),
            stack: project.to_string(),
            tags,
            started,
            state: Mutex::new(WriterState::default()),
        }
    }

    /// Every set, complete or not, oldest first.
    pub async fn list(&self) -> Result<Vec<SetInfo>> {
        let prefix = self.sets_prefix();
        let objects = self.inner.backend.list(&prefix).await?;
        let mut by_id: BTreeMap<String, (usize, u64, bool)> = BTreeMap::new();
        for o in &objects {
            let Some(rest) = o.key.strip_prefix(&prefix) else {
                continue;
            };
            let Some((id, tail)) = rest.split_once('/') else {
                continue;
            };
            if !is_set_id(id) {
                continue;
            }
            let e = by_id.entry(id.to_string()).or_default();
            e.0 += 1;
            e.1 += o.size;
            e.2 |= tail == MANIFEST_NAME;
        }
        let infos: Vec<SetInfo> = futures_util::stream::iter(by_id)
            .map(|(id, (objects, size, has_manifest))| async move {
                let mut info = SetInfo {
                    started: set_id_time(&id).expect("checked id"),
                    id,
                    complete: false,
                    stack: None,
                    tags: Vec::new(),
                    finished: None,
                    items: 0,
                    objects,
                    stored_size: size,
                    key_fingerprint: None,
                    problem: None,
                };
                if has_manifest {
                    match self.load_manifest(&info.id).await {
                        Ok(m) => {
                            info.complete = true;
                            info.stack = Some(m.stack);
                            info.tags = m.tags;
                            info.started = m.started;
                            info.finished = Some(m.finished);
                            info.items = m.items.len();
                            info.key_fingerprint = m.encryption.map(|e| e.key_fingerprint);
                        }
                        Err(e) if e.is_unavailable() => return Err(e),
                        Err(e) => info.problem = Some(e.to_string()),
                    }
                }
                Ok(info)
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut infos = infos;
        infos.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
        Ok(infos)
    }

    /// A set's manifest; an incomplete or absent set is an error that says which.
    pub async fn load_manifest(&self, id: &str) -> Result<Manifest> {
        if !is_set_id(id) {
            return Err(RepoError::NoSetMatches {
                selection: format!("set {id}"),
                detail:
                    "that is not a set id (like 20261122T031500Z-a1b2c3); run `drctl backups list`"
                        .into(),
            });
        }
        let key = self.manifest_key(id);
        match backend::get_bytes(&*self.inner.backend, &key, 64 << 20).await {
            Ok(bytes) => Manifest::parse(id, &bytes),
            Err(RepoError::ObjectMissing { .. }) => {
                let rest = self
                    .inner
                    .backend
                    .list(&self.full_key(&format!("{SETS_DIR}/{id}/")))
                    .await?;
                if rest.is_empty() {
                    Err(RepoError::NoSetMatches {
                        selection: format!("set {id}"),
                        detail: format!(
                            "there is no such set in {}; run `drctl backups list`",
                            self.describe()
                        ),
                    })
                } else {
                    Err(RepoError::SetIncomplete { id: id.to_string() })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Resolve a selection to a complete set of this repository's stack. `now` anchors
    /// `before: 2h`. A set counts as taken before T when it finished at or before T (all
    /// of its data was read before T). `Selection::Step` is the executor's to resolve.
    pub async fn select(&self, sel: &Selection, now: Timestamp) -> Result<Manifest> {
        let selection = sel.to_string();
        if let Selection::Step(_) = sel {
            return Err(RepoError::Unsupported(selection));
        }
        if let Selection::Id(id) = sel {
            let m = self.load_manifest(id).await?;
            return Ok(m);
        }
        let cutoff = match sel {
            Selection::Before(s) => {
                Some(
                    parse_before(s, now).map_err(|detail| RepoError::NoSetMatches {
                        selection: selection.clone(),
                        detail,
                    })?,
                )
            }
            _ => None,
        };
        let sets = self.list().await?;
        let stack = self.inner.stack.as_deref();
        let candidates: Vec<&SetInfo> = sets
            .iter()
            .filter(|s| s.complete && s.problem.is_none())
            .filter(|s| stack.is_none() || s.stack.as_deref() == stack)
            .collect();
        let chosen = candidates
            .iter()
            .rev()
            .find(|s| match sel {
                Selection::Tag(t) => s.tags.iter().any(|x| x == t),
                Selection::Before(_) => s.finished.unwrap_or(s.started) <= cutoff.expect("set"),
                _ => true,
            })
            .map(|s| s.id.clone());
        match chosen {
            Some(id) => self.load_manifest(&id).await,
            None => {
                let whose = stack.map(|s| format!(" of stack {s}")).unwrap_or_default();
                let detail = match candidates.last() {
                    None => format!(
                        "{} holds no complete set{whose}; take one with `drctl backup`",
                        self.describe()
                    ),
                    Some(newest) => format!(
                        "none of the {} complete sets{whose} matches (the newest is {}, {}); run `drctl backups list`",
                        candidates.len(),
                        newest.id,
                        newest.started
                    ),
                };
                Err(RepoError::NoSetMatches { selection, detail })
            }
        }
    }

    /// Is our key the one that sealed this set? Checked before any download.
    fn check_key(&self, m: &Manifest, object: Option<&str>) -> Result<()> {
        let Some(enc) = &m.encryption else {
            return Ok(());
        };
        match &self.inner.key {
            None => Err(RepoError::MissingKey {
                set: m.id.clone(),
                expected: enc.key_fingerprint.clone(),
            }),
            Some(k) if k.fingerprint() != enc.key_fingerprint => Err(RepoError::WrongKey {
                set: m.id.clone(),
                key: object.map(str::to_string),
                expected: enc.key_fingerprint.clone(),
                actual: k.fingerprint().to_string(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Read an item back, decrypting, decompressing and verifying as it streams: the
    /// reader reports end of file only after the SHA-256, the size and the authentication
    /// all passed, and fails naming the set and object otherwise.
    ///
    /// Streams can only be judged at their end, so a restore must not feed this straight
    /// into something destructive. Restores call [`Repository::check_item`] first (a full
    /// download whose size and SHA-256 are checked against the manifest, and whose age
    /// header our key must open) and only then stop services, drop databases or overwrite
    /// volumes, streaming a second time through this reader. The alternative, spooling to
    /// local disk, needs free space the size of the backup on the machine that is being
    /// recovered (often the one whose disk failed) and defeats bounded storage; a second
    /// download costs bandwidth only, and the restore stream still verifies everything, so
    /// a set damaged between the two reads is still reported.
    pub async fn open_item(&self, m: &Manifest, item: &ItemRecord) -> Result<ItemReader> {
        let (stream, exp) = self.start_read(m, item).await?;
        Ok(pipeline::open(stream, exp))
    }

    /// The checks every read starts with (the key, the object's presence and size), then
    /// the download and what it must match.
    async fn start_read(
        &self,
        m: &Manifest,
        item: &ItemRecord,
    ) -> Result<(backend::ByteStream, Expect)> {
        self.check_key(m, Some(&item.key))?;
        let key = self.full_key(&item.key);
        // A truncated or replaced object shows in its size before any byte is read.
        match self.inner.backend.head(&key).await? {
            None => {
                return Err(RepoError::ObjectMissing {
                    set: Some(m.id.clone()),
                    key: item.key.clone(),
                })
            }
            Some(n) if n != item.stored_size => {
                return Err(RepoError::Truncated {
                    set: m.id.clone(),
                    key: item.key.clone(),
                    expected: item.stored_size,
                    actual: n,
                })
            }
            Some(_) => {}
        }
        let stream = self.inner.backend.get(&key).await.map_err(|e| match e {
            RepoError::ObjectMissing { .. } => RepoError::ObjectMissing {
                set: Some(m.id.clone()),
                key: item.key.clone(),
            },
            other => other,
        })?;
        let identity = match item.encryption {
            Encryption::None => None,
            Encryption::AgeX25519 => match &self.inner.key {
                Some(k) => Some(k.identity().clone()),
                None => {
                    return Err(RepoError::MissingKey {
                        set: m.id.clone(),
                        expected: m
                            .encryption
                            .as_ref()
                            .map(|e| e.key_fingerprint.clone())
                            .unwrap_or_else(|| "unknown".into()),
                    })
                }
            },
        };
        let exp = Expect {
            set: m.id.clone(),
            key: item.key.clone(),
            stored_size: item.stored_size,
            sha256: item.sha256.clone(),
            raw_size: item.raw_size,
            zstd: matches!(item.compression, Compression::Zstd { .. }),
            identity,
            sealed_by: m
                .encryption
                .as_ref()
                .map(|e| e.key_fingerprint.clone())
                .unwrap_or_else(|| "an unrecorded key".into()),
            our_key: self.key_fingerprint().unwrap_or("none").to_string(),
        };
        Ok((stream, exp))
    }

    /// The check before anything destructive is done with an item: download its stored
    /// bytes and compare their size and SHA-256 with the manifest, and, for an encrypted
    /// item, open its age header with our key (which also checks the header's MAC). Nothing
    /// is decrypted or decompressed, so this costs a download and a SHA-256 (well under a
    /// second of CPU per GiB), not a decode: restores run it on every object before they
    /// stop, drop or overwrite anything, and read the data afterwards through
    /// [`Repository::open_item`], which verifies everything again as it decodes.
    ///
    /// Errors, in the order [`Repository::verify_item`] reports them: no key, or not the
    /// key that sealed the set ([`RepoError::MissingKey`], [`RepoError::WrongKey`]), and an
    /// object that is missing or has the wrong size ([`RepoError::ObjectMissing`],
    /// [`RepoError::Truncated`]), all before any download; then our key not opening the age
    /// header ([`RepoError::WrongKey`]), a transfer error, [`RepoError::Truncated`],
    /// [`RepoError::ChecksumMismatch`], and an age header that does not parse or
    /// authenticate ([`RepoError::Corrupt`]).
    ///
    /// What it cannot see is an object that was already bad when it was written (the
    /// SHA-256 is of the bytes as they were stored): only a full decode,
    /// [`Repository::verify_item`], proves that they decrypt and decompress to the data.
    pub async fn check_item(&self, m: &Manifest, item: &ItemRecord) -> Result<()> {
        let (stream, exp) = self.start_read(m, item).await?;
        pipeline::check(stream, exp).await
    }

    /// Download an item and decode it in full (decrypt, decompress, compare the raw size),
    /// checking everything and keeping nothing; returns the raw size. This is what
    /// `drctl backups verify` runs (through [`Repository::verify_set`]): it proves that the
    /// backup can be read back to its data, at the CPU cost of a restore. Before a restore,
    /// use the cheaper [`Repository::check_item`], which leaves the CPU to the restore.
    pub async fn verify_item(&self, m: &Manifest, item: &ItemRecord) -> Result<u64> {
        let mut r = self.open_item(m, item).await?;
        tokio::io::copy(&mut r, &mut tokio::io::sink())
            .await
            .map_err(|e| unwrap_io(e, &m.id, &item.key))
    }

    /// Download and decode every object of a set in full ([`Repository::verify_item`]),
    /// restoring nothing: `drctl backups verify`. Set-level problems (no manifest, wrong or
    /// missing key, unreachable store) are errors; damaged objects are reported per item.
    pub async fn verify_set(&self, id: &str) -> Result<VerifyReport> {
        let m = self.load_manifest(id).await?;
        self.check_key(&m, None)?;
        let mut items = Vec::new();
        for item in &m.items {
            let result = self.verify_item(&m, item).await;
            if let Err(e) = &result {
                if e.is_unavailable() {
                    return Err(result.unwrap_err());
                }
            }
            items.push(ItemCheck {
                name: item.name.clone(),
                key: item.key.clone(),
                ok: result.is_ok(),
                raw_size: item.raw_size,
                stored_size: item.stored_size,
                error: result.err().map(|e| e.to_string()),
            });
        }
        Ok(VerifyReport {
            set: m.id.clone(),
            items,
        })
    }

    /// Delete a set: its manifest first, so that a half-deleted set is incomplete rather
    /// than complete and damaged.
    pub async fn delete_set(&self, id: &str) -> Result<()> {
        if !is_set_id(id) {
            return Err(RepoError::NoSetMatches {
                selection: format!("set {id}"),
                detail: "that is not a set id".into(),
            });
        }
        let b = &self.inner.backend;
        b.delete(&self.manifest_key(id)).await?;
        let prefix = self.full_key(&format!("{SETS_DIR}/{id}/"));
        let objects = b.list(&prefix).await?;
        futures_util::stream::iter(objects)
            .map(|o| async move { b.delete(&o.key).await })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        for p in b.list_pending(&prefix).await? {
            b.abort_pending(&p).await?;
        }
        Ok(())
    }

    /// Apply a retention policy to this stack's complete sets (restic `forget` semantics,
    /// see [`crate::retention`]); the newest complete set is always kept. Incomplete sets
    /// and unfinished uploads older than the grace period are removed too. With `dry_run`
    /// nothing is deleted; the plan says what would be.
    pub async fn prune(
        &self,
        policy: &Retention,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<PrunePlan> {
        let sets = self.list().await?;
        let grace = jiff::SignedDuration::try_from(self.inner.opts.incomplete_grace)
            .unwrap_or(jiff::SignedDuration::MAX);
        let stack = self.inner.stack.as_deref();
        let mine: Vec<(String, Timestamp)> = sets
            .iter()
            .filter(|s| s.complete && (stack.is_none() || s.stack.as_deref() == stack))
            .map(|s| (s.id.clone(), s.started))
            .collect();
        let mut keep = Vec::new();
        let mut remove = Vec::new();
        for d in retention::apply(&mine, policy) {
            let e = PruneEntry {
                id: d.id,
                complete: true,
                started: d.time,
                reasons: d.reasons,
            };
            if d.keep {
                keep.push(e)
            } else {
                remove.push(e)
            }
        }
        for s in &sets {
            if s.complete {
                if stack.is_some() && s.stack.as_deref() != stack {
                    keep.push(PruneEntry {
                        id: s.id.clone(),
                        complete: true,
                        started: s.started,
                        reasons: vec![format!(
                            "another stack ({})",
                            s.stack.as_deref().unwrap_or("?")
                        )],
                    });
                }
                continue;
            }
            let age = now.duration_since(s.started);
            let (reason, old) = match &s.problem {
                Some(p) => (format!("damaged manifest: {p}"), false),
                None if age > grace => (
                    format!(
                        "incomplete (no manifest) and older than {}",
                        fmt_dur(self.inner.opts.incomplete_grace)
                    ),
                    true,
                ),
                None => ("incomplete: a backup may still be writing it".into(), false),
            };
            let e = PruneEntry {
                id: s.id.clone(),
                complete: false,
                started: s.started,
                reasons: vec![reason],
            };
            if old {
                remove.push(e)
            } else {
                keep.push(e)
            }
        }
        keep.sort_by_key(|e| std::cmp::Reverse(e.started));
        remove.sort_by_key(|e| std::cmp::Reverse(e.started));
        // Unfinished uploads of any set, older than the grace period.
        let mut aborted = Vec::new();
        let b = &self.inner.backend;
        for p in b.list_pending(&self.sets_prefix()).await? {
            let old = p.started.is_none_or(|t| now.duration_since(t) > grace);
            if old {
                if !dry_run {
                    b.abort_pending(&p).await?;
                }
                aborted.push(p.key);
            }
        }
        if !dry_run {
            for e in &remove {
                self.delete_set(&e.id).await?;
            }
        }
        Ok(PrunePlan {
            dry_run,
            keep,
            remove,
            aborted_uploads: aborted,
        })
    }
}

fn fmt_dur(d: Duration) -> String {
    drctl_core::duration::Dur(d).to_string()
}

/// `before:` as an RFC 3339 time or a duration ago.
pub fn parse_before(s: &str, now: Timestamp) -> std::result::Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    match drctl_core::duration::parse_duration(s) {
        Ok(d) => {
            let d = jiff::SignedDuration::try_from(d.as_duration())
                .map_err(|e| format!("`{s}` is too long: {e}"))?;
            now.checked_sub(d)
                .map_err(|e| format!("`{s}` ago is out of range: {e}"))
        }
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time (2026-11-20T10:00:00Z) nor a duration (2h)"
        )),
    }
}

/// The `RepoError` inside an `ItemReader`'s io error, owned.
fn unwrap_io(e: std::io::Error, set: &str, key: &str) -> RepoError {
    if RepoError::from_io(&e).is_some() {
        let inner = e.into_inner().expect("checked");
        return *inner.downcast::<RepoError>().expect("checked");
    }
    RepoError::Corrupt {
        set: set.to_string(),
        key: key.to_string(),
        detail: e.to_string(),
    }
}

/// Writes one set: items first, the manifest last. Items may be put concurrently (`put`
/// takes `&self`); each put holds at most `concurrency` parts, and all puts of the process
/// (of any set or repository) together at most `upload_budget` parts (see [`Options`]).
#[must_use = "finish() the set, or abandon() it"]
pub struct SetWriter {
    repo: Repository,
    id: String,
    stack: String,
    tags: Vec<String>,
    started: Timestamp,
    state: Mutex<WriterState>,
}

#[derive(Default)]
struct WriterState {
    /// Stored items, with their number (for the manifest's order).
    items: Vec<(usize, ItemRecord)>,
    /// Names being stored or stored.
    names: Vec<String>,
    next: usize,
}

impl SetWriter {
    fn state(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for SetWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetWriter")
            .field("id", &self.id)
            .field("items", &self.state().items.len())
            .finish_non_exhaustive()
    }
}

impl SetWriter {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The items stored so far, in the order they were started.
    pub fn items(&self) -> Vec<ItemRecord> {
        let mut items = self.state().items.clone();
        items.sort_by_key(|(n, _)| *n);
        items.into_iter().map(|(_, i)| i).collect()
    }

    /// Stream one item into the set. On failure nothing of the item is left in the store
    /// (the upload is aborted); the set stays incomplete until `finish`.
    pub async fn put<R>(&self, spec: ItemSpec, reader: R) -> Result<ItemRecord>
    where
        R: AsyncRead + Unpin + Send,
    {
        let number = {
            let mut st = self.state();
            if spec.name.is_empty() || st.names.contains(&spec.name) {
                return Err(RepoError::Internal(format!(
                    "add item `{}` to set {}: the name is empty or already used",
                    spec.name, self.id
                )));
            }
            st.names.push(spec.name.clone());
            st.next += 1;
            st.next
        };
        let name = spec.name.clone();
        let result = self.store(number, spec, reader).await;
        let mut st = self.state();
        match result {
            Ok(record) => {
                st.items.push((number, record.clone()));
                Ok(record)
            }
            Err(e) => {
                // The name may be tried again.
                st.names.retain(|n| *n != name);
                Err(e)
            }
        }
    }

    async fn store<R>(&self, number: usize, spec: ItemSpec, reader: R) -> Result<ItemRecord>
    where
        R: AsyncRead + Unpin + Send,
    {
        let inner = &self.repo.inner;
        let zstd = inner.opts.zstd_level.map(|l| (l, inner.opts.zstd_workers));
        let recipient = inner.key.as_ref().map(|k| k.recipient().clone());
        let ext = format!(
            "{}{}",
            if zstd.is_some() { ".zst" } else { "" },
            if recipient.is_some() { ".age" } else { "" }
        );
        let rel = format!(
            "{SETS_DIR}/{}/objects/{:03}-{}{}",
            self.id,
            number,
            safe_name(&spec.name),
            ext
        );
        let hint = spec.size_hint.map(|h| h + h / 100 + (1 << 20));
        let plan = inner.backend.part_plan(hint);
        let stored = pipeline::store(
            &*inner.backend,
            &self.repo.full_key(&rel),
            &spec.name,
            reader,
            EncodeSettings {
                zstd,
                recipient: recipient.clone(),
            },
            plan,
            Budget {
                shared: inner.uploads.clone(),
                per_upload: inner.opts.concurrency,
            },
        )
        .await?;
        Ok(ItemRecord {
            name: spec.name,
            kind: spec.kind,
            source: spec.source,
            key: rel,
            raw_size: stored.raw_size,
            stored_size: stored.stored_size,
            sha256: stored.sha256,
            compression: match zstd {
                Some((level, _)) => Compression::Zstd { level },
                None => Compression::None,
            },
            encryption: if recipient.is_some() {
                Encryption::AgeX25519
            } else {
                Encryption::None
            },
            server_version: spec.server_version,
            fingerprint: spec.fingerprint,
        })
    }

    /// Set an item's fingerprint after its data was stored (a checksum computed while
    /// streaming); it goes into the manifest at `finish`.
    pub fn set_fingerprint(&self, name: &str, fingerprint: serde_json::Value) -> bool {
        match self
            .state()
            .items
            .iter_mut()
            .map(|(_, i)| i)
            .find(|i| i.name == name)
        {
            Some(i) => {
                i.fingerprint = fingerprint;
                true
            }
            None => false,
        }
    }

    /// Write the manifest: from now on the set is complete and restorable.
    pub async fn finish(self) -> Result<Manifest> {
        self.finish_at(Timestamp::now()).await
    }

    /// `finish` with an explicit end time (imports, tests with synthetic times).
    pub async fn finish_at(self, finished: Timestamp) -> Result<Manifest> {
        let inner = &self.repo.inner;
        let items = self.items();
        let m = Manifest {
            format: FORMAT_VERSION,
            stack: self.stack,
            id: self.id,
            tags: self.tags,
            started: self.started,
            finished: finished.max(self.started),
            drctl_version: env!("CARGO_PKG_VERSION").to_string(),
            encryption: inner.key.as_ref().map(|k| EncryptionInfo {
                scheme: AGE_SCHEME.to_string(),
                key_fingerprint: k.fingerprint().to_string(),
            }),
            items,
        };
        let json = serde_json::to_vec_pretty(&m)
            .map_err(|e| RepoError::Internal(format!("serialize the manifest: {e}")))?;
        backend::put_bytes(
            &*inner.backend,
            &self.repo.manifest_key(&m.id),
            Bytes::from(json),
        )
        .await?;
        Ok(m)
    }

    /// Give the set up: delete what was written (and unfinished uploads under it).
    pub async fn abandon(self) -> Result<()> {
        self.repo.delete_set(&self.id).await
    }
}
