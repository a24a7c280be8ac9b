//! `drctl schedule`: runs the `schedules:` of drctl.yml until stopped.
//!
//! # Jobs
//!
//! Every `schedules:` entry is a job. At each time its five-field cron expression names (in
//! UTC) it runs its runbook exactly like `drctl run RUNBOOK --yes`: a run folder, the
//! journal, the report, the webhooks. With `prune: true`, a successful run is followed by
//! `retention:` applied to the repository, still under the run's stack lock.
//!
//! # One job per stack at a time
//!
//! Each job takes the stack lock for its run. A job whose lock is held by anything else (an
//! operator's `drctl run`, `drctl backup`, `drctl resume`) is skipped at once, with a log line
//! naming the holder, and counted (`result="skipped"`). The jobs of one scheduler take turns:
//! a job that comes due while another of its jobs runs waits for it, but never past its own
//! next due time (that due time is then skipped and counted). Due times that pass while the
//! job's own previous run still goes are skipped and counted too. Nothing queues beyond one
//! pending run per job. One `drctl schedule` per stack: a second one is refused (exit 4).
//!
//! # Runs missed while drctl schedule was down
//!
//! `--catch-up once` (the default): at start, a job whose latest due time passed without a
//! run that ended (drctl schedule was not running, or the run was cut off by a shutdown or a
//! crash) runs once, right away; however many due times were missed, they are not replayed
//! one by one. What a job last handled is kept in `STATE_DIR/schedule/JOB.json` (the last due
//! time handled, the last run, the last success); a job with no record yet (the first start)
//! has missed nothing. `--catch-up never`: missed due times are dropped, the next run is at
//! the next due time.
//!
//! # Stopping
//!
//! SIGTERM or SIGINT: no new job starts; a running job may finish within `--grace` (default
//! 30s). After that, or at a second signal, it is interrupted through the executor's
//! cancellation: its running steps are journaled as interrupted and `drctl resume RUN_ID`
//! can continue it. A backup set being written then never gets its manifest (the repository
//! writes it last), so it is listed as incomplete, never as complete, and `drctl backups
//! prune` removes it later. drctl then waits (at most 15s) for the containers that were
//! running when the job started to run again (a volume snapshot stops its users and starts
//! them again in the background), and exits 0.
//!
//! # Logs and metrics
//!
//! Logs are JSON, one object per line on stderr (`DRCTL_LOG` takes a tracing filter; the
//! default is `info`). Prometheus metrics are served at `http://ADDR/metrics` (`--metrics`,
//! default 127.0.0.1:9184; `off` disables), per job: `drctl_job_last_success_timestamp_seconds`,
//! `drctl_job_last_duration_seconds`, `drctl_job_runs_total{result="success|failure|skipped"}`,
//! `drctl_job_bytes_total`, `drctl_job_running`, `drctl_job_next_run_timestamp_seconds`,
//! `drctl_job_prune_failures_total`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use drctl_core::config::Config;
use drctl_core::cron::{civil, instant, Cron};
use drctl_core::exec::events::RunStatus;
use drctl_core::exec::{Event, EventKind, RunReport, StackLock, StepStatus};
use drctl_core::source::process_env;
use drctl_core::{load_runbook, resolve_runbook, Diagnostics};
use jiff::civil::Time;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::context::{self, Loaded};
use crate::error::CliError;
use crate::run::{execute_with, start_run, ExecHooks};

/// How long drctl waits, after interrupting a job, for the containers it found running to
/// run again.
const SETTLE: Duration = Duration::from_secs(15);
/// How long an interrupted job may take to wind down (journal, report, webhooks) before
/// drctl exits anyway.
const WIND_DOWN: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Run what is due now (a due time in this minute, or a missed one per --catch-up), or
    /// with --job those jobs at once; then exit.
    #[arg(long)]
    pub once: bool,
    /// Only this schedule (repeatable).
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    /// Also run the selected jobs once at start, then follow their schedules.
    #[arg(long)]
    pub now: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (`off`: no endpoint). Not with --once.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9184")]
    pub metrics: String,
    /// On SIGTERM / SIGINT, how long a running job may go on before it is interrupted.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub grace: String,
    /// Runs missed while drctl schedule was down: `once` runs each such job once at start,
    /// `never` waits for the next due time.
    #[arg(long, value_enum, default_value = "once")]
    pub catch_up: CatchUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CatchUp {
    Once,
    Never,
}

// ---------------------------------------------------------------------------------------
// Per-job records (for catch-up and metrics across restarts)

/// What a job last did, kept in `STATE_DIR/schedule/JOB.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobState {
    /// The newest due time that was handled: its run ended (successfully or not) or it was
    /// skipped. An interrupted run does not count: the catch-up at the next start runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due: Option<Timestamp>,
    /// The due time of a run that started and did not end (interrupted, or drctl was
    /// killed): the catch-up at the next start runs the job again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<String>,
    /// success, failure, interrupted or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finished: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
}

fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn state_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir
        .join("schedule")
        .join(format!("{}.json", safe_name(job)))
}

