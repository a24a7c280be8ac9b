//! Health gates: poll a probe at an interval until it passes or time runs out, and say what
//! was seen last ("still `starting` after 60 s; last healthcheck output: ...").
//!
//! [`wait_for`] is the framework; the Docker healthcheck, TCP, HTTP and exec gates are built
//! on it here, and the database gates (PostgreSQL, Redis, Qdrant) elsewhere.

use std::future::Future;
use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};

use crate::{DockerClient, DockerError, ExecOptions};

/// How long to wait and how often to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub timeout: Duration,
    pub interval: Duration,
}

impl Poll {
    pub fn new(timeout: Duration, interval: Duration) -> Self {
        Poll { timeout, interval }
    }
}

/// One look at the thing a gate waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ready,
    /// Not yet. `state` reads after "…": "still `starting`"; `detail` follows the time:
    /// "last healthcheck output: …".
    Waiting {
        state: String,
        detail: Option<String>,
    },
    /// Waiting cannot help (no healthcheck, no such container): fail now.
    Fatal(String),
}

impl Probe {
    pub fn waiting(state: impl Into<String>) -> Self {
        Probe::Waiting {
            state: state.into(),
            detail: None,
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if (s - s.round()).abs() < 0.05 {
        format!("{} s", s.round() as u64)
    } else {
        format!("{s:.1} s")
    }
}

/// Run `probe` now and then every `poll.interval` until it is ready, fatal, or
/// `poll.timeout` has passed. A probe that hangs is cut off at the deadline. The error says
/// `failed to {subject}: {state} after {timeout}; {detail}`.
pub async fn wait_for<F, Fut>(subject: &str, poll: Poll, mut probe: F) -> Result<(), DockerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe>,
{
    let deadline = Instant::now() + poll.timeout;
    let mut last;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Even at the deadline, one last look gets a moment to answer.
        let budget = left.max(Duration::from_millis(500));
        match tokio::time::timeout(budget, probe()).await {
            Ok(Probe::Ready) => return Ok(()),
            Ok(Probe::Fatal(m)) => {
                return Err(DockerError::Gate {
                    subject: subject.to_string(),
                    detail: m,
                    timed_out: false,
                })
            }
            Ok(w) => last = w,
            Err(_) => last = Probe::waiting(format!("no answer within {}", secs(budget))),
        }
        let now = Instant::now();
        if now >= deadline {
            let Probe::Waiting { state, detail } = last else {
                unreachable!()
            };
            let detail = detail.map(|d| format!("; {d}")).unwrap_or_default();
            return Err(DockerError::Gate {
                subject: subject.to_string(),
                detail: format!("{state} after {}{detail}", secs(poll.timeout)),
                timed_out: true,
            });
        }
        tokio::time::sleep(poll.interval.min(deadline - now)).await;
    }
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    } else if s.is_empty() {
        "(empty)".into()
    } else {
        s
    }
}

fn has_healthcheck(i: &ContainerInspectResponse) -> bool {
    i.config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref())
        .is_some_and(|t| !t.is_empty() && t[0] != "NONE")
}

/// What an inspect says about a container's readiness: healthy when it has a healthcheck,
/// running when not. `exited_ok` counts an exit with code 0 as ready (one-shot services).
fn readiness(i: &ContainerInspectResponse, need_health: bool, exited_ok: bool) -> Probe {
    let name = i.name.as_deref().unwrap_or("").trim_start_matches('/');
    let state = i.state.clone().unwrap_or_default();
    let status = state.status.map(|s| s.to_string()).unwrap_or_default();
    if !has_healthcheck(i) {
        if need_health {
            return Probe::Fatal(format!(
                "container `{name}` has no healthcheck (none in its image or compose service); use a tcp, http or exec gate instead"
            ));
        }
        if state.running == Some(true) {
            return Probe::Ready;
        }
    }
    if state.running != Some(true) {
        let code = state.exit_code.unwrap_or(0);
        if exited_ok && status == "exited" && code == 0 {
            return Probe::Ready;
        }
        return Probe::Waiting {
            state: format!("still not running (`{status}`, exit code {code})"),
            detail: Some(format!("see `docker logs {name}`")),
        };
    }
    let health = state.health.unwrap_or_default();
    match health.status {
        Some(HealthStatusEnum::HEALTHY) => Probe::Ready,
        s => {
            let s = s
                .map(|s| s.to_string())
                .unwrap_or_else(|| "starting".into());
            let last = health
                .log
                .unwrap_or_default()
                .last()
                .map(|r| {
                    format!(
                        "last healthcheck output: {} (exit code {})",
                        one_line(r.output.as_deref().unwrap_or(""), 300),
                        r.exit_code.unwrap_or(-1)
                    )
                })
                .unwrap_or_else(|| "no healthcheck has run yet".into());
            Probe::Waiting {
                state: format!("still `{s}`"),
                detail: Some(last),
            }
        }
    }
}

/// The deepest cause of an error: "connection refused" rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

