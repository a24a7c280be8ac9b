//! The plan: a runbook resolved into ordered stages of steps, changing nothing.
//!
//! Order: a step without `needs:` waits for the step written before it (all of a parallel
//! group's steps, when that was a group); `needs:` replaces that with the steps named.
//! Stages are the layers of that graph: every step of a stage may run at the same time.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::config::{Config, Target};
use crate::duration::Dur;
use crate::runbook::{Action, Check, Objectives, OnFailure, Retry, Runbook, Selection, Step};

/// A container as the Docker daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub project: Option<String>,
    pub service: Option<String>,
    pub state: String,
    pub health: Option<String>,
}

/// What the planner knows about the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DockerView {
    /// Not asked (no configuration, or `--offline`).
    NotChecked,
    Unreachable {
        reason: String,
    },
    Reachable {
        version: String,
        api_version: String,
        containers: Vec<ContainerInfo>,
    },
}

/// One step with everything resolved.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub id: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A one-line description of what the step does.
    pub summary: String,
    /// The steps this one waits for.
    pub after: Vec<String>,
    /// The parallel group the step belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub timeout: Dur,
    pub retry: Retry,
    pub on_failure: OnFailure,
    /// Services this step acts on, with the containers found for each (when Docker was asked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub touches: Vec<Touch>,
    /// The step as written (defaults not applied).
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Touch {
    pub service: String,
    /// `None` when Docker was not asked.
    pub containers: Option<Vec<ContainerInfo>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub number: usize,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runbook: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Objectives>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<Selection>,
    pub docker: DockerView,
    pub stages: Vec<Stage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<Stage>,
}

/// A step flattened out of its group, with its resolved dependencies.
pub(crate) struct Flat<'a> {
    pub step: &'a Step,
    pub group: Option<&'a str>,
    pub deps: Vec<String>,
}

pub(crate) fn flatten(steps: &[Step]) -> Vec<Flat<'_>> {
    let groups: HashMap<&str, Vec<String>> = steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Parallel(p) => Some((
                s.id.as_str(),
                p.steps.iter().map(|m| m.id.clone()).collect(),
            )),
            _ => None,
        })
        .collect();
    let expand = |names: &[String]| -> Vec<String> {
        let mut out = Vec::new();
        for n in names {
            match groups.get(n.as_str()) {
                Some(members) => out.extend(members.iter().cloned()),
                None => out.push(n.clone()),
            }
        }
        out
    };
    let mut out = Vec::new();
    let mut prev: Vec<String> = Vec::new();
    for s in steps {
        let deps = match &s.needs {
            Some(n) => expand(n),
            None => prev.clone(),
        };
        match &s.action {
            Action::Parallel(p) => {
                for m in &p.steps {
                    let mut d = deps.clone();
                    if let Some(n) = &m.needs {
                        // A member waiting for its own group is reported by validation.
                        let own: Vec<String> = n.iter().filter(|x| **x != s.id).cloned().collect();
                        for x in expand(&own) {
                            if !d.contains(&x) {
                                d.push(x);
                            }
                        }
                    }
                    out.push(Flat {
                        step: m,
                        group: Some(&s.id),
                        deps: d,
                    });
                }
                prev = p.steps.iter().map(|m| m.id.clone()).collect();
            }
            _ => {
                out.push(Flat {
                    step: s,
                    group: None,
                    deps,
                });
                prev = vec![s.id.clone()];
            }
        }
    }
    out
}

/// Layer the graph; `Err` holds one cycle as a list of ids (first repeated at the end).
pub(crate) fn layers<'a>(flat: &'a [Flat<'a>]) -> Result<Vec<Vec<&'a Flat<'a>>>, Vec<String>> {
    let ids: Vec<&str> = flat.iter().map(|f| f.step.id.as_str()).collect();
    let mut done: Vec<bool> = vec![false; flat.len()];
    let mut out = Vec::new();
    loop {
        let ready: Vec<usize> = (0..flat.len())
            .filter(|&i| !done[i])
            .filter(|&i| {
                flat[i]
                    .deps
                    .iter()
                    .all(|d| match ids.iter().position(|x| x == d) {
                        Some(j) => done[j],
                        None => true, // missing ids are reported by validation
                    })
            })
            .collect();
        if ready.is_empty() {
            break;
        }
        for &i in &ready {
            done[i] = true;
        }
        out.push(ready.iter().map(|&i| &flat[i]).collect());
    }
    if done.iter().all(|d| *d) {
        return Ok(out);
    }
    // Walk dependencies among the remaining steps until one repeats: that is a cycle.
    let start = done.iter().position(|d| !d).expect("some remain");
    let mut path = vec![start];
    loop {
        let cur = *path.last().expect("non-empty");
        let next = flat[cur]
            .deps
            .iter()
            .filter_map(|d| ids.iter().position(|x| x == d))
            .find(|&j| !done[j])
            .expect("a blocked step waits for a blocked step");
        if let Some(at) = path.iter().position(|&p| p == next) {
            // In waiting order, starting at a step that says `needs:` (where a fix goes).
            let mut cycle: Vec<usize> = path[at..].to_vec();
            if let Some(k) = cycle.iter().position(|&i| flat[i].step.needs.is_some()) {
                cycle.rotate_left(k);
            }
            let mut names: Vec<String> = cycle.iter().map(|&i| ids[i].to_string()).collect();
            names.push(names[0].clone());
            return Err(names);
        }
        path.push(next);
    }
}

