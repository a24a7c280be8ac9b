//! `drctl rehearse RUNBOOK [--keep]`: run a runbook against a scratch copy of the stack (its
//! own compose project name, volumes, networks and loopback ports), restoring the live
//! stack's backup sets into it, then tear the copy down. The live stack is not touched: the
//! copy's compose file is rewritten so that nothing in it can name a live resource.

use std::path::{Path, PathBuf};

use drctl_core::config::{Config, Target};
use drctl_core::exec::events::RunStatus;
use drctl_core::exec::{new_run_id, RunDir};
use drctl_core::source::process_env;
use drctl_core::yaml::{Node, Value as Y};
use drctl_core::{load_runbook, resolve_runbook};
use drctl_docker::{ComposeCli, ComposeProject, DockerClient};
use serde_json::{json, Map, Value};

use crate::context;
use crate::error::CliError;
use crate::render;
use crate::run::{execute_plan, interrupted, ExecHooks};
use crate::runner::Runner;

/// A compose file as JSON (compose reads JSON too), typed the way compose expects.
fn to_json(n: &Node) -> Value {
    match &n.value {
        Y::Null => Value::Null,
        Y::Scalar { text, plain } => {
            if *plain {
                match text.as_str() {
                    "true" | "True" | "TRUE" => return Value::Bool(true),
                    "false" | "False" | "FALSE" => return Value::Bool(false),
                    _ => {}
                }
                if let Ok(i) = text.parse::<i64>() {
                    return json!(i);
                }
                if text.contains('.') {
                    if let Ok(f) = text.parse::<f64>() {
                        return json!(f);
                    }
                }
            }
            Value::String(text.clone())
        }
        Y::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Y::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::Unavailable(format!("failed to find a free loopback port: {e}")))
}

/// Rewrite one compose file for the scratch copy; returns (service, live port spec, new
/// host port) for each published port, to move target URLs along.
fn scratch_compose(
    doc: &mut Value,
    moved: &mut Vec<(String, String, u16)>,
) -> Result<(), CliError> {
    let Some(obj) = doc.as_object_mut() else {
        return Ok(());
    };
    if let Some(Value::Object(services)) = obj.get_mut("services") {
        for (name, svc) in services.iter_mut() {
            let Some(svc) = svc.as_object_mut() else {
                continue;
            };
            // A fixed name would be the live container's name.
            svc.remove("container_name");
            let Some(Value::Array(ports)) = svc.get_mut("ports") else {
                continue;
            };
            for p in ports.iter_mut() {
                let new = free_port()?;
                match p {
                    Value::String(s) => {
                        // [host_ip:]host_port:container_port[/proto], or just container_port.
                        let (spec, proto) = s
                            .split_once('/')
                            .map(|(a, b)| (a.to_string(), format!("/{b}")))
                            .unwrap_or((s.clone(), String::new()));
                        let container = spec.rsplit(':').next().unwrap_or(&spec).to_string();
                        moved.push((name.clone(), spec.clone(), new));
                        *s = format!("127.0.0.1:{new}:{container}{proto}");
                    }
                    Value::Number(n) => {
                        let container = n.to_string();
                        moved.push((name.clone(), container.clone(), new));
                        *p = Value::String(format!("127.0.0.1:{new}:{container}"));
                    }
                    Value::Object(m) => {
                        let old = m
                            .get("published")
                            .map(|v| v.to_string().trim_matches('"').to_string())
                            .unwrap_or_default();
                        moved.push((name.clone(), old, new));
                        m.insert("published".into(), json!(new));
                        m.insert("host_ip".into(), json!("127.0.0.1"));
                    }
                    _ => {}
                }
            }
        }
    }
    // Named volumes and networks get the scratch project's prefix, unless a fixed name or
    // `external` points them at live ones: drop those, the copy has its own.
    for section in ["volumes", "networks"] {
        if let Some(Value::Object(items)) = obj.get_mut(section) {
            for (_, v) in items.iter_mut() {
                if let Some(m) = v.as_object_mut() {
                    m.remove("name");
                    m.remove("external");
                }
            }
        }
    }
    Ok(())
}

