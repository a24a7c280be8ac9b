//! Containers: resolving compose services, stop / start / restart, and the guard that starts
//! again what drctl stopped for the duration of an operation.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{RestartContainerOptionsBuilder, StopContainerOptionsBuilder};
use drctl_core::plan::ContainerInfo;

use crate::{summary_to_info, with_hint, DockerClient, DockerError};
use crate::{ONEOFF_LABEL, PROJECT_LABEL, SERVICE_LABEL, TEMP_LABEL};

/// Extra time the HTTP request of a stop may take beyond the grace period (the daemon
/// answers after the kill, and the container may take a moment to die).
const STOP_SLACK: Duration = Duration::from_secs(60);

impl DockerClient {
    /// The containers of each service of a compose project (replicas included, `run`
    /// one-offs and drctl's temporary containers excluded), found through the compose
    /// labels. A service without containers maps to an empty list: whether that is a
    /// problem is for the step that needs it to say.
    pub async fn service_containers(
        &self,
        project: &str,
        services: &[&str],
    ) -> Result<BTreeMap<String, Vec<ContainerInfo>>, DockerError> {
        let all = self
            .list_raw(
                HashMap::from([(
                    "label".to_string(),
                    vec![format!("{PROJECT_LABEL}={project}")],
                )]),
                &format!("list the containers of compose project `{project}`"),
            )
            .await?;
        let mut out: BTreeMap<String, Vec<ContainerInfo>> = services
            .iter()
            .map(|s| (s.to_string(), Vec::new()))
            .collect();
        for c in all {
            let labels = c.labels.as_ref();
            let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
            if label(ONEOFF_LABEL) == Some("True") || label(TEMP_LABEL).is_some() {
                continue;
            }
            let c = summary_to_info(c);
            if let Some(list) = c.service.as_deref().and_then(|s| out.get_mut(s)) {
                list.push(c);
            }
        }
        for list in out.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(out)
    }

    /// A container by name or id, or `None` when there is none.
    pub async fn container(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        match self.inspect(name_or_id).await {
            Ok(i) => Ok(Some(inspect_to_info(&i))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The daemon's full view of a container.
    pub async fn inspect(&self, container: &str) -> Result<ContainerInspectResponse, DockerError> {
        self.docker
            .inspect_container(container, None)
            .await
            .map_err(self.api_err(format!("inspect container `{container}`")))
    }

    /// Stop containers one after the other, in the order given (list dependents first):
    /// the stop signal, then a kill when `grace` runs out. Returns the containers that were
    /// running and are now stopped; stopping a stopped container is not an error.
    pub async fn stop<S: AsRef<str>>(
        &self,
        containers: &[S],
        grace: Duration,
    ) -> Result<Vec<String>, DockerError> {
        let mut stopped = Vec::new();
        for c in containers {
            if self.stop_one(c.as_ref(), grace).await? {
                stopped.push(c.as_ref().to_string());
            }
        }
        Ok(stopped)
    }

    /// Stop one container; true when it was running.
    async fn stop_one(&self, container: &str, grace: Duration) -> Result<bool, DockerError> {
        let info = self.inspect(container).await?;
        let state = info.state.unwrap_or_default();
        let was_running = state.running.unwrap_or(false) || state.restarting.unwrap_or(false);
        if !was_running {
            tracing::debug!(container, "already stopped");
            return Ok(false);
        }
        let t = grace.as_secs_f64().ceil() as i32;
        tracing::info!(container, grace_s = t, "stopping");
        // The daemon answers only once the container is down: the request must be allowed
        // to outlast the grace period.
        self.patient(grace + STOP_SLACK)
            .stop_container(
                container,
                Some(StopContainerOptionsBuilder::default().t(t).build()),
            )
            .await
            .map_err(self.api_err(format!("stop container `{container}` (grace {t} s)")))?;
        Ok(true)
    }

    /// Start containers in the order given (dependencies first); starting a running
    /// container is not an error.
    pub async fn start<S: AsRef<str>>(&self, containers: &[S]) -> Result<(), DockerError> {
        for c in containers {
            let c = c.as_ref();
            tracing::info!(container = c, "starting");
            self.docker
                .start_container(c, None)
                .await
                .map_err(self.api_err(format!("start container `{c}`")))
                .map_err(|e| with_hint(e, &format!("see `docker logs {c}`")))?;
        }
        Ok(())
    }

    /// Restart containers in the order given (stop with `grace`, then start; a stopped
    /// container is just started).
    pub async fn restart<S: AsRef<str>>(
        &self,
        containers: &[S],
        grace: Duration,
    ) -> Result<(), DockerError> {
        let t = grace.as_secs_f64().ceil() as i32;
        for c in containers {
            let c = c.as_ref();
            tracing::info!(container = c, grace_s = t, "restarting");
            self.patient(grace + STOP_SLACK)
                .restart_container(
                    c,
                    Some(RestartContainerOptionsBuilder::default().t(t).build()),
                )
                .await
                .map_err(self.api_err(format!("restart container `{c}`")))
                .map_err(|e| with_hint(e, &format!("see `docker logs {c}`")))?;
        }
        Ok(())
    }

    /// Stop containers for the length of an operation: the guard knows which ones were
    /// running and starts them again on [`StoppedGuard::restore`] (or, as a last resort,
    /// in the background when dropped). When a stop fails half-way, the ones already
    /// stopped are started again before the error is returned.
    pub async fn stop_guarded<S: AsRef<str>>(
        &self,
        containers: &[S],
        grace: Duration,
    ) -> Result<StoppedGuard, DockerError> {
        self.stop_guarded_for(containers, grace, false).await
    }

    /// [`DockerClient::stop_guarded`] for a restore: should drctl be killed before it
    /// starts them again, the next drctl starts them only once a run succeeded (see
    /// [`DockerClient::start_left_stopped`]), not on data a restore left half-written.
    pub async fn stop_guarded_for_restore<S: AsRef<str>>(
        &self,
        containers: &[S],
        grace: Duration,
    ) -> Result<StoppedGuard, DockerError> {
        self.stop_guarded_for(containers, grace, true).await
    }

    pub(crate) async fn stop_guarded_for<S: AsRef<str>>(
        &self,
        containers: &[S],
        grace: Duration,
        restore: bool,
    ) -> Result<StoppedGuard, DockerError> {
        let mut guard = StoppedGuard {
            client: self.clone(),
            stopped: Vec::new(),
            records: Vec::new(),
            armed: true,
        };
        for c in containers {
            let c = c.as_ref();
            let record = self.ledger.as_ref().and_then(|l| l.record(c, restore));
            match self.stop_one(c, grace).await {
                Ok(true) => {
                    guard.stopped.push(c.to_string());
                    guard.records.push(record);
                }
                Ok(false) => clear(record.as_deref()),
                Err(e) => {
                    clear(record.as_deref());
                    if let Err(r) = guard.restore().await {
                        tracing::error!("{r}");
                    }
                    return Err(e);
                }
            }
        }
        Ok(guard)
    }

    /// Run `f` with `containers` stopped, and start again those that were running, whether
    /// `f` succeeds or not. When both `f` and the restart fail, `f`'s error is returned and
    /// the restart's is logged.
    pub async fn with_stopped<S, T, E, F, Fut>(
        &self,
        containers: &[S],
        grace: Duration,
        f: F,
    ) -> Result<T, E>
    where
        S: AsRef<str>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<DockerError>,
    {
        let guard = self.stop_guarded(containers, grace).await?;
        let out = f().await;
        let restored = guard.restore().await;
        match (out, restored) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(r)) => Err(r.into()),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(r)) => {
                tracing::error!("{r}");
                Err(e)
            }
        }
    }
}

