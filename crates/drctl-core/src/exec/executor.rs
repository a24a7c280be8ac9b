//! The executor: runs a plan's steps in dependency order, with timeouts, retries with
//! backoff, `on_failure`, confirmations, rollback, interruption and resume.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use super::events::{Event, EventKind, RunStatus, StepStatus};
use super::journal::Journal;
use crate::plan::{Plan, PlannedStep, Stage};
use crate::runbook::{Action, OnFailure};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a step produced.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    pub message: String,
    /// Kept in the journal; later steps read it through [`StepCtx::output_of`].
    pub data: serde_json::Value,
}

impl StepOutput {
    pub fn msg(message: impl Into<String>) -> Self {
        StepOutput {
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    /// Worth another try (a service still starting, a network blip); a bad checksum is not.
    pub retryable: bool,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: true,
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Sink = Arc<dyn Fn(&Event) + Send + Sync>;

/// What a step can see of its run.
pub struct StepCtx {
    pub run_id: String,
    pub attempt: u32,
    outputs: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
    emitter: Emitter,
    step_id: String,
}

impl StepCtx {
    /// The output of an earlier step of this run (also across a resume).
    pub fn output_of(&self, step: &str) -> Option<serde_json::Value> {
        self.outputs.lock().expect("outputs").get(step).cloned()
    }
    /// All outputs so far, by step id.
    pub fn outputs(&self) -> BTreeMap<String, serde_json::Value> {
        self.outputs.lock().expect("outputs").clone()
    }
    /// Report progress (shown live, kept in the journal).
    pub fn progress(&self, message: impl Into<String>) {
        let _ = self.emitter.emit(EventKind::StepProgress {
            id: self.step_id.clone(),
            message: message.into(),
        });
    }
}

/// Does what a step says. Implemented over the adapters by the binary.
pub trait StepRunner: Send + Sync {
    fn run<'a>(
        &'a self,
        step: &'a PlannedStep,
        ctx: &'a StepCtx,
    ) -> BoxFuture<'a, Result<StepOutput, StepError>>;
}

/// Asks the operator a yes/no question (a terminal prompt); `None` when there is no terminal.
pub type Confirm = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone, Default)]
pub struct RunOptions {
    /// Answer every `confirm` step with yes.
    pub yes: bool,
    pub confirm: Option<Confirm>,
    /// At most this many steps at once (0: no limit).
    pub max_parallel: usize,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub failed_step: Option<String>,
    pub message: String,
    pub duration: Duration,
}

/// Writes every event to the journal (fsynced) and to the live sink.
#[derive(Clone)]
struct Emitter {
    journal: Arc<Journal>,
    sink: Sink,
    broken: Arc<Mutex<Option<String>>>,
}

impl Emitter {
    fn emit(&self, kind: EventKind) -> Result<(), String> {
        let e = Event::now(kind);
        (self.sink)(&e);
        if let Err(err) = self.journal.append(&e) {
            let msg = format!(
                "failed to write the run journal {}: {err}; free space there (or fix its permissions) and run `drctl resume`",
                self.journal.path().display()
            );
            *self.broken.lock().expect("broken") = Some(msg.clone());
            return Err(msg);
        }
        Ok(())
    }
    fn broken(&self) -> Option<String> {
        self.broken.lock().expect("broken").clone()
    }
}

pub struct Executor {
    pub run_id: String,
    runner: Arc<dyn StepRunner>,
    emitter: Emitter,
}

/// Where each step stands, rebuilt from an earlier attempt's journal on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Running,
    Ok,
    /// Failed with `on_failure: continue`: later steps go on.
    FailedContinue,
    Failed,
}

impl State {
    fn satisfies(self) -> bool {
        matches!(self, State::Ok | State::FailedContinue)
    }
}

