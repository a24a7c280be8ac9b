//! Backups, restores and verification of targets: the adapters (Docker volumes, databases)
//! joined to the repository. Used by the `backup` / `restore` / `verify` steps and by
//! `drctl backup`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use drctl_core::config::{Config, Target, VolumeTarget};
use drctl_core::fingerprint::{tree_fingerprint, TreeFingerprint};
use drctl_core::runbook::Selection;
use drctl_docker::{ContainerSpec, DockerClient, RestoreOptions, SnapshotOptions, VolumeSpec};
use drctl_repo::{ItemRecord, ItemSpec, Manifest, Repository};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// A failure of a data operation, already in words for the operator.
#[derive(Debug)]
pub struct DataError {
    pub message: String,
    /// Bad data (checksum, fingerprint): retrying cannot help.
    pub fatal: bool,
}

impl DataError {
    fn new(m: impl Into<String>) -> Self {
        DataError {
            message: m.into(),
            fatal: false,
        }
    }
    fn fatal(m: impl Into<String>) -> Self {
        DataError {
            message: m.into(),
            fatal: true,
        }
    }
}

impl From<drctl_docker::DockerError> for DataError {
    fn from(e: drctl_docker::DockerError) -> Self {
        DataError::new(e.to_string())
    }
}

impl From<drctl_db::DbError> for DataError {
    fn from(e: drctl_db::DbError) -> Self {
        let fatal = !e.is_retryable();
        DataError {
            message: e.to_string(),
            fatal,
        }
    }
}

impl From<drctl_repo::RepoError> for DataError {
    fn from(e: drctl_repo::RepoError) -> Self {
        let fatal = e.is_damaged();
        DataError {
            message: e.to_string(),
            fatal,
        }
    }
}

type Result<T> = std::result::Result<T, DataError>;

/// What a volume item records for verification and re-creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeFingerprint {
    pub tree: TreeFingerprint,
    /// How to create the volume when it is gone (driver, options, compose labels).
    pub volume: VolumeSpec,
}

/// Feeds a tar stream to [`tree_fingerprint`] on a blocking thread.
struct TreeHasher {
    tx: mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<std::result::Result<TreeFingerprint, String>>,
}

struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

impl TreeHasher {
    fn start() -> TreeHasher {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::task::spawn_blocking(move || {
            let mut r = ChannelReader {
                rx,
                cur: Bytes::new(),
            };
            let fp = tree_fingerprint(&mut r);
            // Drain what is left so that the sender never blocks on a failed parse.
            let mut sink = [0u8; 65536];
            while std::io::Read::read(&mut r, &mut sink).unwrap_or(0) > 0 {}
            fp
        });
        TreeHasher { tx, task }
    }

    async fn finish(self) -> Result<TreeFingerprint> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| DataError::new(format!("failed to fingerprint the volume: {e}")))?
            .map_err(|e| DataError::new(format!("failed to fingerprint the volume: {e}")))
    }
}

/// An image that mounted `volume` when the set was taken, for the temporary container a
/// restore through the API uses when no container mounts the volume now (the stack is
/// gone).
fn recorded_image(specs: &[ContainerSpec], volume: &str) -> Option<String> {
    let spec = specs
        .iter()
        .find(|s| s.volumes.iter().any(|v| v.name == volume))?;
    Some(if spec.image_id.is_empty() {
        spec.image.clone()
    } else {
        spec.image_id.clone()
    })
}

/// Remembers whether the object being read turned out damaged (the repository says so
/// through the read error), so that a failed restore is reported as bad data, which no
/// retry can fix, rather than as a Docker failure.
struct DamageSpy<R> {
    inner: R,
    damaged: bool,
}

impl<R> DamageSpy<R> {
    fn new(inner: R) -> Self {
        DamageSpy {
            inner,
            damaged: false,
        }
    }

