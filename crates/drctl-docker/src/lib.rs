//! drctl's Docker adapter: the daemon through bollard, and compose through its CLI.
//!
//! What the executor calls to act on a stack: resolve services to containers
//! ([`DockerClient::service_containers`]), stop / start / restart them (with a guard that
//! starts again what drctl stopped, [`StoppedGuard`]), bring services back through compose
//! ([`compose`]) or from captured specs ([`spec`]), exec with streamed stdio ([`exec`]),
//! snapshot and restore volumes through the archive API or, on the Docker host, in place at
//! their mountpoint ([`volume`]), and wait on health gates ([`health`]).

pub mod compose;
pub mod containers;
pub mod exec;
pub mod health;
mod hostpath;
mod ledger;
pub mod spec;
mod tarstream;
mod temp;
pub mod volume;

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use drctl_core::plan::ContainerInfo;

pub use compose::{ComposeCli, ComposeFlavor, ComposeProject, UpOptions};
pub use containers::StoppedGuard;
pub use exec::{ExecOptions, ExecOutput};
pub use health::{Poll, Probe};
pub use spec::{ContainerSpec, EndpointSpec, NetworkSpec, VolumeSpec};
pub use volume::{
    fast_path_from_env, RestoreOptions, RestoreReport, SnapshotOptions, SnapshotReader,
    SnapshotReport, VolumeUser,
};

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";
pub const VOLUME_LABEL: &str = "com.docker.compose.volume";
pub const NETWORK_LABEL: &str = "com.docker.compose.network";
/// On every container drctl creates for its own use and removes afterwards.
pub const TEMP_LABEL: &str = "org.drctl.temp";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("failed to reach the Docker daemon at {host}: {reason}; start dockerd, or set DOCKER_HOST to the daemon's address (e.g. unix:///var/run/docker.sock)")]
    Unreachable { host: String, reason: String },
    #[error("failed to {action}: {}", api_reason(source))]
    Api {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// A failure that is not an API error: a compose command, an archive, a missing image.
    #[error("failed to {action}: {reason}")]
    Failed { action: String, reason: String },
    #[error("failed to {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// A staged restore (new contents written beside the old, then swapped in) is not
    /// possible: no image at hand has a shell (or the tools) for the swap. The old contents
    /// were not changed; the caller may check its archive first and restore in place.
    #[error("failed to restore volume `{volume}` beside its old contents: {reason}; restore it in place instead (empty first), after checking the archive")]
    CannotStage { volume: String, reason: String },
    /// A health gate that did not pass: `detail` says what was seen last.
    #[error("failed to {subject}: {detail}")]
    Gate {
        subject: String,
        detail: String,
        /// The gate ran out of time (as opposed to a failure that waiting cannot fix).
        timed_out: bool,
    },
}

impl DockerError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }

    /// The daemon answered 404: no such container, volume, network or image.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DockerError::Api {
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                },
                ..
            }
        )
    }

    /// A health gate ran out of time (worth a retry, unlike a gate that cannot pass).
    pub fn is_gate_timeout(&self) -> bool {
        matches!(
            self,
            DockerError::Gate {
                timed_out: true,
                ..
            }
        )
    }

    /// The failure without the advice, for reports that give advice of their own.
    pub fn short(&self) -> String {
        match self {
            DockerError::Unreachable { host, reason } => format!("cannot reach {host}: {reason}"),
            other => other.to_string(),
        }
    }

    pub(crate) fn failed(action: impl Into<String>, reason: impl Into<String>) -> Self {
        DockerError::Failed {
            action: action.into(),
            reason: reason.into(),
        }
    }
}

/// Add advice to an API error the daemon answered (a missing object needs none).
pub(crate) fn with_hint(e: DockerError, hint: &str) -> DockerError {
    match e {
        DockerError::Api { action, source } if !is_404(&source) => DockerError::Failed {
            action,
            reason: format!("{}; {hint}", api_reason(&source)),
        },
        other => other,
    }
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The daemon's own words for an API error, without bollard's wrapping.
fn api_reason(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        bollard::errors::Error::RequestTimeoutError => {
            "the daemon did not answer in time (request timeout)".to_string()
        }
        other => other.to_string(),
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
    /// Where guards record what they stopped ([`DockerClient::with_stop_ledger`]).
    ledger: Option<std::sync::Arc<ledger::Ledger>>,
}

/// Where this process's pid means something: the machine's name and the pid namespace
/// (`host/pid:[4026531836]`), for records that say which drctl process made them. Another
/// namespace under the same name (drctl in a container on the host network) is another
/// place, so a live drctl there is never taken for a dead one here. Empty when unknown.
pub(crate) fn this_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if name.is_empty() || ns.is_empty() {
        return String::new();
    }
    format!("{name}/{ns}")
}