/// Everything a plan is made from.
pub struct PlanInput<'a> {
    pub runbook: &'a Runbook,
    pub config: Option<&'a Config>,
    pub docker: DockerView,
}

/// Resolve a runbook into a plan. The runbook must have passed validation.
pub fn build_plan(input: PlanInput<'_>) -> Result<Plan, Vec<String>> {
    let rb = input.runbook;
    let stages = stages_of(&rb.steps, &input)?;
    let rollback = stages_of(&rb.rollback, &input)?;
    Ok(Plan {
        runbook: rb.name.clone(),
        file: rb.file.display().to_string(),
        description: rb.description.clone(),
        objectives: rb
            .objectives
            .clone()
            .or_else(|| input.config.and_then(|c| c.objectives.clone())),
        project: input.config.map(|c| c.stack.project.clone()),
        backup: rb.backup.clone(),
        docker: input.docker.clone(),
        stages,
        rollback,
    })
}

fn stages_of(steps: &[Step], input: &PlanInput<'_>) -> Result<Vec<Stage>, Vec<String>> {
    let flat = flatten(steps);
    let layered = layers(&flat)?;
    Ok(layered
        .into_iter()
        .enumerate()
        .map(|(i, layer)| Stage {
            number: i + 1,
            steps: layer.into_iter().map(|f| planned(f, input)).collect(),
        })
        .collect())
}

fn planned(f: &Flat<'_>, input: &PlanInput<'_>) -> PlannedStep {
    let rb = input.runbook;
    let s = f.step;
    let services = services_of(s, input.config);
    let touches = services
        .iter()
        .map(|svc| Touch {
            service: svc.clone(),
            containers: match &input.docker {
                DockerView::Reachable { containers, .. } => Some(
                    containers
                        .iter()
                        .filter(|c| c.service.as_deref() == Some(svc) || c.name == *svc)
                        .cloned()
                        .collect(),
                ),
                _ => None,
            },
        })
        .collect();
    PlannedStep {
        id: s.id.clone(),
        kind: s.kind(),
        name: s.name.clone(),
        summary: summary(s, rb, input.config),
        after: f.deps.clone(),
        group: f.group.map(str::to_string),
        timeout: s.timeout.unwrap_or(rb.defaults.timeout),
        retry: s
            .retry
            .clone()
            .or_else(|| rb.defaults.retry.clone())
            .unwrap_or_else(Retry::none),
        on_failure: s.on_failure.unwrap_or(rb.defaults.on_failure),
        touches,
        step: s.clone(),
    }
}