fn read_state(state_dir: &Path, job: &str) -> Option<JobState> {
    let p = state_path(state_dir, job);
    let bytes = std::fs::read(&p).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(job, "ignoring the damaged record {}: {e}", p.display());
            None
        }
    }
}

fn write_state(state_dir: &Path, job: &str, s: &JobState) {
    let p = state_path(state_dir, job);
    let tmp = p.with_extension("json.tmp");
    let r = std::fs::create_dir_all(p.parent().expect("a folder"))
        .and_then(|_| std::fs::write(&tmp, serde_json::to_vec_pretty(s).expect("state")))
        .and_then(|_| std::fs::rename(&tmp, &p));
    if let Err(e) = r {
        tracing::warn!(
            job,
            "failed to write {}: {e}; the catch-up after a restart may run the job again",
            p.display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

#[derive(Debug, Clone, Default)]
pub(crate) struct JobMetrics {
    pub last_success: Option<Timestamp>,
    pub last_duration: Option<f64>,
    pub success: u64,
    pub failure: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub running: bool,
    pub next_run: Option<Timestamp>,
    pub prune_failures: u64,
}

/// A family's samples for one job: extra labels (`,result="success"`) and values.
type Samples = dyn Fn(&JobMetrics) -> Vec<(String, f64)>;

#[derive(Default)]
pub(crate) struct Metrics {
    jobs: Mutex<BTreeMap<String, JobMetrics>>,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn secs(ts: Timestamp) -> f64 {
    ts.as_millisecond() as f64 / 1000.0
}

impl Metrics {
    pub fn update(&self, job: &str, f: impl FnOnce(&mut JobMetrics)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        f(jobs.entry(job.to_string()).or_default());
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, sample: &Samples| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (job, m) in &jobs {
                for (extra, v) in sample(m) {
                    out.push_str(&format!("{name}{{job=\"{}\"{extra}}} {v}\n", label(job)));
                }
            }
        };
        family(
            "drctl_job_last_success_timestamp_seconds",
            "gauge",
            "When the job's runbook last succeeded, in Unix time (0: never).",
            &|m| vec![(String::new(), m.last_success.map_or(0.0, secs))],
        );
        family(
            "drctl_job_last_duration_seconds",
            "gauge",
            "How long the job's last run took (its runbook and the prune after it).",
            &|m| {
                m.last_duration
                    .map(|d| (String::new(), d))
                    .into_iter()
                    .collect()
            },
        );
        family(
            "drctl_job_runs_total",
            "counter",
            "Due times of the job by outcome: success; failure (the run failed, was interrupted or could not start); skipped (the stack was busy).",
            &|m| {
                vec![
                    (",result=\"success\"".into(), m.success as f64),
                    (",result=\"failure\"".into(), m.failure as f64),
                    (",result=\"skipped\"".into(), m.skipped as f64),
                ]
            },
        );
        family(
            "drctl_job_bytes_total",
            "counter",
            "Stored bytes of the backup sets the job's runs took (backup steps' stored_bytes).",
            &|m| vec![(String::new(), m.bytes as f64)],
        );
        family(
            "drctl_job_running",
            "gauge",
            "1 while the job runs.",
            &|m| vec![(String::new(), if m.running { 1.0 } else { 0.0 })],
        );
        family(
            "drctl_job_next_run_timestamp_seconds",
            "gauge",
            "The job's next due time, in Unix time.",
            &|m| {
                m.next_run
                    .map(|t| (String::new(), secs(t)))
                    .into_iter()
                    .collect()
            },
        );
        family(
            "drctl_job_prune_failures_total",
            "counter",
            "Prunes after a successful run that failed (the run still counts as a success).",
            &|m| vec![(String::new(), m.prune_failures as f64)],
        );
        out
    }
}

/// A tiny HTTP/1.1 server: `GET /metrics`, one request per connection.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(sock, &m)).await;
        });
    }
}

/// The response to one request head (status line, content type, body).
pub(crate) fn respond(head: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            TEXT,
            "drctl schedule: Prometheus metrics at /metrics\n".into(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            TEXT,
            "not found; the metrics are at /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            TEXT,
            "only GET and HEAD are served\n".into(),
        ),
    }
}

async fn answer(mut sock: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > 16 * 1024 {
            let msg = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            sock.write_all(msg.as_bytes()).await?;
            return sock.shutdown().await;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, ctype, body) = respond(&head, metrics);
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head_only = head.starts_with("HEAD ");
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { &body }
    );
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Jobs

pub(crate) struct Job {
    pub name: String,
    pub cron: Cron,
    pub expr: String,
    pub runbook: String,
    pub prune: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Scheduled,
    /// Due times passed while drctl schedule was down (how many, capped).
    CatchUp(u64),
    /// The job's last run was cut off (a shutdown past the grace period, or a crash).
    Unfinished,
    /// --now, or --once --job.
    Requested,
}

#[derive(Debug, Clone, Copy)]
struct Due {
    /// The due time (for `Requested`: when it was asked for).
    at: Timestamp,
    why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Success,
    Failure,
    Skipped,
    Interrupted,
}

