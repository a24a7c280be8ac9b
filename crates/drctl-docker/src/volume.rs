//! Volume snapshot and restore through the Docker archive API, without a helper image.
//!
//! Snapshot: `GET /containers/{c}/archive?path=DIR/.` from a container that mounts the
//! volume (stopped is fine: the daemon mounts its volumes for the copy), or from a
//! temporary, never-started container created from an image already on this host. The
//! stream holds the volume's contents relative to its root (`./`, `./a`, ...), root entry
//! included, so the root's owner and mode travel too.
//!
//! Restore (staged, the default): `PUT /containers/{c}/archive?path=/` through a temporary
//! never-started container, with the entries renamed into a staging folder in the volume
//! (`drctl-volume/.drctl-staging-*/...`), while a swap container that mounts the volume too
//! starts and waits on its stdin; `go` once the upload ended well swaps the new contents
//! in (see [`DockerClient::restore_volume`]). In place: empty the volume, then the same
//! upload with the entries renamed under the mount point (`drctl-volume/...`). Extracting at
//! the mount point's parent is what makes the daemon apply the root entry's owner and mode
//! to the volume's root; extracting into the mount point itself skips the root entry
//! (checked against Docker 20.10). `copyUIDGID` stays off: with it the daemon would chown
//! every file to the container's user; without it, each entry keeps the owner recorded in
//! the archive (the daemon runs as root).
//!
//! Findings (Docker 20.10): owners, modes (setgid included), symlinks (dangling too), hard
//! links, empty directories and file contents survive byte for byte. Sparseness does not:
//! the daemon's tar writer stores holes as zeros and its extractor writes them out, so a
//! 1 GiB sparse file comes back with the same content but fully allocated.
//!
//! Host fast path: with `fast_path` set (in the options, or `DRCTL_VOLUME_FAST_PATH=1` in
//! the environment for the defaults), a volume whose files are reachable on this host is
//! read and written in place instead ([`crate::hostpath`]): the same tar stream, the same
//! guard on the containers that use it; otherwise the archive API is used and the report
//! says why. Reports name the path taken (`path`: `api` or `host`).

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::container::AttachContainerResults;
use bollard::models::{ContainerCreateBody, ContainerSummary};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, ListImagesOptions,
    LogsOptionsBuilder, RemoveVolumeOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spec::VolumeSpec;
use crate::tarstream::{check_first_block, relative_to_root, under_dir, TarRenamer};
use crate::temp::{volume_body, TempContainer, VOLUME_MOUNT};
use crate::{DockerClient, DockerError, StoppedGuard, TEMP_LABEL};

/// Options of [`DockerClient::snapshot_volume`].
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Stop the running containers that use the volume for the snapshot (a consistent copy)
    /// and start them again afterwards, on failure too.
    pub stop_users: bool,
    /// Grace period for those stops.
    pub grace: Duration,
    /// An image on this host for the temporary container used when no container mounts
    /// the volume (e.g. the image of a compose service that uses it). Without it, the image
    /// of any container using the volume, else any local image, is used: the container is
    /// never started, so any image does.
    pub image: Option<String>,
    /// Read the volume's files at its mountpoint on this host when that is possible (see
    /// [`crate::hostpath`]), else through the archive API. Default: `DRCTL_VOLUME_FAST_PATH`
    /// (`1` / `true`), else false.
    pub fast_path: bool,
}

/// `DRCTL_VOLUME_FAST_PATH=1` (or `true`, `yes`): the default of `fast_path`.
pub fn fast_path_from_env() -> bool {
    std::env::var("DRCTL_VOLUME_FAST_PATH")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            stop_users: false,
            grace: Duration::from_secs(30),
            image: None,
            fast_path: fast_path_from_env(),
        }
    }
}

/// Options of [`DockerClient::restore_volume`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Stop the running containers that use the volume (and start them again afterwards).
    /// When false, a running user makes the restore fail: emptying a live database's volume
    /// under it is never what an operator wants. Default true.
    pub stop_users: bool,
    pub grace: Duration,
    /// An image with `sh` and `rm` to empty the volume with; tried before the images of the
    /// containers that use the volume.
    pub image: Option<String>,
    /// How to create the volume when it does not exist (driver, options, compose labels).
    /// Without it a missing volume is created as a plain local volume.
    pub create: Option<VolumeSpec>,
    /// Request timeout of the upload: the daemon answers only once it has extracted all of
    /// it, so this bounds the whole transfer. Default 24 h (the step's timeout governs).
    pub upload_timeout: Duration,
    /// Write the volume's files at its mountpoint on this host when that is possible (see
    /// [`crate::hostpath`]), else through the archive API. Default: `DRCTL_VOLUME_FAST_PATH`
    /// (`1` / `true`), else false.
    pub fast_path: bool,
    /// Write the new contents beside the old ones (in a hidden folder in the volume) and
    /// swap them in only once the whole archive arrived and its reader reported it intact;
    /// until then nothing is removed. Needs room for both copies. Without it (or when no
    /// image has a shell for the swap: [`DockerError::CannotStage`]) the volume is emptied
    /// first. Default true.
    pub staged: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            stop_users: true,
            grace: Duration::from_secs(30),
            image: None,
            create: None,
            upload_timeout: Duration::from_secs(24 * 3600),
            fast_path: fast_path_from_env(),
            staged: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub volume: String,
    /// Size of the tar stream.
    pub bytes: u64,
    pub entries: u64,
    /// Sum of the regular files' sizes.
    pub file_bytes: u64,
    /// The container read from (a temporary one is named `drctl-temp-...`).
    pub source: String,
    /// Containers stopped for the snapshot and started again.
    pub stopped: Vec<String>,
    pub seconds: f64,
    /// How the files were read: `api` (the daemon's archive API) or `host` (in place, at
    /// the volume's mountpoint).
    pub path: &'static str,
    /// Why the host path was asked for but not taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path_refused: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub volume: String,
    pub bytes: u64,
    pub entries: u64,
    pub file_bytes: u64,
    /// How the old contents gave way: `staged, swapped in by a container from image …`,
    /// `staged, swapped in on the host`, `emptied by a container from image …`, `volume
    /// recreated` or `emptied on the host`.
    pub emptied_by: String,
    pub stopped: Vec<String>,
    pub seconds: f64,
    /// How the files were written: `api` (the daemon's archive API) or `host` (in place,
    /// at the volume's mountpoint).
    pub path: &'static str,
    /// Why the host path was asked for but not taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path_refused: Option<String>,
}