impl DockerClient {
    /// Wait until the container's Docker healthcheck reports `healthy`. A container without
    /// a healthcheck fails at once (waiting cannot help).
    pub async fn wait_healthy(&self, container: &str, poll: Poll) -> Result<(), DockerError> {
        wait_for(
            &format!("see container `{container}` healthy"),
            poll,
            || async {
                match self.inspect(container).await {
                    Ok(i) => readiness(&i, true, false),
                    Err(e) if e.is_not_found() => {
                        Probe::Fatal(format!("no container `{container}`"))
                    }
                    Err(e) => Probe::waiting(e.short()),
                }
            },
        )
        .await
    }

    /// Wait until the container is ready to serve as a dependency: healthy when it has a
    /// healthcheck, running when not, or exited with code 0 (a one-shot service).
    pub async fn wait_ready(&self, container: &str, poll: Poll) -> Result<(), DockerError> {
        wait_for(
            &format!("see container `{container}` ready"),
            poll,
            || async {
                match self.inspect(container).await {
                    Ok(i) => readiness(&i, false, true),
                    Err(e) if e.is_not_found() => {
                        Probe::Fatal(format!("no container `{container}`"))
                    }
                    Err(e) => Probe::waiting(e.short()),
                }
            },
        )
        .await
    }

    /// Wait until `cmd` exits 0 inside the container.
    pub async fn wait_exec(
        &self,
        container: &str,
        cmd: &[&str],
        poll: Poll,
    ) -> Result<(), DockerError> {
        let subject = format!("see `{}` succeed in container `{container}`", cmd.join(" "));
        wait_for(&subject, poll, || async {
            match self
                .exec_output(container, cmd, &ExecOptions::default(), 4096)
                .await
            {
                Ok(o) if o.exit_code == 0 => Probe::Ready,
                Ok(o) => Probe::Waiting {
                    state: format!("still exiting with code {}", o.exit_code),
                    detail: Some(format!("last output: {}", one_line(&o.tail(5), 300))),
                },
                Err(e) if e.is_not_found() => Probe::Fatal(format!("no container `{container}`")),
                Err(e) => Probe::waiting(format!("still failing: {}", e.short())),
            }
        })
        .await
    }
}

/// Wait until a TCP connection to `addr` (`host:port`) succeeds.
pub async fn wait_tcp(addr: &str, poll: Poll) -> Result<(), DockerError> {
    wait_for(&format!("connect to {addr}"), poll, || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Probe::Ready,
            Err(e) => Probe::waiting(format!("still not accepting connections ({e})")),
        }
    })
    .await
}

/// Wait until `GET url` answers with `status` (any 2xx when `None`). Plain http only: gates
/// probe services over loopback, and this build carries no TLS stack.
pub async fn wait_http(url: &str, status: Option<u16>, poll: Poll) -> Result<(), DockerError> {
    let want = status.map_or("2xx".to_string(), |s| s.to_string());
    let subject = format!("get HTTP {want} from {url}");
    if !url.starts_with("http://") {
        return Err(DockerError::Gate {
            subject,
            detail: "only http:// URLs are supported (no TLS in this build); probe the service over plain http on loopback".into(),
            timed_out: false,
        });
    }
    let client = reqwest::Client::builder()
        .timeout(poll.interval.max(Duration::from_secs(2)))
        .no_proxy()
        .build()
        .map_err(|e| DockerError::failed("set up an HTTP client", root_cause(&e)))?;
    wait_for(&subject, poll, || async {
        match client.get(url).send().await {
            Ok(r) => {
                let code = r.status().as_u16();
                let ok = match status {
                    Some(s) => code == s,
                    None => r.status().is_success(),
                };
                if ok {
                    Probe::Ready
                } else {
                    let body = r.text().await.unwrap_or_default();
                    Probe::Waiting {
                        state: format!("still answering HTTP {code}"),
                        detail: Some(format!("last body: {}", one_line(&body, 200))),
                    }
                }
            }
            Err(e) => Probe::waiting(format!("still failing ({})", root_cause(&e))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeout_message_says_what_was_seen() {
        let poll = Poll::new(Duration::from_millis(300), Duration::from_millis(50));
        let e = wait_for("see it", poll, || async {
            Probe::Waiting {
                state: "still `starting`".into(),
                detail: Some("last healthcheck output: nope".into()),
            }
        })
        .await
        .unwrap_err();
        assert!(e.is_gate_timeout());
        assert_eq!(
            e.to_string(),
            "failed to see it: still `starting` after 0.3 s; last healthcheck output: nope"
        );
        let mut n = 0;
        wait_for("count", poll, || {
            n += 1;
            let ready = n >= 3;
            async move {
                if ready {
                    Probe::Ready
                } else {
                    Probe::waiting("not yet")
                }
            }
        })
        .await
        .unwrap();
        let e = wait_for("fail", poll, || async { Probe::Fatal("no way".into()) })
            .await
            .unwrap_err();
        assert!(!e.is_gate_timeout());
        assert_eq!(e.to_string(), "failed to fail: no way");
    }
}
