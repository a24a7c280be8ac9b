//! Shared harness: the daemon and image check with skip-or-fail, names, cleanup.

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use drctl_docker::{DockerClient, Poll};

pub const TEST_LABEL: &str = "org.drctl.test=1";
pub const PG_IMAGE: &str = "drctl-lab-postgres:1";
pub const REDIS_IMAGE: &str = "drctl-lab-redis:1";

/// The client, or `None` (after recording the skip) when no daemon answers or the image
/// is missing; with `DRCTL_LAB=1` that fails the test instead.
pub async fn lab(suite: &str, image: &str) -> Option<DockerClient> {
    let checked = async {
        let c = DockerClient::connect()?;
        c.daemon_info(Duration::from_secs(5)).await?;
        Ok::<_, drctl_docker::DockerError>(c)
    }
    .await;
    match checked {
        Ok(c) => {
            clean_leftovers_once();
            if docker_try(&["image", "inspect", image]).is_none() {
                return skip_or_fail(
                    suite,
                    &format!("image {image} missing (run scripts/lab.sh images)"),
                );
            }
            Some(c)
        }
        Err(e) => skip_or_fail(suite, &e.to_string()),
    }
}

/// Record a skipped suite (or fail under `DRCTL_LAB=1`).
pub fn skip_or_fail<T>(suite: &str, reason: &str) -> Option<T> {
    if std::env::var("DRCTL_LAB").as_deref() == Ok("1") {
        panic!("{suite}: {reason} (DRCTL_LAB=1: the lab must be up)");
    }
    skipped(suite, reason);
    None
}

/// Say that a suite was skipped and append it to the skipped file.
pub fn skipped(suite: &str, reason: &str) {
    eprintln!("skipping drctl-db {suite}: {reason}");
    let file = std::env::var("DRCTL_SKIPPED_FILE").unwrap_or_else(|_| {
        let cache = std::env::var("DRCTL_CACHE").unwrap_or_else(|_| {
            format!("{}/.cache/drctl", std::env::var("HOME").unwrap_or_default())
        });
        format!("{cache}/skipped.txt")
    });
    if let Some(dir) = std::path::Path::new(&file).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        let _ = writeln!(f, "drctl-db {suite}: {reason}");
    }
}

/// `let docker = lab!("suite", IMAGE);` returns from the test when skipped.
#[macro_export]
macro_rules! lab {
    ($suite:expr, $image:expr) => {
        match $crate::common::lab($suite, $image).await {
            Some(c) => c,
            None => return,
        }
    };
}

pub fn name(what: &str) -> String {
    format!("drctl-test-{}-{what}", std::process::id())
}

/// A fresh environment variable name holding `value` (tests run in parallel threads of
/// one process: each gets its own variable).
pub fn env_var(what: &str, value: &str) -> String {
    let var = format!("DRCTL_TEST_{}_{}", std::process::id(), what.to_uppercase());
    // Set before any thread reads it; each test uses its own name.
    std::env::set_var(&var, value);
    var
}

pub fn poll(secs: u64) -> Poll {
    Poll::new(Duration::from_secs(secs), Duration::from_millis(250))
}

/// Run the docker CLI; panics with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run the docker CLI with `input` on stdin.
pub fn docker_stdin(args: &[&str], input: &str) -> String {
    use std::process::Stdio;
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker CLI");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker_try(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What a test created, removed when dropped (panics included): containers, their helper
/// containers, volumes.
#[derive(Default)]
pub struct Cleanup {
    containers: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
}

impl Cleanup {
    /// `docker run -d` with the test label and a named volume at `mount`.
    pub fn run(
        &self,
        what: &str,
        mount: &str,
        extra: &[&str],
        image: &str,
        cmd: &[&str],
    ) -> String {
        let name = name(what);
        let volume = name.clone();
        self.volumes.lock().unwrap().push(volume.clone());
        docker(&["volume", "create", "--label", TEST_LABEL, &volume]);
        self.containers.lock().unwrap().push(name.clone());
        let vol = format!("{volume}:{mount}");
        let mut args = vec![
            "run", "-d", "--name", &name, "--label", TEST_LABEL, "-v", &vol,
        ];
        args.extend(extra);
        args.push(image);
        args.extend(cmd);
        docker(&args);
        name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let containers = self.containers.lock().unwrap().clone();
        for c in &containers {
            if let Some(ids) =
                docker_try(&["ps", "-aq", "--filter", &format!("label=org.drctl.for={c}")])
            {
                for id in ids.split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
                }
            }
        }
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let volumes = self.volumes.lock().unwrap().clone();
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
    }
}

fn clean_leftovers_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(clean_leftovers);
}

/// The pid in `drctl-test-<pid>-...` / `drctl-temp-redis-<pid>-...`, when that process is
/// gone (a leftover of an earlier run; a live pid may be a test running right now).
fn dead_owner(name: &str) -> bool {
    let rest = name
        .strip_prefix("drctl-test-")
        .or_else(|| name.strip_prefix("drctl-temp-redis-"));
    let Some(pid) = rest
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove what earlier runs of these tests left behind.
fn clean_leftovers() {
    let list = |args: &[&str]| -> Vec<String> {
        docker_try(args)
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let mut dead: Vec<String> = list(&[
        "ps",
        "-a",
        "--filter",
        "label=org.drctl.test=1",
        "--format",
        "{{.Names}}",
    ])
    .into_iter()
    .chain(list(&[
        "ps",
        "-a",
        "--filter",
        "label=org.drctl.temp=1",
        "--format",
        "{{.Names}}",
    ]))
    .filter(|n| dead_owner(n))
    .collect();
    dead.dedup();
    if !dead.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&dead)
            .output();
    }
    let vols: Vec<String> = list(&["volume", "ls", "-q", "--filter", "label=org.drctl.test=1"])
        .into_iter()
        .filter(|n| dead_owner(n))
        .collect();
    if !vols.is_empty() {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f"])
            .args(&vols)
            .output();
    }
}

/// A temporary file (removed when dropped) and its path.
pub fn temp_file() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().expect("temp file")
}
