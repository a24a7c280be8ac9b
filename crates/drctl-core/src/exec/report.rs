//! The incident / recovery report of a run, computed from its journal alone.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::events::{Event, EventKind, RunStatus, StepStatus};
use crate::duration::Dur;
use crate::runbook::Objectives;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub id: String,
    pub kind: String,
    pub summary: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: jiff::Timestamp,
    pub message: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub measured_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objective: Option<Dur>,
    /// `None` when there is no objective to compare with.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub runbook: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `None` while the run has not finished (killed, or still running).
    pub status: Option<RunStatus>,
    pub message: String,
    pub started_at: jiff::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<jiff::Timestamp>,
    /// How many times the run was started (1 + resumes).
    pub attempts: u32,
    /// First start to last finish, wall clock, resumes and the time between included.
    pub rto: Measured,
    /// Age of the restored data: restore time minus the backup set's time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Measured>,
    /// Backup sets the run read or wrote, from step outputs (`set_id`).
    pub backup_sets: Vec<String>,
    /// Outputs of `verify` steps.
    pub verification: Vec<serde_json::Value>,
    pub steps: Vec<StepReport>,
}

fn met(ms: u64, objective: Option<Dur>) -> Option<bool> {
    objective.map(|o| ms as u128 <= o.0.as_millis())
}

impl RunReport {
    /// Build the report from journal events. Returns `None` for an empty journal.
    pub fn from_events(events: &[Event], objectives: Option<&Objectives>) -> Option<RunReport> {
        let first = events
            .iter()
            .find(|e| matches!(e.kind, EventKind::RunStarted { .. }))?;
        let EventKind::RunStarted {
            run_id,
            runbook,
            project,
            ..
        } = &first.kind
        else {
            return None;
        };
        let mut steps: Vec<StepReport> = Vec::new();
        let mut starts: std::collections::HashMap<String, (jiff::Timestamp, String, String)> =
            Default::default();
        let mut attempts = 0;
        let mut status = None;
        let mut message = String::from("the run has not finished (still running, or the controller was killed: `drctl resume`)");
        let mut finished_at = None;
        let mut backup_sets: Vec<String> = Vec::new();
        let mut verification = Vec::new();
        let mut data_time: Option<jiff::Timestamp> = None;
        let mut restored_at: Option<jiff::Timestamp> = None;
        for e in events {
            match &e.kind {
                EventKind::RunStarted { .. } => {
                    attempts += 1;
                    status = None;
                    finished_at = None;
                }
                EventKind::StepStarted {
                    id,
                    kind,
                    summary,
                    attempt: 1,
                    ..
                } => {
                    starts.insert(id.clone(), (e.at, kind.clone(), summary.clone()));
                }
                EventKind::StepFinished {
                    id,
                    kind: finished_kind,
                    status: st,
                    duration_ms,
                    attempts: a,
                    message: m,
                    output,
                    rollback,
                } => {
                    // A resume's "done before" marker does not replace the real record.
                    if *st == StepStatus::Done {
                        continue;
                    }
                    let (started_at, kind, summary) = match starts.get(id) {
                        Some((t, k, s)) => (Some(*t), k.clone(), s.clone()),
                        None => (None, finished_kind.clone(), String::new()),
                    };
                    if let Some(set) = output.get("set_id").and_then(|v| v.as_str()) {
                        if !backup_sets.iter().any(|b| b == set) {
                            backup_sets.push(set.to_string());
                        }
                    }
                    if *st == StepStatus::Ok && kind == "restore" {
                        if let Some(t) = output
                            .get("set_taken_at")
                            .and_then(|v| v.as_str())
                            .and_then(|t| t.parse().ok())
                        {
                            data_time = Some(data_time.map_or(t, |d: jiff::Timestamp| d.min(t)));
                            restored_at = Some(e.at);
                        }
                    }
                    if kind == "verify" && !output.is_null() {
                        verification.push(output.clone());
                    }
                    let r = StepReport {
                        id: id.clone(),
                        kind,
                        summary,
                        status: *st,
                        attempts: *a,
                        duration_ms: *duration_ms,
                        started_at,
                        finished_at: e.at,
                        message: m.clone(),
                        rollback: *rollback,
                        output: output.clone(),
                    };
                    match steps
                        .iter_mut()
                        .find(|x| x.id == r.id && x.rollback == r.rollback)
                    {
                        Some(x) => *x = r,
                        None => steps.push(r),
                    }
                }
                EventKind::RunFinished {
                    status: s,
                    message: m,
                    ..
                } => {
                    status = Some(s.clone());
                    message = m.clone();
                    finished_at = Some(e.at);
                }
                _ => {}
            }
        }
        let end = finished_at.unwrap_or_else(|| events.last().map_or(first.at, |e| e.at));
        let rto_ms = end.duration_since(first.at).as_millis().max(0) as u64;
        let rpo = data_time.zip(restored_at).map(|(d, r)| {
            let age = r.duration_since(d).as_millis().max(0) as u64;
            Measured {
                measured_ms: age,
                objective: objectives.and_then(|o| o.rpo),
                met: met(age, objectives.and_then(|o| o.rpo)),
            }
        });
        Some(RunReport {
            run_id: run_id.clone(),
            runbook: runbook.clone(),
            project: project.clone(),
            status,
            message,
            started_at: first.at,
            finished_at,
            attempts,
            rto: Measured {
                measured_ms: rto_ms,
                objective: objectives.map(|o| o.rto),
                met: met(rto_ms, objectives.map(|o| o.rto)),
            },
            rpo,
            backup_sets,
            verification,
            steps,
        })
    }

