//! The step runner: what each step kind does, over the Docker adapter (and, as they land,
//! the repository and database adapters). The executor decides when; this decides how.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drctl_core::compose::{start_order, ComposeModel};
use drctl_core::config::Config;
use drctl_core::exec::executor::BoxFuture;
use drctl_core::exec::{StepCtx, StepError, StepOutput, StepRunner};
use drctl_core::plan::{DockerView, PlannedStep};
use drctl_core::runbook::{Action, Check, ServicesStep, UpSource};
use drctl_docker::compose::{ComposeCli, ComposeProject, UpOptions};
use drctl_docker::health::{wait_http, wait_tcp, Poll};
use drctl_docker::{DockerClient, DockerError, ExecOptions};
use serde_json::json;

use crate::error::CliError;

const DEFAULT_GRACE: Duration = Duration::from_secs(30);

pub struct Runner {
    config: Config,
    compose: Option<ComposeModel>,
    docker: DockerClient,
    repo: Result<drctl_repo::Repository, String>,
    /// The runbook's `backup:`, for restores that do not say `from:`.
    default_selection: Option<drctl_core::runbook::Selection>,
    /// The stack whose backup sets restores use (the live one, in a rehearsal).
    source_stack: String,
    /// A rehearsal on a scratch copy: nothing live is overwritten, so no safety backups.
    rehearsal: bool,
}

fn err(e: DockerError) -> StepError {
    // A gate that timed out has already waited its whole budget; waiting again is for the
    // runbook's `retry:` to decide, like any other failure.
    StepError::new(e.to_string())
}

/// A Docker client for a stack: what its guards stop is recorded in the stack's state
/// folder (see `DockerClient::with_stop_ledger`).
pub(crate) fn stack_docker(config: &Config) -> Result<DockerClient, DockerError> {
    Ok(DockerClient::connect()?.with_stop_ledger(config.state_dir().join("stopped")))
}

impl Runner {
    pub async fn new(
        config: Config,
        compose: Option<ComposeModel>,
        default_selection: Option<drctl_core::runbook::Selection>,
    ) -> Result<Self, CliError> {
        // Callers hold the stack's lock: whatever a killed drctl left stopped for an
        // operation on this stack is started again first.
        let docker = stack_docker(&config)?;
        docker.start_left_stopped(false).await;
        // A broken repository fails only the steps that need it.
        let repo = drctl_repo::Repository::open(&config, &drctl_core::source::process_env)
            .map_err(|e| e.to_string());
        let source_stack = config.stack.project.clone();
        Ok(Runner {
            config,
            compose,
            docker,
            repo,
            default_selection,
            source_stack,
            rehearsal: false,
        })
    }

    /// Run against a scratch copy of the stack (`config` names the copy), restoring the
    /// sets of the live stack `source_stack` from its repository.
    pub fn for_rehearsal(mut self, live: &Config) -> Self {
        self.repo = drctl_repo::Repository::open(live, &drctl_core::source::process_env)
            .map_err(|e| e.to_string());
        self.source_stack = live.stack.project.clone();
        self.rehearsal = true;
        self
    }

