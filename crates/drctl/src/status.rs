//! `drctl status`: per service, its containers, their state and health; the last run.

use std::path::Path;
use std::time::Duration;

use drctl_core::exec::journal::list_runs;
use drctl_core::exec::{Journal, RunReport};
use drctl_core::plan::by_service;
use drctl_docker::DockerClient;
use serde_json::json;

use crate::context;
use crate::error::CliError;

pub async fn run(config: Option<&Path>, json: bool) -> Result<(), CliError> {
    let loaded = context::load(config);
    let cfg = loaded.require_config()?;
    let client = DockerClient::connect()?;
    client.daemon_info(Duration::from_secs(5)).await?;
    let containers = client.project_containers(&cfg.stack.project).await?;
    let grouped = by_service(&containers);
    let mut services: Vec<String> = loaded
        .compose
        .as_ref()
        .map(|m| m.service_names().iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    for s in grouped.keys() {
        if !services.contains(s) {
            services.push(s.clone());
        }
    }
    let last_run = list_runs(&cfg.state_dir())
        .into_iter()
        .next()
        .and_then(|d| {
            Journal::read(&d.journal())
                .ok()
                .and_then(|e| RunReport::from_events(&e, None))
        });
    if json {
        let svc: Vec<_> = services
            .iter()
            .map(|s| json!({ "service": s, "containers": grouped.get(s).cloned().unwrap_or_default() }))
            .collect();
        let out = json!({
            "project": cfg.stack.project,
            "services": svc,
            "last_run": last_run.as_ref().map(|r| json!({"run_id": r.run_id, "runbook": r.runbook, "status": r.status, "started_at": r.started_at})),
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return Ok(());
    }
    println!("stack `{}`", cfg.stack.project);
    let width = services.iter().map(|s| s.len()).max().unwrap_or(0);
    for s in &services {
        match grouped.get(s) {
            None => println!("  {s:<width$}  no container"),
            Some(cs) => {
                for c in cs {
                    let health = c
                        .health
                        .as_deref()
                        .map(|h| format!(", {h}"))
                        .unwrap_or_default();
                    println!("  {s:<width$}  {} ({}{health})", c.name, c.state);
                }
            }
        }
    }
    match last_run {
        Some(r) => println!(
            "last run: {} of `{}`, {}",
            r.run_id,
            r.runbook,
            r.status
                .map(|s| format!("{s:?}").to_lowercase())
                .unwrap_or_else(|| "unfinished (resume it with `drctl resume`)".into())
        ),
        None => println!("last run: none"),
    }
    Ok(())
}