    fn explain(&self, e: drctl_docker::DockerError) -> DataError {
        let mut d = DataError::from(e);
        d.fatal |= self.damaged;
        d
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DamageSpy<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            if drctl_repo::RepoError::from_io(e).is_some_and(|re| re.is_damaged()) {
                self.damaged = true;
            }
        }
        r
    }
}

/// An `AsyncRead` that passes what it reads on to a hasher too.
struct TeeRead<R> {
    inner: R,
    tx: PollSender<Bytes>,
}

impl<R: AsyncRead + Unpin> AsyncRead for TeeRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Make room in the channel first, so that bytes read are never dropped.
        if let Err(_closed) = std::task::ready!(self.tx.poll_reserve(cx)) {
            return Poll::Ready(Err(std::io::Error::other(
                "the volume fingerprint stopped reading",
            )));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let b = Bytes::copy_from_slice(new);
            if self.tx.send_item(b).is_err() {
                return Poll::Ready(Err(std::io::Error::other(
                    "the volume fingerprint stopped reading",
                )));
            }
        } else {
            self.tx.abort_send();
        }
        Poll::Ready(Ok(()))
    }
}

/// An `AsyncWrite` that only hashes (for verification: nothing is stored).
struct HashWrite {
    tx: PollSender<Bytes>,
}

impl AsyncWrite for HashWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if std::task::ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(std::io::Error::other(
                "the volume fingerprint stopped reading",
            )));
        }
        if self.tx.send_item(Bytes::copy_from_slice(buf)).is_err() {
            return Poll::Ready(Err(std::io::Error::other(
                "the volume fingerprint stopped reading",
            )));
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// Run `produce` writing into a pipe whose other end is stored as an item. When either
/// side fails, the item's error wins over the producer's (which then only saw its reader go
/// away), except that a producer failure after a complete-looking upload is still an error:
/// the set is abandoned, never finished with a truncated item.
async fn pipe_item<T, F, Fut>(
    w: &mut drctl_repo::SetWriter,
    spec: ItemSpec,
    produce: F,
) -> Result<(ItemRecord, T)>
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, DataError>>,
{
    let (wr, rd) = tokio::io::duplex(4 << 20);
    let producer = async move {
        let r = produce(wr).await;
        r
    };
    let (made, put) = tokio::join!(producer, w.put(spec, rd));
    let rec = put?;
    let out = made?;
    Ok((rec, out))
}

/// A record an item of a set carries (a fingerprint, a volume spec), or an error naming
/// the set and the item.
fn recorded<T: serde::de::DeserializeOwned>(
    m: &Manifest,
    item: &ItemRecord,
    v: &Value,
    what: &str,
) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        DataError::fatal(format!(
            "backup set {} item {} has no {what}: {e}",
            m.id, item.name
        ))
    })
}

/// Record one verification result.
fn record(
    results: &mut BTreeMap<String, Value>,
    bad: &mut Vec<String>,
    what: &str,
    diff: Vec<String>,
    ok_detail: Value,
) {
    if diff.is_empty() {
        results.insert(what.to_string(), json!({"ok": true, "detail": ok_detail}));
    } else {
        bad.push(format!("{what}: {}", diff.join("; ")));
        results.insert(what.to_string(), json!({"ok": false, "differences": diff}));
    }
}

async fn pg_globals(
    pg: &drctl_db::Postgres,
    wr: &mut tokio::io::DuplexStream,
) -> std::result::Result<u64, drctl_db::DbError> {
    pg.dump_globals(wr).await
}

pub struct Data<'a> {
    pub docker: &'a DockerClient,
    pub repo: &'a Repository,
    pub config: &'a Config,
    /// The stack whose sets restores choose from: the configured one, except in a rehearsal,
    /// whose scratch copy restores the live stack's sets.
    pub source_stack: &'a str,
}

/// Item names in a set: `volume/sessions`, `postgres/postgres/app`, `spec/app/<container>`.
fn volume_item(target: &str) -> String {
    format!("volume/{target}")
}

