//! `drctl run`, `drctl resume`, `drctl report`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drctl_core::config::NotifyOn;
use drctl_core::exec::events::RunStatus;
use drctl_core::exec::journal::list_runs;
use drctl_core::exec::{
    new_run_id, Event, Executor, Journal, RunDir, RunOptions, RunReport, StackLock,
};
use drctl_core::plan::{build_plan, DockerView, PlanInput};
use drctl_core::runbook::Objectives;
use drctl_core::source::process_env;
use drctl_core::{load_runbook, parse_runbook, resolve_runbook, validate};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::{self, Loaded};
use crate::error::CliError;
use crate::render;
use crate::runner::Runner;

/// What a run needs to be resumed: kept as `run.json` beside the journal.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub runbook: String,
    /// Where the runbook was read from (the copy in the run folder is what runs).
    pub runbook_path: PathBuf,
    pub config: Option<PathBuf>,
    pub project: String,
    pub objectives: Option<Objectives>,
    pub created_at: jiff::Timestamp,
    /// `--backup` given to `drctl run`, kept for `drctl resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<drctl_core::runbook::Selection>,
}

pub struct RunArgs {
    pub yes: bool,
    pub json: bool,
    /// Overrides the runbook's `backup:` (`--backup ID|latest`).
    pub backup: Option<drctl_core::runbook::Selection>,
}

fn state_dir(loaded: &Loaded) -> Result<PathBuf, CliError> {
    Ok(loaded.require_config()?.state_dir())
}

/// Resolves when the operator interrupts (Ctrl-C) or the process is asked to stop (SIGTERM).
pub(crate) async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

fn confirm_prompt() -> Option<drctl_core::exec::executor::Confirm> {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return None;
    }
    Some(Arc::new(|question: &str| {
        eprint!("\n? {question} [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok()
            && matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
    }))
}

pub async fn run(config: Option<&Path>, runbook: &str, args: RunArgs) -> Result<(), CliError> {
    let loaded = context::load(config);
    let (mut rb, dir, mut meta, lock) =
        start_run(&loaded, runbook, &format!("drctl run {runbook}"))?;
    if let Some(sel) = args.backup.clone() {
        rb.backup = Some(sel.clone());
        meta.backup = Some(sel);
        let _ = std::fs::write(dir.meta(), serde_json::to_vec_pretty(&meta).expect("meta"));
    }
    execute(&loaded, &rb, &dir, &meta, Vec::new(), args, lock).await
}

/// Everything `drctl run` does before the executor starts: read and check the runbook, take
/// the stack lock (`CliError::Locked` when another run holds it; nothing is written then),
/// create the run folder with a copy of the runbook and `run.json`. `command` names the
/// holder in the lock file.
pub(crate) fn start_run(
    loaded: &Loaded,
    runbook: &str,
    command: &str,
) -> Result<(drctl_core::Runbook, RunDir, RunMeta, StackLock), CliError> {
    let cfg = loaded.require_config()?;
    let path =
        resolve_runbook(runbook, loaded.runbooks_dir().as_deref()).map_err(CliError::Usage)?;
    let rb = load_runbook(&path, &process_env, loaded.ctx())?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::Usage(format!("failed to read {}: {e}", path.display())))?;
    let run_id = new_run_id();
    let dir = RunDir::new(&cfg.state_dir(), &run_id);
    let lock = StackLock::acquire(&cfg.state_dir(), &cfg.stack.project, &run_id, command)
        .map_err(|e| CliError::Locked(e.to_string()))?;
    std::fs::create_dir_all(&dir.path).map_err(|e| {
        CliError::Unavailable(format!(
            "failed to create the run folder {}: {e}",
            dir.path.display()
        ))
    })?;
    std::fs::write(dir.runbook(), &text).map_err(|e| {
        CliError::Unavailable(format!(
            "failed to save the runbook in {}: {e}",
            dir.path.display()
        ))
    })?;
    let meta = RunMeta {
        run_id: run_id.clone(),
        runbook: rb.name.clone(),
        runbook_path: path.clone(),
        config: loaded
            .config_path
            .as_ref()
            .and_then(|p| std::fs::canonicalize(p).ok()),
        project: cfg.stack.project.clone(),
        objectives: rb.objectives.clone().or_else(|| cfg.objectives.clone()),
        created_at: jiff::Timestamp::now(),
        backup: None,
    };
    std::fs::write(dir.meta(), serde_json::to_vec_pretty(&meta).expect("meta")).map_err(|e| {
        CliError::Unavailable(format!("failed to write {}: {e}", dir.meta().display()))
    })?;
    Ok((rb, dir, meta, lock))
}