/// Containers that drctl stopped and must start again. Call [`StoppedGuard::restore`]
/// (or [`StoppedGuard::keep_stopped`] when stopping was the point). Dropping an armed guard
/// (a panic, a cancelled step) starts them in the background and logs a warning: better
/// late than a service left down after drctl is gone.
#[must_use = "call restore().await so that stopped containers are started again"]
pub struct StoppedGuard {
    client: DockerClient,
    stopped: Vec<String>,
    /// The stop record of each stopped container, when the client keeps a ledger.
    records: Vec<Option<std::path::PathBuf>>,
    armed: bool,
}

fn clear(record: Option<&std::path::Path>) {
    if let Some(r) = record {
        crate::ledger::Ledger::clear(r);
    }
}

impl StoppedGuard {
    /// The containers this guard stopped (and will start), in stopping order.
    pub fn stopped(&self) -> &[String] {
        &self.stopped
    }

    /// Start the stopped containers again, in reverse stopping order (dependencies first).
    /// Every container is tried; the first error is returned, the others logged.
    pub async fn restore(mut self) -> Result<(), DockerError> {
        self.armed = false;
        let mut first: Option<DockerError> = None;
        for (c, record) in self.stopped.iter().zip(&self.records).rev() {
            let started = self.client.start(&[c]).await;
            if started.is_ok() {
                clear(record.as_deref());
            }
            if let Err(e) = started {
                let e = DockerError::failed(
                    format!("start container `{c}` again after drctl stopped it"),
                    format!("{}; start it by hand: docker start {c}", e.short()),
                );
                match first {
                    None => first = Some(e),
                    Some(_) => tracing::error!("{e}"),
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Leave the containers stopped; returns their names.
    pub fn keep_stopped(mut self) -> Vec<String> {
        self.armed = false;
        for r in &self.records {
            clear(r.as_deref());
        }
        std::mem::take(&mut self.stopped)
    }
}

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        if !self.armed || self.stopped.is_empty() {
            return;
        }
        let names = self.stopped.join(", ");
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                tracing::warn!(
                    "containers stopped by drctl were not started again by their step ({names}); starting them in the background"
                );
                let client = self.client.clone();
                let stopped = std::mem::take(&mut self.stopped);
                let records = std::mem::take(&mut self.records);
                rt.spawn(async move {
                    for (c, record) in stopped.iter().zip(&records).rev() {
                        match client.start(&[c]).await {
                            Ok(()) => clear(record.as_deref()),
                            Err(e) => tracing::error!("{e}"),
                        }
                    }
                });
            }
            Err(_) => tracing::error!(
                "containers stopped by drctl were left stopped ({names}); start them with: docker start {}",
                self.stopped.join(" ")
            ),
        }
    }
}

pub(crate) fn inspect_to_info(i: &ContainerInspectResponse) -> ContainerInfo {
    let labels = i
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let state = i.state.clone().unwrap_or_default();
    let health = state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .map(|s| s.to_string())
        .filter(|s| matches!(s.as_str(), "healthy" | "unhealthy" | "starting"));
    ContainerInfo {
        id: i.id.clone().unwrap_or_default().chars().take(12).collect(),
        name: i
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        project: labels.get(PROJECT_LABEL).cloned(),
        service: labels.get(SERVICE_LABEL).cloned(),
        state: state.status.map(|s| s.to_string()).unwrap_or_default(),
        health,
    }
}