/// What one snapshot or restore moved, and how.
struct Moved {
    bytes: u64,
    entries: u64,
    file_bytes: u64,
    /// Snapshot: the container or directory read from; restore: how it was emptied.
    via: String,
    path: &'static str,
    refused: Option<String>,
}

/// A container that mounts a volume.
#[derive(Debug, Clone)]
pub struct VolumeUser {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub running: bool,
    /// Where the volume is mounted in it.
    pub destination: String,
    pub read_only: bool,
    /// Another mount lies below the destination: an archive of it would include that too.
    pub nested: bool,
}

/// Empties the volume's root, hidden files included, and checks that nothing is left.
const EMPTY_SCRIPT: &str = "set -e; cd /drctl-volume; rm -rf -- ./..?* ./.[!.]* ./*; \
     left=$(ls -A); if [ -n \"$left\" ]; then echo \"left after emptying: $left\" >&2; exit 1; fi";

fn warn_staging_skipped(volume: &str, n: u64) {
    if n > 0 {
        tracing::warn!(
            volume,
            entries = n,
            "left out of the snapshot: the staging folder of an interrupted restore (the next restore of this volume removes it)"
        );
    }
}

/// A staging folder's name: hidden, and unlike anything an application would create.
fn staging_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(".drctl-staging-{}-{nanos:x}", std::process::id())
}

/// The swap container by the end of the upload.
enum Swapper {
    /// Started, attached, waiting for `go`.
    Waiting(AttachContainerResults),
    /// Never ran (no attachment, or its start failed before it ran): nothing to undo.
    NeverStarted,
    /// Its start failed, but it may have run: not to be relied on.
    Unknown(String),
}

/// A swap container: the swap script waiting for `go` on its stdin, which drctl attaches.
fn swapper_body(image: &str, volume: &str, staging: &str) -> ContainerCreateBody {
    ContainerCreateBody {
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..volume_body(image, volume, Some(&swap_script(staging, true)))
    }
}

