//! Checks that need the whole runbook (and, when known, drctl.yml and the compose files).

use std::collections::HashMap;
use std::path::Path;

use crate::compose::ComposeModel;
use crate::config::{Config, Target};
use crate::diag::{unknown_message, Diagnostic, Diagnostics, Pos};
use crate::plan::{flatten, layers};
use crate::runbook::{Action, Check, Runbook, Selection, Step};
use crate::yaml::Node;

/// What validation may check a runbook against.
#[derive(Default, Clone, Copy)]
pub struct Context<'a> {
    pub config: Option<&'a Config>,
    pub compose: Option<&'a ComposeModel>,
}

struct V<'a> {
    file: &'a Path,
    diags: Diagnostics,
}

impl V<'_> {
    fn at(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, pos, msg));
    }
}

fn value_pos(node: &Node, key: &str) -> Pos {
    node.get(key).map_or(node.pos, |n| n.pos)
}

/// Positions of each entry of a list field (or of the field itself when it is one value).
fn list_positions(node: &Node, key: &str) -> Vec<Pos> {
    match node.get(key) {
        Some(n) => match n.as_seq() {
            Some(items) => items.iter().map(|i| i.pos).collect(),
            None => vec![n.pos],
        },
        None => Vec::new(),
    }
}

fn all_steps(steps: &[Step]) -> Vec<&Step> {
    let mut out = Vec::new();
    for s in steps {
        out.push(s);
        if let Action::Parallel(p) = &s.action {
            out.extend(p.steps.iter());
        }
    }
    out
}

/// Every semantic problem of a parsed runbook.
pub fn check_runbook(rb: &Runbook, ctx: Context<'_>) -> Diagnostics {
    let mut v = V {
        file: &rb.file,
        diags: Diagnostics::default(),
    };
    let main = all_steps(&rb.steps);
    let rollback = all_steps(&rb.rollback);

    // Unique ids across the runbook (the journal keys on them).
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    for s in main.iter().chain(rollback.iter()) {
        let pos = value_pos(&s.node, "id");
        if let Some(first) = seen.get(s.id.as_str()) {
            v.at(
                pos,
                format!(
                    "duplicate step id `{}` (first used at line {}); step ids must be unique",
                    s.id, first.line
                ),
            );
        } else {
            seen.insert(&s.id, pos);
        }
        if s.id.is_empty()
            || !s
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            v.at(
                pos,
                format!(
                    "step id `{}` may hold only letters, digits, `-`, `_` and `.`",
                    s.id
                ),
            );
        }
    }

    for (section, steps, others) in [("steps", &main, &rollback), ("rollback", &rollback, &main)] {
        let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        for s in steps.iter() {
            let Some(needs) = &s.needs else { continue };
            for (name, pos) in needs.iter().zip(list_positions(&s.node, "needs")) {
                if name == &s.id {
                    v.at(
                        pos,
                        format!("step `{}` needs itself; remove it from `needs:`", s.id),
                    );
                } else if !ids.contains(&name.as_str()) {
                    if rb.broken_ids.contains(name) {
                        continue; // that step has errors of its own
                    }
                    let msg = if others.iter().any(|o| &o.id == name) {
                        format!("step `{}` needs `{name}`, which is in another section; `{section}` steps can only wait for `{section}` steps", s.id)
                    } else {
                        let hint = match crate::diag::did_you_mean(name, ids.iter().copied()) {
                            Some(x) => format!("did you mean `{x}`?"),
                            None => format!(
                                "steps here are {}",
                                ids.iter()
                                    .map(|i| format!("`{i}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        format!(
                            "step `{}` needs `{name}`, which is not a step of this runbook; {hint}",
                            s.id
                        )
                    };
                    v.at(pos, msg);
                }
            }
        }
    }
    for group in rb.steps.iter().chain(rb.rollback.iter()) {
        if let Action::Parallel(p) = &group.action {
            for m in &p.steps {
                let Some(needs) = &m.needs else { continue };
                for (name, pos) in needs.iter().zip(list_positions(&m.node, "needs")) {
                    if name == &group.id {
                        v.at(pos, format!("step `{}` is in parallel group `{}` and cannot wait for it; remove `{}` from its `needs:`", m.id, group.id, group.id));
                    }
                }
            }
        }
    }
    for steps in [&rb.steps, &rb.rollback] {
        let flat = flatten(steps);
        if let Err(cycle) = layers(&flat) {
            let first = main
                .iter()
                .chain(rollback.iter())
                .find(|s| s.id == cycle[0]);
            let pos = first.map_or(Pos::START, |s| value_pos(&s.node, "needs"));
            v.at(
                pos,
                format!(
                    "dependency cycle: {} (each waits for the next); change one of their `needs:`",
                    cycle.join(" -> ")
                ),
            );
        }
    }

    // Backup steps earlier in the runbook, for `from: {step: ...}`.
    let backup_ids: Vec<&str> = main
        .iter()
        .chain(rollback.iter())
        .filter(|s| matches!(s.action, Action::Backup(_)))
        .map(|s| s.id.as_str())
        .collect();

    if let Some(sel) = &rb.backup {
        check_selection(&mut v, sel, rb.backup_pos, &backup_ids);
    }

    for s in main.iter().chain(rollback.iter()) {
        check_step(&mut v, rb, s, ctx, &backup_ids);
    }
    v.diags
}

fn check_selection(v: &mut V, sel: &Selection, pos: Pos, backup_ids: &[&str]) {
    match sel {
        Selection::Before(t) => {
            let ok_time = t.parse::<jiff::Timestamp>().is_ok();
            let ok_dur = crate::duration::parse_duration(t).is_ok();
            if !ok_time && !ok_dur {
                v.at(pos, format!("`before: {t}` is neither an RFC 3339 time (2026-11-20T10:00:00Z) nor a duration ago (2h)"));
            }
        }
        Selection::Step(s) if !backup_ids.contains(&s.as_str()) => {
            v.at(
                pos,
                format!(
                    "{} (`from: {{step: ..}}` names a `backup` step of this runbook)",
                    unknown_message("backup step", s, backup_ids)
                ),
            );
        }
        Selection::Id(id) | Selection::Tag(id) if id.trim().is_empty() => {
            v.at(pos, "backup selection is empty");
        }
        _ => {}
    }
}

fn check_services(v: &mut V, s: &Step, key: &str, names: &[String], ctx: Context<'_>) {
    let Some(compose) = ctx.compose else { return };
    let known = compose.service_names();
    let positions = list_positions(&s.node, key);
    for (i, name) in names.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            let pos = positions.get(i).copied().unwrap_or(s.node.pos);
            let files: Vec<String> = compose
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            v.at(
                pos,
                format!(
                    "{} (not defined in {})",
                    unknown_message("service", name, &known),
                    files.join(", ")
                ),
            );
        }
    }
}