impl End {
    fn word(self) -> &'static str {
        match self {
            End::Success => "success",
            End::Failure => "failure",
            End::Skipped => "skipped",
            End::Interrupted => "interrupted",
        }
    }
}

struct Shared {
    loaded: Loaded,
    config: Config,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    /// No new job starts once cancelled.
    stop: CancellationToken,
    /// Interrupts running jobs.
    abandon: CancellationToken,
    /// The jobs of this scheduler take turns.
    turn: tokio::sync::Mutex<()>,
    catch_up: CatchUp,
}

/// The schedules to run, checked: cron expressions, runbooks (every problem at once),
/// retention for pruning jobs.
fn select_jobs(loaded: &Loaded, cfg: &Config, only: &[String]) -> Result<Vec<Job>, CliError> {
    if cfg.schedules.is_empty() {
        return Err(CliError::Usage(format!(
            "no `schedules:` in {}; add one, like `- {{ name: hourly-snapshot, cron: \"0 * * * *\", runbook: snapshot, prune: true }}`",
            cfg.file.display()
        )));
    }
    let names: Vec<&str> = cfg.schedules.iter().map(|s| s.name.as_str()).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(CliError::Usage(format!(
                "two schedules are named `{n}` in {}; give each its own name",
                cfg.file.display()
            )));
        }
    }
    for o in only {
        if !names.contains(&o.as_str()) {
            return Err(CliError::Usage(format!(
                "{}: {}",
                cfg.file.display(),
                drctl_core::diag::unknown_message("schedule", o, &names)
            )));
        }
    }
    let mut diags = Diagnostics::default();
    let mut jobs = Vec::new();
    for s in cfg
        .schedules
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
    {
        let cron = Cron::parse(&s.cron).map_err(|e| {
            CliError::Usage(format!(
                "schedule `{}` in {}: {e}",
                s.name,
                cfg.file.display()
            ))
        })?;
        if s.prune && cfg.retention.is_none() {
            return Err(CliError::Usage(format!(
                "schedule `{}` prunes, but {} has no `retention:`; say what to keep (keep_last, hourly, daily, weekly, monthly) or set `prune: false`",
                s.name,
                cfg.file.display()
            )));
        }
        let path = resolve_runbook(&s.runbook, loaded.runbooks_dir().as_deref())
            .map_err(|e| CliError::Usage(format!("schedule `{}`: {e}", s.name)))?;
        if let Err(d) = load_runbook(&path, &process_env, loaded.ctx()) {
            diags.extend(d);
        }
        jobs.push(Job {
            name: s.name.clone(),
            cron,
            expr: s.cron.clone(),
            runbook: s.runbook.clone(),
            prune: s.prune,
        });
    }
    if !diags.is_empty() {
        return Err(CliError::Invalid(diags.sorted()));
    }
    Ok(jobs)
}

/// The start of the minute `ts` is in.
fn minute_of(ts: Timestamp) -> Timestamp {
    let c = civil(ts);
    Time::new(c.hour(), c.minute(), 0, 0)
        .ok()
        .and_then(|t| instant(c.date().to_datetime(t)))
        .unwrap_or(ts)
}

/// What is due for a job when drctl schedule starts.
fn due_at_start(
    job: &Job,
    state: Option<&JobState>,
    now: Timestamp,
    requested: bool,
    once: bool,
    catch_up: CatchUp,
) -> Option<Due> {
    if requested {
        return Some(Due {
            at: now,
            why: Why::Requested,
        });
    }
    let last = state.and_then(|s| s.last_due);
    if catch_up == CatchUp::Once {
        // Due times after the last one handled or started.
        let seen = match (last, state.and_then(|s| s.unfinished)) {
            (Some(l), Some(u)) => Some(l.max(u)),
            (l, u) => l.or(u),
        };
        if let Some((at, n)) = seen.and_then(|t| job.cron.latest_in(t, now)) {
            // A due time in the current minute is simply due, not missed.
            let why = if n == 1 && once && at == minute_of(now) {
                Why::Scheduled
            } else {
                Why::CatchUp(n)
            };
            return Some(Due { at, why });
        }
        if let Some(at) = state.and_then(|s| s.unfinished) {
            return Some(Due {
                at,
                why: Why::Unfinished,
            });
        }
    }
    if once {
        let minute = minute_of(now);
        if job.cron.matches(minute) && last.is_none_or(|l| l < minute) {
            return Some(Due {
                at: minute,
                why: Why::Scheduled,
            });
        }
    }
    None
}

/// Sleep until a wall-clock time (in steps, so that clock changes are noticed); `false`
/// when stopped first.
async fn sleep_until(at: Timestamp, stop: &CancellationToken) -> bool {
    loop {
        let left = at.duration_since(Timestamp::now());
        if left.is_negative() || left.is_zero() {
            return true;
        }
        let step = Duration::try_from(left)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = stop.cancelled() => return false,
        }
    }
}