fn retarget(s: &mut drctl_core::runbook::Step, literal: &[(u16, u16)]) {
    use drctl_core::runbook::{Action, Check};
    match &mut s.action {
        Action::Health(h) => match &mut h.check {
            Check::Http(c) => {
                if let Some(p) = port_of(&c.url) {
                    if let Some((_, new)) = literal.iter().find(|(old, _)| *old == p) {
                        c.url = c.url.replace(&format!(":{p}"), &format!(":{new}"));
                    }
                }
            }
            Check::Tcp(c) => {
                if let Some((_, new)) = literal.iter().find(|(old, _)| *old == c.port) {
                    c.port = *new;
                }
            }
            _ => {}
        },
        Action::Parallel(p) => p.steps.iter_mut().for_each(|m| retarget(m, literal)),
        _ => {}
    }
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let hostport = rest.split('/').next()?;
    hostport.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// Steps that make the scratch copy a copy: up, gates, restore of every target, verify.
fn prepare_steps(
    cfg: &Config,
    compose: &drctl_core::compose::ComposeModel,
    sel: &drctl_core::runbook::Selection,
) -> Result<Vec<drctl_core::runbook::Step>, CliError> {
    use drctl_core::runbook::*;
    let services: Vec<String> = compose
        .services
        .iter()
        .filter(|s| s.profiles.is_empty())
        .map(|s| s.name.clone())
        .collect();
    let step = |id: &str, action: Action, needs: Option<Vec<String>>| Step {
        id: id.to_string(),
        name: None,
        needs,
        timeout: Some(drctl_core::duration::Dur::secs(600)),
        retry: None,
        on_failure: None,
        action,
        node: Node::new(drctl_core::Pos::START, Y::Null),
    };
    let mut steps = vec![step(
        "rehearsal-up",
        Action::Up(UpStep {
            services,
            from: UpSource::Compose,
            recreate: false,
        }),
        Some(vec![]),
    )];
    let mut gates = Vec::new();
    let mut targets = Vec::new();
    for (name, t) in &cfg.targets {
        if t.optional() {
            continue;
        }
        targets.push(name.clone());
        let check = match t {
            Target::Postgres(p) => Some(Check::Postgres(PostgresCheck {
                service: p.service.clone(),
                database: None,
                query: None,
            })),
            Target::Redis(r) => Some(Check::Redis(RedisCheck {
                service: r.service.clone(),
            })),
            _ => None,
        };
        if let Some(check) = check {
            let id = format!("rehearsal-ready-{name}");
            steps.push(step(
                &id,
                Action::Health(HealthStep {
                    check,
                    interval: drctl_core::duration::Dur::secs(1),
                }),
                Some(vec!["rehearsal-up".into()]),
            ));
            gates.push(id);
        }
    }
    let after = if gates.is_empty() {
        vec!["rehearsal-up".to_string()]
    } else {
        gates
    };
    steps.push(step(
        "rehearsal-restore",
        Action::Restore(RestoreStep {
            targets: targets.clone(),
            from: Some(sel.clone()),
            safety_backup: false,
        }),
        Some(after),
    ));
    steps.push(step(
        "rehearsal-verify",
        Action::Verify(VerifyStep {
            targets,
            against: None,
        }),
        Some(vec!["rehearsal-restore".into()]),
    ));
    Ok(steps)
}

pub struct RehearseArgs {
    pub backup: Option<drctl_core::runbook::Selection>,
    pub keep: bool,
    pub yes: bool,
    pub json: bool,
}

pub async fn run(config: Option<&Path>, runbook: &str, args: RehearseArgs) -> Result<(), CliError> {
    let loaded = context::load(config);
    let live = loaded.require_config()?.clone();
    let path =
        resolve_runbook(runbook, loaded.runbooks_dir().as_deref()).map_err(CliError::Usage)?;
    // Checked against the live stack first: a broken runbook makes no scratch copy.
    load_runbook(&path, &process_env, loaded.ctx())?;
    if live.stack.compose_files.is_empty() {
        return Err(CliError::Usage("a rehearsal needs the stack's compose files (`stack.compose_files` in drctl.yml) to make its scratch copy".into()));
    }
    let id = new_run_id();
    let scratch_project = format!(
        "drctl-rehearse-{}",
        id.to_lowercase()
            .replace(['t', 'z'], "")
            .chars()
            .rev()
            .take(10)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    let scratch_dir = live.state_dir().join("rehearsals").join(&id);
    std::fs::create_dir_all(&scratch_dir).map_err(|e| {
        CliError::Unavailable(format!("failed to create {}: {e}", scratch_dir.display()))
    })?;

    // The scratch compose files: JSON copies with ports, names and external resources moved.
    let mut moved = Vec::new();
    let mut files = Vec::new();
    for (i, f) in live.compose_files().iter().enumerate() {
        let text = drctl_core::source::read_text(f)
            .map_err(|d| CliError::Invalid(drctl_core::Diagnostics(vec![d])))?;
        let node = drctl_core::source::parse_yaml(f, &text, "compose file")?;
        let mut doc = to_json(&node);
        scratch_compose(&mut doc, &mut moved)?;
        let out = scratch_dir.join(format!("compose-{i}.json"));
        std::fs::write(&out, serde_json::to_vec_pretty(&doc).expect("json")).map_err(|e| {
            CliError::Unavailable(format!("failed to write {}: {e}", out.display()))
        })?;
        files.push(out);
    }
    let mut scratch: Config = live.clone();
    scratch.stack.project = scratch_project.clone();
    let first_dir = live.compose_files()[0]
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let project_dir = live
        .stack
        .project_dir
        .as_ref()
        .map(|d| live.resolve(d))
        .unwrap_or(first_dir);
    scratch.stack.project_dir =
        Some(std::fs::canonicalize(&project_dir).unwrap_or(project_dir.clone()));
    scratch.stack.compose_files = files.clone();
    scratch.state_dir = scratch_dir.join("state");
    // Targets that reach a service over a published port follow it to the copy.
    for t in scratch.targets.values_mut() {
        if let Target::Qdrant(q) = t {
            if let (Some(svc), Some(port)) = (q.service.clone(), port_of(&q.url)) {
                if let Some((_, _, new)) = moved
                    .iter()
                    .find(|(s, spec, _)| *s == svc && spec.contains(&port.to_string()))
                {
                    q.url = q.url.replace(&format!(":{port}"), &format!(":{new}"));
                }
            }
        }
    }
    let compose = drctl_core::compose::load_compose(&scratch.compose_files())?;
    // Port variables of the live compose file (`${DRCTL_LAB_APP_PORT:-18080}`) now mean the
    // copy's ports, so that the runbook's gates probe the copy, never the live stack.
    let mut overrides: Vec<(String, String)> = Vec::new();
    for (_, spec, new) in &moved {
        let mut rest = spec.as_str();
        while let Some(i) = rest.find("${") {
            let inner = &rest[i + 2..];
            let end = inner.find('}').unwrap_or(inner.len());
            let name = inner[..end]
                .split(":-")
                .next()
                .unwrap_or_default()
                .to_string();
            overrides.push((name, new.to_string()));
            rest = &inner[end..];
        }
    }
    let env = |name: &str| {
        overrides
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| process_env(name))
    };
    let scratch_ctx = drctl_core::validate::Context {
        config: Some(&scratch),
        compose: Some(&compose),
    };
    let mut rb = load_runbook(&path, &env, scratch_ctx)?;
    let _ = &mut rb;
    // Literal live ports in http / tcp gates move too.
    let literal: Vec<(u16, u16)> = moved
        .iter()
        .filter_map(|(_, spec, new)| {
            let parts: Vec<&str> = spec.split(':').collect();
            (parts.len() >= 2)
                .then(|| {
                    parts[parts.len() - 2]
                        .parse::<u16>()
                        .ok()
                        .map(|p| (p, *new))
                })
                .flatten()
        })
        .collect();
    for s in rb.steps.iter_mut().chain(rb.rollback.iter_mut()) {
        retarget(s, &literal);
    }
    // The copy starts as the live stack's backup set: bring it up, restore every target into
    // it, verify; then the runbook runs on that. (`--backup` chooses the set.)
    let selection = args
        .backup
        .clone()
        .or_else(|| rb.backup.clone())
        .unwrap_or(drctl_core::runbook::Selection::Latest);
    let prep = prepare_steps(&scratch, &compose, &selection)?;
    let first_ids: Vec<String> = prep.iter().map(|s| s.id.clone()).collect();
    if let Some(first) = rb.steps.first_mut() {
        if first.needs.is_none() {
            first.needs = Some(vec![first_ids.last().cloned().unwrap_or_default()]);
        }
    }
    rb.steps.splice(0..0, prep);
    if rb.backup.is_none() {
        rb.backup = Some(selection);
    }
    // The runbook's `${DRCTL_LAB_APP_PORT}`-style references follow the moved ports too.
    for (svc, spec, new) in &moved {
        tracing::info!("rehearsal: {svc} port {spec} -> 127.0.0.1:{new}");
    }
    eprintln!(
        "rehearsal {id}: scratch copy `{scratch_project}` of `{}` (files in {})",
        live.stack.project,
        scratch_dir.display()
    );

    let runner = Runner::new(scratch.clone(), Some(compose.clone()), rb.backup.clone())
        .await?
        .for_rehearsal(&live);
    let dir = RunDir::new(&scratch.state_dir(), &id);
    let objectives = rb.objectives.clone().or_else(|| live.objectives.clone());
    let hooks = ExecHooks {
        yes: args.yes,
        confirm: None,
        sink: render::sink(render::mode(args.json)),
        cancel: Box::pin(interrupted()),
    };
    let executed = execute_plan(
        runner,
        &scratch,
        &rb,
        &dir,
        &id,
        objectives.as_ref(),
        &[],
        hooks,
        None,
    )
    .await;

    // Tear the copy down: its containers, volumes and networks, and the sets it took.
    let mut teardown = Map::new();
    if !args.keep {
        let project = ComposeProject {
            name: scratch_project.clone(),
            dir: scratch.stack.project_dir.clone().unwrap_or_default(),
            files: files.clone(),
            ..Default::default()
        };
        // A teardown failure is reported beside the run's outcome, never instead of it.
        let down = async {
            let client = DockerClient::connect().map_err(|e| e.to_string())?;
            let cli = ComposeCli::detect().await.map_err(|e| e.to_string())?;
            client
                .compose_down(&cli, &project, &compose, &[], true)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        teardown.insert(
            "down".into(),
            json!(down.map(|_| "ok".to_string()).unwrap_or_else(|e| e)),
        );
        if let Ok(repo) = drctl_repo::Repository::open(&live, &process_env) {
            if let Ok(sets) = repo.list().await {
                for s in sets
                    .iter()
                    .filter(|s| s.stack.as_deref() == Some(scratch_project.as_str()))
                {
                    let r = repo.delete_set(&s.id).await;
                    teardown.insert(
                        format!("set {}", s.id),
                        json!(r
                            .map(|_| "deleted".to_string())
                            .unwrap_or_else(|e| e.to_string())),
                    );
                }
            }
        }
    }
    // The copy is torn down whatever happened; then what happened is reported.
    let (outcome, report) = executed?;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&json!({"rehearsal": id, "scratch_project": scratch_project, "kept": args.keep, "teardown": teardown, "report": report})).expect("json"));
    } else {
        println!("{}", report.to_markdown());
        if args.keep {
            println!("the scratch copy `{scratch_project}` was kept; remove it with: docker-compose -p {scratch_project} {} down -v", files.iter().map(|f| format!("-f {}", f.display())).collect::<Vec<_>>().join(" "));
        } else {
            println!(
                "scratch copy `{scratch_project}` torn down: {}",
                teardown
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    match outcome.status {
        RunStatus::Succeeded => Ok(()),
        RunStatus::Interrupted => Err(CliError::Interrupted(outcome.message)),
        _ => Err(CliError::Failed(format!(
            "rehearsal {id} did not succeed: {}",
            outcome.message
        ))),
    }
}