fn check_targets(v: &mut V, s: &Step, names: &[String], ctx: Context<'_>) {
    let Some(config) = ctx.config else { return };
    let known: Vec<&str> = config.targets.keys().map(String::as_str).collect();
    let positions = list_positions(&s.node, "targets");
    for (i, name) in names.iter().enumerate() {
        if !config.targets.contains_key(name) {
            let pos = positions.get(i).copied().unwrap_or(s.node.pos);
            v.at(
                pos,
                format!(
                    "{} (targets are defined under `targets:` in {})",
                    unknown_message("target", name, &known),
                    config.file.display()
                ),
            );
        }
    }
    if names.is_empty() && config.targets.is_empty() {
        v.at(
            s.node.pos,
            format!(
                "step `{}` acts on all targets, but {} defines none; add `targets:` there",
                s.id,
                config.file.display()
            ),
        );
    }
}

fn check_step(v: &mut V, rb: &Runbook, s: &Step, ctx: Context<'_>, backup_ids: &[&str]) {
    if let Some(t) = s.timeout {
        if t.0.is_zero() {
            v.at(
                value_pos(&s.node, "timeout"),
                format!(
                    "step `{}` has a zero timeout; give it time to work, like `timeout: 5m`",
                    s.id
                ),
            );
        }
    }
    if let Some(r) = &s.retry {
        if r.factor < 1.0 || !r.factor.is_finite() {
            v.at(
                value_pos(&s.node, "retry"),
                "`retry.factor` must be 1 or more",
            );
        }
        if r.attempts > 100 {
            v.at(
                value_pos(&s.node, "retry"),
                "`retry.attempts` above 100 is surely a mistake",
            );
        }
    }
    match &s.action {
        Action::Stop(a) | Action::Start(a) | Action::Restart(a) => {
            if a.services.is_empty() && a.containers.is_empty() {
                v.at(
                    s.node.pos,
                    format!(
                        "`{}` step `{}` names nothing to act on; add `services:` or `containers:`",
                        s.kind(),
                        s.id
                    ),
                );
            }
            if a.grace.is_some() && matches!(s.action, Action::Start(_)) {
                v.at(
                    value_pos(&s.node, "grace"),
                    "`grace` applies to stop and restart, not start",
                );
            }
            check_services(v, s, "services", &a.services, ctx);
        }
        Action::Up(a) => check_services(v, s, "services", &a.services, ctx),
        Action::Down(a) => check_services(v, s, "services", &a.services, ctx),
        Action::Exec(e) => {
            if e.command.is_empty() {
                v.at(
                    value_pos(&s.node, "command"),
                    "`command` is empty; give the program and its arguments as a list",
                );
            }
            check_services(v, s, "service", std::slice::from_ref(&e.service), ctx);
        }
        Action::Health(h) => {
            let check_node = s
                .node
                .get("check")
                .cloned()
                .unwrap_or_else(|| s.node.clone());
            let fake = Step {
                node: check_node.clone(),
                ..s.clone()
            };
            match &h.check {
                Check::Docker(c) => {
                    check_services(v, &fake, "service", std::slice::from_ref(&c.service), ctx)
                }
                Check::Postgres(c) => {
                    check_services(v, &fake, "service", std::slice::from_ref(&c.service), ctx)
                }
                Check::Redis(c) => {
                    check_services(v, &fake, "service", std::slice::from_ref(&c.service), ctx)
                }
                Check::Command(c) => {
                    check_services(v, &fake, "service", std::slice::from_ref(&c.service), ctx);
                    if c.command.is_empty() {
                        v.at(value_pos(&check_node, "command"), "`command` is empty");
                    }
                }
                Check::Http(c) => {
                    if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                        v.at(
                            value_pos(&check_node, "url"),
                            format!("`{}` is not an http:// or https:// URL", c.url),
                        );
                    }
                }
                Check::Qdrant(c) => {
                    if let Some(cfg) = ctx.config {
                        match cfg.targets.get(&c.target) {
                            Some(Target::Qdrant(_)) => {}
                            Some(other) => v.at(
                                value_pos(&check_node, "target"),
                                format!(
                                    "target `{}` is a {} target, not qdrant",
                                    c.target,
                                    other.kind()
                                ),
                            ),
                            None => {
                                let known: Vec<&str> =
                                    cfg.targets.keys().map(String::as_str).collect();
                                v.at(
                                    value_pos(&check_node, "target"),
                                    unknown_message("target", &c.target, &known),
                                );
                            }
                        }
                    }
                }
                Check::Tcp(c) => {
                    if c.port == 0 {
                        v.at(value_pos(&check_node, "port"), "port 0 cannot be checked");
                    }
                }
            }
            if h.interval.0.is_zero() {
                v.at(
                    value_pos(&s.node, "interval"),
                    "`interval` must be more than 0",
                );
            }
        }
        Action::Backup(b) => check_targets(v, s, &b.targets, ctx),
        Action::Restore(r) => {
            check_targets(v, s, &r.targets, ctx);
            match (&r.from, &rb.backup) {
                (Some(sel), _) => check_selection(v, sel, value_pos(&s.node, "from"), backup_ids),
                (None, Some(_)) => {}
                (None, None) if rb.broken_fields.iter().any(|f| f == "backup") => {}
                (None, None) => v.at(
                    s.node.pos,
                    format!("restore step `{}` has no backup selection; add `from: latest` (or `from: {{tag: T}}`, `{{id: ID}}`, `{{before: TIME}}`) to the step, or `backup:` to the runbook", s.id),
                ),
            }
        }
        Action::Verify(x) => {
            check_targets(v, s, &x.targets, ctx);
            if let Some(sel) = &x.against {
                check_selection(v, sel, value_pos(&s.node, "against"), backup_ids);
            }
        }
        Action::Notify(n) => {
            if let Some(cfg) = ctx.config {
                let known: Vec<&str> = cfg.notifications.iter().map(|x| x.name.as_str()).collect();
                for (name, pos) in n.to.iter().zip(list_positions(&s.node, "to")) {
                    if !known.contains(&name.as_str()) {
                        v.at(pos, unknown_message("notification", name, &known));
                    }
                }
            }
        }
        Action::Confirm(_) => {}
        Action::Parallel(p) => {
            if p.steps.is_empty() {
                v.at(
                    value_pos(&s.node, "steps"),
                    "a `parallel` step needs at least one step in `steps:`",
                );
            }
        }
    }
}