fn log_event(job: &str, run_id: &str, e: &Event) {
    match &e.kind {
        EventKind::RunStarted {
            runbook,
            steps,
            resumed,
            ..
        } => {
            tracing::info!(job, run_id, runbook, steps, resumed, "run started")
        }
        EventKind::StepStarted {
            id,
            kind,
            summary,
            attempt,
            rollback,
        } => tracing::info!(
            job,
            run_id,
            step = id.as_str(),
            kind = kind.as_str(),
            attempt,
            rollback,
            "step started: {summary}"
        ),
        EventKind::StepProgress { id, message } => {
            tracing::info!(job, run_id, step = id.as_str(), "{message}")
        }
        EventKind::StepRetrying {
            id,
            attempt,
            wait_ms,
            error,
        } => tracing::warn!(
            job,
            run_id,
            step = id.as_str(),
            attempt,
            wait_ms,
            "step failed, trying again: {error}"
        ),
        EventKind::StepFinished {
            id,
            kind,
            status,
            duration_ms,
            attempts,
            message,
            ..
        } => {
            let st = format!("{status:?}").to_lowercase();
            if matches!(status, StepStatus::Failed | StepStatus::Interrupted) {
                tracing::warn!(
                    job,
                    run_id,
                    step = id.as_str(),
                    kind = kind.as_str(),
                    status = st,
                    duration_ms,
                    attempts,
                    "step finished: {message}"
                )
            } else {
                tracing::info!(
                    job,
                    run_id,
                    step = id.as_str(),
                    kind = kind.as_str(),
                    status = st,
                    duration_ms,
                    attempts,
                    "step finished: {message}"
                )
            }
        }
        EventKind::RunFinished {
            status,
            duration_ms,
            message,
        } => {
            let st = format!("{status:?}").to_lowercase();
            if *status == RunStatus::Succeeded {
                tracing::info!(
                    job,
                    run_id,
                    status = st,
                    duration_ms,
                    "run finished: {message}"
                )
            } else {
                tracing::warn!(
                    job,
                    run_id,
                    status = st,
                    duration_ms,
                    "run finished: {message}"
                )
            }
        }
    }
}

/// Stored bytes of the backup sets a run took.
fn stored_bytes(r: &RunReport) -> u64 {
    r.steps
        .iter()
        .filter(|s| s.kind == "backup" && s.status == StepStatus::Ok)
        .filter_map(|s| s.output.get("stored_bytes").and_then(|b| b.as_u64()))
        .sum()
}

/// Names of the stack's running containers (`None` when Docker does not answer).
async fn running_containers(project: &str) -> Option<Vec<String>> {
    let docker = drctl_docker::DockerClient::connect().ok()?;
    let all = docker.project_containers(project).await.ok()?;
    Some(
        all.into_iter()
            .filter(|c| c.state == "running")
            .map(|c| c.name)
            .collect(),
    )
}

