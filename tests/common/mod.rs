//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests run with the crate folder as working directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A `drctl` command run from the repository root, with a clean environment for drctl's own
/// variables so that the developer's shell cannot change the outcome.
pub fn drctl(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drctl"));
    c.current_dir(root()).args(args);
    for v in [
        "DRCTL_CONFIG",
        "DRCTL_LOG",
        "DRCTL_REPO",
        "DRCTL_FIXTURE_UNSET_PORT",
    ] {
        c.env_remove(v);
    }
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.borrow_mut().output().expect("drctl runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Record a skipped suite where scripts/test.sh prints it at the end.
pub fn skipped(suite: &str, reason: &str) {
    eprintln!("SKIPPED {suite}: {reason}");
    let dir = std::env::var("DRCTL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/drctl")
        });
    if std::fs::create_dir_all(&dir).is_ok() {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("skipped.txt"))
        {
            // One write per line: tests run in parallel.
            let _ = f.write_all(format!("{suite}: {reason}\n").as_bytes());
        }
    }
}

/// Whether a Docker daemon answers. Docker tests run for real in scripts/test.sh
/// (DRCTL_LAB=1: a missing daemon fails them); elsewhere they are skipped and say so.
pub fn need_docker(test: &str) -> bool {
    if Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var_os("DRCTL_LAB").is_none(),
        "DRCTL_LAB is set but no Docker daemon answers"
    );
    skipped(test, "no Docker daemon answers (run scripts/test.sh)");
    false
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private copy of the lab stack: its own compose project, volumes, network and ports,
/// with a drctl.yml and state folder in a temporary folder. Taken down (with volumes) on drop.
pub struct Stack {
    pub project: String,
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Stack {
    pub fn new(name: &str) -> Stack {
        let project = format!("drctl-test-{name}-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("DRCTL_LAB_APP_PORT".to_string(), free_port().to_string()),
            ("DRCTL_LAB_PG_PORT".to_string(), free_port().to_string()),
            ("DRCTL_LAB_REDIS_PORT".to_string(), free_port().to_string()),
            ("DRCTL_LAB_QDRANT_PORT".to_string(), free_port().to_string()),
        ];
        let compose = root().join("compose/lab.yml");
        let cfg = format!(
            "version: 1\nstack:\n  project: {project}\n  compose_files: [{}]\nrepository:\n  url: repo\nstate_dir: state\nruns_placeholder: 0\n",
            compose.display()
        )
        .replace("runs_placeholder: 0\n", "");
        std::fs::write(dir.path().join("drctl.yml"), cfg).unwrap();
        let s = Stack { project, dir, env };
        s.compose(&["down", "-v", "--remove-orphans"]);
        s
    }

    pub fn config(&self) -> String {
        self.dir.path().join("drctl.yml").display().to_string()
    }

    pub fn runbook(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(format!("{name}.yml"));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// `drctl --config <this stack> ARGS` with the stack's ports in the environment.
    pub fn drctl(&self, args: &[&str]) -> Command {
        let mut c = drctl(&["--config", &self.config()]);
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn compose(&self, args: &[&str]) -> std::process::Output {
        let program =
            std::env::var("DRCTL_LAB_COMPOSE").unwrap_or_else(|_| "docker-compose".into());
        let mut parts = program.split_whitespace();
        let mut c = Command::new(parts.next().unwrap());
        c.args(parts)
            .args([
                "-p",
                &self.project,
                "-f",
                root().join("compose/lab.yml").to_str().unwrap(),
            ])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c.output().unwrap()
    }

    /// Container id of a service ("" when none).
    pub fn container_id(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn port(&self, var: &str) -> String {
        self.env.iter().find(|(k, _)| k == var).unwrap().1.clone()
    }

    pub fn events(&self, run_id: &str) -> Vec<serde_json::Value> {
        let p = self
            .dir
            .path()
            .join("state/runs")
            .join(run_id)
            .join("journal.jsonl");
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // drctl's temporary containers of this stack's volumes (a test that killed drctl
        // mid-run may leave some): they would keep the volumes from being removed.
        if let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=org.drctl.temp",
                "--format",
                "{{.ID}} {{.Label \"org.drctl.volume\"}}",
            ])
            .output()
        {
            let prefix = format!("{}_", self.project);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((id, volume)) = line.split_once(' ') {
                    if volume.starts_with(&prefix) {
                        let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
                    }
                }
            }
        }
        self.compose(&["down", "-v", "--remove-orphans", "-t", "1"]);
    }
}

/// A private stack with the shipped runbooks and the lab's three targets (sessions volume,
/// PostgreSQL, Redis), brought up and healthy.
pub fn shipped_stack(name: &str) -> Stack {
    let mut st = Stack::new(name);
    st.env
        .push(("DRCTL_LAB_PG_PASSWORD".into(), "drctl-lab".into()));
    let cfg = std::fs::read_to_string(st.config()).unwrap();
    std::fs::write(
        st.config(),
        format!(
            "{cfg}runbooks_dir: {}\ntargets:\n  sessions: {{ type: volume, volume: app-sessions, stop: [app] }}\n  postgres: {{ type: postgres, service: postgres, password_env: DRCTL_LAB_PG_PASSWORD }}\n  redis: {{ type: redis, service: redis }}\n",
            root().join("runbooks").display()
        ),
    )
    .unwrap();
    let up = st.runbook("up", "version: 1\ndefaults: { timeout: 3m }\nsteps:\n  - { id: up, kind: up, services: [app, postgres, redis] }\n  - { id: app, kind: health, check: { type: docker, service: app } }\n");
    let out = run(st.drctl(&["run", &up]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    st
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failing test does
/// not leave it running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repository key of a set's item (`backups show SET --json`).
pub fn item_key(st: &Stack, set: &str, item: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&run(st.drctl(&["backups", "show", set, "--json"])).stdout).unwrap();
    m["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == item)
        .unwrap_or_else(|| panic!("no item {item} in {m}"))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// With the stack's `sessions` volume target, whose object `key` in `set` is damaged: a
/// restore fails naming the set and the object, and the volume keeps what it held (no
/// staging folder left either).
pub fn damaged_restore_is_refused(st: &Stack, set: &str, key: &str) {
    app_exec(st, "echo newer > /data/sessions/p");
    let rb = st.runbook(
        "r",
        "version: 1\nbackup: latest\nsteps:\n  - { id: restore, kind: restore, targets: [sessions] }\n",
    );
    let out = run(st.drctl(&["run", &rb]));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(set) && out.stdout.contains(key),
        "the message names the set and the object: {}",
        out.stdout
    );
    assert_eq!(
        app_exec(st, "cat /data/sessions/p").trim(),
        "newer",
        "nothing was destroyed"
    );
    assert!(
        !app_exec(st, "ls -A /data/sessions").contains(".drctl-staging"),
        "no staging folder is left"
    );
}

/// Whether the stack's container of `service` runs (`docker inspect`'s `.State.Running`).
pub fn service_running(st: &Stack, service: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.State.Running}}",
            &st.container_id(service),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// Run a shell script in the stack's `app` container; its stdout (it must succeed).
pub fn app_exec(st: &Stack, script: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", &st.container_id("app"), "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
