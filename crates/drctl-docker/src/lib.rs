//! drctl's Docker adapter: the daemon through bollard.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use drctl_core::plan::ContainerInfo;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("failed to reach the Docker daemon at {host}: {reason}; start dockerd, or set DOCKER_HOST to the daemon's address (e.g. unix:///var/run/docker.sock)")]
    Unreachable { host: String, reason: String },
    #[error("failed to {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl DockerError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }

    /// The failure without the advice, for reports that give advice of their own.
    pub fn short(&self) -> String {
        match self {
            DockerError::Unreachable { host, reason } => format!("cannot reach {host}: {reason}"),
            other => other.to_string(),
        }
    }
}

/// The daemon's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonInfo {
    pub version: String,
    pub api_version: String,
}

#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    host: String,
}

/// Where the client connects: `DOCKER_HOST`, or the default socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

impl DockerClient {
    /// Make a client; nothing is sent until the first request.
    pub fn connect() -> Result<Self, DockerError> {
        let host = docker_host();
        let docker = Docker::connect_with_host(&host).map_err(|e| DockerError::Unreachable {
            host: host.clone(),
            reason: e.to_string(),
        })?;
        Ok(DockerClient { docker, host })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn inner(&self) -> &Docker {
        &self.docker
    }

    fn unreachable(&self, reason: impl ToString) -> DockerError {
        DockerError::Unreachable {
            host: self.host.clone(),
            reason: reason.to_string(),
        }
    }

    /// Ping the daemon and read its version, within `wait`.
    pub async fn daemon_info(&self, wait: Duration) -> Result<DaemonInfo, DockerError> {
        let v = tokio::time::timeout(wait, async {
            self.docker.ping().await?;
            self.docker.version().await
        })
        .await
        .map_err(|_| self.unreachable(format!("no answer within {}s", wait.as_secs())))?
        .map_err(|e| self.unreachable(reachability_reason(&e)))?;
        Ok(DaemonInfo {
            version: v.version.unwrap_or_else(|| "unknown".into()),
            api_version: v.api_version.unwrap_or_else(|| "unknown".into()),
        })
    }

    /// Every container (running or not) of a compose project.
    pub async fn project_containers(
        &self,
        project: &str,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{PROJECT_LABEL}={project}")],
        )]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| DockerError::Api {
                action: format!("list the containers of compose project `{project}`"),
                source: e,
            })?;
        let mut out: Vec<ContainerInfo> = list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let status = c.status.unwrap_or_default();
                ContainerInfo {
                    id: c.id.unwrap_or_default().chars().take(12).collect(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    project: labels.get(PROJECT_LABEL).cloned(),
                    service: labels.get(SERVICE_LABEL).cloned(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    health: health_from_status(&status),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(out)
    }
}

/// The list API has no health field before API 1.52; its status text carries it:
/// "Up 3 minutes (healthy)", "Up 2 seconds (health: starting)".
fn health_from_status(status: &str) -> Option<String> {
    let inner = status.rsplit_once('(')?.1.strip_suffix(')')?;
    let h = inner.strip_prefix("health: ").unwrap_or(inner);
    matches!(h, "healthy" | "unhealthy" | "starting").then(|| h.to_string())
}

fn reachability_reason(e: &bollard::errors::Error) -> String {
    // The I/O cause is what tells an operator what is wrong (no socket, refused, denied).
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_parsing() {
        assert_eq!(
            health_from_status("Up 3 minutes (healthy)").as_deref(),
            Some("healthy")
        );
        assert_eq!(
            health_from_status("Up 2 seconds (health: starting)").as_deref(),
            Some("starting")
        );
        assert_eq!(health_from_status("Up 2 seconds"), None);
        assert_eq!(health_from_status("Exited (0) 3 seconds ago"), None);
    }
}
