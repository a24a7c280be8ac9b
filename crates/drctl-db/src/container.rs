//! Containers: finding a service's database container, reading its logs, and a temporary
//! helper container that shares a stopped database container's volumes.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use drctl_docker::{DockerClient, DockerError, TEMP_LABEL};
use futures_util::StreamExt;

use crate::util::{tail_lines, unique};
use crate::DbError;

/// The one running container of a compose service. No container, none running, or more
/// than one (a database target needs exactly one) are errors that say what to do.
pub async fn service_container(
    docker: &DockerClient,
    project: &str,
    service: &str,
) -> Result<String, DbError> {
    let all = docker.service_containers(project, &[service]).await?;
    let list = all.get(service).cloned().unwrap_or_default();
    let action = format!("find the container of service `{service}` (compose project `{project}`)");
    if list.is_empty() {
        return Err(DbError::NotFound {
            action,
            what: format!("a container for service `{service}`"),
            hint:
                "bring the service up first (an `up` step), or check the service name in drctl.yml"
                    .into(),
        });
    }
    let running: Vec<_> = list.iter().filter(|c| c.state == "running").collect();
    match running.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(DbError::Unavailable {
            action,
            reason: format!(
                "container `{}` is `{}`, not running; start it first (a `start` or `up` step) and wait for it with a health gate",
                list[0].name, list[0].state
            ),
        }),
        many => Err(DbError::Invalid {
            action,
            reason: format!(
                "{} containers are running ({}); a database target needs exactly one: scale the service to 1",
                many.len(),
                many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// The last `n` lines of a container's log (stdout and stderr), for messages.
pub(crate) async fn log_tail(docker: &DockerClient, container: &str, n: usize) -> String {
    let tail = n.to_string();
    let mut logs = docker.inner().logs(
        container,
        Some(
            LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .tail(&tail)
                .build(),
        ),
    );
    let mut text = String::new();
    while let Some(Ok(l)) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&l.into_bytes()));
    }
    tail_lines(&text, n)
}

/// Whether a container runs; `Err` only when the daemon fails.
pub(crate) async fn running_state(
    docker: &DockerClient,
    container: &str,
) -> Result<Option<(bool, i64, String)>, DockerError> {
    match docker.inspect(container).await {
        Ok(i) => {
            let s = i.state.unwrap_or_default();
            Ok(Some((
                s.running.unwrap_or(false),
                s.exit_code.unwrap_or(0),
                s.status.map(|x| x.to_string()).unwrap_or_default(),
            )))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The mount of `inspect` that holds `path` (the longest destination that is a prefix of
/// it, by path components): `(destination, type, name or source)`.
pub(crate) fn mount_of(
    inspect: &ContainerInspectResponse,
    path: &str,
) -> Option<(String, String, String)> {
    let mounts = inspect.mounts.as_deref().unwrap_or_default();
    mounts
        .iter()
        .filter_map(|m| {
            let dest = m.destination.as_deref()?.trim_end_matches('/');
            let under = path == dest || path.starts_with(&format!("{dest}/")) || dest.is_empty();
            under.then(|| {
                (
                    dest.to_string(),
                    m.typ.clone().unwrap_or_default(),
                    m.name.clone().or(m.source.clone()).unwrap_or_default(),
                )
            })
        })
        .max_by_key(|(d, _, _)| d.len())
}

/// A container from a database container's own image that mounts all of its volumes
/// (`--volumes-from`), runs as root without network, and idles until removed: a place to
/// run `sh`, `cat`, `mv` on the database's files while the database is stopped. Removed by
/// [`HelperContainer::remove`], or in the background when dropped.
pub(crate) struct HelperContainer {
    docker: DockerClient,
    pub name: String,
    removed: bool,
}

const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

impl HelperContainer {
    pub async fn start(
        docker: &DockerClient,
        of: &ContainerInspectResponse,
        purpose: &str,
    ) -> Result<Self, DbError> {
        let of_name = of
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let image = of.image.clone().unwrap_or_default();
        let name = unique(&format!("drctl-temp-{purpose}"));
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec!["sh".into(), "-c".into(), IDLE.into()]),
            cmd: Some(vec![]),
            user: Some("0:0".into()),
            working_dir: Some("/".into()),
            env: Some(vec![]),
            labels: Some(HashMap::from([
                (TEMP_LABEL.to_string(), "1".to_string()),
                ("org.drctl.for".to_string(), of_name.clone()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                volumes_from: Some(vec![of.id.clone().unwrap_or(of_name.clone())]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let action = format!(
            "create a helper container for `{of_name}` from its image (to reach its volumes)"
        );
        docker
            .inner()
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| DbError::Refused {
                action: action.clone(),
                reason: docker_reason(&e),
            })?;
        let helper = HelperContainer {
            docker: docker.clone(),
            name,
            removed: false,
        };
        docker
            .inner()
            .start_container(&helper.name, None)
            .await
            .map_err(|e| DbError::Refused {
                action: format!("start helper container `{}` for `{of_name}`", helper.name),
                reason: docker_reason(&e),
            })?;
        tracing::debug!(
            helper = helper.name,
            of = of_name,
            "helper container started"
        );
        Ok(helper)
    }

    pub async fn remove(mut self) -> Result<(), DbError> {
        self.removed = true;
        remove(&self.docker, &self.name).await
    }
}

fn docker_reason(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        other => other.to_string(),
    }
}

async fn remove(docker: &DockerClient, name: &str) -> Result<(), DbError> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.inner().remove_container(name, Some(opts)).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(DbError::Refused {
            action: format!("remove helper container `{name}`"),
            reason: format!(
                "{}; remove it by hand: docker rm -f {name}",
                docker_reason(&e)
            ),
        }),
    }
}

impl Drop for HelperContainer {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (docker, name) = (self.docker.clone(), self.name.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = remove(&docker, &name).await {
                        tracing::warn!("{e}");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    "helper container `{name}` left behind; remove it: docker rm -f {name}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::MountPoint;

    #[test]
    fn mount_lookup_takes_the_deepest_prefix() {
        let i = ContainerInspectResponse {
            mounts: Some(vec![
                MountPoint {
                    destination: Some("/data".into()),
                    typ: Some("volume".into()),
                    name: Some("v1".into()),
                    ..Default::default()
                },
                MountPoint {
                    destination: Some("/data/sub".into()),
                    typ: Some("bind".into()),
                    source: Some("/srv/x".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        assert_eq!(mount_of(&i, "/data").unwrap().2, "v1");
        assert_eq!(mount_of(&i, "/data/other").unwrap().2, "v1");
        assert_eq!(mount_of(&i, "/data/sub/x").unwrap().2, "/srv/x");
        assert!(mount_of(&i, "/database").is_none());
        assert!(mount_of(&i, "/var/lib/redis").is_none());
    }
}
