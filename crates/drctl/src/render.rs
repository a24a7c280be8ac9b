//! Live rendering of run events: a progress view on a terminal, plain lines otherwise, JSON
//! lines with `--json`. Everything here goes to stderr except JSON lines (stdout), so that
//! stdout holds only results.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use drctl_core::exec::events::RunStatus;
use drctl_core::exec::report::human_ms;
use drctl_core::exec::{Event, EventKind, StepStatus};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Json,
    Terminal,
    Plain,
}

pub fn mode(json: bool) -> Mode {
    if json {
        Mode::Json
    } else if std::io::stderr().is_terminal() {
        Mode::Terminal
    } else {
        Mode::Plain
    }
}

/// A sink for the executor.
pub fn sink(mode: Mode) -> Arc<dyn Fn(&Event) + Send + Sync> {
    let view = Arc::new(Mutex::new(View::default()));
    Arc::new(move |e: &Event| {
        if mode == Mode::Json {
            let line = serde_json::to_string(e).expect("event serializes");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            return;
        }
        let mut v = view.lock().expect("view");
        v.show(e, mode == Mode::Terminal);
    })
}

#[derive(Default)]
struct View {
    /// Steps running now, for the status line.
    running: Vec<String>,
    status_shown: bool,
}

impl View {
    fn show(&mut self, e: &Event, terminal: bool) {
        let mut err = std::io::stderr().lock();
        if terminal && self.status_shown {
            // Erase the status line before printing above it.
            let _ = write!(err, "\r\x1b[2K");
            self.status_shown = false;
        }
        let time = e.at.strftime("%H:%M:%S");
        let line = match &e.kind {
            EventKind::RunStarted {
                run_id,
                runbook,
                steps,
                resumed,
                ..
            } => Some(format!(
                "{time} {} run {run_id} of `{runbook}` ({steps} steps)",
                if *resumed { "resuming" } else { "starting" }
            )),
            EventKind::StepStarted {
                id,
                summary,
                attempt,
                rollback,
                ..
            } => {
                if !self.running.contains(id) {
                    self.running.push(id.clone());
                }
                let rb = if *rollback { " [rollback]" } else { "" };
                let again = if *attempt > 1 {
                    format!(" (try {attempt})")
                } else {
                    String::new()
                };
                Some(format!("{time} ▶ {id}{rb}{again}: {summary}"))
            }
            EventKind::StepProgress { id, message } => Some(format!("{time}   {id}: {message}")),
            EventKind::StepRetrying {
                id,
                attempt,
                wait_ms,
                error,
            } => Some(format!(
                "{time} ↻ {id}: try {attempt} failed ({error}); trying again in {}",
                human_ms(*wait_ms)
            )),
            EventKind::StepFinished {
                id,
                status,
                duration_ms,
                message,
                ..
            } => {
                self.running.retain(|r| r != id);
                let mark = match status {
                    StepStatus::Ok => "✔",
                    StepStatus::Failed => "✘",
                    StepStatus::Skipped => "·",
                    StepStatus::Done => "✔",
                    StepStatus::Interrupted => "■",
                };
                let word = format!("{status:?}").to_lowercase();
                Some(format!(
                    "{time} {mark} {id} {word} in {}: {message}",
                    human_ms(*duration_ms)
                ))
            }
            EventKind::RunFinished {
                status,
                duration_ms,
                message,
            } => {
                let word = match status {
                    RunStatus::Succeeded => "SUCCEEDED",
                    RunStatus::Failed => "FAILED",
                    RunStatus::RolledBack => "ROLLED BACK",
                    RunStatus::Interrupted => "INTERRUPTED",
                };
                Some(format!(
                    "{time} run {word} in {}: {message}",
                    human_ms(*duration_ms)
                ))
            }
        };
        if let Some(l) = line {
            let _ = writeln!(err, "{l}");
        }
        if terminal && !self.running.is_empty() {
            let _ = write!(err, "  … running: {}", self.running.join(", "));
            self.status_shown = true;
        }
        let _ = err.flush();
    }
}
