//! `drctl doctor`: one line per thing a run needs, with what to do about each failure.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use drctl_core::config::{Config, KeySource, RepoLocation};
use drctl_core::source::process_env;
use drctl_core::{load_runbook, Diagnostics};
use drctl_docker::DockerClient;
use serde::Serialize;

use crate::context;
use crate::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}
fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}
fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}
fn skip(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Skip,
        detail: detail.into(),
        fix: None,
    }
}

/// Which compose CLI is installed: v2 plugin first, as users mostly have it.
pub async fn compose_cli() -> Option<(String, String)> {
    let try_cmd = |prog: &'static str, args: &'static [&'static str]| async move {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(prog)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(v) = try_cmd("docker", &["compose", "version", "--short"]).await {
        return Some(("docker compose".into(), v));
    }
    if let Some(v) = try_cmd("docker-compose", &["version", "--short"]).await {
        return Some(("docker-compose".into(), v));
    }
    None
}

/// Create, write, fsync and remove a probe file in a folder.
fn probe_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".drctl-doctor-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"drctl doctor probe\n")?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    res.map_err(|e| format!("failed to write in {}: {e}", dir.display()))
}

fn repository_checks(cfg: &Config, checks: &mut Vec<Check>) {
    match cfg.repo_location() {
        Err(m) => checks.push(fail("repository", m, "fix `repository.url` in drctl.yml")),
        Ok(RepoLocation::Local { path }) => match probe_dir(&path) {
            Ok(()) => checks.push(ok(
                "repository",
                format!("local folder {} is writable", path.display()),
            )),
            Err(m) => checks.push(fail(
                "repository",
                m,
                "make the folder writable, or point `repository.url` elsewhere",
            )),
        },
        Ok(RepoLocation::S3 { bucket, prefix }) => {
            let env_creds = process_env("AWS_ACCESS_KEY_ID").is_some()
                && process_env("AWS_SECRET_ACCESS_KEY").is_some();
            match &cfg.repository.credentials_file {
                Some(f) => {
                    let f = cfg.resolve(f);
                    match std::fs::metadata(&f) {
                        Ok(_) => checks.push(ok("credentials", format!("credentials file {}", f.display()))),
                        Err(e) => checks.push(fail("credentials", format!("failed to read credentials file {}: {e}", f.display()), "create it, or fix `repository.credentials_file`")),
                    }
                }
                None if env_creds => checks.push(ok("credentials", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set")),
                None => checks.push(fail("credentials", "no S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set and no `credentials_file`", "export both variables, or name a credentials file in drctl.yml")),
            }
            let endpoint = cfg
                .repository
                .endpoint
                .clone()
                .unwrap_or_else(|| "https://s3.amazonaws.com".into());
            match tcp_probe(&endpoint) {
                Ok(addr) => checks.push(ok(
                    "repository",
                    format!("s3://{bucket}/{prefix}: endpoint {endpoint} answers on {addr}"),
                )),
                Err(m) => checks.push(fail(
                    "repository",
                    format!("s3://{bucket}/{prefix}: {m}"),
                    "start the S3 server, or fix `repository.endpoint`",
                )),
            }
        }
    }
    match &cfg.repository.encryption {
        None => checks.push(skip(
            "encryption key",
            "encryption is off (`repository.encryption` not set)",
        )),
        Some(KeySource::KeyEnv(var)) => match process_env(var) {
            Some(v) if !v.trim().is_empty() => {
                checks.push(ok("encryption key", format!("key from ${var} is set")))
            }
            _ => checks.push(fail(
                "encryption key",
                format!("${var} is not set"),
                format!("export {var} with the repository key"),
            )),
        },
        Some(KeySource::KeyFile(f)) => {
            let f = cfg.resolve(f);
            match std::fs::read(&f) {
                Ok(b) if !b.is_empty() => checks.push(ok(
                    "encryption key",
                    format!("key file {} is readable", f.display()),
                )),
                Ok(_) => checks.push(fail(
                    "encryption key",
                    format!("key file {} is empty", f.display()),
                    "put the repository key in it",
                )),
                Err(e) => checks.push(fail(
                    "encryption key",
                    format!("failed to read key file {}: {e}", f.display()),
                    "create it, or fix `repository.encryption.key_file`",
                )),
            }
        }
    }
}

/// Connect to an http(s) endpoint's host and port.
fn tcp_probe(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("http://")
        .map(|r| (r, 80))
        .or_else(|| endpoint.strip_prefix("https://").map(|r| (r, 443)));
    let Some((rest, default_port)) = rest else {
        return Err(format!(
            "endpoint `{endpoint}` is not an http:// or https:// URL"
        ));
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    use std::net::ToSocketAddrs;
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("failed to resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("failed to resolve {addr}"))?;
    std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3))
        .map_err(|e| format!("failed to connect to {addr}: {e}"))?;
    Ok(addr)
}

pub async fn run(config: Option<&Path>, json: bool) -> Result<(), CliError> {
    let loaded = context::load(config);
    let mut checks = Vec::new();

    match (&loaded.config_path, &loaded.config) {
        (None, _) => checks.push(fail(
            "config",
            "no drctl.yml found here or in a parent folder",
            "create one (see README), or pass --config FILE / set DRCTL_CONFIG",
        )),
        (Some(p), Some(_)) if loaded.diags.is_empty() => {
            checks.push(ok("config", format!("{} is valid", p.display())))
        }
        (Some(p), _) => checks.push(fail(
            "config",
            format!(
                "{} has {} problem(s):\n{}",
                p.display(),
                loaded.diags.len(),
                indent(&loaded.diags)
            ),
            "fix them; `drctl validate` lists them with file:line:column",
        )),
    }

    let client = DockerClient::connect();
    let daemon = match &client {
        Ok(c) => c
            .daemon_info(Duration::from_secs(5))
            .await
            .map(|i| (c, i))
            .map_err(|e| e.short()),
        Err(e) => Err(e.short()),
    };
    match &daemon {
        Ok((c, info)) => checks.push(ok("docker daemon", format!("Docker {} (API {}) at {}", info.version, info.api_version, c.host()))),
        Err(e) => checks.push(fail("docker daemon", e.clone(), "start dockerd (scripts/lab.sh docker does it here), or set DOCKER_HOST to the daemon's socket")),
    }

    match compose_cli().await {
        Some((cli, v)) => checks.push(ok("compose cli", format!("{cli} {v}"))),
        None => checks.push(fail("compose cli", "neither `docker compose` (v2) nor `docker-compose` (v1) runs", "install the docker compose plugin (or docker-compose); `up` of gone services needs one, unless specs were captured at backup time")),
    }

    if let Some(cfg) = &loaded.config {
        match &loaded.compose {
            Some(m) => checks.push(ok("compose files", format!("{}: {} service(s): {}", m.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "), m.services.len(), m.service_names().join(", ")))),
            None if cfg.stack.compose_files.is_empty() => checks.push(warn("compose files", "none configured", "add `stack.compose_files` so that runbooks are checked against the services and gone services can be brought up")),
            None => {}
        }
        if let Ok((c, _)) = &daemon {
            match c.project_containers(&cfg.stack.project).await {
                Ok(list) if list.is_empty() => checks.push(warn("stack", format!("project `{}` has no containers", cfg.stack.project), "the stack is down or was never started; `drctl run complete-failure` brings it back")),
                Ok(list) => {
                    let running = list.iter().filter(|c| c.state == "running").count();
                    let unhealthy: Vec<&str> = list.iter().filter(|c| c.health.as_deref() == Some("unhealthy")).map(|c| c.name.as_str()).collect();
                    if unhealthy.is_empty() {
                        checks.push(ok("stack", format!("project `{}`: {running} of {} container(s) running", cfg.stack.project, list.len())));
                    } else {
                        checks.push(warn("stack", format!("project `{}`: {running} of {} running; unhealthy: {}", cfg.stack.project, list.len(), unhealthy.join(", ")), "see `docker inspect` of those containers"));
                    }
                }
                Err(e) => checks.push(fail("stack", e.to_string(), "check the daemon's logs")),
            }
        } else {
            checks.push(skip("stack", "Docker daemon unreachable"));
        }
        repository_checks(cfg, &mut checks);
        let state = cfg.state_dir();
        match probe_dir(&state) {
            Ok(()) => checks.push(ok(
                "state folder",
                format!("{} is writable (journals, locks, reports)", state.display()),
            )),
            Err(m) => checks.push(fail(
                "state folder",
                m,
                "make it writable, or set `state_dir` in drctl.yml",
            )),
        }
        let dir = cfg.runbooks_dir();
        let files = crate::validate::runbook_files(&dir);
        if files.is_empty() {
            checks.push(warn(
                "runbooks",
                format!("no runbooks in {}", dir.display()),
                "add runbooks there (see runbooks/ in the drctl repository)",
            ));
        } else {
            let mut diags = Diagnostics::default();
            for f in &files {
                if let Err(d) = load_runbook(f, &process_env, loaded.ctx()) {
                    diags.extend(d);
                }
            }
            if diags.is_empty() {
                checks.push(ok(
                    "runbooks",
                    format!("{} valid runbook(s) in {}", files.len(), dir.display()),
                ));
            } else {
                checks.push(fail(
                    "runbooks",
                    format!(
                        "{} problem(s) in {}:\n{}",
                        diags.len(),
                        dir.display(),
                        indent(&diags)
                    ),
                    "run `drctl validate` and fix them",
                ));
            }
        }
        for n in &cfg.notifications {
            if process_env(&n.url_env).is_none_or(|v| v.is_empty()) {
                checks.push(warn(
                    "notifications",
                    format!("`{}`: ${} is not set", n.name, n.url_env),
                    format!(
                        "export {} with the webhook URL, or notifications `{}` are skipped",
                        n.url_env, n.name
                    ),
                ));
            }
        }
    }

    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": failed == 0, "checks": checks}))
                .expect("json")
        );
    } else {
        for c in &checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            println!("{tag}  {:<15} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("      {:<15} -> {f}", "");
            }
        }
    }
    if failed > 0 {
        let dependency_down = checks
            .iter()
            .any(|c| c.status == Status::Fail && c.name != "config" && c.name != "runbooks");
        let msg = format!("{failed} check(s) failed");
        return Err(if dependency_down {
            CliError::Unavailable(msg)
        } else {
            CliError::Invalid(Diagnostics::default())
        });
    }
    Ok(())
}

fn indent(d: &Diagnostics) -> String {
    d.iter()
        .map(|x| format!("        {x}"))
        .collect::<Vec<_>>()
        .join("\n")
}