/// After an interruption: wait (at most [`SETTLE`]) until what ran before the job runs
/// again; the cut-off steps start what they stopped in the background.
async fn settle(job: &str, project: &str, before: &[String]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let Some(now) = running_containers(project).await else {
            return;
        };
        let down: Vec<&String> = before.iter().filter(|c| !now.contains(c)).collect();
        if down.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = down.iter().map(|s| s.as_str()).collect();
            tracing::warn!(
                job,
                "containers that ran when the job started are still not running after its interruption: {}; start them (docker start) or resume the run",
                names.join(", ")
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What one due time led to, for `--once`'s summary line.
#[derive(Debug, Clone, Serialize)]
struct JobSummary {
    job: String,
    result: &'static str,
    due: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<f64>,
    stored_bytes: u64,
    message: String,
}

/// Run one due time of a job to its end, and record it (metrics, the job's record).
async fn run_job(sh: &Shared, job: &Job, due: Due) -> JobSummary {
    let t0 = Instant::now();
    let name = job.name.as_str();
    let why = match due.why {
        Why::Scheduled => "due".to_string(),
        Why::Requested => "asked for".to_string(),
        Why::CatchUp(n) => format!(
            "catching up: {n}{} due time(s) passed while drctl schedule was down, the newest at {}",
            if n > 1000 { "+" } else { "" },
            due.at
        ),
        Why::Unfinished => format!(
            "catching up: its run due at {} was cut off by a shutdown or a crash",
            due.at
        ),
    };
    tracing::info!(job = name, due = %due.at, cron = job.expr.as_str(), runbook = job.runbook.as_str(), "job starts ({why})");
    let mut summary = JobSummary {
        job: job.name.clone(),
        result: "",
        due: due.at,
        run_id: None,
        duration_seconds: None,
        stored_bytes: 0,
        message: String::new(),
    };
    let command = format!("drctl schedule (job {name})");
    let end = match start_run(&sh.loaded, &job.runbook, &command) {
        Err(CliError::Locked(m)) => {
            tracing::warn!(job = name, due = %due.at, "job skipped: {m}");
            summary.message = m;
            End::Skipped
        }
        Err(e) => {
            tracing::error!(job = name, due = %due.at, "job failed before its run started: {e}");
            summary.message = e.to_string();
            End::Failure
        }
        Ok((rb, dir, meta, lock)) => {
            summary.run_id = Some(meta.run_id.clone());
            sh.metrics.update(name, |m| m.running = true);
            // Until the run ends: a crash leaves this for the catch-up to see.
            let mut st = read_state(&sh.state_dir, name).unwrap_or_default();
            st.unfinished = Some(st.unfinished.map_or(due.at, |u| u.max(due.at)));
            write_state(&sh.state_dir, name, &st);
            let before = running_containers(&sh.config.stack.project).await;
            let run_id = meta.run_id.clone();
            let job_name = job.name.clone();
            let hooks = ExecHooks {
                yes: true,
                confirm: None,
                sink: Arc::new(move |e: &Event| log_event(&job_name, &run_id, e)),
                cancel: Box::pin(sh.abandon.clone().cancelled_owned()),
            };
            match execute_with(&sh.loaded, &rb, &dir, &meta, Vec::new(), hooks, lock).await {
                Err(e) => {
                    tracing::error!(job = name, run_id = meta.run_id.as_str(), "job failed: {e}");
                    summary.message = e.to_string();
                    End::Failure
                }
                Ok(done) => {
                    summary.stored_bytes = stored_bytes(&done.report);
                    summary.message = done.outcome.message.clone();
                    let end = match done.outcome.status {
                        RunStatus::Succeeded => {
                            if job.prune {
                                prune(sh, name).await;
                            }
                            End::Success
                        }
                        RunStatus::Interrupted => {
                            if let Some(before) = &before {
                                settle(name, &sh.config.stack.project, before).await;
                            }
                            tracing::warn!(
                                job = name,
                                run_id = meta.run_id.as_str(),
                                "job interrupted; `drctl resume {}` continues its run{}",
                                meta.run_id,
                                if sh.catch_up == CatchUp::Once {
                                    ", or the next start of drctl schedule runs the job again"
                                } else {
                                    ""
                                }
                            );
                            End::Interrupted
                        }
                        _ => {
                            tracing::error!(
                                job = name,
                                run_id = meta.run_id.as_str(),
                                "job failed: {}; its report: drctl report {}",
                                done.outcome.message,
                                meta.run_id
                            );
                            End::Failure
                        }
                    };
                    drop(done.lock);
                    end
                }
            }
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    let finished = Timestamp::now();
    summary.result = end.word();
    let ran = end != End::Skipped;
    if ran {
        summary.duration_seconds = Some(seconds);
    }
    sh.metrics.update(name, |m| {
        m.running = false;
        m.bytes += summary.stored_bytes;
        match end {
            End::Success => {
                m.success += 1;
                m.last_success = Some(finished);
            }
            End::Failure | End::Interrupted => m.failure += 1,
            End::Skipped => m.skipped += 1,
        }
        if ran {
            m.last_duration = Some(seconds);
        }
    });
    let mut st = read_state(&sh.state_dir, name).unwrap_or_default();
    if end != End::Interrupted {
        st.last_due = Some(st.last_due.map_or(due.at, |l| l.max(due.at)));
    }
    if ran && end != End::Interrupted {
        st.unfinished = None;
    }
    st.last_result = Some(end.word().to_string());
    if ran {
        st.last_run_id = summary.run_id.clone();
        st.last_finished = Some(finished);
        st.last_duration_seconds = Some(seconds);
    }
    if end == End::Success {
        st.last_success = Some(finished);
    }
    write_state(&sh.state_dir, name, &st);
    if ran {
        tracing::info!(
            job = name,
            result = end.word(),
            duration_seconds = seconds,
            stored_bytes = summary.stored_bytes,
            "job ended"
        );
    }
    summary
}

/// Retention after a successful run (the caller still holds the stack lock). A failure is
/// logged and counted; it does not make the run a failure.
async fn prune(sh: &Shared, job: &str) {
    let Some(policy) = sh.config.retention.clone() else {
        return;
    };
    let repo = match drctl_repo::Repository::open(&sh.config, &process_env) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(job, "prune failed: {e}");
            sh.metrics.update(job, |m| m.prune_failures += 1);
            return;
        }
    };
    // Deleting removes a set's manifest first, so an interrupted prune leaves incomplete
    // sets, never damaged complete ones.
    let r = tokio::select! {
        r = repo.prune(&policy, Timestamp::now(), false) => r,
        _ = sh.abandon.cancelled() => {
            tracing::warn!(job, "prune interrupted; the next one finishes it");
            return;
        }
    };
    match r {
        Ok(plan) => {
            let removed: Vec<&str> = plan.remove.iter().map(|e| e.id.as_str()).collect();
            tracing::info!(
                job,
                kept = plan.keep.len(),
                removed = removed.len(),
                aborted_uploads = plan.aborted_uploads.len(),
                "pruned{}",
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(": removed {}", removed.join(", "))
                }
            );
        }
        Err(e) => {
            tracing::error!(job, "prune failed: {e}");
            sh.metrics.update(job, |m| m.prune_failures += 1);
        }
    }
}

/// Record due times skipped without a run.
fn record_skips(sh: &Shared, job: &Job, newest: Timestamp, n: u64, reason: &str) {
    tracing::warn!(job = job.name.as_str(), skipped = n, newest_due = %newest, "{n} due time(s) skipped: {reason}");
    sh.metrics.update(&job.name, |m| m.skipped += n);
    let mut st = read_state(&sh.state_dir, &job.name).unwrap_or_default();
    st.last_due = Some(st.last_due.map_or(newest, |l| l.max(newest)));
    st.last_result = Some("skipped".into());
    write_state(&sh.state_dir, &job.name, &st);
}

/// One job, until drctl schedule stops.
async fn job_loop(sh: Arc<Shared>, job: Arc<Job>, mut first: Option<Due>) {
    let mut after = Timestamp::now();
    loop {
        let due = match first.take() {
            Some(d) => d,
            None => {
                let Some(at) = job.cron.next_after(after) else {
                    tracing::warn!(
                        job = job.name.as_str(),
                        "`{}` names no time in the next ten years; the job never runs",
                        job.expr
                    );
                    return;
                };
                sh.metrics.update(&job.name, |m| m.next_run = Some(at));
                tracing::debug!(job = job.name.as_str(), next = %at, "waiting for the next due time");
                if !sleep_until(at, &sh.stop).await {
                    return;
                }
                Due {
                    at,
                    why: Why::Scheduled,
                }
            }
        };
        let became_due = Timestamp::now();
        // Wait for this scheduler's other jobs, but not past this job's next due time.
        let limit = job.cron.next_after(became_due);
        let turn = tokio::select! {
            g = sh.turn.lock() => Some(g),
            _ = async {
                match limit {
                    Some(l) => { sleep_until(l, &CancellationToken::new()).await; }
                    None => std::future::pending::<()>().await,
                }
            } => None,
            _ = sh.stop.cancelled() => return,
        };
        let Some(turn) = turn else {
            let l = limit.expect("a limit");
            record_skips(
                &sh,
                &job,
                due.at,
                1,
                "another job of this scheduler ran until this job's next due time",
            );
            first = Some(Due {
                at: l,
                why: Why::Scheduled,
            });
            continue;
        };
        if sh.stop.is_cancelled() {
            return;
        }
        sh.metrics.update(&job.name, |m| m.next_run = None);
        run_job(&sh, &job, due).await;
        drop(turn);
        if sh.stop.is_cancelled() {
            return;
        }
        let now = Timestamp::now();
        if let Some((newest, n)) = job.cron.latest_in(became_due, now) {
            record_skips(
                &sh,
                &job,
                newest,
                n,
                "they passed while the job's previous run was still going",
            );
        }
        after = now;
    }
}

/// The supervisor's view of a run of jobs.
type Work = tokio::task::JoinHandle<Vec<JobSummary>>;

/// Resolves at SIGTERM or SIGINT (each call waits for the next one).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let err = |e| CliError::Failed(format!("failed to install the signal handlers: {e}"));
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
        })
    }
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Wait for the work, handling signals: stop starting jobs, give running ones the grace
/// period, then interrupt them.
async fn supervise(
    mut work: Work,
    sh: &Shared,
    signals: &mut Signals,
    grace: Duration,
) -> Vec<JobSummary> {
    let joined = |r: Result<Vec<JobSummary>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| {
            tracing::error!("the scheduler failed: {e}");
            Vec::new()
        })
    };
    let sig = tokio::select! {
        r = &mut work => return joined(r),
        s = signals.recv() => s,
    };
    sh.stop.cancel();
    let running: Vec<String> = sh
        .metrics
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, m)| m.running)
        .map(|(j, _)| j.clone())
        .collect();
    if running.is_empty() {
        tracing::info!(signal = sig, "stopping: no job is running");
    } else {
        tracing::info!(
            signal = sig,
            "stopping: no new job starts; {} may finish within {:?}, then it is interrupted",
            running.join(", "),
            grace
        );
    }
    tokio::select! {
        r = &mut work => return joined(r),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("the grace period is over: interrupting the running job");
        }
        s = signals.recv() => {
            tracing::warn!(signal = s, "second signal: interrupting the running job now");
        }
    }
    sh.abandon.cancel();
    match tokio::time::timeout(WIND_DOWN, &mut work).await {
        Ok(r) => joined(r),
        Err(_) => {
            tracing::error!(
                "the interrupted job did not wind down within {WIND_DOWN:?}; exiting anyway"
            );
            work.abort();
            Vec::new()
        }
    }
}