impl Data<'_> {
    fn project(&self) -> &str {
        &self.config.stack.project
    }

    /// Targets by name: the named ones, or all configured.
    pub fn targets(&self, names: &[String]) -> Result<Vec<(String, Target)>> {
        if names.is_empty() {
            return Ok(self
                .config
                .targets
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect());
        }
        names
            .iter()
            .map(|n| {
                self.config
                    .targets
                    .get(n)
                    .map(|t| (n.clone(), t.clone()))
                    .ok_or_else(|| {
                        DataError::fatal(format!(
                            "no target `{n}` in {}",
                            self.config.file.display()
                        ))
                    })
            })
            .collect()
    }

    /// The Docker name of a volume target (`app-sessions` -> `drctl-lab_app-sessions`), and
    /// whether it exists now.
    async fn volume_name(&self, v: &VolumeTarget) -> Result<(String, bool)> {
        if let Some(name) = self
            .docker
            .compose_volume(self.project(), &v.volume)
            .await?
        {
            return Ok((name, true));
        }
        // Not a compose key of this project: a volume by its own name?
        if self.docker.inner().inspect_volume(&v.volume).await.is_ok() {
            return Ok((v.volume.clone(), true));
        }
        Ok((format!("{}_{}", self.project(), v.volume), false))
    }

    /// A container spec the set holds (`spec/<service>/<container>` items).
    pub async fn read_spec(&self, m: &Manifest, item: &ItemRecord) -> Result<ContainerSpec> {
        let mut r = self.repo.open_item(m, item).await?;
        let mut buf = Vec::new();
        (&mut r)
            .take(16 << 20)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| {
                DataError::fatal(format!("failed to read {} of set {}: {e}", item.name, m.id))
            })?;
        serde_json::from_slice(&buf).map_err(|e| {
            DataError::fatal(format!(
                "{} of set {} is not a container spec: {e}",
                item.name, m.id
            ))
        })
    }

    /// Every container spec of the set that can be read (best effort: for images only).
    async fn readable_specs(&self, m: &Manifest) -> Vec<ContainerSpec> {
        let mut out = Vec::new();
        for item in m.items.iter().filter(|i| i.kind == "spec") {
            if let Ok(spec) = self.read_spec(m, item).await {
                out.push(spec);
            }
        }
        out
    }

    /// Take a backup set of the targets (and the container specs of the stack).
    pub async fn backup(
        &self,
        names: &[String],
        tags: Vec<String>,
        skip_missing: bool,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Manifest> {
        let targets = self.targets(names)?;
        let mut w = self.repo.begin_set(self.project(), tags);
        let result = async {
            let mut taken = 0usize;
            for (name, t) in &targets {
                let skip_missing = skip_missing || t.optional();
                match t {
                    Target::Volume(v) => {
                        let (full, exists) = self.volume_name(v).await?;
                        if !exists {
                            if skip_missing {
                                progress(format!(
                                    "{name}: volume {full} does not exist; nothing to back up"
                                ));
                                continue;
                            }
                            return Err(DataError::new(format!(
                                "volume `{}` of target `{name}` does not exist (looked for {full})",
                                v.volume
                            )));
                        }
                        let spec = self.docker.volume_spec(&full).await?;
                        let defaults = SnapshotOptions::default();
                        let opts = SnapshotOptions {
                            stop_users: !v.stop.is_empty(),
                            fast_path: v.fast_path || defaults.fast_path,
                            ..defaults
                        };
                        let hasher = TreeHasher::start();
                        // The reader ends in an error (never a clean end) when the snapshot
                        // fails, so a truncated archive cannot be stored as a whole one.
                        let mut rd = self.docker.snapshot_volume_reader(&full, opts);
                        let item =
                            ItemSpec::new(volume_item(name), "volume", format!("volume {full}"));
                        let put = w
                            .put(
                                item,
                                TeeRead {
                                    inner: &mut rd,
                                    tx: PollSender::new(hasher.tx.clone()),
                                },
                            )
                            .await;
                        let report = rd.finish().await;
                        // The upload's error is the cause when both fail (the snapshot then
                        // only saw its reader go away).
                        let rec = put?;
                        let report = report?;
                        let tree = hasher.finish().await?;
                        w.set_fingerprint(
                            &rec.name,
                            serde_json::to_value(VolumeFingerprint { tree, volume: spec })
                                .expect("json"),
                        );
                        progress(format!(
                            "{name}: volume {full}, {} entries, {} bytes in {:.1}s",
                            report.entries, report.bytes, report.seconds
                        ));
                        taken += 1;
                    }
                    Target::Postgres(t) => {
                        let Some(container) = self.db_container(&t.service, skip_missing, name, progress).await? else { continue };
                        let pg = drctl_db::Postgres::new(self.docker.clone(), container.clone(), t)?;
                        let (rec, bytes) = pipe_item(&mut w, ItemSpec::new(format!("postgres/{name}/globals"), "postgres-globals", format!("roles of {container}")), |mut wr| async move {
                            Ok::<_, DataError>(pg_globals(&pg, &mut wr).await?)
                        })
                        .await?;
                        let _ = rec;
                        let pg = drctl_db::Postgres::new(self.docker.clone(), container.clone(), t)?;
                        progress(format!("{name}: roles, {bytes} bytes"));
                        for db in pg.selected_databases().await? {
                            let spec = ItemSpec::new(format!("postgres/{name}/{db}"), "postgres", format!("database {db} in {container}"));
                            let pgr = &pg;
                            let dbr = db.clone();
                            let (rec, report) = pipe_item(&mut w, spec, |mut wr| async move {
                                Ok::<_, DataError>(pgr.dump_database(&dbr, &mut wr, &drctl_db::PgDumpOptions { fingerprint: true }).await?)
                            })
                            .await?;
                            if let Some(fp) = &report.fingerprint {
                                w.set_fingerprint(&rec.name, serde_json::to_value(fp).expect("json"));
                            }
                            progress(format!("{name}: database {db}, {} bytes in {:.1}s", report.bytes, report.seconds));
                        }
                        taken += 1;
                    }
                    Target::Redis(t) => {
                        let Some(container) = self.db_container(&t.service, skip_missing, name, progress).await? else { continue };
                        let r = drctl_db::Redis::new(self.docker.clone(), container.clone(), t)?;
                        let spec = ItemSpec::new(format!("redis/{name}"), "redis", format!("redis in {container}"));
                        let rr = &r;
                        let (rec, report) = pipe_item(&mut w, spec, |mut wr| async move {
                            Ok::<_, DataError>(rr.backup(&mut wr, &drctl_db::RedisBackupOptions::default()).await?)
                        })
                        .await?;
                        if let Some(fp) = &report.fingerprint {
                            w.set_fingerprint(&rec.name, serde_json::to_value(fp).expect("json"));
                        }
                        progress(format!("{name}: RDB of Redis {}, {} bytes in {:.1}s", report.redis_version, report.bytes, report.seconds));
                        taken += 1;
                    }
                    Target::Qdrant(t) => {
                        let q = drctl_db::Qdrant::new(t)?;
                        let collections = match q.selected_collections().await {
                            Ok(c) => c,
                            Err(e) if skip_missing => {
                                progress(format!("{name}: {e}; nothing to back up"));
                                continue;
                            }
                            Err(e) => return Err(e.into()),
                        };
                        for c in collections {
                            let fp = q.collection_fingerprint(&c).await?;
                            let spec = ItemSpec::new(format!("qdrant/{name}/{c}"), "qdrant", format!("collection {c} at {}", t.url));
                            let (qr, cr) = (&q, c.clone());
                            let (rec, report) = pipe_item(&mut w, spec, |mut wr| async move {
                                Ok::<_, DataError>(qr.snapshot_collection(&cr, &mut wr, &drctl_db::QdrantSnapshotOptions::default()).await?)
                            })
                            .await?;
                            w.set_fingerprint(&rec.name, serde_json::json!({"collection": fp, "snapshot_sha256": report.sha256}));
                            progress(format!("{name}: collection {c}, {} bytes in {:.1}s", report.bytes, report.seconds));
                        }
                        taken += 1;
                    }
                    Target::Path(_) => {
                        return Err(DataError::fatal(format!("target `{name}` is a path target; back up the volume that holds the path instead (path targets are not supported yet)")));
                    }
                }
            }
            // What it takes to recreate the containers when no compose file is at hand.
            let containers = self.docker.project_containers(self.project()).await?;
            for c in containers {
                let spec: ContainerSpec = self.docker.capture_spec(&c.name).await?;
                let svc = c.service.clone().unwrap_or_else(|| c.name.clone());
                let bytes = serde_json::to_vec_pretty(&spec).expect("spec serializes");
                let item = ItemSpec::new(
                    format!("spec/{svc}/{}", c.name),
                    "spec",
                    format!("container {}", c.name),
                );
                w.put(item, &bytes[..]).await?;
            }
            Ok(taken)
        }
        .await;
        match result {
            Ok(_) => Ok(w.finish().await?),
            Err(e) => {
                if let Err(a) = w.abandon().await {
                    tracing::warn!("failed to clean up the incomplete set: {a}");
                }
                Err(e)
            }
        }
    }

    /// The running container of a database service; `None` (with a note) when there is none
    /// and missing sources are to be skipped (safety backups of a stack that is down).
    async fn db_container(
        &self,
        service: &str,
        skip_missing: bool,
        name: &str,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Option<String>> {
        match drctl_db::service_container(self.docker, self.project(), service).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if skip_missing => {
                progress(format!("{name}: {e}; nothing to back up"));
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Find a set by selection; `Step` selections are resolved by the caller into an id.
    /// `latest` and `before` mean the newest complete set that holds every one of `targets`
    /// and is not a safety backup: a safety set holds only what one step was about to
    /// overwrite (often already damaged), so it is used only when asked for by id or tag.
    pub async fn select_for(&self, sel: &Selection, names: &[String]) -> Result<Manifest> {
        let cutoff = match sel {
            Selection::Latest => None,
            Selection::Before(b) => Some(
                drctl_repo::parse_before(b, jiff::Timestamp::now())
                    .map_err(|e| DataError::fatal(format!("backup: before: {e}")))?,
            ),
            _ => return Ok(self.repo.select(sel, jiff::Timestamp::now()).await?),
        };
        let targets = self.targets(names)?;
        let mut sets = self.repo.list().await?;
        sets.retain(|s| {
            s.complete
                && s.problem.is_none()
                && s.stack.as_deref() == Some(self.source_stack)
                && !s.tags.iter().any(|t| t == "safety")
                && cutoff.is_none_or(|c| s.finished.unwrap_or(s.started) <= c)
        });
        sets.sort_by(|a, b| b.id.cmp(&a.id));
        let mut skipped = Vec::new();
        for s in &sets {
            let m = self.repo.load_manifest(&s.id).await?;
            if self.items_for(&m, &targets).is_ok() {
                return Ok(m);
            }
            skipped.push(s.id.clone());
        }
        Err(DataError::fatal(format!(
            "no complete backup set of `{}` {} holds {}{}; take one with `drctl backup`, or choose a set by id",
            self.project(),
            match cutoff {
                Some(c) => format!("taken before {c}"),
                None => "(safety backups aside)".to_string(),
            },
            if names.is_empty() { "every target".to_string() } else { names.join(", ") },
            if skipped.is_empty() { String::new() } else { format!(" (looked at {})", skipped.join(", ")) }
        )))
    }

    fn items_for<'m>(
        &self,
        m: &'m Manifest,
        names: &[(String, Target)],
    ) -> Result<Vec<(&'m ItemRecord, String, Target)>> {
        let mut out = Vec::new();
        for (name, t) in names {
            let prefix = match t {
                Target::Volume(_) => volume_item(name),
                other => format!("{}/{name}", other.kind()),
            };
            let items: Vec<&ItemRecord> = m
                .items
                .iter()
                .filter(|i| i.name == prefix || i.name.starts_with(&format!("{prefix}/")))
                .collect();
            if items.is_empty() && t.optional() {
                continue; // an optional target absent at backup time
            }
            if items.is_empty() {
                return Err(DataError::fatal(format!(
                    "backup set {} holds nothing for target `{name}`; choose another set",
                    m.id
                )));
            }
            out.extend(items.into_iter().map(|i| (i, name.clone(), t.clone())));
        }
        Ok(out)
    }

    /// Restore targets from a set. Nothing is touched before the set is known good: one
    /// volume (the largest; unless `in_place_restore`) goes first, written beside its old
    /// contents and swapped in only once its object streamed through intact (SHA-256, age,
    /// zstd and size all checked as it reads); every other object is checked first (size
    /// and SHA-256 of the stored bytes, and the key), then the safety backup of what will be
    /// overwritten is taken. Those volumes are staged too.
    pub async fn restore(
        &self,
        m: &Manifest,
        names: &[String],
        safety: bool,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Value> {
        let targets = self.targets(names)?;
        let mut items = self.items_for(m, &targets)?;
        let lead = items
            .iter()
            .enumerate()
            .filter(|(_, (_, _, t))| matches!(t, Target::Volume(v) if !v.in_place_restore))
            .max_by_key(|(_, (item, _, _))| item.stored_size)
            .map(|(i, _)| i);
        if let Some(i) = lead {
            let it = items.remove(i);
            items.insert(0, it);
        }
        let to_check: Vec<&ItemRecord> = items
            .iter()
            .skip(usize::from(lead.is_some()))
            .map(|(item, _, _)| *item)
            .collect();
        let n_checked = to_check.len();
        // All at once: a step restores a handful of objects, each check streams.
        let check = futures_util::future::try_join_all(
            to_check
                .into_iter()
                .map(|item| self.repo.check_item(m, item))
                .collect::<Vec<_>>(),
        );
        let take_safety = async {
            if !safety {
                return Ok(None);
            }
            let tnames: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
            let s = self
                .backup(&tnames, vec!["safety".into()], true, progress)
                .await
                .map_err(|e| {
                    DataError::new(format!(
                        "failed to take the safety backup, so nothing was restored: {}",
                        e.message
                    ))
                })?;
            progress(format!("safety backup {} taken", s.id));
            Ok::<_, DataError>(Some(s.id))
        };
        // Checks first: a damaged set must not cost a safety backup (and the stops it
        // makes) before it is refused.
        check.await?;
        let safety_set = take_safety.await?;
        progress(match lead {
            Some(_) if n_checked == 0 => format!(
                "set {}: `{}` is verified as it streams and swapped in only when intact, before touching anything",
                m.id, items[0].1
            ),
            Some(_) => format!(
                "checked {n_checked} object(s) of set {} before touching anything; `{}` is verified as it streams and swapped in only when intact",
                m.id, items[0].1
            ),
            None => format!(
                "checked {n_checked} object(s) of set {} before touching anything",
                m.id
            ),
        });
        let mut restored = Vec::new();
        // Read once, when a volume needs an image for its temporary container.
        let mut specs: Option<Vec<ContainerSpec>> = None;
        for (i, (item, name, t)) in items.iter().enumerate() {
            match t {
                Target::Volume(v) => {
                    let fp: VolumeFingerprint =
                        recorded(m, item, &item.fingerprint, "usable volume record")?;
                    let (full, _) = self.volume_name(v).await?;
                    let mut create = fp.volume.clone();
                    create.name = full.clone();
                    if specs.is_none() {
                        specs = Some(self.readable_specs(m).await);
                    }
                    let defaults = RestoreOptions::default();
                    let opts = RestoreOptions {
                        create: Some(create),
                        image: recorded_image(specs.as_deref().unwrap_or_default(), &full),
                        fast_path: v.fast_path || defaults.fast_path,
                        staged: !v.in_place_restore,
                        ..defaults
                    };
                    let mut reader = DamageSpy::new(self.repo.open_item(m, item).await?);
                    let r = match self.docker.restore_volume(&full, &opts, &mut reader).await {
                        Ok(r) => r,
                        Err(drctl_docker::DockerError::CannotStage { reason, .. }) => {
                            // Nothing was touched. In place, the object must be known good
                            // before the volume is emptied.
                            progress(format!(
                                "{name}: cannot stage volume {full} ({reason}); checking the object, then restoring in place"
                            ));
                            if i == 0 && lead.is_some() {
                                // The others were checked before anything was touched.
                                self.repo.check_item(m, item).await?;
                            }
                            let mut reader = DamageSpy::new(self.repo.open_item(m, item).await?);
                            let opts = RestoreOptions {
                                staged: false,
                                ..opts
                            };
                            match self.docker.restore_volume(&full, &opts, &mut reader).await {
                                Ok(r) => r,
                                Err(e) => return Err(reader.explain(e)),
                            }
                        }
                        Err(e) => return Err(reader.explain(e)),
                    };
                    progress(format!(
                        "{name}: volume {full} restored, {} entries in {:.1}s ({})",
                        r.entries, r.seconds, r.emptied_by
                    ));
                    restored.push(name.clone());
                }
                Target::Postgres(t) => {
                    let container =
                        drctl_db::service_container(self.docker, self.project(), &t.service)
                            .await?;
                    let pg = drctl_db::Postgres::new(self.docker.clone(), container.clone(), t)?;
                    let mut reader = self.repo.open_item(m, item).await?;
                    let part = item.name.rsplit('/').next().unwrap_or_default();
                    if item.kind == "postgres-globals" {
                        pg.restore_globals(&mut reader).await?;
                        progress(format!("{name}: roles restored"));
                    } else {
                        let r = pg
                            .restore_database(
                                part,
                                &mut reader,
                                &drctl_db::PgRestoreOptions::default(),
                            )
                            .await?;
                        progress(format!(
                            "{name}: database {part} restored, {} bytes in {:.1}s",
                            r.bytes, r.seconds
                        ));
                    }
                    if !restored.contains(name) {
                        restored.push(name.clone());
                    }
                }
                Target::Redis(t) => {
                    let container =
                        drctl_db::service_container(self.docker, self.project(), &t.service)
                            .await?;
                    let r = drctl_db::Redis::new(self.docker.clone(), container, t)?;
                    let mut reader = self.repo.open_item(m, item).await?;
                    let rep = r
                        .restore(&mut reader, &drctl_db::RedisRestoreOptions::default())
                        .await?;
                    progress(format!("{name}: Redis restored in {:.1}s", rep.seconds));
                    restored.push(name.clone());
                }
                Target::Qdrant(t) => {
                    let q = drctl_db::Qdrant::new(t)?;
                    let c = item.name.rsplit('/').next().unwrap_or_default();
                    let sha = item
                        .fingerprint
                        .get("snapshot_sha256")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string();
                    let mut reader = self.repo.open_item(m, item).await?;
                    let rep = q.restore_collection(c, &mut reader, &sha).await?;
                    progress(format!(
                        "{name}: collection {c} restored, {} bytes in {:.1}s",
                        rep.bytes, rep.seconds
                    ));
                    if !restored.contains(name) {
                        restored.push(name.clone());
                    }
                }
                Target::Path(_) => {
                    return Err(DataError::fatal(format!(
                        "target `{name}` is a path target; path targets are not supported yet"
                    )))
                }
            }
        }
        Ok(json!({
            "set_id": m.id,
            "set_taken_at": m.started.to_string(),
            "restored": restored,
            "safety_set": safety_set,
        }))
    }

    /// Compare the targets now with the fingerprints recorded in a set.
    pub async fn verify(&self, m: &Manifest, names: &[String]) -> Result<Value> {
        let targets = self.targets(names)?;
        let items = self.items_for(m, &targets)?;
        let mut results = BTreeMap::new();
        let mut bad = Vec::new();
        for (item, name, t) in &items {
            match t {
                Target::Volume(v) => {
                    let fp: VolumeFingerprint =
                        recorded(m, item, &item.fingerprint, "volume fingerprint")?;
                    let (full, exists) = self.volume_name(v).await?;
                    if !exists {
                        bad.push(format!("{name}: volume {full} does not exist"));
                        continue;
                    }
                    let hasher = TreeHasher::start();
                    let mut sink = HashWrite {
                        tx: PollSender::new(hasher.tx.clone()),
                    };
                    let opts = SnapshotOptions {
                        stop_users: false,
                        ..Default::default()
                    };
                    let snap = self.docker.snapshot_volume(&full, &opts, &mut sink).await;
                    let _ = sink.shutdown().await;
                    drop(sink);
                    snap?;
                    let now = hasher.finish().await?;
                    let diff = fp.tree.compare(&now);
                    if diff.is_empty() {
                        results.insert(name.clone(), json!({"ok": true, "entries": now.entries, "file_bytes": now.file_bytes}));
                    } else {
                        bad.push(format!("{name}: {}", diff.join("; ")));
                        results.insert(name.clone(), json!({"ok": false, "differences": diff}));
                    }
                }
                Target::Postgres(t) => {
                    if item.kind == "postgres-globals" {
                        continue;
                    }
                    let db = item.name.rsplit('/').next().unwrap_or_default().to_string();
                    let container =
                        drctl_db::service_container(self.docker, self.project(), &t.service)
                            .await?;
                    let pg = drctl_db::Postgres::new(self.docker.clone(), container, t)?;
                    let then: drctl_db::PgDatabaseFingerprint =
                        recorded(m, item, &item.fingerprint, "database fingerprint")?;
                    let now = pg.fingerprint_database(&db).await?;
                    record(
                        &mut results,
                        &mut bad,
                        &format!("{name}/{db}"),
                        then.compare_database(&db, &now)
                            .iter()
                            .map(|x| x.to_string())
                            .collect(),
                        json!({"tables": now.tables.len()}),
                    );
                }
                Target::Redis(t) => {
                    let container =
                        drctl_db::service_container(self.docker, self.project(), &t.service)
                            .await?;
                    let r = drctl_db::Redis::new(self.docker.clone(), container, t)?;
                    let then: drctl_db::RedisFingerprint =
                        recorded(m, item, &item.fingerprint, "Redis fingerprint")?;
                    let now = r.fingerprint().await?;
                    record(
                        &mut results,
                        &mut bad,
                        name,
                        then.compare(&now).iter().map(|x| x.to_string()).collect(),
                        serde_json::to_value(&now).unwrap_or_default(),
                    );
                }
                Target::Qdrant(t) => {
                    let q = drctl_db::Qdrant::new(t)?;
                    let c = item.name.rsplit('/').next().unwrap_or_default().to_string();
                    let then: drctl_db::QdrantCollectionFingerprint = recorded(
                        m,
                        item,
                        item.fingerprint.get("collection").unwrap_or(&Value::Null),
                        "collection fingerprint",
                    )?;
                    let now = q.collection_fingerprint(&c).await?;
                    let thenf = drctl_db::QdrantFingerprint {
                        collections: [(c.clone(), then)].into_iter().collect(),
                    };
                    let nowf = drctl_db::QdrantFingerprint {
                        collections: [(c.clone(), now)].into_iter().collect(),
                    };
                    record(
                        &mut results,
                        &mut bad,
                        &format!("{name}/{c}"),
                        thenf.compare(&nowf).iter().map(|x| x.to_string()).collect(),
                        json!({}),
                    );
                }
                Target::Path(_) => {
                    return Err(DataError::fatal(format!(
                        "target `{name}` is a path target; path targets are not supported yet"
                    )))
                }
            }
        }
        if !bad.is_empty() {
            return Err(DataError::fatal(format!(
                "verification against set {} FAILED: {}",
                m.id,
                bad.join("; ")
            )));
        }
        Ok(json!({"set_id": m.id, "targets": results}))
    }
}