/// Swaps a staged restore in: checks its tools before changing anything (exit 3: try
/// another image), removes the old contents (stale staging folders of killed runs too),
/// moves the new ones up (renames, same filesystem), gives the root the archive's owner,
/// mode and time, removes the staging folder. Not to be run twice on one staging folder:
/// a second run would remove what the first had moved up.
fn swap_script(staging: &str, wait_for_go: bool) -> String {
    // Waiting: `go` on stdin swaps; anything else (`abort`, or end of input when drctl
    // died mid-upload) removes the staging folder and exits 5.
    let wait = if wait_for_go {
        r#"IFS= read -r go || go=
if [ "$go" != go ]; then rm -rf -- "$S"; echo "the upload did not finish; its staging folder was removed" >&2; exit 5; fi
"#
    } else {
        ""
    };
    format!(
        r#"set -e
cd {VOLUME_MOUNT}
S='{staging}'
for c in rm mv rmdir chown chmod stat; do command -v "$c" >/dev/null 2>&1 || {{ echo "this image has no $c" >&2; exit 3; }}; done
{wait}[ -d "$S" ] || {{ echo "the staged contents ($S) are missing" >&2; exit 4; }}
own=$(stat -c %u:%g "$S"); mode=$(stat -c %a "$S")
# The root's time too (not fingerprinted: best effort), kept outside the volume before
# the moves change it.
t=/.drctl-root-time; touch -r "$S" "$t" 2>/dev/null || t=
for f in ./..?* ./.[!.]* ./*; do
  if [ "$f" != "./$S" ] && {{ [ -e "$f" ] || [ -L "$f" ]; }}; then rm -rf -- "$f"; fi
done
for f in "$S"/..?* "$S"/.[!.]* "$S"/*; do
  if [ -e "$f" ] || [ -L "$f" ]; then mv -- "$f" ./; fi
done
chown "$own" .
chmod "$mode" .
rmdir "$S"
[ -z "$t" ] || touch -r "$t" . 2>/dev/null || true
"#
    )
}

fn io_err(action: String) -> impl FnOnce(std::io::Error) -> DockerError {
    move |e| DockerError::Io { action, source: e }
}

impl DockerClient {
    /// The containers (any state; drctl's temporary ones excluded) that mount a volume.
    pub async fn volume_users(&self, volume: &str) -> Result<Vec<VolumeUser>, DockerError> {
        let list = self
            .list_raw(
                HashMap::from([("volume".to_string(), vec![volume.to_string()])]),
                &format!("list the containers that use volume `{volume}`"),
            )
            .await?;
        Ok(list
            .into_iter()
            .filter(|c| {
                !c.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(TEMP_LABEL))
            })
            .filter_map(|c| user_of(volume, c))
            .collect())
    }

    /// Remove a volume; refused while a container (even a stopped one) uses it. A volume
    /// that does not exist is not an error.
    pub async fn remove_volume(&self, volume: &str) -> Result<(), DockerError> {
        let users = self.volume_users(volume).await?;
        if !users.is_empty() {
            return Err(DockerError::failed(
                format!("remove volume `{volume}`"),
                format!(
                    "still used by container(s) {}; remove them first",
                    names(&users)
                ),
            ));
        }
        match self
            .docker
            .remove_volume(volume, Some(RemoveVolumeOptionsBuilder::default().build()))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.api_err(format!("remove volume `{volume}`"))(e)),
        }
    }

    /// Stream a volume's contents as a tar (entries relative to its root) into `out`.
    /// With `stop_users`, the containers using it are stopped for the copy and started
    /// again afterwards, on failure too. The writer is flushed, not shut down.
    pub async fn snapshot_volume(
        &self,
        volume: &str,
        opts: &SnapshotOptions,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<SnapshotReport, DockerError> {
        let t0 = Instant::now();
        let action = format!("snapshot volume `{volume}`");
        self.require_volume(volume, &action).await?;
        let users = self.volume_users(volume).await?;
        let guard = self
            .stop_users(&users, opts.stop_users, opts.grace, false)
            .await?;
        let stopped = guard
            .as_ref()
            .map(|g| g.stopped().to_vec())
            .unwrap_or_default();
        let result = self
            .snapshot_inner(volume, &users, opts, out, &action)
            .await;
        let result = finish_guard(guard, result).await;
        let m = result?;
        let report = SnapshotReport {
            volume: volume.to_string(),
            bytes: m.bytes,
            entries: m.entries,
            file_bytes: m.file_bytes,
            source: m.via,
            stopped,
            seconds: t0.elapsed().as_secs_f64(),
            path: m.path,
            fast_path_refused: m.refused,
        };
        tracing::info!(
            volume,
            bytes = report.bytes,
            entries = report.entries,
            seconds = report.seconds,
            path = report.path,
            "volume snapshot done"
        );
        Ok(report)
    }

    /// [`DockerClient::snapshot_volume`] as a reader, for consumers that pull (an upload):
    /// the snapshot runs in a task writing into a pipe. A failed snapshot ends the reader
    /// with an error, never with a clean EOF, so a truncated archive cannot pass for a
    /// whole one. [`SnapshotReader::finish`] gives the report.
    pub fn snapshot_volume_reader(&self, volume: &str, opts: SnapshotOptions) -> SnapshotReader {
        let (pipe, mut writer) = tokio::io::duplex(1 << 20);
        let client = self.clone();
        let volume = volume.to_string();
        let task = tokio::spawn(async move {
            let r = client.snapshot_volume(&volume, &opts, &mut writer).await;
            let _ = writer.shutdown().await;
            r
        });
        SnapshotReader {
            pipe,
            task: Some(task),
            outcome: None,
        }
    }

    async fn snapshot_inner(
        &self,
        volume: &str,
        users: &[VolumeUser],
        opts: &SnapshotOptions,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        action: &str,
    ) -> Result<Moved, DockerError> {
        let refused = match self.host_dir_if(volume, opts.fast_path, "reading").await {
            Ok(dir) => {
                let via = format!("host:{}", dir.display());
                let c = crate::hostpath::snapshot(dir, volume, out).await?;
                warn_staging_skipped(volume, c.staging_skipped);
                return Ok(Moved {
                    bytes: c.bytes,
                    entries: c.entries,
                    file_bytes: c.file_bytes,
                    via,
                    path: "host",
                    refused: None,
                });
            }
            Err(refused) => refused,
        };
        // An existing container that mounts the whole volume with nothing mounted below.
        let mut source = None;
        for u in users.iter().filter(|u| !u.nested) {
            if !self.mounts_subpath(&u.id, volume).await? {
                source = Some((u.name.clone(), u.destination.clone()));
                break;
            }
        }
        let mut temp = None;
        let (container, dir) = match source {
            Some(s) => s,
            None => {
                let image = self.any_image(opts.image.as_deref(), users, action).await?;
                let t = TempContainer::create(self, "snapshot", volume_body(&image, volume, None))
                    .await?;
                let name = t.name.clone();
                temp = Some(t);
                (name, VOLUME_MOUNT.to_string())
            }
        };
        tracing::debug!(volume, container, dir, "reading volume");
        let result = self.download(volume, &container, &dir, out, action).await;
        // Removed here on every path (a drop would only schedule it, and a process that
        // exits right after an error would leave it behind).
        if let Some(t) = temp {
            if let Err(e) = t.remove().await {
                tracing::warn!("{e}");
            }
        }
        let (bytes, entries, file_bytes) = result?;
        Ok(Moved {
            bytes,
            entries,
            file_bytes,
            via: container,
            path: "api",
            refused,
        })
    }

    /// Stream `DIR/.` of a container, renamed relative to the volume's root, into `out`.
    async fn download(
        &self,
        volume: &str,
        container: &str,
        dir: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        action: &str,
    ) -> Result<(u64, u64, u64), DockerError> {
        // `DIR/.` asks for the directory's contents: entries `./`, `./a`, ...
        let dl = DownloadFromContainerOptionsBuilder::default()
            .path(&format!("{}/.", dir.trim_end_matches('/')))
            .build();
        let base = dir
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let mut renamer = TarRenamer::new(relative_to_root(&base)).skipping_staging();
        let mut stream = self.docker.download_from_container(container, Some(dl));
        let mut bytes = 0u64;
        let mut pieces = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.api_err(format!(
                "read volume `{volume}` through container `{container}`"
            )))?;
            renamer
                .push(chunk, &mut pieces)
                .map_err(|e| DockerError::failed(action, e))?;
            for p in pieces.drain(..) {
                bytes += p.len() as u64;
                out.write_all(&p)
                    .await
                    .map_err(io_err(format!("write the snapshot of volume `{volume}`")))?;
            }
        }
        renamer
            .finish()
            .map_err(|e| DockerError::failed(action, e))?;
        out.flush()
            .await
            .map_err(io_err(format!("write the snapshot of volume `{volume}`")))?;
        warn_staging_skipped(volume, renamer.skipped);
        Ok((bytes, renamer.entries, renamer.file_bytes))
    }

    /// Replace a volume's contents with a tar of it (entries relative to its root, as
    /// [`DockerClient::snapshot_volume`] writes them). The volume is emptied first; a
    /// missing volume is created. With `stop_users` (the default), the containers using it
    /// are stopped for the restore and started again afterwards, on failure too.
    pub async fn restore_volume(
        &self,
        volume: &str,
        opts: &RestoreOptions,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<RestoreReport, DockerError> {
        let t0 = Instant::now();
        let action = format!("restore volume `{volume}`");
        // Look at the archive before emptying anything: a wrong file must not cost the
        // volume its contents.
        let mut first = vec![0u8; 512];
        let mut n = 0;
        while n < first.len() {
            let k = input
                .read(&mut first[n..])
                .await
                .map_err(io_err(format!("read the archive for volume `{volume}`")))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        first.truncate(n);
        check_first_block(&first).map_err(|e| {
            DockerError::failed(&action, format!("{e}; the volume was not touched"))
        })?;
        let first = Bytes::from(first);
        match self.docker.inspect_volume(volume).await {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let spec = opts.create.clone().unwrap_or_else(|| {
                    tracing::warn!(
                        volume,
                        "volume missing; creating a plain local volume (no labels recorded)"
                    );
                    VolumeSpec {
                        name: volume.to_string(),
                        driver: "local".into(),
                        ..Default::default()
                    }
                });
                self.create_volume(&VolumeSpec {
                    name: volume.to_string(),
                    ..spec
                })
                .await?;
            }
            Err(e) => return Err(self.api_err(format!("inspect volume `{volume}`"))(e)),
        }
        crate::temp::sweep_stale(self, volume).await;
        let users = self.volume_users(volume).await?;
        let running: Vec<&VolumeUser> = users.iter().filter(|u| u.running).collect();
        if !opts.stop_users && !running.is_empty() {
            return Err(DockerError::failed(
                action,
                format!(
                    "container(s) {} are running and use it; stop them first, or let drctl stop them for the restore",
                    running.iter().map(|u| format!("`{}`", u.name)).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let guard = self
            .stop_users(&users, opts.stop_users, opts.grace, true)
            .await?;
        let stopped = guard
            .as_ref()
            .map(|g| g.stopped().to_vec())
            .unwrap_or_default();
        let result = self
            .restore_inner(volume, &users, opts, first, input, &action)
            .await;
        let m = finish_guard(guard, result).await?;
        let report = RestoreReport {
            volume: volume.to_string(),
            bytes: m.bytes,
            entries: m.entries,
            file_bytes: m.file_bytes,
            emptied_by: m.via,
            stopped,
            seconds: t0.elapsed().as_secs_f64(),
            path: m.path,
            fast_path_refused: m.refused,
        };
        tracing::info!(
            volume,
            bytes = report.bytes,
            entries = report.entries,
            seconds = report.seconds,
            path = report.path,
            "volume restore done"
        );
        Ok(report)
    }

    async fn restore_inner(
        &self,
        volume: &str,
        users: &[VolumeUser],
        opts: &RestoreOptions,
        first: Bytes,
        input: &mut (dyn AsyncRead + Unpin + Send),
        action: &str,
    ) -> Result<Moved, DockerError> {
        let refused = match self.host_dir_if(volume, opts.fast_path, "writing").await {
            Ok(dir) => {
                let staging = opts.staged.then(staging_name);
                let c = crate::hostpath::restore(dir, volume, staging, first, input).await?;
                return Ok(Moved {
                    bytes: c.bytes,
                    entries: c.entries,
                    file_bytes: c.file_bytes,
                    via: if opts.staged {
                        "staged, swapped in on the host".into()
                    } else {
                        "emptied on the host".into()
                    },
                    path: "host",
                    refused: None,
                });
            }
            Err(refused) => refused,
        };
        // Emptying. A temporary container from an image with `sh` that mounts the volume
        // and deletes its contents works for every volume driver and leaves the volume
        // itself (name, driver, options, labels, users' references) untouched; images of
        // the containers that use the volume are on this host and nearly always have a
        // shell. Without one, removing and recreating the volume with the same driver and
        // labels empties it too, but only when nothing references it (Docker refuses to
        // remove a volume a stopped container still mounts) and only for plain local
        // volumes (with driver options, e.g. a bind `device`, removal keeps the data).
        let mut images: Vec<String> = opts.image.iter().cloned().collect();
        for u in users {
            if !images.contains(&u.image_id) {
                images.push(u.image_id.clone());
            }
        }
        if opts.staged {
            return self
                .restore_staged(volume, &images, opts, first, input, refused)
                .await;
        }
        let mut tried = Vec::new();
        let mut target = None;
        for image in &images {
            match self.empty_with(volume, image).await {
                Ok(t) => {
                    target = Some((
                        t,
                        format!("emptied by a container from image `{}`", short_image(image)),
                    ));
                    break;
                }
                Err(e) => {
                    tracing::debug!(volume, image, "cannot empty with this image: {e}");
                    tried.push(format!("{}: {}", short_image(image), e.short()));
                }
            }
        }
        let (target, emptied_by) = match target {
            Some(t) => t,
            None => {
                let spec = self.volume_spec(volume).await?;
                if !users.is_empty() || spec.driver != "local" || !spec.driver_opts.is_empty() {
                    return Err(DockerError::failed(
                        action,
                        format!(
                            "cannot empty it: no image with `sh` and `rm` ({}), and the volume cannot be recreated instead ({}); pass an image that has a shell",
                            tried_list(&tried),
                            if !users.is_empty() {
                                format!("used by {}", names(users))
                            } else {
                                "not a plain local volume".into()
                            }
                        ),
                    ));
                }
                tracing::info!(volume, "emptying by recreating the volume");
                self.remove_volume(volume).await?;
                self.create_volume(&spec).await?;
                let image = self.any_image(opts.image.as_deref(), users, action).await?;
                let t = TempContainer::create(self, "restore", volume_body(&image, volume, None))
                    .await?;
                (t, "volume recreated".to_string())
            }
        };

        tracing::debug!(volume, via = %emptied_by, "volume emptied");
        let under = under_dir(VOLUME_MOUNT);
        let partial = "the volume may hold part of the archive; run the restore again";
        let result = self
            .upload(volume, &target.name, opts, first, input, under, partial)
            .await;
        tracing::debug!(volume, "archive upload finished");
        if let Err(e) = target.remove().await {
            tracing::warn!("{e}");
        }
        let (bytes, entries, file_bytes) = result?;
        Ok(Moved {
            bytes,
            entries,
            file_bytes,
            via: emptied_by,
            path: "api",
            refused,
        })
    }

    /// The staged restore through the archive API. A swap container (the swap script, from
    /// the first image that has a shell) is started while the archive is uploaded into a
    /// staging folder in the volume through a second, never-started container: starting a
    /// container costs a few hundred milliseconds, hidden behind the upload that way. The
    /// script waits on its stdin: `go` (the upload ended well and the reader verified the
    /// object) swaps the new contents in; anything else, or the attach connection closing
    /// because drctl died, removes the staging folder and leaves the volume as it was.
    async fn restore_staged(
        &self,
        volume: &str,
        images: &[String],
        opts: &RestoreOptions,
        first: Bytes,
        input: &mut (dyn AsyncRead + Unpin + Send),
        refused: Option<String>,
    ) -> Result<Moved, DockerError> {
        let staging = staging_name();
        let mut tried = Vec::new();
        let mut chosen = None;
        for (i, image) in images.iter().enumerate() {
            let t =
                TempContainer::create(self, "swap", swapper_body(image, volume, &staging)).await;
            let t = match t {
                Ok(t) => t,
                Err(e) => {
                    tried.push(format!("{}: {}", short_image(image), e.short()));
                    continue;
                }
            };
            if self.has_shell(&t.name).await {
                chosen = Some((i, t));
                break;
            }
            tried.push(format!("{}: no /bin/sh", short_image(image)));
            if let Err(r) = t.remove().await {
                tracing::warn!("{r}");
            }
        }
        let Some((i, swapper)) = chosen else {
            return Err(DockerError::CannotStage {
                volume: volume.to_string(),
                reason: format!(
                    "no image with a shell to swap the new contents in ({})",
                    tried_list(&tried)
                ),
            });
        };
        let image = &images[i];
        let attach = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let (uploader, attached) = tokio::join!(
            TempContainer::create(self, "restore", volume_body(image, volume, None)),
            self.docker.attach_container(&swapper.name, Some(attach)),
        );
        let uploader = uploader?;
        // Without the attachment the script would wait for `go` forever: a swapper that
        // cannot be attached is not started, and the swap falls back to a one-off run.
        let attached = attached
            .map_err(|e| tracing::debug!(volume, "cannot attach the swap container: {e}"))
            .ok();
        let under = under_dir(&format!("{VOLUME_MOUNT}/{staging}"));
        let untouched = "the volume's contents were left as they were";
        let start = async {
            let Some(a) = attached else {
                return Swapper::NeverStarted;
            };
            match self.docker.start_container(&swapper.name, None).await {
                Ok(()) => Swapper::Waiting(a),
                // A failed start may still have started it (a timeout): it then read the end
                // of its input and removes the staging folder, so it must not be relied on.
                Err(e) => match self.ever_started(&swapper.name).await {
                    Some(false) => {
                        tracing::debug!(volume, "cannot start the swap container: {e}");
                        Swapper::NeverStarted
                    }
                    _ => Swapper::Unknown(crate::api_reason(&e)),
                },
            }
        };
        let (started, uploaded) = tokio::join!(
            start,
            self.upload(volume, &uploader.name, opts, first, input, under, untouched)
        );
        let _ = uploader.remove().await;
        let failed =
            |reason: String| DockerError::failed(format!("restore volume `{volume}`"), reason);
        let stuck = |e: String| stuck_swap(volume, &staging, e);
        let (bytes, entries, file_bytes) = match uploaded {
            Ok(m) => m,
            Err(e) => {
                match started {
                    // The script removes the staging folder itself (exit 5).
                    Swapper::Waiting(a) => match self.signal_swapper(&swapper.name, a, false).await
                    {
                        Ok((5, _)) => {}
                        r => {
                            tracing::debug!(volume, "swap container after a failed upload: {r:?}");
                            self.remove_staging(volume, images, &staging).await;
                        }
                    },
                    Swapper::NeverStarted | Swapper::Unknown(_) => {
                        self.remove_staging(volume, images, &staging).await
                    }
                }
                let _ = swapper.remove().await;
                return Err(e);
            }
        };
        let mut swapped_by = image;
        match started {
            Swapper::Waiting(a) => {
                // From `go` on, the swap must run to its end: a cancelled restore (Ctrl-C,
                // a step timeout) leaves the container to finish instead of killing it
                // half-way; a later restore sweeps it away.
                let mut swapper = swapper;
                swapper.keep_on_drop();
                let signalled = self.signal_swapper(&swapper.name, a, true).await;
                let code = match signalled {
                    Ok((0, _)) => None,
                    Ok((3, text)) => Some(format!("{}: {}", short_image(image), text.trim())),
                    // Nothing was changed: the staged contents are missing (4), or the input
                    // ended before `go` arrived (5: the attach connection broke).
                    Ok((c @ (4 | 5), text)) => {
                        let _ = swapper.remove().await;
                        self.remove_staging(volume, images, &staging).await;
                        return Err(failed(format!(
                            "the swap container did not swap (exit code {c}: {}); the volume's contents were left as they were; run the restore again",
                            text.trim()
                        )));
                    }
                    Ok((c, text)) => {
                        return Err(stuck(format!(
                            "swapping with image `{}` failed (exit code {c}: {})",
                            short_image(image),
                            text.trim()
                        )))
                    }
                    // The daemon could not say how the swap ended: it may be half done.
                    Err(e) => return Err(stuck(e.to_string())),
                };
                let _ = swapper.remove().await;
                if let Some(why) = code {
                    swapped_by = self
                        .swap_one_off(volume, images, Some(image), &staging, why)
                        .await?;
                }
            }
            Swapper::NeverStarted => {
                let _ = swapper.remove().await;
                swapped_by = self
                    .swap_one_off(volume, images, None, &staging, String::new())
                    .await?;
            }
            Swapper::Unknown(e) => {
                let _ = swapper.remove().await;
                self.remove_staging(volume, images, &staging).await;
                return Err(failed(format!(
                    "the swap container could not be started as planned ({e}); the volume's contents were left as they were; run the restore again"
                )));
            }
        }
        Ok(Moved {
            bytes,
            entries,
            file_bytes,
            via: format!(
                "staged, swapped in by a container from image `{}`",
                short_image(swapped_by)
            ),
            path: "api",
            refused,
        })
    }

    /// Swap staged contents in with one-off containers (the swap script without waiting),
    /// trying each image but `skip` (whose swap container lacked a tool) until one has the
    /// tools. None has: the staging folder goes and [`DockerError::CannotStage`] tells the
    /// caller to restore in place (nothing was changed). A swap that started and failed, or
    /// whose end the daemon cannot tell, is an error that says the volume may be partial.
    async fn swap_one_off<'a>(
        &self,
        volume: &str,
        images: &'a [String],
        skip: Option<&String>,
        staging: &str,
        first_why: String,
    ) -> Result<&'a String, DockerError> {
        tracing::debug!(volume, "swapping with a one-off container");
        let stuck = |e: String| stuck_swap(volume, staging, e);
        let script = swap_script(staging, false);
        let mut why: Vec<String> = Some(first_why)
            .filter(|w| !w.is_empty())
            .into_iter()
            .collect();
        for other in images.iter().filter(|o| Some(*o) != skip) {
            let what = format!(
                "swap in the restored contents of volume `{volume}` with image `{}`",
                short_image(other)
            );
            let t = match TempContainer::create(
                self,
                "swap",
                volume_body(other, volume, Some(&script)),
            )
            .await
            {
                Ok(t) => t,
                Err(e) => {
                    why.push(e.short());
                    continue;
                }
            };
            if let Err(e) = self.docker.start_container(&t.name, None).await {
                let ran = self.ever_started(&t.name).await;
                let _ = t.remove().await;
                if ran == Some(false) {
                    why.push(format!("{}: {}", short_image(other), crate::api_reason(&e)));
                    continue;
                }
                return Err(stuck(format!("{what}: {}", crate::api_reason(&e))));
            }
            let code = self.exit_code(&t.name, &what).await;
            let text = match &code {
                Ok(0) | Err(_) => String::new(),
                Ok(_) => self.last_output(&t.name).await,
            };
            let _ = t.remove().await;
            match code {
                Ok(0) => return Ok(other),
                // Missing tools, found before anything changed: try the next.
                Ok(3) => why.push(format!("{}: {}", short_image(other), text.trim())),
                Ok(c) => return Err(stuck(format!("{what}: exit code {c}: {}", text.trim()))),
                Err(e) => return Err(stuck(e.to_string())),
            }
        }
        // Nothing was swapped: without the staging folder the volume is exactly as before,
        // and the caller may restore in place instead (emptying needs only `rm`).
        self.remove_staging(volume, images, staging).await;
        Err(DockerError::CannotStage {
            volume: volume.to_string(),
            reason: format!(
                "no image has the tools to swap the new contents in ({})",
                tried_list(&why)
            ),
        })
    }

    /// The volume's folder on this host when the fast path is `wanted` and possible;
    /// otherwise why not (None: not wanted), logged. `doing`: "reading" or "writing".
    async fn host_dir_if(
        &self,
        volume: &str,
        wanted: bool,
        doing: &str,
    ) -> Result<std::path::PathBuf, Option<String>> {
        if !wanted {
            return Err(None);
        }
        match crate::hostpath::host_dir(self, volume).await {
            Ok(dir) => {
                tracing::debug!(volume, dir = %dir.display(), "{doing} volume on the host");
                Ok(dir)
            }
            Err(why) => {
                tracing::info!(
                    volume,
                    "host path not used: {why}; {doing} through the archive API"
                );
                Err(Some(why))
            }
        }
    }

    /// Whether a container ever started (None: it cannot be told).
    async fn ever_started(&self, name: &str) -> Option<bool> {
        let i = self.inspect(name).await.ok()?;
        let state = i.state?;
        Some(!matches!(
            state.status,
            Some(bollard::models::ContainerStateStatusEnum::CREATED) | None
        ))
    }

    /// Tell a waiting swap container to swap (`go`) or to drop the staging folder, and wait
    /// for it to exit: its exit code and output.
    async fn signal_swapper(
        &self,
        name: &str,
        attached: AttachContainerResults,
        go: bool,
    ) -> Result<(i64, String), DockerError> {
        let AttachContainerResults {
            mut output,
            mut input,
        } = attached;
        // A swapper that already exited (exit 3) does not read: a failed write is fine,
        // its exit code says what happened.
        let word: &[u8] = if go { b"go\n" } else { b"abort\n" };
        if let Err(e) = input.write_all(word).await {
            tracing::debug!(name, "cannot write to the swap container: {e}");
        }
        let _ = input.shutdown().await;
        let mut text = String::new();
        while let Some(Ok(frame)) = output.next().await {
            if text.len() < 4096 {
                text.push_str(&frame.to_string());
            }
        }
        let what = format!("swap in the restored contents with container `{name}`");
        Ok((self.exit_code(name, &what).await?, text))
    }

    /// Whether a created container's filesystem has `/bin/sh` (read through the archive
    /// API, so the container need not start).
    async fn has_shell(&self, container: &str) -> bool {
        let dl = DownloadFromContainerOptionsBuilder::default()
            .path("/bin/sh")
            .build();
        let mut stream = self.docker.download_from_container(container, Some(dl));
        matches!(stream.next().await, Some(Ok(_)))
    }

    /// Remove a staging folder after a failed upload (best effort: the next restore's swap
    /// removes stale ones too).
    async fn remove_staging(&self, volume: &str, images: &[String], staging: &str) {
        let script = format!("rm -rf -- '{VOLUME_MOUNT}/{staging}'");
        let mut why = Vec::new();
        for image in images {
            let r = async {
                let t = TempContainer::create(
                    self,
                    "cleanup",
                    volume_body(image, volume, Some(&script)),
                )
                .await?;
                let r = self
                    .run_to_end(&t.name, volume, image, "clean up the staging folder of")
                    .await;
                let _ = t.remove().await;
                r
            }
            .await;
            match r {
                Ok(()) => return,
                Err(e) => why.push(e.to_string()),
            }
        }
        tracing::warn!(
            volume,
            staging,
            "cannot remove the staging folder ({}); the next restore of the volume removes it",
            tried_list(&why)
        );
    }

    /// A temporary container that has emptied the volume (and is stopped, ready to
    /// receive the upload).
    async fn empty_with(&self, volume: &str, image: &str) -> Result<TempContainer, DockerError> {
        let t = TempContainer::create(
            self,
            "empty",
            volume_body(image, volume, Some(EMPTY_SCRIPT)),
        )
        .await?;
        match self.run_to_end(&t.name, volume, image, "empty").await {
            Ok(()) => Ok(t),
            Err(e) => {
                if let Err(r) = t.remove().await {
                    tracing::warn!("{r}");
                }
                Err(e)
            }
        }
    }

    /// Start a container and wait for it to exit 0; `doing` names the work in messages
    /// (`empty` volume ...).
    async fn run_to_end(
        &self,
        name: &str,
        volume: &str,
        image: &str,
        doing: &str,
    ) -> Result<(), DockerError> {
        let what = format!(
            "{doing} volume `{volume}` with image `{}`",
            short_image(image)
        );
        self.docker
            .start_container(name, None)
            .await
            .map_err(self.api_err(what.clone()))?;
        match self.exit_code(name, &what).await? {
            0 => Ok(()),
            code => Err(DockerError::failed(
                what,
                format!("exit code {code}: {}", self.last_output(name).await.trim()),
            )),
        }
    }

    /// The last lines a container wrote (stdout and stderr).
    async fn last_output(&self, name: &str) -> String {
        let mut logs = self.docker.logs(
            name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail("10")
                    .build(),
            ),
        );
        let mut text = String::new();
        while let Some(Ok(l)) = logs.next().await {
            text.push_str(&l.to_string());
        }
        text
    }

    /// Wait for a started container to stop: its exit code. The daemon not saying is an
    /// error: the caller cannot know what the container did.
    async fn exit_code(&self, name: &str, what: &str) -> Result<i64, DockerError> {
        let mut wait = self.docker.wait_container(
            name,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.api_err(what)(e)),
            None => Err(DockerError::failed(
                what,
                "the daemon did not report how the container ended",
            )),
        }
    }

    /// Feed the archive, renamed by `under` (into the mount point, or a staging folder in
    /// it), to the daemon. `partial` tells the operator what a failure left behind.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        volume: &str,
        container: &str,
        opts: &RestoreOptions,
        first: Bytes,
        input: &mut (dyn AsyncRead + Unpin + Send),
        under: crate::tarstream::MapFn,
        partial: &str,
    ) -> Result<(u64, u64, u64), DockerError> {
        let action = format!("restore volume `{volume}`");
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut renamer = TarRenamer::new(under);
        let mut bytes = 0u64;
        // Why the body ended early, in words for the operator (the daemon only sees a
        // broken request).
        let mut input_error: Option<String> = None;
        let put = UploadToContainerOptionsBuilder::default().path("/").build();
        let docker = self.patient(opts.upload_timeout);
        let uploaded = {
            let feed = async {
                let tx = tx; // dropped when the feed ends: the body then ends
                let mut pieces = Vec::new();
                let mut first = Some(first);
                loop {
                    let mut buf = BytesMut::with_capacity(256 * 1024);
                    if let Some(f) = first.take() {
                        buf.extend_from_slice(&f);
                    } else {
                        match input.read_buf(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                input_error = Some(format!("reading the archive failed: {e}"));
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    bytes += buf.len() as u64;
                    if let Err(e) = renamer.push(buf.freeze(), &mut pieces) {
                        let _ = tx.send(Err(std::io::Error::other(e.clone()))).await;
                        input_error = Some(e);
                        return;
                    }
                    for p in pieces.drain(..) {
                        if tx.send(Ok(p)).await.is_err() {
                            return; // the upload ended; its result says why
                        }
                    }
                }
                if let Err(e) = renamer.finish() {
                    let _ = tx.send(Err(std::io::Error::other(e.clone()))).await;
                    input_error = Some(e);
                }
            };
            let upload =
                docker.upload_to_container(container, Some(put), bollard::body_try_stream(body));
            tokio::pin!(feed, upload);
            let mut fed = false;
            loop {
                tokio::select! {
                    () = &mut feed, if !fed => fed = true,
                    r = &mut upload => break r,
                }
            }
        };
        if let Some(e) = input_error {
            return Err(DockerError::failed(action, format!("{e}; {partial}")));
        }
        uploaded.map_err(|e| match self.api_err(action.clone())(e) {
            DockerError::Api { action, source } => {
                DockerError::failed(action, format!("{}; {partial}", crate::api_reason(&source)))
            }
            other => other,
        })?;
        Ok((bytes, renamer.entries, renamer.file_bytes))
    }

    async fn require_volume(&self, volume: &str, action: &str) -> Result<(), DockerError> {
        match self.docker.inspect_volume(volume).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DockerError::failed(
                action,
                "no such volume (docker volume ls lists the volumes)",
            )),
            Err(e) => Err(self.api_err(format!("inspect volume `{volume}`"))(e)),
        }
    }

    /// Stop the running users when asked.
    async fn stop_users(
        &self,
        users: &[VolumeUser],
        stop: bool,
        grace: Duration,
        restore: bool,
    ) -> Result<Option<StoppedGuard>, DockerError> {
        if !stop {
            return Ok(None);
        }
        let running: Vec<&str> = users
            .iter()
            .filter(|u| u.running)
            .map(|u| u.name.as_str())
            .collect();
        Ok(Some(self.stop_guarded_for(&running, grace, restore).await?))
    }

    /// Whether a container mounts only a sub-path of the volume (API 1.45+ `Subpath`).
    async fn mounts_subpath(&self, container: &str, volume: &str) -> Result<bool, DockerError> {
        let i = self.inspect(container).await?;
        Ok(i.host_config
            .and_then(|h| h.mounts)
            .unwrap_or_default()
            .iter()
            .any(|m| {
                m.source.as_deref() == Some(volume)
                    && m.volume_options
                        .as_ref()
                        .and_then(|o| o.subpath.as_deref())
                        .is_some_and(|s| !s.is_empty())
            }))
    }

    /// An image on this host for a never-started container: the one asked for, else one
    /// the volume's users run, else any.
    async fn any_image(
        &self,
        wanted: Option<&str>,
        users: &[VolumeUser],
        action: &str,
    ) -> Result<String, DockerError> {
        if let Some(w) = wanted {
            return Ok(w.to_string());
        }
        if let Some(u) = users.first() {
            return Ok(u.image_id.clone());
        }
        let images = self
            .docker
            .list_images(None::<ListImagesOptions>)
            .await
            .map_err(self.api_err("list the images on this host"))?;
        images.into_iter().next().map(|i| i.id).ok_or_else(|| {
            DockerError::failed(
                action,
                "no image on this host to create a temporary container from, and drctl never pulls; load any image (docker load) or name one",
            )
        })
    }
}

/// A volume snapshot being read; see [`DockerClient::snapshot_volume_reader`].
pub struct SnapshotReader {
    pipe: tokio::io::DuplexStream,
    task: Option<tokio::task::JoinHandle<Result<SnapshotReport, DockerError>>>,
    outcome: Option<Result<SnapshotReport, DockerError>>,
}

fn joined(
    r: Result<Result<SnapshotReport, DockerError>, tokio::task::JoinError>,
) -> Result<SnapshotReport, DockerError> {
    r.unwrap_or_else(|e| {
        Err(DockerError::failed(
            "snapshot a volume",
            format!("the snapshot task ended abnormally: {e}"),
        ))
    })
}

impl SnapshotReader {
    /// The snapshot's outcome. Call it after reading to the end; called earlier, it
    /// abandons the rest (the snapshot then fails and cleans up).
    pub async fn finish(self) -> Result<SnapshotReport, DockerError> {
        let SnapshotReader {
            pipe,
            task,
            outcome,
        } = self;
        if let Some(o) = outcome {
            return o;
        }
        drop(pipe);
        match task {
            Some(t) => joined(t.await),
            None => Err(DockerError::failed("snapshot a volume", "no outcome")),
        }
    }
}

impl AsyncRead for SnapshotReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.pipe).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        // End of the pipe: the snapshot task is done; its outcome decides what EOF means.
        if self.outcome.is_none() {
            let Some(task) = self.task.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let r = match std::pin::Pin::new(task).poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            };
            self.task = None;
            self.outcome = Some(joined(r));
        }
        match &self.outcome {
            Some(Err(e)) => Poll::Ready(Err(std::io::Error::other(e.to_string()))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Start again what was stopped; the operation's error wins over the restart's.
async fn finish_guard<T>(
    guard: Option<StoppedGuard>,
    result: Result<T, DockerError>,
) -> Result<T, DockerError> {
    let Some(guard) = guard else { return result };
    match (result, guard.restore().await) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(r)) => Err(r),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(r)) => {
            tracing::error!("{r}");
            Err(e)
        }
    }
}

fn user_of(volume: &str, c: ContainerSummary) -> Option<VolumeUser> {
    let mounts = c.mounts.unwrap_or_default();
    let m = mounts.iter().find(|m| m.name.as_deref() == Some(volume))?;
    let destination = m.destination.clone().unwrap_or_default();
    let prefix = format!("{}/", destination.trim_end_matches('/'));
    let nested = mounts.iter().any(|o| {
        o.destination
            .as_deref()
            .is_some_and(|d| d.starts_with(&prefix))
    });
    Some(VolumeUser {
        id: c.id.unwrap_or_default(),
        name: c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image_id: c.image_id.unwrap_or_default(),
        running: c.state.map(|s| s.to_string()).as_deref() == Some("running"),
        destination,
        read_only: m.rw == Some(false),
        nested,
    })
}

fn names(users: &[VolumeUser]) -> String {
    users
        .iter()
        .map(|u| format!("`{}`", u.name))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A swap that started and did not finish (or whose end is unknown): the volume may be
/// partial, and this says where the new contents are.
fn stuck_swap(volume: &str, staging: &str, e: String) -> DockerError {
    DockerError::failed(
        format!("restore volume `{volume}`"),
        format!(
            "{e}; the restored contents are in the folder `{staging}` inside the volume and the old ones may be partly removed; run the restore again"
        ),
    )
}

/// What was tried and why it did not do, for a message.
fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "none to try".to_string()
    } else {
        tried.join("; ")
    }
}

fn short_image(image: &str) -> String {
    match image.strip_prefix("sha256:") {
        Some(h) => h.chars().take(12).collect(),
        None => image.to_string(),
    }
}