/// Checks of drctl.yml against its compose files.
pub fn check_config(config: &Config, compose: Option<&ComposeModel>) -> Diagnostics {
    let mut v = V {
        file: &config.file,
        diags: Diagnostics::default(),
    };
    let Some(compose) = compose else {
        return v.diags;
    };
    let known = compose.service_names();
    let targets_node = config.node.get("targets");
    for (name, t) in &config.targets {
        let tnode = targets_node.and_then(|n| n.get(name));
        let pos_of = |key: &str| tnode.map_or(Pos::START, |n| value_pos(n, key));
        let mut services: Vec<(String, Pos)> = Vec::new();
        if let Some(svc) = t.service() {
            services.push((svc.to_string(), pos_of("service")));
        }
        if let Target::Volume(vt) = t {
            let positions = tnode.map(|n| list_positions(n, "stop")).unwrap_or_default();
            for (i, svc) in vt.stop.iter().enumerate() {
                services.push((
                    svc.clone(),
                    positions.get(i).copied().unwrap_or(pos_of("stop")),
                ));
            }
        }
        for (svc, pos) in services {
            if !known.contains(&svc.as_str()) {
                v.at(
                    pos,
                    format!(
                        "{} in target `{name}` (not defined in the compose files)",
                        unknown_message("service", &svc, &known)
                    ),
                );
            }
        }
    }
    v.diags
}
