//! Step events: rendered live, written to the journal, read back for resume and reports.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    Failed,
    /// Not run: the run stopped before it, or `--yes` answered a confirmation.
    Skipped,
    /// Done in an earlier attempt of this run (before a resume).
    Done,
    /// Cut off by an interruption; a resume runs it again.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// A step failed and the rollback steps ran (successfully or not: see `message`).
    RolledBack,
    Interrupted,
}

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 time.
    pub at: jiff::Timestamp,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        run_id: String,
        runbook: String,
        project: Option<String>,
        steps: usize,
        /// Set on the start of a resumed attempt.
        #[serde(default)]
        resumed: bool,
        pid: u32,
    },
    StepStarted {
        id: String,
        kind: String,
        summary: String,
        attempt: u32,
        #[serde(default)]
        rollback: bool,
    },
    /// A line of progress from a running step (compose output, bytes moved, ...).
    StepProgress { id: String, message: String },
    StepRetrying {
        id: String,
        attempt: u32,
        wait_ms: u64,
        error: String,
    },
    StepFinished {
        id: String,
        #[serde(default)]
        kind: String,
        status: StepStatus,
        duration_ms: u64,
        attempts: u32,
        message: String,
        /// What the step produced (a backup set id, fingerprints, ...), for later steps and
        /// the report.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        output: serde_json::Value,
        #[serde(default)]
        rollback: bool,
    },
    RunFinished {
        status: RunStatus,
        duration_ms: u64,
        message: String,
    },
}

impl Event {
    pub fn now(kind: EventKind) -> Self {
        Event {
            at: jiff::Timestamp::now(),
            kind,
        }
    }
}
