//! The executor's order, timeouts, retries, failure policies, confirmation and resume, with
//! a scripted step runner (the real runner is exercised against dockerd in tests/ at the root).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drctl_core::exec::events::RunStatus;
use drctl_core::exec::executor::BoxFuture;
use drctl_core::exec::{
    Event, EventKind, Executor, Journal, RunOptions, RunReport, StepCtx, StepError, StepOutput,
    StepRunner, StepStatus,
};
use drctl_core::plan::{build_plan, DockerView, Plan, PlanInput, PlannedStep};

/// What a scripted step does, by id: sleep, then fail the first `fail` attempts.
#[derive(Clone, Default)]
struct Script {
    sleep_ms: u64,
    fail: u32,
    fatal: bool,
}

#[derive(Default)]
struct Scripted {
    script: HashMap<String, Script>,
    log: Mutex<Vec<String>>,
    tries: Mutex<HashMap<String, u32>>,
}

impl StepRunner for Scripted {
    fn run<'a>(
        &'a self,
        step: &'a PlannedStep,
        ctx: &'a StepCtx,
    ) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(async move {
            let sc = self.script.get(&step.id).cloned().unwrap_or_default();
            self.log.lock().unwrap().push(format!("start {}", step.id));
            let n = {
                let mut t = self.tries.lock().unwrap();
                let e = t.entry(step.id.clone()).or_default();
                *e += 1;
                *e
            };
            tokio::time::sleep(Duration::from_millis(sc.sleep_ms)).await;
            self.log.lock().unwrap().push(format!("end {}", step.id));
            if n <= sc.fail {
                return Err(if sc.fatal {
                    StepError::fatal(format!("{} broke", step.id))
                } else {
                    StepError::new(format!("{} not yet", step.id))
                });
            }
            let prev = ctx
                .output_of("first")
                .map(|v| v.to_string())
                .unwrap_or_default();
            Ok(StepOutput {
                message: format!("{} ok{prev}", step.id),
                data: serde_json::json!({"step": step.id}),
            })
        })
    }
}

fn plan_of(text: &str) -> Plan {
    let env = |_: &str| None;
    let rb = drctl_core::parse_runbook(Path::new("t.yml"), text, &env).unwrap();
    assert!(drctl_core::validate::check_runbook(&rb, Default::default()).is_empty());
    build_plan(PlanInput {
        runbook: &rb,
        config: None,
        docker: DockerView::NotChecked,
    })
    .unwrap()
}

struct Run {
    events: Vec<Event>,
    status: RunStatus,
    log: Vec<String>,
    journal: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn run_with(
    plan: &Plan,
    runner: Scripted,
    opts: RunOptions,
    prior: Vec<Event>,
    dir: Option<tempfile::TempDir>,
) -> Run {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let journal_path = dir.path().join("journal.jsonl");
    let journal = Arc::new(Journal::open(&journal_path).unwrap());
    let runner = Arc::new(runner);
    let exec = Executor::new("run-1", runner.clone(), journal, Arc::new(|_e: &Event| {}));
    let out = exec.run(plan, &prior, &opts, std::future::pending()).await;
    let events = Journal::read(&journal_path).unwrap();
    let log = runner.log.lock().unwrap().clone();
    Run {
        events,
        status: out.status,
        log,
        journal: journal_path,
        _dir: dir,
    }
}

fn finished(events: &[Event]) -> Vec<(String, StepStatus, u32)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepFinished {
                id,
                status,
                attempts,
                ..
            } => Some((id.clone(), *status, *attempts)),
            _ => None,
        })
        .collect()
}

const SEQ: &str = "version: 1\ndefaults: { timeout: 5s }\nsteps:\n  - { id: first, kind: stop, services: [a] }\n  - id: group\n    kind: parallel\n    steps:\n      - { id: p1, kind: start, services: [a] }\n      - { id: p2, kind: start, services: [b] }\n  - { id: last, kind: restart, services: [a] }\n";