    fn data(&self) -> Result<crate::data::Data<'_>, StepError> {
        let repo = self
            .repo
            .as_ref()
            .map_err(|e| StepError::fatal(e.clone()))?;
        Ok(crate::data::Data {
            docker: &self.docker,
            repo,
            config: &self.config,
            source_stack: &self.source_stack,
        })
    }

    /// The set a selection names; `{step: ID}` is the set that step of this run took.
    async fn resolve(
        &self,
        sel: &drctl_core::runbook::Selection,
        targets: &[String],
        ctx: &StepCtx,
    ) -> Result<drctl_repo::Manifest, StepError> {
        let data = self.data()?;
        if let drctl_core::runbook::Selection::Step(s) = sel {
            let id = ctx
                .output_of(s)
                .and_then(|o| o.get("set_id").and_then(|v| v.as_str()).map(str::to_string))
                .ok_or_else(|| {
                    StepError::fatal(format!(
                        "step `{s}` of this run took no backup set (did it run?)"
                    ))
                })?;
            return data.repo.load_manifest(&id).await.map_err(data_err);
        }
        data.select_for(sel, targets).await.map_err(dataerr)
    }

    async fn backup(
        &self,
        b: &drctl_core::runbook::BackupStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let data = self.data()?;
        let tags: Vec<String> = b.tag.iter().cloned().collect();
        let m = data
            .backup(&b.targets, tags, false, &|m| ctx.progress(m))
            .await
            .map_err(dataerr)?;
        Ok(StepOutput {
            message: format!(
                "backup set {} ({} items, {} stored)",
                m.id,
                m.items.len(),
                bytes(m.stored_size())
            ),
            data: json!({"set_id": m.id, "items": m.items.len(), "stored_bytes": m.stored_size()}),
        })
    }

    async fn restore(
        &self,
        r: &drctl_core::runbook::RestoreStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let sel = r
            .from
            .clone()
            .or_else(|| self.default_selection.clone())
            .unwrap_or(drctl_core::runbook::Selection::Latest);
        let m = self.resolve(&sel, &r.targets, ctx).await?;
        ctx.progress(format!("using backup set {} taken {}", m.id, m.started));
        let data = self.data()?;
        let out = data
            .restore(&m, &r.targets, r.safety_backup && !self.rehearsal, &|m| {
                ctx.progress(m)
            })
            .await
            .map_err(dataerr)?;
        let what = out["restored"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        Ok(StepOutput {
            message: format!("restored {what} from set {}", m.id),
            data: out,
        })
    }

    async fn verify(
        &self,
        v: &drctl_core::runbook::VerifyStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let m = match &v.against {
            Some(sel) => self.resolve(sel, &v.targets, ctx).await?,
            None => {
                // The set restored in this run, else the newest.
                let restored = ctx
                    .outputs()
                    .into_values()
                    .filter(|o| o.get("restored").is_some())
                    .filter_map(|o| o.get("set_id").and_then(|s| s.as_str()).map(str::to_string))
                    .next_back();
                match restored {
                    Some(id) => self
                        .data()?
                        .repo
                        .load_manifest(&id)
                        .await
                        .map_err(data_err)?,
                    None => {
                        self.resolve(&drctl_core::runbook::Selection::Latest, &v.targets, ctx)
                            .await?
                    }
                }
            }
        };
        let data = self.data()?;
        let out = data.verify(&m, &v.targets).await.map_err(dataerr)?;
        Ok(StepOutput {
            message: format!("fingerprints equal to set {}", m.id),
            data: out,
        })
    }

    pub async fn docker_view(&self) -> DockerView {
        match self.docker.daemon_info(Duration::from_secs(5)).await {
            Err(e) => DockerView::Unreachable { reason: e.short() },
            Ok(info) => match self
                .docker
                .project_containers(&self.config.stack.project)
                .await
            {
                Ok(containers) => DockerView::Reachable {
                    version: info.version,
                    api_version: info.api_version,
                    containers,
                },
                Err(e) => DockerView::Unreachable { reason: e.short() },
            },
        }
    }

    fn project(&self) -> &str {
        &self.config.stack.project
    }

    fn compose_project(&self) -> Result<ComposeProject, StepError> {
        let files = self.config.compose_files();
        let Some(first) = files.first() else {
            return Err(StepError::fatal("no compose files are configured (`stack.compose_files` in drctl.yml); `up` needs them, or captured specs"));
        };
        let dir = match &self.config.stack.project_dir {
            Some(d) => self.config.resolve(d),
            None => first.parent().map(PathBuf::from).unwrap_or_default(),
        };
        let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        Ok(ComposeProject {
            name: self.project().to_string(),
            dir: abs(if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            }),
            files: files.into_iter().map(abs).collect(),
            ..Default::default()
        })
    }

    fn model(&self) -> Result<&ComposeModel, StepError> {
        self.compose.as_ref().ok_or_else(|| {
            StepError::fatal("no compose files are configured (`stack.compose_files` in drctl.yml)")
        })
    }

    /// Container names of services (in the order given) and named containers.
    async fn containers_of(
        &self,
        services: &[String],
        containers: &[String],
    ) -> Result<(Vec<String>, Vec<String>), StepError> {
        let refs: Vec<&str> = services.iter().map(String::as_str).collect();
        let found = self
            .docker
            .service_containers(self.project(), &refs)
            .await
            .map_err(err)?;
        let mut names = Vec::new();
        let mut missing = Vec::new();
        for s in services {
            match found.get(s) {
                Some(list) if !list.is_empty() => names.extend(list.iter().map(|c| c.name.clone())),
                _ => missing.push(s.clone()),
            }
        }
        for c in containers {
            match self.docker.container(c).await.map_err(err)? {
                Some(_) => names.push(c.clone()),
                None => missing.push(format!("container {c}")),
            }
        }
        Ok((names, missing))
    }

    /// Services in compose start order (dependencies first) when the compose model knows them.
    fn ordered(&self, services: &[String], reverse: bool) -> Vec<String> {
        let mut out: Vec<String> = match &self.compose {
            Some(m) => {
                let refs: Vec<&str> = services.iter().map(String::as_str).collect();
                start_order(m, &refs)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            }
            None => services.to_vec(),
        };
        if reverse {
            out.reverse();
        }
        out
    }

    /// A running container of a service, for exec.
    async fn running_container(&self, service: &str) -> Result<String, StepError> {
        let found = self
            .docker
            .service_containers(self.project(), &[service])
            .await
            .map_err(err)?;
        found
            .get(service)
            .and_then(|l| l.iter().find(|c| c.state == "running"))
            .map(|c| c.name.clone())
            .ok_or_else(|| StepError::new(format!("service `{service}` has no running container; bring it up first (an `up` or `start` step)")))
    }

    async fn services_step(
        &self,
        kind: &str,
        a: &ServicesStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let grace = a.grace.map(|g| g.as_duration()).unwrap_or(DEFAULT_GRACE);
        // Stop dependents before what they depend on; start the other way round.
        let services = self.ordered(&a.services, kind == "stop");
        let (names, missing) = self.containers_of(&services, &a.containers).await?;
        for m in &missing {
            ctx.progress(format!("{m}: no container (gone or never created)"));
        }
        if names.is_empty() && kind != "stop" {
            return Err(StepError::new(format!(
                "nothing to {kind}: {} has no container; bring it up with an `up` step",
                missing.join(", ")
            )));
        }
        match kind {
            "stop" => {
                let stopped = self.docker.stop(&names, grace).await.map_err(err)?;
                Ok(StepOutput {
                    message: format!(
                        "stopped {} container(s){}",
                        stopped.len(),
                        if missing.is_empty() {
                            String::new()
                        } else {
                            format!("; no container for {}", missing.join(", "))
                        }
                    ),
                    data: json!({"stopped": stopped}),
                })
            }
            "start" => {
                self.docker.start(&names).await.map_err(err)?;
                Ok(StepOutput {
                    message: format!("started {}", names.join(", ")),
                    data: json!({"started": names}),
                })
            }
            _ => {
                self.docker.restart(&names, grace).await.map_err(err)?;
                Ok(StepOutput {
                    message: format!("restarted {}", names.join(", ")),
                    data: json!({"restarted": names}),
                })
            }
        }
    }

    fn poll(step: &PlannedStep, interval: Duration) -> Poll {
        // The gate's own deadline comes a little before the executor's, so that its message
        // (what it saw last) is the one the operator reads.
        let t = step.timeout.as_duration();
        Poll::new(
            t.saturating_sub((t / 20).min(Duration::from_secs(2))),
            interval,
        )
    }

    async fn health(
        &self,
        step: &PlannedStep,
        check: &Check,
        interval: Duration,
    ) -> Result<StepOutput, StepError> {
        let poll = Self::poll(step, interval);
        match check {
            Check::Docker(c) => {
                let (names, missing) = self
                    .containers_of(std::slice::from_ref(&c.service), &[])
                    .await?;
                if names.is_empty() {
                    return Err(StepError::new(format!(
                        "service `{}` has no container to be healthy: {}",
                        c.service,
                        missing.join(", ")
                    )));
                }
                for n in &names {
                    self.docker.wait_healthy(n, poll).await.map_err(err)?;
                }
                Ok(StepOutput::msg(format!("{} healthy", names.join(", "))))
            }
            Check::Tcp(c) => {
                let addr = format!("{}:{}", c.host, c.port);
                wait_tcp(&addr, poll).await.map_err(err)?;
                Ok(StepOutput::msg(format!("{addr} accepts connections")))
            }
            Check::Http(c) => {
                wait_http(&c.url, Some(c.status), poll).await.map_err(err)?;
                Ok(StepOutput::msg(format!("{} answered {}", c.url, c.status)))
            }
            Check::Command(c) => {
                let container = self.running_container(&c.service).await?;
                let cmd: Vec<&str> = c.command.iter().map(String::as_str).collect();
                self.docker
                    .wait_exec(&container, &cmd, poll)
                    .await
                    .map_err(err)?;
                Ok(StepOutput::msg(format!(
                    "`{}` exits 0 in {container}",
                    c.command.join(" ")
                )))
            }
            Check::Postgres(c) => {
                // The database adapter's gates: accepting connections and out of recovery
                // (a restored or promoted server can answer while still replaying WAL).
                let container = self.running_container(&c.service).await?;
                let target = self.pg_target(&c.service);
                let pg = drctl_db::Postgres::new(self.docker.clone(), container.clone(), &target)
                    .map_err(|e| StepError::fatal(e.to_string()))?;
                pg.wait_ready(c.database.as_deref(), poll)
                    .await
                    .map_err(|e| StepError::new(e.to_string()))?;
                if let Some(q) = &c.query {
                    pg.wait_query(c.database.as_deref(), q, poll)
                        .await
                        .map_err(|e| StepError::new(e.to_string()))?;
                }
                Ok(StepOutput::msg(format!(
                    "PostgreSQL in {container} answers and is not in recovery"
                )))
            }
            Check::Redis(c) => {
                let container = self.running_container(&c.service).await?;
                let target = self.redis_target(&c.service);
                let r = drctl_db::Redis::new(self.docker.clone(), container.clone(), &target)
                    .map_err(|e| StepError::fatal(e.to_string()))?;
                r.wait_ready(poll)
                    .await
                    .map_err(|e| StepError::new(e.to_string()))?;
                Ok(StepOutput::msg(format!(
                    "Redis in {container} answers PING and has loaded its data"
                )))
            }
            Check::Qdrant(c) => {
                let Some(drctl_core::config::Target::Qdrant(t)) =
                    self.config.targets.get(&c.target)
                else {
                    return Err(StepError::fatal(format!(
                        "no qdrant target `{}` in drctl.yml",
                        c.target
                    )));
                };
                let q = drctl_db::Qdrant::new(t).map_err(|e| StepError::fatal(e.to_string()))?;
                q.wait_ready(&c.collections, poll)
                    .await
                    .map_err(|e| StepError::new(e.to_string()))?;
                Ok(StepOutput::msg(format!("Qdrant at {} is ready", t.url)))
            }
        }
    }

    /// The configured target of a database service (its user and password variable), or
    /// the defaults for a service that no target names.
    fn pg_target(&self, service: &str) -> drctl_core::config::PostgresTarget {
        self.config
            .targets
            .values()
            .find_map(|t| match t {
                drctl_core::config::Target::Postgres(p) if p.service == service => Some(p.clone()),
                _ => None,
            })
            .unwrap_or_else(|| drctl_core::config::PostgresTarget {
                service: service.to_string(),
                databases: Vec::new(),
                user: "postgres".into(),
                password_env: None,
                optional: false,
            })
    }

    fn redis_target(&self, service: &str) -> drctl_core::config::RedisTarget {
        self.config
            .targets
            .values()
            .find_map(|t| match t {
                drctl_core::config::Target::Redis(r) if r.service == service => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_else(|| drctl_core::config::RedisTarget {
                service: service.to_string(),
                password_env: None,
                optional: false,
            })
    }

    async fn exec(
        &self,
        step: &PlannedStep,
        e: &drctl_core::runbook::ExecStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let _ = step;
        let container = self.running_container(&e.service).await?;
        let cmd: Vec<&str> = e.command.iter().map(String::as_str).collect();
        let opts = ExecOptions {
            user: e.user.clone(),
            workdir: e.workdir.clone(),
            env: e.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        };
        let out = self
            .docker
            .exec_output(&container, &cmd, &opts, 256 * 1024)
            .await
            .map_err(err)?;
        let tail = out.tail(20);
        for line in tail
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            ctx.progress(line.to_string());
        }
        if out.exit_code != 0 {
            return Err(StepError::new(format!(
                "`{}` in {container} exited with code {}: {}",
                e.command.join(" "),
                out.exit_code,
                tail.lines().last().unwrap_or("")
            )));
        }
        Ok(StepOutput {
            message: format!("`{}` in {container} exited 0", e.command.join(" ")),
            data: json!({"exit_code": 0}),
        })
    }

    /// Recreate services from the container specs captured in a backup set (the runbook's
    /// `backup:` selection, else the newest set): for when no compose file is at hand.
    async fn up_from_specs(
        &self,
        a: &drctl_core::runbook::UpStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let sel = self
            .default_selection
            .clone()
            .unwrap_or(drctl_core::runbook::Selection::Latest);
        let m = self.resolve(&sel, &[], ctx).await?;
        let data = self.data()?;
        let specs: Vec<&drctl_repo::ItemRecord> = m
            .items
            .iter()
            .filter(|i| i.kind == "spec")
            .filter(|i| {
                a.services.is_empty()
                    || a.services
                        .iter()
                        .any(|s| i.name.starts_with(&format!("spec/{s}/")))
            })
            .collect();
        if specs.is_empty() {
            return Err(StepError::fatal(format!(
                "backup set {} holds no container specs for {}",
                m.id,
                if a.services.is_empty() {
                    "this stack".to_string()
                } else {
                    a.services.join(", ")
                }
            )));
        }
        let mut made = Vec::new();
        // In the order the runbook lists the services (dependencies first, as written).
        let rank = |name: &str| {
            a.services
                .iter()
                .position(|s| name.starts_with(&format!("spec/{s}/")))
                .unwrap_or(usize::MAX)
        };
        let mut specs = specs;
        specs.sort_by_key(|i| rank(&i.name));
        for item in specs {
            let spec = data.read_spec(&m, item).await.map_err(dataerr)?;
            if self
                .docker
                .container(&spec.name)
                .await
                .map_err(err)?
                .is_some()
            {
                ctx.progress(format!("{} exists; left as it is", spec.name));
                continue;
            }
            self.docker.create_from_spec(&spec).await.map_err(err)?;
            ctx.progress(format!("{} recreated from set {}", spec.name, m.id));
            made.push(spec.name);
        }
        Ok(StepOutput {
            message: format!(
                "recreated {} container(s) from the specs in set {}",
                made.len(),
                m.id
            ),
            data: json!({"created": made, "spec_set": m.id}),
        })
    }

    async fn up(
        &self,
        a: &drctl_core::runbook::UpStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        if a.from == UpSource::Spec || (a.from == UpSource::Auto && self.compose.is_none()) {
            return self.up_from_specs(a, ctx).await;
        }
        let model = self.model()?;
        let project = self.compose_project()?;
        let cli = ComposeCli::detect()
            .await
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let services: Vec<String> = if a.services.is_empty() {
            model
                .service_names()
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            a.services.clone()
        };
        let refs: Vec<&str> = services.iter().map(String::as_str).collect();
        ctx.progress(format!("{} {}", cli.version, refs.join(" ")));
        let opts = UpOptions {
            no_recreate: !a.recreate,
            ..Default::default()
        };
        self.docker
            .compose_up(&cli, &project, model, &refs, &opts)
            .await
            .map_err(err)?;
        Ok(StepOutput {
            message: format!("up: {}", refs.join(", ")),
            data: json!({"services": services}),
        })
    }

    async fn down(
        &self,
        a: &drctl_core::runbook::DownStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let model = self.model()?;
        let project = self.compose_project()?;
        let cli = ComposeCli::detect()
            .await
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let mut safety = None;
        if a.volumes && a.safety_backup && !self.rehearsal {
            // Whatever can still be read is kept before the volumes go (seed 000: emergency
            // backup first). Targets whose service is already gone are noted and skipped.
            let data = self.data()?;
            let m = data
                .backup(&[], vec!["safety".into()], true, &|m| ctx.progress(m))
                .await
                .map_err(|e| {
                    StepError::new(format!(
                        "failed to take the safety backup, so nothing was removed: {}",
                        e.message
                    ))
                })?;
            ctx.progress(format!("safety backup {} taken", m.id));
            safety = Some(m.id);
        }
        let refs: Vec<&str> = a.services.iter().map(String::as_str).collect();
        self.docker
            .compose_down(&cli, &project, model, &refs, a.volumes)
            .await
            .map_err(err)?;
        let what = if refs.is_empty() {
            "project down".to_string()
        } else {
            format!("down: {}", refs.join(", "))
        };
        Ok(StepOutput {
            message: match &safety {
                Some(id) => format!("{what} (safety backup {id})"),
                None => what,
            },
            data: json!({"safety_set": safety}),
        })
    }

    async fn notify(
        &self,
        n: &drctl_core::runbook::NotifyStep,
        ctx: &StepCtx,
    ) -> Result<StepOutput, StepError> {
        let hooks: Vec<_> = self
            .config
            .notifications
            .iter()
            .filter(|h| n.to.is_empty() || n.to.contains(&h.name))
            .collect();
        if hooks.is_empty() {
            return Ok(StepOutput::msg(format!(
                "no notifications configured; message: {}",
                n.message
            )));
        }
        let mut results = BTreeMap::new();
        for h in hooks {
            let outcome = match std::env::var(&h.url_env).ok().filter(|u| !u.is_empty()) {
                None => format!("skipped: ${} is not set", h.url_env),
                Some(url) => match crate::notify::post(
                    &url,
                    &json!({"run_id": ctx.run_id, "event": "notify", "message": n.message}),
                )
                .await
                {
                    Ok(status) => format!("delivered ({status})"),
                    // A failing webhook never fails the recovery: say so and go on.
                    Err(e) => format!("FAILED: {e}"),
                },
            };
            ctx.progress(format!("{}: {outcome}", h.name));
            results.insert(h.name.clone(), outcome);
        }
        Ok(StepOutput {
            message: results
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; "),
            data: json!({"notifications": results}),
        })
    }
}

