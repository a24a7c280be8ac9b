//! Bringing services up and down through the compose CLI: `docker compose` (v2, what users
//! mostly have) when it runs, else `docker-compose` (v1, all the lab has). Only flags both
//! understand are used.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bollard::query_parameters::ListVolumesOptionsBuilder;
use drctl_core::compose::{start_order, ComposeModel};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::health::Poll;
use crate::{DockerClient, DockerError, PROJECT_LABEL, VOLUME_LABEL};

/// Lines of compose output quoted in an error.
const TAIL: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeFlavor {
    /// The `docker compose` plugin.
    V2,
    /// The Python `docker-compose`.
    V1,
}

/// The compose command to run.
#[derive(Debug, Clone)]
pub struct ComposeCli {
    program: String,
    base_args: Vec<String>,
    pub flavor: ComposeFlavor,
    /// First line of `… version`.
    pub version: String,
}

impl ComposeCli {
    /// `DRCTL_COMPOSE` when set (e.g. `docker compose`, `docker-compose`, a path);
    /// otherwise `docker compose` when `docker compose version` works, else `docker-compose`.
    pub async fn detect() -> Result<Self, DockerError> {
        if let Some(cmd) = std::env::var("DRCTL_COMPOSE")
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            return Self::from_command(&cmd).await;
        }
        let v2 = Self::from_command("docker compose").await;
        if v2.is_ok() {
            return v2;
        }
        Self::from_command("docker-compose").await.map_err(|_| {
            DockerError::failed(
                "find docker compose",
                "neither `docker compose` (the v2 plugin) nor `docker-compose` (v1) runs here; install the Docker Compose plugin (package docker-compose-plugin) or docker-compose, or set DRCTL_COMPOSE",
            )
        })
    }

    /// A given command line (`docker compose`, `/usr/bin/docker-compose`), checked with
    /// `… version`.
    pub async fn from_command(cmd: &str) -> Result<Self, DockerError> {
        let mut words = cmd.split_whitespace().map(str::to_string);
        let program = words.next().unwrap_or_default();
        let base_args: Vec<String> = words.collect();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&program)
                .args(&base_args)
                .arg("version")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let action = format!("run `{cmd} version`");
        let out = match out {
            Err(_) => return Err(DockerError::failed(action, "no answer within 30 s")),
            Ok(Err(e)) => return Err(DockerError::Io { action, source: e }),
            Ok(Ok(o)) => o,
        };
        if !out.status.success() {
            return Err(DockerError::failed(
                action,
                format!(
                    "{}: {}",
                    out.status,
                    crate::tail_lines(String::from_utf8_lossy(&out.stderr).trim(), 3)
                ),
            ));
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let flavor = flavor_of(&version);
        Ok(ComposeCli {
            program,
            base_args,
            flavor,
            version,
        })
    }

    /// The command as a user would type it.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.base_args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// v1 prints "docker-compose version 1.29.2, build …"; v2 (plugin or standalone binary)
/// "Docker Compose version v2.…".
fn flavor_of(version: &str) -> ComposeFlavor {
    if version.starts_with("docker-compose version 1.") {
        ComposeFlavor::V1
    } else {
        ComposeFlavor::V2
    }
}

/// A compose project as the CLI needs it: `-p NAME --project-directory DIR -f FILE...`.
#[derive(Debug, Clone, Default)]
pub struct ComposeProject {
    pub name: String,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Extra environment for compose's variable substitution.
    pub env: Vec<(String, String)>,
    /// Profiles to enable (`--profile`).
    pub profiles: Vec<String>,
}

impl ComposeProject {
    /// The project as its containers remember it (`com.docker.compose.project`,
    /// `.project.working_dir`, `.project.config_files`), for when no one said.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        let name = labels.get(PROJECT_LABEL)?.clone();
        let dir = PathBuf::from(labels.get("com.docker.compose.project.working_dir")?);
        let files = labels
            .get("com.docker.compose.project.config_files")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|f| dir.join(f))
            .collect();
        Some(ComposeProject {
            name,
            dir,
            files,
            ..Default::default()
        })
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "-p".to_string(),
            self.name.clone(),
            "--project-directory".to_string(),
            self.dir.display().to_string(),
        ];
        for f in &self.files {
            a.push("-f".into());
            a.push(f.display().to_string());
        }
        for p in &self.profiles {
            a.push("--profile".into());
            a.push(p.clone());
        }
        a
    }
}