    /// The report as Markdown (for `drctl report --format md` and the end of `drctl run`).
    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        let status = match &self.status {
            Some(RunStatus::Succeeded) => "SUCCEEDED",
            Some(RunStatus::Failed) => "FAILED",
            Some(RunStatus::RolledBack) => "ROLLED BACK",
            Some(RunStatus::Interrupted) => "INTERRUPTED",
            None => "UNFINISHED",
        };
        let _ = writeln!(o, "# Run {} of `{}`: {status}\n", self.run_id, self.runbook);
        let _ = writeln!(o, "{}\n", self.message);
        if let Some(p) = &self.project {
            let _ = writeln!(o, "- stack: `{p}`");
        }
        let _ = writeln!(o, "- started: {}", self.started_at);
        if let Some(f) = &self.finished_at {
            let _ = writeln!(o, "- finished: {f}");
        }
        if self.attempts > 1 {
            let _ = writeln!(
                o,
                "- attempts: {} (resumed {} time(s))",
                self.attempts,
                self.attempts - 1
            );
        }
        let _ = writeln!(o, "- RTO: {}", measured(&self.rto));
        match &self.rpo {
            Some(r) => {
                let _ = writeln!(o, "- RPO (age of the restored data): {}", measured(r));
            }
            None => {
                let _ = writeln!(o, "- RPO: nothing was restored");
            }
        }
        if !self.backup_sets.is_empty() {
            let _ = writeln!(o, "- backup sets: {}", self.backup_sets.join(", "));
        }
        let _ = writeln!(o, "\n| step | kind | status | tries | duration | what happened |\n| --- | --- | --- | --- | --- | --- |");
        for s in &self.steps {
            let st = format!("{:?}", s.status).to_lowercase();
            let id = if s.rollback {
                format!("{} (rollback)", s.id)
            } else {
                s.id.clone()
            };
            let _ = writeln!(
                o,
                "| {id} | {} | {st} | {} | {} | {} |",
                s.kind,
                s.attempts,
                human_ms(s.duration_ms),
                s.message.replace('|', "\\|").replace('\n', " ")
            );
        }
        if !self.verification.is_empty() {
            let _ = writeln!(o, "\n## Verification\n");
            for v in &self.verification {
                let _ = writeln!(o, "- {}", v);
            }
        }
        o
    }
}

fn measured(m: &Measured) -> String {
    let mut s = human_ms(m.measured_ms);
    if let Some(obj) = m.objective {
        let verdict = if m.met == Some(true) { "met" } else { "MISSED" };
        let _ = write!(s, " against an objective of {obj}: {verdict}");
    }
    s
}

/// `1.2s`, `3m04s`, `2h05m`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}