/// Steps that finished in earlier attempts (journal events), and their outputs.
pub fn finished_steps(
    prior: &[Event],
) -> (
    HashMap<String, StepStatus>,
    BTreeMap<String, serde_json::Value>,
) {
    let mut done = HashMap::new();
    let mut outputs = BTreeMap::new();
    for e in prior {
        if let EventKind::StepFinished {
            id,
            status,
            output,
            rollback: false,
            message,
            ..
        } = &e.kind
        {
            match status {
                StepStatus::Ok | StepStatus::Done => {
                    done.insert(id.clone(), StepStatus::Ok);
                    if !output.is_null() {
                        outputs.insert(id.clone(), output.clone());
                    }
                }
                // A failure the runbook chose to continue past stays a failure.
                StepStatus::Failed if message.starts_with("(continued) ") => {
                    done.insert(id.clone(), StepStatus::Failed);
                }
                _ => {
                    done.remove(id);
                }
            }
        }
    }
    (done, outputs)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Executor {
    pub fn new(
        run_id: &str,
        runner: Arc<dyn StepRunner>,
        journal: Arc<Journal>,
        sink: Sink,
    ) -> Self {
        Executor {
            run_id: run_id.to_string(),
            runner,
            emitter: Emitter {
                journal,
                sink,
                broken: Arc::new(Mutex::new(None)),
            },
        }
    }

    /// Run a plan. `prior` holds the events of earlier attempts of this run (resume): steps
    /// that finished there are not run again. `cancel` resolves when the operator interrupts.
    pub async fn run(
        &self,
        plan: &Plan,
        prior: &[Event],
        opts: &RunOptions,
        cancel: impl Future<Output = ()> + Send + 'static,
    ) -> RunOutcome {
        let started = Instant::now();
        let (done, outputs) = finished_steps(prior);
        let outputs = Arc::new(Mutex::new(outputs));
        let total: usize = plan.stages.iter().map(|s| s.steps.len()).sum();
        let _ = self.emitter.emit(EventKind::RunStarted {
            run_id: self.run_id.clone(),
            runbook: plan.runbook.clone(),
            project: plan.project.clone(),
            steps: total,
            resumed: !prior.is_empty(),
            pid: std::process::id(),
        });
        let cancel: SharedCancel = (Box::pin(cancel) as BoxFuture<'static, ()>).shared();
        let main = self
            .run_stages(&plan.stages, &done, &outputs, opts, false, cancel.clone())
            .await;
        let (status, failed_step, message) = match main {
            Phase::Completed => (
                RunStatus::Succeeded,
                None,
                format!("all {total} steps done"),
            ),
            Phase::Interrupted(m) => (RunStatus::Interrupted, None, m),
            Phase::Failed {
                step,
                message,
                rollback,
            } if rollback && !plan.rollback.is_empty() => {
                let rb = self
                    .run_stages(
                        &plan.rollback,
                        &HashMap::new(),
                        &outputs,
                        opts,
                        true,
                        cancel.clone(),
                    )
                    .await;
                let how = match rb {
                    Phase::Completed => "rollback completed".to_string(),
                    Phase::Interrupted(m) => format!("rollback interrupted: {m}"),
                    Phase::Failed {
                        step: s,
                        message: m,
                        ..
                    } => format!("rollback FAILED at `{s}`: {m}"),
                };
                (
                    RunStatus::RolledBack,
                    Some(step.clone()),
                    format!("step `{step}` failed: {message}; {how}"),
                )
            }
            Phase::Failed { step, message, .. } => (
                RunStatus::Failed,
                Some(step.clone()),
                format!("step `{step}` failed: {message}"),
            ),
        };
        let message = match self.emitter.broken() {
            Some(b) => b,
            None => message,
        };
        let duration = started.elapsed();
        let _ = self.emitter.emit(EventKind::RunFinished {
            status: status.clone(),
            duration_ms: ms(duration),
            message: message.clone(),
        });
        RunOutcome {
            status,
            failed_step,
            message,
            duration,
        }
    }

    async fn run_stages(
        &self,
        stages: &[Stage],
        done: &HashMap<String, StepStatus>,
        outputs: &Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
        opts: &RunOptions,
        rollback: bool,
        mut cancel: SharedCancel,
    ) -> Phase {
        let steps: Vec<&PlannedStep> = stages.iter().flat_map(|s| s.steps.iter()).collect();
        let mut state: HashMap<&str, State> = HashMap::new();
        for s in &steps {
            let st = match done.get(&s.id) {
                Some(StepStatus::Ok) => State::Ok,
                Some(StepStatus::Failed) => State::FailedContinue,
                _ => State::Pending,
            };
            if st != State::Pending {
                let _ = self.emitter.emit(EventKind::StepFinished {
                    id: s.id.clone(),
                    kind: s.kind.to_string(),
                    status: StepStatus::Done,
                    duration_ms: 0,
                    attempts: 0,
                    message: "done before the resume; not run again".into(),
                    output: serde_json::Value::Null,
                    rollback,
                });
            }
            state.insert(&s.id, st);
        }
        let mut running = FuturesUnordered::new();
        let mut stop: Option<Phase> = None;
        loop {
            if stop.is_none() && self.emitter.broken().is_some() {
                stop = Some(Phase::Failed {
                    step: "journal".into(),
                    message: self.emitter.broken().unwrap_or_default(),
                    rollback: false,
                });
            }
            if stop.is_none() {
                for s in &steps {
                    if opts.max_parallel > 0 && running.len() >= opts.max_parallel {
                        break;
                    }
                    if state[s.id.as_str()] != State::Pending {
                        continue;
                    }
                    let ready = s
                        .after
                        .iter()
                        .all(|d| state.get(d.as_str()).is_none_or(|x| x.satisfies()));
                    if ready {
                        state.insert(&s.id, State::Running);
                        running.push(
                            self.run_step(s, outputs.clone(), opts, rollback)
                                .map(move |r| (*s, r)),
                        );
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            let next = tokio::select! {
                n = running.next() => n,
                _ = &mut cancel => {
                    let cut: Vec<&PlannedStep> = steps.iter().filter(|s| state[s.id.as_str()] == State::Running).copied().collect();
                    let ids: Vec<String> = cut.iter().map(|s| s.id.clone()).collect();
                    drop(running);
                    for s in &cut {
                        let _ = self.emitter.emit(EventKind::StepFinished {
                            id: s.id.clone(),
                            kind: s.kind.to_string(),
                            status: StepStatus::Interrupted,
                            duration_ms: 0,
                            attempts: 0,
                            message: "interrupted by the operator; `drctl resume` runs it again".into(),
                            output: serde_json::Value::Null,
                            rollback,
                        });
                    }
                    return Phase::Interrupted(format!("interrupted while {} ran; resume with `drctl resume {}`", if ids.is_empty() { "nothing".to_string() } else { ids.join(", ") }, self.run_id));
                }
            };
            let Some((s, result)) = next else { break };
            match result {
                Ok(()) => {
                    state.insert(&s.id, State::Ok);
                }
                Err((message, policy)) => match policy {
                    OnFailure::Continue => {
                        state.insert(&s.id, State::FailedContinue);
                    }
                    OnFailure::Abort | OnFailure::Rollback => {
                        state.insert(&s.id, State::Failed);
                        if stop.is_none() {
                            stop = Some(Phase::Failed {
                                step: s.id.clone(),
                                message,
                                rollback: policy == OnFailure::Rollback && !rollback,
                            });
                        }
                    }
                },
            }
        }
        let reason = match &stop {
            Some(Phase::Failed { step, .. }) => {
                format!("not run: the run stopped after `{step}` failed")
            }
            _ => "not run".into(),
        };
        for s in &steps {
            if state[s.id.as_str()] == State::Pending {
                let _ = self.emitter.emit(EventKind::StepFinished {
                    id: s.id.clone(),
                    kind: s.kind.to_string(),
                    status: StepStatus::Skipped,
                    duration_ms: 0,
                    attempts: 0,
                    message: reason.clone(),
                    output: serde_json::Value::Null,
                    rollback,
                });
            }
        }
        stop.unwrap_or(Phase::Completed)
    }

    /// One step with its retries; journals its start and end.
    async fn run_step(
        &self,
        s: &PlannedStep,
        outputs: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
        opts: &RunOptions,
        rollback: bool,
    ) -> Result<(), (String, OnFailure)> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let policy = s.on_failure;
        let result = loop {
            attempt += 1;
            if self
                .emitter
                .emit(EventKind::StepStarted {
                    id: s.id.clone(),
                    kind: s.kind.to_string(),
                    summary: s.summary.clone(),
                    attempt,
                    rollback,
                })
                .is_err()
            {
                break Err(StepError::fatal(self.emitter.broken().unwrap_or_default()));
            }
            let ctx = StepCtx {
                run_id: self.run_id.clone(),
                attempt,
                outputs: outputs.clone(),
                emitter: self.emitter.clone(),
                step_id: s.id.clone(),
            };
            let r = match &s.step.action {
                Action::Confirm(c) => confirm(&c.message, opts),
                _ => match tokio::time::timeout(s.timeout.as_duration(), self.runner.run(s, &ctx))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(StepError::new(format!(
                        "timed out after {} (the step's `timeout`)",
                        s.timeout
                    ))),
                },
            };
            match r {
                Ok(o) => break Ok(o),
                Err(e) if e.retryable && attempt <= s.retry.attempts => {
                    let wait = s.retry.backoff(attempt).as_duration();
                    let _ = self.emitter.emit(EventKind::StepRetrying {
                        id: s.id.clone(),
                        attempt,
                        wait_ms: ms(wait),
                        error: e.message.clone(),
                    });
                    tokio::time::sleep(wait).await;
                }
                Err(e) => break Err(e),
            }
        };
        let duration = ms(started.elapsed());
        match result {
            Ok(o) => {
                if !o.data.is_null() {
                    outputs
                        .lock()
                        .expect("outputs")
                        .insert(s.id.clone(), o.data.clone());
                }
                let _ = self.emitter.emit(EventKind::StepFinished {
                    id: s.id.clone(),
                    kind: s.kind.to_string(),
                    status: StepStatus::Ok,
                    duration_ms: duration,
                    attempts: attempt,
                    message: o.message,
                    output: o.data,
                    rollback,
                });
                Ok(())
            }
            Err(e) => {
                // An operator's "no" stops the run whatever the step's policy says.
                let policy = if matches!(s.step.action, Action::Confirm(_)) {
                    OnFailure::Abort
                } else {
                    policy
                };
                let message = if policy == OnFailure::Continue {
                    format!("(continued) {}", e.message)
                } else {
                    e.message.clone()
                };
                let _ = self.emitter.emit(EventKind::StepFinished {
                    id: s.id.clone(),
                    kind: s.kind.to_string(),
                    status: StepStatus::Failed,
                    duration_ms: duration,
                    attempts: attempt,
                    message,
                    output: serde_json::Value::Null,
                    rollback,
                });
                Err((e.message, policy))
            }
        }
    }
}

fn confirm(message: &str, opts: &RunOptions) -> Result<StepOutput, StepError> {
    if opts.yes {
        return Ok(StepOutput::msg("confirmed by --yes"));
    }
    match &opts.confirm {
        Some(ask) if ask(message) => Ok(StepOutput::msg("confirmed by the operator")),
        Some(_) => Err(StepError::fatal("the operator answered no")),
        None => Err(StepError::fatal(format!(
            "this step asks \"{message}\", but there is no terminal to answer it; pass --yes to proceed without asking"
        ))),
    }
}

enum Phase {
    Completed,
    Interrupted(String),
    Failed {
        step: String,
        message: String,
        rollback: bool,
    },
}

type SharedCancel = futures_util::future::Shared<BoxFuture<'static, ()>>;