/// How [`DockerClient::compose_up`] brings services up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Leave existing containers alone even when compose thinks their configuration
    /// changed (v1 and v2 hash configurations differently: without this, the other flavor
    /// would recreate every container it touches). Default true.
    pub no_recreate: bool,
    /// Before starting a service, wait until the services it depends on (among those being
    /// started) are ready: healthy when they have a healthcheck, else running, or exited 0.
    /// `--no-deps` makes compose itself skip this. Default: up to 120 s, every second.
    pub wait_dependencies: Option<Poll>,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            no_recreate: true,
            wait_dependencies: Some(Poll::new(Duration::from_secs(120), Duration::from_secs(1))),
        }
    }
}

impl DockerClient {
    /// `up -d --no-deps S` for each service, in depends_on order (dependencies first), for
    /// services whose containers are gone or stopped. Compose's output goes to tracing
    /// (target `drctl_docker::compose`); a failure quotes its last lines.
    pub async fn compose_up(
        &self,
        cli: &ComposeCli,
        project: &ComposeProject,
        model: &ComposeModel,
        services: &[&str],
        opts: &UpOptions,
    ) -> Result<(), DockerError> {
        check_services(project, model, services)?;
        let order = start_order(model, services);
        for (i, svc) in order.iter().enumerate() {
            if let (Some(poll), Some(s)) = (opts.wait_dependencies, model.service(svc)) {
                for dep in s
                    .depends_on
                    .iter()
                    .filter(|d| order[..i].contains(&d.as_str()))
                {
                    let found = self.service_containers(&project.name, &[dep]).await?;
                    for c in found.values().flatten() {
                        self.wait_ready(&c.name, poll).await.map_err(|e| {
                            DockerError::failed(
                                format!("start service `{svc}`"),
                                format!("its dependency `{dep}` is not ready: {e}"),
                            )
                        })?;
                    }
                }
            }
            let mut args = vec!["up", "-d", "--no-deps"];
            if opts.no_recreate {
                args.push("--no-recreate");
            }
            args.push(svc);
            run_compose(cli, project, &args, &format!("start service `{svc}`")).await?;
        }
        Ok(())
    }

    /// Take services down: with no services, the whole project (`down`); otherwise stop and
    /// remove their containers (`rm -s -f`). `remove_volumes` also removes their named
    /// volumes (refused for a volume another container still uses).
    pub async fn compose_down(
        &self,
        cli: &ComposeCli,
        project: &ComposeProject,
        model: &ComposeModel,
        services: &[&str],
        remove_volumes: bool,
    ) -> Result<(), DockerError> {
        if services.is_empty() {
            let mut args = vec!["down"];
            if remove_volumes {
                args.push("-v");
            }
            return run_compose(
                cli,
                project,
                &args,
                &format!("take compose project `{}` down", project.name),
            )
            .await;
        }
        check_services(project, model, services)?;
        let mut args = vec!["rm", "-s", "-f"];
        if remove_volumes {
            args.push("-v"); // anonymous volumes
        }
        args.extend(services);
        run_compose(
            cli,
            project,
            &args,
            &format!("remove the containers of {}", list(services)),
        )
        .await?;
        if remove_volumes {
            for svc in services {
                let keys = model
                    .service(svc)
                    .map(|s| s.volumes.clone())
                    .unwrap_or_default();
                for key in keys {
                    let Some(volume) = self.compose_volume(&project.name, &key).await? else {
                        tracing::debug!(
                            service = svc,
                            volume = key,
                            "no such volume; nothing to remove"
                        );
                        continue;
                    };
                    self.remove_volume(&volume).await?;
                }
            }
        }
        Ok(())
    }

