//! `drctl backup` and `drctl backups list|show|verify|prune`.

use std::path::Path;

use drctl_core::exec::{new_run_id, StackLock};
use drctl_core::source::process_env;
use drctl_repo::Repository;

use crate::context;
use crate::data::Data;
use crate::error::CliError;
use crate::runner::bytes;

fn repo_err(e: drctl_repo::RepoError) -> CliError {
    if e.is_unavailable() {
        CliError::Unavailable(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}

fn open(config: Option<&Path>) -> Result<(context::Loaded, Repository), CliError> {
    let loaded = context::load(config);
    let cfg = loaded.require_config()?;
    let repo = Repository::open(cfg, &process_env).map_err(|e| {
        if e.is_unavailable() {
            CliError::Unavailable(e.to_string())
        } else {
            CliError::Usage(e.to_string())
        }
    })?;
    Ok((loaded, repo))
}

pub async fn backup(config: Option<&Path>, tags: Vec<String>, json: bool) -> Result<(), CliError> {
    let (loaded, repo) = open(config)?;
    let cfg = loaded.require_config()?;
    let id = new_run_id();
    let _lock = StackLock::acquire(&cfg.state_dir(), &cfg.stack.project, &id, "drctl backup")
        .map_err(|e| CliError::Locked(e.to_string()))?;
    let docker = crate::runner::stack_docker(cfg)?;
    docker
        .daemon_info(std::time::Duration::from_secs(5))
        .await?;
    docker.start_left_stopped(false).await;
    let data = Data {
        docker: &docker,
        repo: &repo,
        config: cfg,
        source_stack: &cfg.stack.project,
    };
    let progress = |m: String| {
        if !json {
            eprintln!("  {m}");
        }
    };
    let started = std::time::Instant::now();
    let m = data
        .backup(&[], tags, false, &progress)
        .await
        .map_err(|e| CliError::Failed(e.message))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m).expect("manifest"));
    } else {
        println!(
            "backup set {} of `{}`: {} items, {} read, {} stored, in {:.1}s",
            m.id,
            m.stack,
            m.items.len(),
            bytes(m.raw_size()),
            bytes(m.stored_size()),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub async fn list(config: Option<&Path>, json: bool) -> Result<(), CliError> {
    let (_loaded, repo) = open(config)?;
    let sets = repo.list().await.map_err(repo_err)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sets).expect("sets"));
        return Ok(());
    }
    if sets.is_empty() {
        println!("no backup sets in {}", repo.describe());
        return Ok(());
    }
    println!(
        "{:<28} {:<10} {:<26} {:>6} {:>10}  tags",
        "set", "state", "started", "items", "stored"
    );
    for s in &sets {
        let state = if s.problem.is_some() {
            "DAMAGED"
        } else if s.complete {
            "complete"
        } else {
            "incomplete"
        };
        println!(
            "{:<28} {:<10} {:<26} {:>6} {:>10}  {}",
            s.id,
            state,
            s.started.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
            s.items,
            bytes(s.stored_size),
            s.tags.join(",")
        );
    }
    Ok(())
}

pub async fn show(config: Option<&Path>, id: &str, json: bool) -> Result<(), CliError> {
    let (_loaded, repo) = open(config)?;
    let m = repo.load_manifest(id).await.map_err(repo_err)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m).expect("manifest"));
        return Ok(());
    }
    println!("set {} of `{}`", m.id, m.stack);
    println!("  taken:      {} .. {}", m.started, m.finished);
    println!(
        "  tags:       {}",
        if m.tags.is_empty() {
            "-".into()
        } else {
            m.tags.join(", ")
        }
    );
    println!("  drctl:      {}", m.drctl_version);
    println!(
        "  encryption: {}",
        m.encryption
            .as_ref()
            .map(|e| format!("{} ({})", e.scheme, e.key_fingerprint))
            .unwrap_or_else(|| "none".into())
    );
    println!("  items:");
    for i in &m.items {
        println!(
            "    {:<40} {:<8} {:>10} -> {:>10}  sha256 {}…  {}",
            i.name,
            i.kind,
            bytes(i.raw_size),
            bytes(i.stored_size),
            &i.sha256[..12.min(i.sha256.len())],
            i.source
        );
    }
    Ok(())
}

pub async fn verify(config: Option<&Path>, id: &str, json: bool) -> Result<(), CliError> {
    let (_loaded, repo) = open(config)?;
    let r = repo.verify_set(id).await.map_err(repo_err)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).expect("report"));
    } else {
        for i in &r.items {
            match &i.error {
                None => println!("ok    {:<40} {}", i.name, bytes(i.stored_size)),
                Some(e) => println!("FAIL  {:<40} {e}", i.name),
            }
        }
    }
    if r.ok() {
        if !json {
            println!(
                "set {id}: all {} objects verified (SHA-256 and authentication)",
                r.items.len()
            );
        }
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "set {id}: {} of {} objects are damaged; restore from another set",
            r.failures().count(),
            r.items.len()
        )))
    }
}

pub async fn prune(config: Option<&Path>, dry_run: bool, json: bool) -> Result<(), CliError> {
    let (loaded, repo) = open(config)?;
    let cfg = loaded.require_config()?;
    let policy = cfg.retention.clone().ok_or_else(|| {
        CliError::Usage(format!(
            "no `retention:` in {}; say what to keep (keep_last, hourly, daily, weekly, monthly)",
            cfg.file.display()
        ))
    })?;
    let id = new_run_id();
    let _lock = StackLock::acquire(
        &cfg.state_dir(),
        &cfg.stack.project,
        &id,
        "drctl backups prune",
    )
    .map_err(|e| CliError::Locked(e.to_string()))?;
    let plan = repo
        .prune(&policy, jiff::Timestamp::now(), dry_run)
        .await
        .map_err(repo_err)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan).expect("plan"));
        return Ok(());
    }
    for k in &plan.keep {
        println!("keep    {}  ({})", k.id, k.reasons.join(", "));
    }
    for r in &plan.remove {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb:<7} {}  ({})",
            r.id,
            if r.reasons.is_empty() {
                if r.complete {
                    "no rule keeps it".to_string()
                } else {
                    "incomplete".into()
                }
            } else {
                r.reasons.join(", ")
            }
        );
    }
    for u in &plan.aborted_uploads {
        println!(
            "{} unfinished upload {u}",
            if dry_run { "would abort" } else { "aborted" }
        );
    }
    if dry_run {
        println!("dry run: nothing was deleted");
    }
    Ok(())
}