pub async fn resume(config: Option<&Path>, run_id: &str, args: RunArgs) -> Result<(), CliError> {
    let first = context::load(config);
    let state = state_dir(&first)?;
    let dir = RunDir::new(&state, run_id);
    if !dir.exists() {
        let known: Vec<String> = list_runs(&state)
            .into_iter()
            .take(5)
            .map(|r| r.id)
            .collect();
        return Err(CliError::Usage(format!(
            "no run `{run_id}` in {}; recent runs: {}",
            state.join("runs").display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )));
    }
    let meta: RunMeta =
        serde_json::from_slice(&std::fs::read(dir.meta()).map_err(|e| {
            CliError::Usage(format!("failed to read {}: {e}", dir.meta().display()))
        })?)
        .map_err(|e| CliError::Usage(format!("{} is damaged: {e}", dir.meta().display())))?;
    // The configuration the run started with, when it is still where it was.
    let loaded = match &meta.config {
        Some(p) if p.is_file() => context::load(Some(p)),
        _ => first,
    };
    let prior = Journal::read(&dir.journal()).map_err(CliError::Usage)?;
    if let Some(r) = RunReport::from_events(&prior, None) {
        if r.status == Some(RunStatus::Succeeded) {
            return Err(CliError::Usage(format!(
                "run {run_id} already succeeded; nothing to resume"
            )));
        }
    }
    let text = std::fs::read_to_string(dir.runbook())
        .map_err(|e| CliError::Usage(format!("failed to read {}: {e}", dir.runbook().display())))?;
    // Parse the saved copy, under the original path so that messages point at it.
    let mut rb = parse_runbook(&meta.runbook_path, &text, &process_env)?;
    if let Some(sel) = &meta.backup {
        rb.backup = Some(sel.clone());
    }
    let diags = validate::check_runbook(&rb, loaded.ctx());
    if !diags.is_empty() {
        return Err(CliError::Invalid(diags));
    }
    let cfg = loaded.require_config()?;
    let lock = StackLock::acquire(
        &cfg.state_dir(),
        &cfg.stack.project,
        run_id,
        &format!("drctl resume {run_id}"),
    )
    .map_err(|e| CliError::Locked(e.to_string()))?;
    execute(&loaded, &rb, &dir, &meta, prior, args, lock).await
}

async fn execute(
    loaded: &Loaded,
    rb: &drctl_core::Runbook,
    dir: &RunDir,
    meta: &RunMeta,
    prior: Vec<Event>,
    args: RunArgs,
    lock: StackLock,
) -> Result<(), CliError> {
    let hooks = ExecHooks {
        yes: args.yes,
        confirm: confirm_prompt(),
        sink: render::sink(render::mode(args.json)),
        cancel: Box::pin(interrupted()),
    };
    let done = execute_with(loaded, rb, dir, meta, prior, hooks, lock).await?;
    let (outcome, report) = (done.outcome, done.report);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("report"));
    } else {
        println!("{}", report.to_markdown());
        println!("journal: {}", dir.journal().display());
    }
    match outcome.status {
        RunStatus::Succeeded => Ok(()),
        RunStatus::Interrupted => Err(CliError::Interrupted(outcome.message)),
        _ => Err(CliError::Failed(format!(
            "run {} did not succeed (see the report above); fix the cause, then `drctl resume {}` continues it",
            meta.run_id, meta.run_id
        ))),
    }
}

/// How [`execute_with`] runs: `drctl run` answers confirmations on the terminal, renders
/// events live and stops on Ctrl-C / SIGTERM; `drctl schedule` logs events and cancels on
/// its own terms.
pub(crate) struct ExecHooks {
    /// Answer every `confirm` step with yes.
    pub yes: bool,
    pub confirm: Option<drctl_core::exec::executor::Confirm>,
    /// Receives every event (the journal gets them anyway).
    pub sink: Arc<dyn Fn(&Event) + Send + Sync>,
    /// Resolving interrupts the run: running steps are journaled as interrupted and the run
    /// can be resumed.
    pub cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>,
}

/// A run that reached the executor, whatever its outcome.
pub(crate) struct Executed {
    pub outcome: drctl_core::exec::RunOutcome,
    /// Written to the run folder too.
    pub report: RunReport,
    /// Still held: the caller decides when the stack is free again.
    pub lock: StackLock,
}

/// Run a prepared run folder: executor, journal, report file, webhooks. Errors are what
/// kept the executor from starting (no Docker, an unwritable journal); a failed run is an
/// `Ok` with its outcome.
pub(crate) async fn execute_with(
    loaded: &Loaded,
    rb: &drctl_core::Runbook,
    dir: &RunDir,
    meta: &RunMeta,
    prior: Vec<Event>,
    hooks: ExecHooks,
    lock: StackLock,
) -> Result<Executed, CliError> {
    let cfg = loaded.require_config()?;
    let runner = Runner::new(cfg.clone(), loaded.compose.clone(), rb.backup.clone()).await?;
    let start = json!({"event": "start", "run_id": meta.run_id, "runbook": meta.runbook, "stack": meta.project});
    let (outcome, report) = execute_plan(
        runner,
        cfg,
        rb,
        dir,
        &meta.run_id,
        meta.objectives.as_ref(),
        &prior,
        hooks,
        Some(start),
    )
    .await?;
    let report = report?;
    let succeeded = outcome.status == RunStatus::Succeeded;
    if succeeded && restores(&rb.steps) {
        // A recovery went through: what a killed restore of this stack left stopped may
        // run now (the restore run again did not stop it, so it would not start it). Not
        // after any other run: a scheduled snapshot must not start a service on data a
        // killed restore left half-written.
        if let Ok(docker) = crate::runner::stack_docker(cfg) {
            docker.start_left_stopped(true).await;
        }
    }
    let on = if succeeded {
        NotifyOn::Success
    } else {
        NotifyOn::Failure
    };
    let event = if on == NotifyOn::Success {
        "success"
    } else {
        "failure"
    };
    notify_run(cfg, on, json!({"event": event, "run_id": meta.run_id, "runbook": meta.runbook, "stack": meta.project, "report": report})).await;
    Ok(Executed {
        outcome,
        report,
        lock,
    })
}