    /// The Docker name of a compose volume (by its labels; `PROJECT_KEY` as a fallback), or
    /// `None` when it does not exist.
    pub async fn compose_volume(
        &self,
        project: &str,
        key: &str,
    ) -> Result<Option<String>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{PROJECT_LABEL}={project}"),
                format!("{VOLUME_LABEL}={key}"),
            ],
        )]);
        let list = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(self.api_err(format!("list the volumes of compose project `{project}`")))?;
        if let Some(v) = list.volumes.unwrap_or_default().into_iter().next() {
            return Ok(Some(v.name));
        }
        let guess = format!("{project}_{key}");
        match self.docker.inspect_volume(&guess).await {
            Ok(v) => Ok(Some(v.name)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.api_err(format!("inspect volume `{guess}`"))(e)),
        }
    }
}

fn list(services: &[&str]) -> String {
    let names: Vec<String> = services.iter().map(|s| format!("`{s}`")).collect();
    format!(
        "service{} {}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
}

fn check_services(
    project: &ComposeProject,
    model: &ComposeModel,
    services: &[&str],
) -> Result<(), DockerError> {
    for s in services {
        if model.service(s).is_none() {
            return Err(DockerError::failed(
                format!("act on service `{s}` of compose project `{}`", project.name),
                format!(
                    "no such service in {} (services: {})",
                    project
                        .files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    model.service_names().join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Run one compose command, its output lines to tracing, the tail kept for the error.
async fn run_compose(
    cli: &ComposeCli,
    project: &ComposeProject,
    args: &[&str],
    action: &str,
) -> Result<(), DockerError> {
    let mut all: Vec<String> = cli.base_args.clone();
    // Plain output: no colours or cursor movement in logs and error messages.
    all.extend(["--ansi".to_string(), "never".to_string()]);
    all.extend(project.args());
    all.extend(args.iter().map(|s| s.to_string()));
    let shown = format!("{} {}", cli.program, all.join(" "));
    tracing::info!(target: "drctl_docker::compose", "running {shown}");
    let mut child = tokio::process::Command::new(&cli.program)
        .args(&all)
        .envs(project.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DockerError::Io {
            action: format!("{action}: run `{}`", cli.command_line()),
            source: e,
        })?;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let (from_stdout, line) = tokio::select! {
            l = out.next_line(), if out_open => (true, l),
            l = err.next_line(), if err_open => (false, l),
        };
        match line {
            Ok(Some(l)) => {
                tracing::info!(target: "drctl_docker::compose", "{l}");
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(l);
            }
            // Closed, or unreadable: stop reading that stream.
            Ok(None) | Err(_) if from_stdout => out_open = false,
            Ok(None) | Err(_) => err_open = false,
        }
    }
    let status = child.wait().await.map_err(|e| DockerError::Io {
        action: format!("{action}: wait for `{}`", cli.command_line()),
        source: e,
    })?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    Err(DockerError::failed(
        action.to_string(),
        format!(
            "`{shown}` {status}; its last output:\n{}",
            if tail.is_empty() {
                "(none)".to_string()
            } else {
                tail.join("\n")
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_and_labels() {
        assert_eq!(
            flavor_of("docker-compose version 1.29.2, build unknown"),
            ComposeFlavor::V1
        );
        assert_eq!(
            flavor_of("Docker Compose version v2.29.7"),
            ComposeFlavor::V2
        );
        assert_eq!(
            flavor_of("Docker Compose version 2.40.0"),
            ComposeFlavor::V2
        );
        let labels: HashMap<String, String> = [
            (PROJECT_LABEL, "shop"),
            ("com.docker.compose.project.working_dir", "/srv/shop"),
            (
                "com.docker.compose.project.config_files",
                "/srv/shop/compose.yml,override.yml",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = ComposeProject::from_labels(&labels).unwrap();
        assert_eq!(p.name, "shop");
        assert_eq!(
            p.files,
            vec![
                PathBuf::from("/srv/shop/compose.yml"),
                PathBuf::from("/srv/shop/override.yml")
            ]
        );
        assert_eq!(
            p.args()[..4],
            ["-p", "shop", "--project-directory", "/srv/shop"]
        );
    }
}