/// JSON lines on stderr, for this thread and every thread of the runtime (the CLI's
/// text logger stays the global default for everything else).
fn json_logging(verbose: u8) -> tracing::Dispatch {
    let default = match verbose {
        0 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .finish();
    tracing::Dispatch::new(subscriber)
}

/// `drctl schedule`.
pub fn run(config: Option<&Path>, verbose: u8, args: ScheduleArgs) -> Result<(), CliError> {
    let dispatch = json_logging(verbose);
    let _main = tracing::dispatcher::set_default(&dispatch);
    let for_threads = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            // Lives as long as the thread.
            std::mem::forget(tracing::dispatcher::set_default(&for_threads));
        })
        .build()
        .map_err(|e| CliError::Failed(format!("failed to start the async runtime: {e}")))?;
    let r = rt.block_on(schedule(config, args));
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

async fn schedule(config: Option<&Path>, args: ScheduleArgs) -> Result<(), CliError> {
    let grace = drctl_core::duration::parse_duration(&args.grace)
        .map_err(|e| CliError::Usage(format!("--grace: {e}")))?
        .as_duration();
    let loaded = context::load(config);
    let cfg = loaded.require_config()?.clone();
    let jobs = select_jobs(&loaded, &cfg, &args.jobs)?;
    let state_dir = cfg.state_dir();
    let project = cfg.stack.project.clone();
    let _one_scheduler = StackLock::acquire(
        &state_dir,
        &format!("{project}.schedule"),
        &drctl_core::exec::new_run_id(),
        "drctl schedule",
    )
    .map_err(|e| match e {
        drctl_core::exec::LockError::Held { holder, .. } => CliError::Locked(format!(
            "another drctl schedule already runs the schedules of stack `{project}`: {holder}"
        )),
        other => CliError::Unavailable(other.to_string()),
    })?;
    let mut signals = Signals::new()?;
    // A scheduler killed mid-snapshot left the containers it stopped down: start them now,
    // not at the next due job. (Records of a live drctl are left to it.)
    if let Ok(docker) = crate::runner::stack_docker(&cfg) {
        docker.start_left_stopped(false).await;
    }

    let metrics = Arc::new(Metrics::default());
    let now = Timestamp::now();
    let requested = args.now || (args.once && !args.jobs.is_empty());
    let mut plan: Vec<(Arc<Job>, Option<Due>)> = Vec::new();
    for job in jobs {
        let st = read_state(&state_dir, &job.name);
        metrics.update(&job.name, |m| {
            m.last_success = st.as_ref().and_then(|s| s.last_success);
            m.last_duration = st.as_ref().and_then(|s| s.last_duration_seconds);
        });
        let due = due_at_start(&job, st.as_ref(), now, requested, args.once, args.catch_up);
        match due {
            Some(Due {
                at,
                why: Why::CatchUp(n),
            }) => tracing::info!(
                job = job.name.as_str(),
                missed = n,
                newest_missed = %at,
                "due times passed while drctl schedule was down; the job runs once now (--catch-up once)"
            ),
            Some(Due {
                at,
                why: Why::Unfinished,
            }) => tracing::info!(
                job = job.name.as_str(),
                due = %at,
                "the job's last run was cut off; it runs once now (--catch-up once)"
            ),
            _ => {}
        }
        plan.push((Arc::new(job), due));
    }

    let stop = CancellationToken::new();
    let sh = Arc::new(Shared {
        loaded,
        config: cfg,
        state_dir,
        metrics: metrics.clone(),
        stop: stop.clone(),
        abandon: CancellationToken::new(),
        turn: tokio::sync::Mutex::new(()),
        catch_up: args.catch_up,
    });

    let server_stop = CancellationToken::new();
    if !args.once && args.metrics != "off" {
        let addr = args.metrics.clone();
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
            CliError::Unavailable(format!(
                "failed to serve metrics on {addr}: {e}; pass --metrics HOST:PORT, or --metrics off"
            ))
        })?;
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        tracing::info!(
            address = local.as_str(),
            "metrics at http://{local}/metrics"
        );
        tokio::spawn(serve_metrics(
            listener,
            metrics.clone(),
            server_stop.clone(),
        ));
    }

    let names: Vec<String> = plan
        .iter()
        .map(|(j, _)| format!("{} (`{}`, {})", j.name, j.expr, j.runbook))
        .collect();
    let summaries = if args.once {
        let due: Vec<(Arc<Job>, Due)> = plan
            .into_iter()
            .filter_map(|(j, d)| d.map(|d| (j, d)))
            .collect();
        if due.is_empty() {
            tracing::info!("nothing is due now among {}", names.join(", "));
        }
        let shw = sh.clone();
        let work = tokio::spawn(async move {
            let mut out = Vec::new();
            for (job, d) in due {
                if shw.stop.is_cancelled() {
                    break;
                }
                let _turn = shw.turn.lock().await;
                out.push(run_job(&shw, &job, d).await);
            }
            out
        });
        supervise(work, &sh, &mut signals, grace).await
    } else {
        tracing::info!(stack = project.as_str(), "scheduling {}", names.join(", "));
        let shw = sh.clone();
        let work = tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for (job, first) in plan {
                set.spawn(job_loop(shw.clone(), job, first));
            }
            while let Some(r) = set.join_next().await {
                if let Err(e) = r {
                    tracing::error!("a job loop failed: {e}");
                }
            }
            Vec::new()
        });
        supervise(work, &sh, &mut signals, grace).await
    };
    server_stop.cancel();
    if stop.is_cancelled() {
        tracing::info!("drctl schedule stopped");
    }
    if !args.once {
        return Ok(());
    }
    for s in &summaries {
        println!("{}", serde_json::to_string(s).expect("summary"));
    }
    let any = |r: &str| summaries.iter().any(|s| s.result == r);
    if any("failure") {
        Err(CliError::Failed(String::new()))
    } else if any("interrupted") {
        Err(CliError::Interrupted(
            "interrupted; the job runs again at the next start (or `drctl resume RUN_ID`)".into(),
        ))
    } else if any("skipped") {
        let m: Vec<String> = summaries
            .iter()
            .filter(|s| s.result == "skipped")
            .map(|s| format!("job {} skipped: {}", s.job, s.message))
            .collect();
        Err(CliError::Locked(m.join("; ")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn job(expr: &str) -> Job {
        Job {
            name: "j".into(),
            cron: Cron::parse(expr).unwrap(),
            expr: expr.into(),
            runbook: "snapshot".into(),
            prune: false,
        }
    }

    #[test]
    fn missed_runs_policy() {
        let j = job("0 * * * *");
        let now = ts("2026-03-01T13:30:00Z");
        let handled = |at: &str| JobState {
            last_due: Some(ts(at)),
            ..Default::default()
        };
        // First start: nothing was missed.
        assert!(due_at_start(&j, None, now, false, false, CatchUp::Once).is_none());
        // Down over three due times: one run at start, for the newest.
        let d = due_at_start(
            &j,
            Some(&handled("2026-03-01T10:00:00Z")),
            now,
            false,
            false,
            CatchUp::Once,
        )
        .unwrap();
        assert_eq!((d.at, d.why), (ts("2026-03-01T13:00:00Z"), Why::CatchUp(3)));
        // Nothing missed.
        assert!(due_at_start(
            &j,
            Some(&handled("2026-03-01T13:00:00Z")),
            now,
            false,
            false,
            CatchUp::Once
        )
        .is_none());
        // A run cut off by a shutdown or a crash runs again, once.
        let cut = JobState {
            last_due: Some(ts("2026-03-01T12:00:00Z")),
            unfinished: Some(ts("2026-03-01T13:00:00Z")),
            ..Default::default()
        };
        let d = due_at_start(&j, Some(&cut), now, false, false, CatchUp::Once).unwrap();
        assert_eq!((d.at, d.why), (ts("2026-03-01T13:00:00Z"), Why::Unfinished));
        assert!(due_at_start(&j, Some(&cut), now, false, false, CatchUp::Never).is_none());
        // --catch-up never.
        assert!(due_at_start(
            &j,
            Some(&handled("2026-03-01T10:00:00Z")),
            now,
            false,
            false,
            CatchUp::Never
        )
        .is_none());
        // --once in a due minute runs it, once.
        let at_due = ts("2026-03-01T14:00:20Z");
        let d = due_at_start(&j, None, at_due, false, true, CatchUp::Never).unwrap();
        assert_eq!((d.at, d.why), (ts("2026-03-01T14:00:00Z"), Why::Scheduled));
        assert!(due_at_start(
            &j,
            Some(&handled("2026-03-01T14:00:00Z")),
            at_due,
            false,
            true,
            CatchUp::Once
        )
        .is_none());
        // --now / --once --job: at once.
        let d = due_at_start(&j, None, now, true, false, CatchUp::Never).unwrap();
        assert_eq!(d.why, Why::Requested);
    }

    #[test]
    fn metrics_text() {
        let m = Metrics::default();
        m.update("snap \"x\"", |j| {
            j.success = 2;
            j.skipped = 1;
            j.bytes = 1234;
            j.last_success = Some(ts("2026-03-01T10:00:00.5Z"));
            j.last_duration = Some(4.25);
        });
        m.update("idle", |_| {});
        let t = m.render();
        for line in [
            "# TYPE drctl_job_last_success_timestamp_seconds gauge",
            "drctl_job_last_success_timestamp_seconds{job=\"snap \\\"x\\\"\"} 1772359200.5",
            "drctl_job_last_success_timestamp_seconds{job=\"idle\"} 0",
            "drctl_job_last_duration_seconds{job=\"snap \\\"x\\\"\"} 4.25",
            "# TYPE drctl_job_runs_total counter",
            "drctl_job_runs_total{job=\"snap \\\"x\\\"\",result=\"success\"} 2",
            "drctl_job_runs_total{job=\"snap \\\"x\\\"\",result=\"failure\"} 0",
            "drctl_job_runs_total{job=\"snap \\\"x\\\"\",result=\"skipped\"} 1",
            "drctl_job_bytes_total{job=\"snap \\\"x\\\"\"} 1234",
            "drctl_job_running{job=\"idle\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "{line}\n{t}");
        }
        assert!(!t.contains("drctl_job_last_duration_seconds{job=\"idle\"}"));
        // Every sample belongs to a family declared just before it.
        let mut declared = String::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared = rest.split(' ').next().unwrap().to_string();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&format!("{declared}{{")), "{l}");
            }
        }
    }

    #[test]
    fn http_routes() {
        let m = Metrics::default();
        assert_eq!(
            respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m).0,
            "200 OK"
        );
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.0\r\n\r\n", &m).0, "200 OK");
        assert_eq!(respond("GET /nope HTTP/1.1\r\n\r\n", &m).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &m).0,
            "405 Method Not Allowed"
        );
    }
}