/// Compose services a step acts on (directly, or through its targets).
pub fn services_of(s: &Step, config: Option<&Config>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |x: &str| {
        if !out.iter().any(|o| o == x) {
            out.push(x.to_string());
        }
    };
    let all_services = |config: Option<&Config>| -> Vec<String> {
        config
            .map(|c| {
                c.targets
                    .values()
                    .filter_map(|t| t.service().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let targets_services = |names: &[String], add: &mut dyn FnMut(&str)| {
        let Some(c) = config else { return };
        let chosen: Vec<&Target> = if names.is_empty() {
            c.targets.values().collect()
        } else {
            names.iter().filter_map(|n| c.targets.get(n)).collect()
        };
        for t in chosen {
            match t {
                Target::Volume(v) => v.stop.iter().for_each(|x| add(x)),
                other => {
                    if let Some(svc) = other.service() {
                        add(svc)
                    }
                }
            }
        }
    };
    match &s.action {
        Action::Stop(a) | Action::Start(a) | Action::Restart(a) => {
            a.services.iter().for_each(|x| add(x));
            a.containers.iter().for_each(|x| add(x));
        }
        Action::Up(a) => {
            if a.services.is_empty() {
                all_services(config).iter().for_each(|x| add(x));
            }
            a.services.iter().for_each(|x| add(x));
        }
        Action::Down(a) => a.services.iter().for_each(|x| add(x)),
        Action::Exec(a) => add(&a.service),
        Action::Health(h) => match &h.check {
            Check::Docker(c) => add(&c.service),
            Check::Postgres(c) => add(&c.service),
            Check::Redis(c) => add(&c.service),
            Check::Command(c) => add(&c.service),
            Check::Qdrant(c) => {
                if let Some(svc) = config
                    .and_then(|cfg| cfg.targets.get(&c.target))
                    .and_then(|t| t.service())
                {
                    add(svc)
                }
            }
            Check::Tcp(_) | Check::Http(_) => {}
        },
        Action::Backup(b) => targets_services(&b.targets, &mut add),
        Action::Restore(r) => targets_services(&r.targets, &mut add),
        Action::Verify(v) => targets_services(&v.targets, &mut add),
        Action::Notify(_) | Action::Confirm(_) | Action::Parallel(_) => {}
    }
    out
}

fn list(xs: &[String]) -> String {
    xs.join(", ")
}

fn targets_text(t: &[String]) -> String {
    if t.is_empty() {
        "all targets".into()
    } else {
        format!("targets {}", list(t))
    }
}

/// A one-line description of a step.
pub fn summary(s: &Step, rb: &Runbook, config: Option<&Config>) -> String {
    let _ = config;
    match &s.action {
        Action::Stop(a) | Action::Start(a) | Action::Restart(a) => {
            let mut what: Vec<String> = Vec::new();
            if !a.services.is_empty() {
                let plural = if a.services.len() > 1 {
                    "services"
                } else {
                    "service"
                };
                what.push(format!("{plural} {}", list(&a.services)));
            }
            if !a.containers.is_empty() {
                let plural = if a.containers.len() > 1 {
                    "containers"
                } else {
                    "container"
                };
                what.push(format!("{plural} {}", list(&a.containers)));
            }
            let grace = a.grace.map(|g| format!(" (grace {g})")).unwrap_or_default();
            format!("{} {}{}", s.kind(), what.join("; "), grace)
        }
        Action::Up(a) => {
            let what = if a.services.is_empty() {
                "all services".to_string()
            } else {
                list(&a.services)
            };
            let from = match a.from {
                crate::runbook::UpSource::Auto => "compose file, else captured specs",
                crate::runbook::UpSource::Compose => "compose file",
                crate::runbook::UpSource::Spec => "captured specs",
            };
            format!(
                "bring up {what} from the {from}{}",
                if a.recreate { ", recreating" } else { "" }
            )
        }
        Action::Down(a) => {
            let what = if a.services.is_empty() {
                "the whole project".to_string()
            } else {
                list(&a.services)
            };
            if a.volumes {
                format!(
                    "remove containers and volumes of {what}{}",
                    if a.safety_backup {
                        " (safety backup first)"
                    } else {
                        " (NO safety backup)"
                    }
                )
            } else {
                format!("remove containers of {what}")
            }
        }
        Action::Health(h) => {
            let gate = match &h.check {
                Check::Docker(c) => format!("service {} reports healthy", c.service),
                Check::Tcp(c) => format!("{}:{} accepts connections", c.host, c.port),
                Check::Http(c) => format!("GET {} answers {}", c.url, c.status),
                Check::Postgres(c) => {
                    format!("PostgreSQL in {} answers and is not in recovery", c.service)
                }
                Check::Redis(c) => format!("Redis in {} answers PING and has loaded", c.service),
                Check::Qdrant(c) => format!(
                    "Qdrant ({}) is ready{}",
                    c.target,
                    if c.collections.is_empty() {
                        String::new()
                    } else {
                        format!(" with {}", list(&c.collections))
                    }
                ),
                Check::Command(c) => format!("`{}` in {} exits 0", c.command.join(" "), c.service),
            };
            format!("wait until {gate} (every {})", h.interval)
        }
        Action::Backup(b) => format!(
            "back up {}{}",
            targets_text(&b.targets),
            b.tag
                .as_ref()
                .map(|t| format!(" tagged `{t}`"))
                .unwrap_or_default()
        ),
        Action::Restore(r) => {
            let sel = r
                .from
                .as_ref()
                .or(rb.backup.as_ref())
                .map(|x| x.to_string())
                .unwrap_or_else(|| "?".into());
            format!(
                "restore {} from the {sel}{}",
                targets_text(&r.targets),
                if r.safety_backup {
                    " (safety backup first)"
                } else {
                    " (NO safety backup)"
                }
            )
        }
        Action::Verify(v) => format!(
            "compare fingerprints of {} with the {}",
            targets_text(&v.targets),
            v.against
                .as_ref()
                .map(|x| x.to_string())
                .unwrap_or_else(|| "set restored in this run".into())
        ),
        Action::Exec(e) => format!("run `{}` in {}", e.command.join(" "), e.service),
        Action::Notify(n) => format!("notify: {}", n.message),
        Action::Confirm(c) => format!("ask the operator: {}", c.message),
        Action::Parallel(p) => format!("run {} steps together", p.steps.len()),
    }
}

/// Containers of a project grouped by service (for `status` and the plan).
pub fn by_service(containers: &[ContainerInfo]) -> BTreeMap<String, Vec<&ContainerInfo>> {
    let mut m: BTreeMap<String, Vec<&ContainerInfo>> = BTreeMap::new();
    for c in containers {
        m.entry(c.service.clone().unwrap_or_else(|| c.name.clone()))
            .or_default()
            .push(c);
    }
    m
}
