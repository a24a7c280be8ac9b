//! Temporary containers that drctl creates for its own work (volume access) and removes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};

use crate::{DockerClient, DockerError, TEMP_LABEL};

/// Where temporary containers mount the volume they work on.
pub(crate) const VOLUME_MOUNT: &str = "/drctl-volume";

/// A container that is removed when done with: by [`TempContainer::remove`], or in the
/// background when dropped (an error path, a cancelled step).
pub(crate) struct TempContainer {
    client: DockerClient,
    pub name: String,
    removed: bool,
}

fn unique_name(purpose: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "drctl-temp-{purpose}-{}-{:x}{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Label naming the drctl process that made a temporary container (`<host>:<pid>`), so a
/// later run can remove what a killed one left (see [`sweep_stale`]).
const OWNER_LABEL: &str = "org.drctl.owner";

fn owner() -> String {
    format!("{}:{}", crate::this_host(), std::process::id())
}

/// A body for a container that mounts `volume` read-write at [`VOLUME_MOUNT`], runs as
/// root without network, and runs `cmd` through `sh -c` (or is never meant to start).
pub(crate) fn volume_body(image: &str, volume: &str, script: Option<&str>) -> ContainerCreateBody {
    let (entrypoint, cmd) = match script {
        Some(s) => (
            vec!["sh".to_string()],
            vec!["-c".to_string(), s.to_string()],
        ),
        // Never started: the archive API works on created containers. A path that does
        // not exist makes an accidental start fail instead of running the image.
        None => (vec!["/drctl-never-runs".to_string()], vec![]),
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        user: Some("0:0".to_string()),
        working_dir: Some("/".to_string()),
        labels: Some(HashMap::from([
            (TEMP_LABEL.to_string(), "1".to_string()),
            ("org.drctl.volume".to_string(), volume.to_string()),
            (OWNER_LABEL.to_string(), owner()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume.to_string()),
                target: Some(VOLUME_MOUNT.to_string()),
                read_only: Some(false),
                // Never copy image content into the volume we are about to read or fill.
                volume_options: Some(MountVolumeOptions {
                    no_copy: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl TempContainer {
    pub async fn create(
        client: &DockerClient,
        purpose: &str,
        body: ContainerCreateBody,
    ) -> Result<Self, DockerError> {
        let name = unique_name(purpose);
        let image = body.image.clone().unwrap_or_default();
        client
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(client.api_err(format!(
                "create a temporary container from image `{image}` ({purpose})"
            )))?;
        tracing::debug!(name, image, "temporary container created");
        Ok(TempContainer {
            client: client.clone(),
            name,
            removed: false,
        })
    }

    /// Do not remove it when dropped (it must be let run to its end); [`TempContainer::remove`]
    /// still removes it.
    pub fn keep_on_drop(&mut self) {
        self.removed = true;
    }

    pub async fn remove(mut self) -> Result<(), DockerError> {
        self.removed = true;
        remove(&self.client, &self.name).await
    }
}

async fn remove(client: &DockerClient, name: &str) -> Result<(), DockerError> {
    // `v`: anonymous volumes of the image's VOLUME declarations go too; named ones never do.
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match client.docker.remove_container(name, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(client.api_err(format!(
            "remove temporary container `{name}`; remove it by hand: docker rm -f {name}"
        ))(e)),
    }
}

/// Remove the temporary containers of a volume that a drctl process on this host left
/// when it was killed (SIGKILL skips the cleanup): a created uploader, an exited swap
/// container. Left alone, they keep the volume referenced (`docker volume rm` and
/// `compose down -v` then fail) along with their anonymous volumes. Containers of live
/// processes, of other hosts and without an owner label are not touched. Best effort.
pub(crate) async fn sweep_stale(client: &DockerClient, volume: &str) {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![
            crate::TEMP_LABEL.to_string(),
            format!("org.drctl.volume={volume}"),
        ],
    )]);
    let list = match client
        .list_raw(
            filters,
            &format!("list temporary containers of volume `{volume}`"),
        )
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("{e}");
            return;
        }
    };
    for c in list {
        let Some(owner) = c.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)) else {
            continue;
        };
        let Some((h, pid)) = owner.rsplit_once(':') else {
            continue;
        };
        // A running one may be a swap finishing after its drctl died: let it end first.
        let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
        if running || !owner_gone(h, pid) {
            continue;
        }
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .or(c.id.clone())
            .unwrap_or_default();
        match remove(client, &name).await {
            Ok(()) => tracing::info!(
                volume,
                container = name,
                "removed a temporary container left by a drctl process that is gone"
            ),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Whether the drctl process `pid` of `host` (see [`crate::this_host`]) is known to be gone:
/// it ran here, is not this process, and no longer exists. Anything that cannot be told
/// (another host or namespace, no `/proc`) counts as alive.
pub(crate) fn owner_gone(host: &str, pid: &str) -> bool {
    !host.is_empty()
        && host == crate::this_host()
        && pid != std::process::id().to_string()
        && std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Drop for TempContainer {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (client, name) = (self.client.clone(), self.name.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = remove(&client, &name).await {
                        tracing::warn!("{e}");
                    }
                });
            }
            Err(_) => tracing::warn!(
                "temporary container `{name}` left behind; remove it: docker rm -f {name}"
            ),
        }
    }
}
