//! `drctl plan`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use drctl_core::plan::{build_plan, DockerView, Plan, PlanInput, Stage};
use drctl_core::source::process_env;
use drctl_core::{load_runbook, resolve_runbook};
use drctl_docker::DockerClient;

use crate::context;
use crate::error::CliError;

/// Ask the daemon for the project's containers; never fails the caller.
pub async fn docker_view(project: Option<&str>) -> DockerView {
    let client = match DockerClient::connect() {
        Ok(c) => c,
        Err(e) => return DockerView::Unreachable { reason: e.short() },
    };
    let info = match client.daemon_info(Duration::from_secs(3)).await {
        Ok(i) => i,
        Err(e) => return DockerView::Unreachable { reason: e.short() },
    };
    let containers = match project {
        Some(p) => match client.project_containers(p).await {
            Ok(c) => c,
            Err(e) => {
                return DockerView::Unreachable {
                    reason: e.to_string(),
                }
            }
        },
        None => Vec::new(),
    };
    DockerView::Reachable {
        version: info.version,
        api_version: info.api_version,
        containers,
    }
}

pub async fn run(
    config: Option<&Path>,
    runbook: &str,
    json: bool,
    offline: bool,
) -> Result<(), CliError> {
    let loaded = context::load(config);
    loaded.require_valid()?;
    let path =
        resolve_runbook(runbook, loaded.runbooks_dir().as_deref()).map_err(CliError::Usage)?;
    let rb = load_runbook(&path, &process_env, loaded.ctx())?;
    let project = loaded.config.as_ref().map(|c| c.stack.project.as_str());
    let docker = if offline || loaded.config.is_none() {
        DockerView::NotChecked
    } else {
        docker_view(project).await
    };
    if let DockerView::Unreachable { reason } = &docker {
        tracing::warn!("planning without Docker: {reason}");
    }
    let plan = build_plan(PlanInput {
        runbook: &rb,
        config: loaded.config.as_ref(),
        docker,
    })
    .map_err(|cycle| CliError::Failed(format!("dependency cycle: {}", cycle.join(" -> "))))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("plan serializes")
        );
    } else {
        print!("{}", render(&plan));
    }
    Ok(())
}

fn render_stages(out: &mut String, stages: &[Stage]) {
    let width = stages
        .iter()
        .flat_map(|s| s.steps.iter().map(|p| p.id.len()))
        .max()
        .unwrap_or(0);
    for stage in stages {
        let parallel = stage.steps.len() > 1;
        let _ = writeln!(
            out,
            "\nstage {}{}",
            stage.number,
            if parallel {
                format!(" ({} steps in parallel)", stage.steps.len())
            } else {
                String::new()
            }
        );
        for p in &stage.steps {
            let bar = if parallel { "║ " } else { "  " };
            let group = p
                .group
                .as_ref()
                .map(|g| format!(" [group {g}]"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {bar}{:<width$}  {}{group}", p.id, p.summary);
            let mut policy = format!("timeout {}", p.timeout);
            if p.retry.attempts > 0 {
                let _ = write!(
                    policy,
                    ", {} retries from {}",
                    p.retry.attempts, p.retry.delay
                );
            }
            let _ = write!(
                policy,
                ", on failure {}",
                format!("{:?}", p.on_failure).to_lowercase()
            );
            if !p.after.is_empty() {
                let _ = write!(policy, ", after {}", p.after.join(", "));
            }
            let _ = writeln!(out, "  {bar}{:<width$}  {policy}", "");
            for t in &p.touches {
                let what = match &t.containers {
                    None => "containers not looked up".to_string(),
                    Some(c) if c.is_empty() => "no container (gone or never created)".to_string(),
                    Some(c) => c
                        .iter()
                        .map(|c| {
                            let health = c
                                .health
                                .as_ref()
                                .map(|h| format!(", {h}"))
                                .unwrap_or_default();
                            format!("{} ({}, {}{health})", c.name, c.id, c.state)
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                let _ = writeln!(out, "  {bar}{:<width$}  {} -> {what}", "", t.service);
            }
        }
    }
}

pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan for runbook `{}` ({})", plan.runbook, plan.file);
    if let Some(d) = &plan.description {
        let _ = writeln!(out, "  {}", d.trim());
    }
    if let Some(p) = &plan.project {
        let _ = writeln!(out, "  project:    {p}");
    }
    if let Some(o) = &plan.objectives {
        let rpo = o
            .rpo
            .map(|r| r.to_string())
            .unwrap_or_else(|| "none (planned)".into());
        let _ = writeln!(out, "  objectives: RTO {}, RPO {rpo}", o.rto);
    }
    if let Some(b) = &plan.backup {
        let _ = writeln!(out, "  backup:     {b}");
    }
    let docker = match &plan.docker {
        DockerView::NotChecked => "not asked".to_string(),
        DockerView::Unreachable { reason } => format!("unreachable, so containers are not resolved ({reason}); start dockerd or set DOCKER_HOST"),
        DockerView::Reachable { version, api_version, containers } => {
            format!("Docker {version} (API {api_version}), {} container(s) in the project", containers.len())
        }
    };
    let _ = writeln!(out, "  docker:     {docker}");
    render_stages(&mut out, &plan.stages);
    if !plan.rollback.is_empty() {
        let _ = writeln!(out, "\non failure with `on_failure: rollback`, then:");
        render_stages(&mut out, &plan.rollback);
    }
    out
}