/// Where the client connects: `DOCKER_HOST`, or the default socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

impl DockerClient {
    /// Make a client for `DOCKER_HOST` (or the default socket); nothing is sent until the
    /// first request.
    pub fn connect() -> Result<Self, DockerError> {
        Self::connect_to(&docker_host())
    }

    /// Make a client for a given daemon address (`unix://...`, `tcp://...`).
    pub fn connect_to(host: &str) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_host(host).map_err(|e| DockerError::Unreachable {
            host: host.to_string(),
            reason: reachability_reason(&e),
        })?;
        Ok(DockerClient {
            docker,
            host: host.to_string(),
            ledger: None,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn inner(&self) -> &Docker {
        &self.docker
    }

    /// The same connection with a longer request timeout, for requests the daemon answers
    /// only when done (a stop with a long grace period, an upload it extracts first).
    pub(crate) fn patient(&self, timeout: Duration) -> Docker {
        self.docker.clone().with_timeout(timeout)
    }

    fn unreachable(&self, reason: impl ToString) -> DockerError {
        DockerError::Unreachable {
            host: self.host.clone(),
            reason: reason.to_string(),
        }
    }

    /// Wrap an API error; a connection failure becomes [`DockerError::Unreachable`] so that
    /// every call, not only the first, tells the operator to look at the daemon.
    pub(crate) fn api_err(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(bollard::errors::Error) -> DockerError + '_ {
        let action = action.into();
        move |e| {
            if is_connection_error(&e) {
                self.unreachable(reachability_reason(&e))
            } else {
                DockerError::Api { action, source: e }
            }
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
        let mut out = self
            .list_containers_filtered(
                vec![format!("{PROJECT_LABEL}={project}")],
                &format!("list the containers of compose project `{project}`"),
            )
            .await?;
        out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(out)
    }

    /// Containers (all states) matching label filters.
    pub(crate) async fn list_containers_filtered(
        &self,
        labels: Vec<String>,
        action: &str,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        self.list_containers_by(HashMap::from([("label".to_string(), labels)]), action)
            .await
    }

    pub(crate) async fn list_containers_by(
        &self,
        filters: HashMap<String, Vec<String>>,
        action: &str,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        Ok(self
            .list_raw(filters, action)
            .await?
            .into_iter()
            .map(summary_to_info)
            .collect())
    }

    /// Container summaries (all states, with every label) matching filters.
    pub(crate) async fn list_raw(
        &self,
        filters: HashMap<String, Vec<String>>,
        action: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(self.api_err(action))
    }
}

pub(crate) fn summary_to_info(c: bollard::models::ContainerSummary) -> ContainerInfo {
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
}

/// The list API has no health field before API 1.52; its status text carries it:
/// "Up 3 minutes (healthy)", "Up 2 seconds (health: starting)".
fn health_from_status(status: &str) -> Option<String> {
    let inner = status.rsplit_once('(')?.1.strip_suffix(')')?;
    let h = inner.strip_prefix("health: ").unwrap_or(inner);
    matches!(h, "healthy" | "unhealthy" | "starting").then(|| h.to_string())
}

fn is_connection_error(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    match e {
        E::SocketNotFoundError(_) => true,
        E::HyperLegacyError { err } => err.is_connect(),
        E::IOError { err } => matches!(
            err.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::PermissionDenied
        ),
        _ => false,
    }
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

/// The last `n` lines of a text, for error messages that quote a command's output.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

    #[test]
    fn api_errors_read_well() {
        let e = DockerError::Api {
            action: "stop container `x`".into(),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message: "No such container: x".into(),
            },
        };
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "failed to stop container `x`: No such container: x (HTTP 404)"
        );
    }
}