#[tokio::test(start_paused = true)]
async fn parallel_group_runs_together_and_order_holds() {
    let mut r = Scripted::default();
    r.script.insert(
        "p1".into(),
        Script {
            sleep_ms: 100,
            ..Default::default()
        },
    );
    r.script.insert(
        "p2".into(),
        Script {
            sleep_ms: 50,
            ..Default::default()
        },
    );
    let run = run_with(&plan_of(SEQ), r, RunOptions::default(), vec![], None).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        run.log,
        vec![
            "start first",
            "end first",
            "start p1",
            "start p2",
            "end p2",
            "end p1",
            "start last",
            "end last"
        ]
    );
    // Later steps see earlier outputs.
    let last = finished(&run.events);
    assert_eq!(last.len(), 4);
    let msg = run.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::StepFinished { id, message, .. } if id == "last" => Some(message.clone()),
        _ => None,
    });
    assert_eq!(msg.unwrap(), "last ok{\"step\":\"first\"}");
}

#[tokio::test(start_paused = true)]
async fn timeout_then_retries_with_backoff() {
    let text = "version: 1\nsteps:\n  - { id: first, kind: stop, services: [a], timeout: 1s, retry: { attempts: 2, delay: 2s, factor: 3 } }\n";
    let mut r = Scripted::default();
    r.script.insert(
        "first".into(),
        Script {
            sleep_ms: 5_000,
            fail: 0,
            fatal: false,
        },
    );
    let run = run_with(&plan_of(text), r, RunOptions::default(), vec![], None).await;
    assert_eq!(run.status, RunStatus::Failed);
    let waits: Vec<u64> = run
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepRetrying { wait_ms, .. } => Some(*wait_ms),
            _ => None,
        })
        .collect();
    assert_eq!(waits, vec![2000, 6000]);
    assert_eq!(
        finished(&run.events),
        vec![("first".to_string(), StepStatus::Failed, 3)]
    );
    let EventKind::RunFinished { message, .. } = &run.events.last().unwrap().kind else {
        panic!()
    };
    assert_eq!(
        message,
        "step `first` failed: timed out after 1s (the step's `timeout`)"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_succeeds_but_fatal_errors_are_not_retried() {
    let text = "version: 1\nsteps:\n  - { id: a, kind: stop, services: [a], retry: { attempts: 3, delay: 1s } }\n  - { id: b, kind: stop, services: [a], retry: { attempts: 3, delay: 1s } }\n";
    let mut r = Scripted::default();
    r.script.insert(
        "a".into(),
        Script {
            fail: 2,
            ..Default::default()
        },
    );
    r.script.insert(
        "b".into(),
        Script {
            fail: 1,
            fatal: true,
            ..Default::default()
        },
    );
    let run = run_with(&plan_of(text), r, RunOptions::default(), vec![], None).await;
    assert_eq!(
        finished(&run.events),
        vec![
            ("a".to_string(), StepStatus::Ok, 3),
            ("b".to_string(), StepStatus::Failed, 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failure_policies() {
    let text = "version: 1\nsteps:\n  - { id: a, kind: stop, services: [a], on_failure: continue }\n  - { id: b, kind: stop, services: [a], on_failure: rollback }\n  - { id: c, kind: stop, services: [a] }\nrollback:\n  - { id: undo, kind: start, services: [a] }\n";
    let mut r = Scripted::default();
    r.script.insert(
        "a".into(),
        Script {
            fail: 1,
            fatal: true,
            ..Default::default()
        },
    );
    r.script.insert(
        "b".into(),
        Script {
            fail: 1,
            fatal: true,
            ..Default::default()
        },
    );
    let run = run_with(&plan_of(text), r, RunOptions::default(), vec![], None).await;
    assert_eq!(run.status, RunStatus::RolledBack);
    assert_eq!(
        finished(&run.events),
        vec![
            ("a".to_string(), StepStatus::Failed, 1),
            ("b".to_string(), StepStatus::Failed, 1),
            ("c".to_string(), StepStatus::Skipped, 0),
            ("undo".to_string(), StepStatus::Ok, 1),
        ]
    );
    let EventKind::RunFinished { message, .. } = &run.events.last().unwrap().kind else {
        panic!()
    };
    assert_eq!(message, "step `b` failed: b broke; rollback completed");
}

#[tokio::test(start_paused = true)]
async fn confirm_needs_a_terminal_or_yes() {
    let text = "version: 1\nsteps:\n  - { id: ask, kind: confirm, message: Really? }\n  - { id: go, kind: stop, services: [a] }\n";
    let run = run_with(
        &plan_of(text),
        Scripted::default(),
        RunOptions::default(),
        vec![],
        None,
    )
    .await;
    assert_eq!(run.status, RunStatus::Failed);
    let EventKind::RunFinished { message, .. } = &run.events.last().unwrap().kind else {
        panic!()
    };
    assert_eq!(message, "step `ask` failed: this step asks \"Really?\", but there is no terminal to answer it; pass --yes to proceed without asking");
    let yes = RunOptions {
        yes: true,
        ..Default::default()
    };
    let run = run_with(&plan_of(text), Scripted::default(), yes, vec![], None).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let no = RunOptions {
        confirm: Some(Arc::new(|_: &str| false)),
        ..Default::default()
    };
    let run = run_with(&plan_of(text), Scripted::default(), no, vec![], None).await;
    assert_eq!(finished(&run.events)[0].1, StepStatus::Failed);
    assert_eq!(run.log, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn resume_skips_what_finished_and_reruns_what_was_cut_off() {
    let plan = plan_of(SEQ);
    // First attempt: p1 fails (abort), so `last` never runs.
    let mut r = Scripted::default();
    r.script.insert(
        "p1".into(),
        Script {
            fail: 1,
            fatal: true,
            ..Default::default()
        },
    );
    let first = run_with(&plan, r, RunOptions::default(), vec![], None).await;
    assert_eq!(first.status, RunStatus::Failed);
    // Simulate a kill in the middle of the next attempt: a start without a finish for `last`.
    let mut prior = first.events.clone();
    prior.push(Event::now(EventKind::StepStarted {
        id: "p1".into(),
        kind: "start".into(),
        summary: String::new(),
        attempt: 1,
        rollback: false,
    }));
    let dir = first._dir;
    let second = run_with(
        &plan,
        Scripted::default(),
        RunOptions::default(),
        prior,
        Some(dir),
    )
    .await;
    assert_eq!(second.status, RunStatus::Succeeded);
    // first and p2 are not run again; p1 and last are.
    assert_eq!(
        second.log,
        vec!["start p1", "end p1", "start last", "end last"]
    );
    let all = Journal::read(&second.journal).unwrap();
    let report = RunReport::from_events(&all, None).unwrap();
    assert_eq!(report.attempts, 2);
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let st: Vec<(&str, StepStatus)> = report
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status))
        .collect();
    assert_eq!(
        st,
        vec![
            ("first", StepStatus::Ok),
            ("p1", StepStatus::Ok),
            ("p2", StepStatus::Ok),
            ("last", StepStatus::Ok)
        ]
    );
    // The report's RTO spans both attempts.
    let first_at = all.first().unwrap().at;
    let last_at = all.last().unwrap().at;
    assert_eq!(
        report.rto.measured_ms as i128,
        last_at.duration_since(first_at).as_millis()
    );
}

#[tokio::test]
async fn interruption_marks_running_steps_and_stops() {
    let plan = plan_of(SEQ);
    let mut r = Scripted::default();
    r.script.insert(
        "first".into(),
        Script {
            sleep_ms: 10_000,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.jsonl");
    let journal = Arc::new(Journal::open(&journal_path).unwrap());
    let exec = Executor::new("run-2", Arc::new(r), journal, Arc::new(|_e: &Event| {}));
    let out = exec
        .run(
            &plan,
            &[],
            &RunOptions::default(),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await;
    assert_eq!(out.status, RunStatus::Interrupted);
    let ev = Journal::read(&journal_path).unwrap();
    assert_eq!(
        finished(&ev)[0],
        ("first".to_string(), StepStatus::Interrupted, 0)
    );
    assert!(
        out.message.contains("drctl resume run-2"),
        "{}",
        out.message
    );
}

#[test]
fn torn_last_journal_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.jsonl");
    let j = Journal::open(&p).unwrap();
    j.append(&Event::now(EventKind::StepProgress {
        id: "a".into(),
        message: "m".into(),
    }))
    .unwrap();
    drop(j);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"at\":\"20"))
        .unwrap();
    assert_eq!(Journal::read(&p).unwrap().len(), 1);
}