/// Whether any of these steps (parallel groups included) restores data.
fn restores(steps: &[drctl_core::runbook::Step]) -> bool {
    use drctl_core::runbook::Action;
    steps.iter().any(|s| match &s.action {
        Action::Restore(_) => true,
        Action::Parallel(p) => restores(&p.steps),
        _ => false,
    })
}

/// Plan a runbook over a runner, run it with its journal in `dir`, and write the report
/// there. With `start`, the start webhooks get it once the run is about to begin. Errors
/// are what kept the executor from starting (a dependency cycle, no Docker, an unwritable
/// journal); after it ran, the outcome comes back whatever it is, with the report or why
/// it could not be read (a caller may still have to clean up).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn execute_plan(
    runner: Runner,
    cfg: &drctl_core::config::Config,
    rb: &drctl_core::Runbook,
    dir: &RunDir,
    run_id: &str,
    objectives: Option<&Objectives>,
    prior: &[Event],
    hooks: ExecHooks,
    start: Option<serde_json::Value>,
) -> Result<(drctl_core::exec::RunOutcome, Result<RunReport, CliError>), CliError> {
    let docker = runner.docker_view().await;
    let plan = build_plan(PlanInput {
        runbook: rb,
        config: Some(cfg),
        docker,
    })
    .map_err(|c| CliError::Failed(format!("dependency cycle: {}", c.join(" -> "))))?;
    if let DockerView::Unreachable { reason } = &plan.docker {
        return Err(CliError::Unavailable(format!(
            "{reason}; start dockerd, or set DOCKER_HOST"
        )));
    }
    let journal = Arc::new(Journal::open(&dir.journal()).map_err(|e| {
        CliError::Unavailable(format!(
            "failed to open the run journal {}: {e}",
            dir.journal().display()
        ))
    })?);
    let exec = Executor::new(run_id, Arc::new(runner), journal, hooks.sink);
    let opts = RunOptions {
        yes: hooks.yes,
        confirm: hooks.confirm,
        max_parallel: 0,
    };
    if let Some(start) = start {
        notify_run(cfg, NotifyOn::Start, start).await;
    }
    let outcome = exec.run(&plan, prior, &opts, hooks.cancel).await;
    let report = Journal::read(&dir.journal())
        .map_err(CliError::Failed)
        .map(|events| RunReport::from_events(&events, objectives).expect("a run has events"));
    if let Ok(r) = &report {
        let _ = std::fs::write(dir.report(), serde_json::to_vec_pretty(r).expect("report"));
    }
    Ok((outcome, report))
}

/// Webhooks on run start / success / failure. A failing webhook never fails the recovery:
/// it is logged and the run goes on.
async fn notify_run(cfg: &drctl_core::config::Config, on: NotifyOn, body: serde_json::Value) {
    for n in cfg.notifications.iter().filter(|n| n.on.contains(&on)) {
        match std::env::var(&n.url_env).ok().filter(|u| !u.is_empty()) {
            None => tracing::warn!(
                "notification `{}` skipped: ${} is not set",
                n.name,
                n.url_env
            ),
            Some(url) => {
                if let Err(e) = crate::notify::post(&url, &body).await {
                    tracing::warn!("notification `{}` failed: {e}", n.name);
                }
            }
        }
    }
}

pub fn report(config: Option<&Path>, run_id: Option<&str>, format: &str) -> Result<(), CliError> {
    let loaded = context::load(config);
    let state = state_dir(&loaded)?;
    let dir = match run_id {
        Some(id) => RunDir::new(&state, id),
        None => list_runs(&state).into_iter().next().ok_or_else(|| {
            CliError::Usage(format!("no runs in {}", state.join("runs").display()))
        })?,
    };
    if !dir.exists() {
        return Err(CliError::Usage(format!(
            "no run `{}` in {}",
            dir.id,
            state.join("runs").display()
        )));
    }
    let meta: Option<RunMeta> = std::fs::read(dir.meta())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let events = Journal::read(&dir.journal()).map_err(CliError::Usage)?;
    let report = RunReport::from_events(&events, meta.as_ref().and_then(|m| m.objectives.as_ref()))
        .ok_or_else(|| CliError::Usage(format!("run {} has an empty journal", dir.id)))?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&report).expect("report")),
        _ => print!("{}", report.to_markdown()),
    }
    Ok(())
}