fn dataerr(e: crate::data::DataError) -> StepError {
    StepError {
        retryable: !e.fatal,
        message: e.message,
    }
}

fn data_err(e: drctl_repo::RepoError) -> StepError {
    StepError {
        retryable: !e.is_damaged(),
        message: e.to_string(),
    }
}

/// `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

impl StepRunner for Runner {
    fn run<'a>(
        &'a self,
        step: &'a PlannedStep,
        ctx: &'a StepCtx,
    ) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(async move {
            match &step.step.action {
                Action::Stop(a) => self.services_step("stop", a, ctx).await,
                Action::Start(a) => self.services_step("start", a, ctx).await,
                Action::Restart(a) => self.services_step("restart", a, ctx).await,
                Action::Up(a) => self.up(a, ctx).await,
                Action::Down(a) => self.down(a, ctx).await,
                Action::Health(h) => self.health(step, &h.check, h.interval.as_duration()).await,
                Action::Exec(e) => self.exec(step, e, ctx).await,
                Action::Notify(n) => self.notify(n, ctx).await,
                Action::Backup(b) => self.backup(b, ctx).await,
                Action::Restore(r) => self.restore(r, ctx).await,
                Action::Verify(v) => self.verify(v, ctx).await,
                // The executor answers confirmations and flattens groups.
                Action::Confirm(_) | Action::Parallel(_) => Ok(StepOutput::default()),
            }
        })
    }
}
