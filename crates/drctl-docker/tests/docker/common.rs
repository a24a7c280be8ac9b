//! Shared test harness: daemon check with skip-or-fail, names, labels, cleanup.

use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use drctl_docker::DockerClient;

pub const TEST_LABEL: &str = "org.drctl.test=1";
pub const BASE_IMAGE: &str = "drctl-lab-base:1";
/// A shell loop that ends promptly on SIGTERM (PID 1 ignores signals without a handler).
pub const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

/// Leftovers of earlier runs older than this are removed (younger ones may belong to
/// tests running right now, in this or another checkout).
const LEFTOVER_AGE: Duration = Duration::from_secs(10 * 60);

/// The client, or `None` (after recording the skip) when no daemon answers; with
/// `DRCTL_LAB=1` an unreachable daemon fails the test instead.
pub async fn lab(suite: &str) -> Option<DockerClient> {
    let checked = async {
        let c = DockerClient::connect()?;
        c.daemon_info(Duration::from_secs(5)).await?;
        Ok::<_, drctl_docker::DockerError>(c)
    }
    .await;
    match checked {
        Ok(c) => {
            clean_leftovers_once();
            if !image_exists(BASE_IMAGE) {
                let reason = format!("image {BASE_IMAGE} missing (run scripts/lab.sh images)");
                return skip_or_fail(suite, &reason);
            }
            Some(c)
        }
        Err(e) => skip_or_fail(suite, &e.to_string()),
    }
}

fn skip_or_fail<T>(suite: &str, reason: &str) -> Option<T> {
    if std::env::var("DRCTL_LAB").as_deref() == Ok("1") {
        panic!("{suite}: {reason} (DRCTL_LAB=1: the lab must be up)");
    }
    eprintln!("skipping drctl-docker {suite}: {reason}");
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
        let _ = writeln!(f, "drctl-docker {suite}: {reason}");
    }
    None
}

/// `let client = lab!("suite");` — returns from the test when skipped.
#[macro_export]
macro_rules! lab {
    ($suite:expr) => {
        match $crate::common::lab($suite).await {
            Some(c) => c,
            None => return,
        }
    };
}

pub fn name(what: &str) -> String {
    format!("drctl-test-{}-{what}", std::process::id())
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

/// Run `cmd` in a throwaway container that mounts `volume` read-only at `/v`.
pub fn in_volume_ro(volume: &str, cmd: &[&str]) -> String {
    let mount = format!("{volume}:/v:ro");
    let mut args = vec![
        "run", "--rm", "--label", TEST_LABEL, "-v", &mount, BASE_IMAGE,
    ];
    args.extend_from_slice(cmd);
    docker(&args)
}

/// Run a shell script in a throwaway container that mounts `volume` read-write at `/v`.
pub fn sh_in_volume(volume: &str, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--label",
        TEST_LABEL,
        "-v",
        &format!("{volume}:/v"),
        BASE_IMAGE,
        "sh",
        "-c",
        script,
    ])
}

pub fn docker_try(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn image_exists(image: &str) -> bool {
    docker_try(&["image", "inspect", image]).is_some()
}

pub fn state(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", container])
}

/// What a test created, removed when dropped (panics included).
#[derive(Default)]
pub struct Cleanup {
    containers: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
    /// (compose command line, args up to the subcommand)
    projects: Mutex<Vec<Vec<String>>>,
}

impl Cleanup {
    pub fn container(&self, n: &str) -> String {
        self.containers.lock().unwrap().push(n.to_string());
        n.to_string()
    }
    pub fn volume(&self, n: &str) -> String {
        self.volumes.lock().unwrap().push(n.to_string());
        n.to_string()
    }
    pub fn network(&self, n: &str) -> String {
        self.networks.lock().unwrap().push(n.to_string());
        n.to_string()
    }
    pub fn compose_project(&self, cmd: Vec<String>) {
        self.projects.lock().unwrap().push(cmd);
    }

    /// `docker run -d` with the test label; the container is cleaned up.
    pub fn run(&self, name: &str, extra: &[&str], image: &str, cmd: &[&str]) -> String {
        self.container(name);
        let mut args = vec!["run", "-d", "--name", name, "--label", TEST_LABEL];
        args.extend(extra);
        args.push(image);
        args.extend(cmd);
        docker(&args)
    }

    /// An image built from `dockerfile` (no context) with the test label; removed.
    pub fn build_image(&self, name: &str, dockerfile: &str) -> String {
        self.images.lock().unwrap().push(name.to_string());
        let mut child = Command::new("docker")
            .args(["build", "-q", "--label", TEST_LABEL, "-t", name, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dockerfile.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker build {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        name.to_string()
    }

    /// A labelled volume.
    pub fn create_volume(&self, name: &str, labels: &[&str]) -> String {
        self.volume(name);
        let mut args = vec!["volume", "create", "--label", TEST_LABEL];
        for l in labels {
            args.push("--label");
            args.push(l);
        }
        args.push(name);
        docker(&args)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.projects.lock().unwrap().iter() {
            let _ = Command::new(&p[0])
                .args(&p[1..])
                .args(["down", "-v", "--remove-orphans"])
                .output();
        }
        let containers = self.containers.lock().unwrap().clone();
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        // drctl's temporary containers for these volumes, should any be left.
        for v in self.volumes.lock().unwrap().iter() {
            if let Some(ids) = docker_try(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=org.drctl.volume={v}"),
            ]) {
                for id in ids.split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
                }
            }
        }
        let volumes = self.volumes.lock().unwrap().clone();
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
        for n in self.networks.lock().unwrap().iter() {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
        let images = self.images.lock().unwrap().clone();
        if !images.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&images)
                .output();
        }
    }
}

fn clean_leftovers_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(clean_leftovers);
}

fn older_than(created: &str, age: Duration) -> bool {
    // `docker ... --format {{.CreatedAt}}` for volumes is RFC 3339; for containers and
    // networks it is "2026-01-02 03:04:05 +0000 UTC".
    let ts = created.parse::<jiff::Timestamp>().ok().or_else(|| {
        let mut parts = created.split_whitespace();
        let (d, t, off) = (parts.next()?, parts.next()?, parts.next()?);
        let t = t.split('.').next()?;
        format!("{d}T{t}{}:{}", &off[..3], &off[3..])
            .parse::<jiff::Timestamp>()
            .ok()
    });
    match ts {
        Some(ts) => jiff::Timestamp::now().duration_since(ts).as_secs() as u64 > age.as_secs(),
        None => false,
    }
}

/// Remove what earlier runs of these suites left behind (label `org.drctl.test=1` and a
/// `drctl-test-` name, or drctl's temporary containers of such volumes), when older than a
/// few minutes. Other labelled resources (other suites' scratch stacks) are not ours.
fn clean_leftovers() {
    let listed = |args: &[&str]| -> Vec<(String, String)> {
        docker_try(args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let mut containers: Vec<String> = listed(&[
        "ps",
        "-a",
        "--filter",
        "label=org.drctl.test=1",
        "--filter",
        "name=drctl-test-",
        "--format",
        "{{.ID}}|{{.CreatedAt}}",
    ])
    .into_iter()
    .filter(|(_, c)| older_than(c, LEFTOVER_AGE))
    .map(|(id, _)| id)
    .collect();
    let temps: HashMap<String, String> = listed(&[
        "ps",
        "-a",
        "--filter",
        "label=org.drctl.temp=1",
        "--format",
        "{{.ID}}|{{.CreatedAt}}|{{.Label \"org.drctl.volume\"}}",
    ])
    .into_iter()
    .collect();
    for (id, rest) in temps {
        let (created, vol) = rest.split_once('|').unwrap_or((&rest, ""));
        if vol.starts_with("drctl-test-") && older_than(created, LEFTOVER_AGE) {
            containers.push(id);
        }
    }
    if !containers.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&containers)
            .output();
    }
    // `volume ls` shows no creation time: ask each one.
    let names = docker_try(&["volume", "ls", "-q", "--filter", "label=org.drctl.test=1"])
        .unwrap_or_default();
    for v in names.lines().filter(|v| v.starts_with("drctl-test-")) {
        if let Some(c) = docker_try(&["volume", "inspect", "-f", "{{.CreatedAt}}", v]) {
            if older_than(&c, LEFTOVER_AGE) {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f", v])
                    .output();
            }
        }
    }
    for (id, created) in listed(&[
        "network",
        "ls",
        "--filter",
        "label=org.drctl.test=1",
        "--filter",
        "name=drctl-test-",
        "--format",
        "{{.ID}}|{{.CreatedAt}}",
    ]) {
        if older_than(&created, LEFTOVER_AGE) {
            let _ = Command::new("docker").args(["network", "rm", &id]).output();
        }
    }
}

/// A free port on loopback (racy, good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A checksum of a volume's tree (names, types, modes, owners, sizes, link targets, link
/// counts, contents) computed inside a container, and the listing it covers.
pub fn tree_checksum(volume: &str) -> (String, String) {
    let script = r#"cd /v && {
      find . \( -type f -printf '%p|f|%m|%U:%G|%s|%n\n' \) -o \( ! -type f -printf '%p|%y|%m|%U:%G|%l\n' \) | LC_ALL=C sort
      find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    } > /tmp/listing && sha256sum < /tmp/listing | cut -c1-64 && cat /tmp/listing"#;
    let out = in_volume_ro(volume, &["sh", "-c", script]);
    let (sum, listing) = out.split_once('\n').unwrap_or((&out, ""));
    (sum.to_string(), listing.to_string())
}

#[test]
fn leftover_ages_parse_both_docker_time_formats() {
    let day = Duration::from_secs(86400);
    assert!(older_than("2020-01-02 03:04:05 +0000 UTC", day));
    assert!(older_than("2020-01-02T03:04:05Z", day));
    assert!(older_than("2020-01-02 03:04:05.123 +0200 CEST", day));
    let now = jiff::Timestamp::now().to_string();
    assert!(!older_than(&now, Duration::from_secs(600)));
    assert!(!older_than("garbage", day), "unparsable: keep it");
}

/// A script (for [`sh_in_volume`]) that fills a volume with what archives get wrong:
/// owners 999 and 1000, modes 0600 / setuid / setgid, symlinks (relative, absolute,
/// dangling), a hard link, a fifo, empty directories, a path longer than a ustar header
/// holds, odd names, random data, and, with `sparse_mib`, a sparse file of that many MiB
/// with data at its start, middle and end (two holes). The root is 999:999 0750.
pub fn populate(sparse_mib: Option<u64>) -> String {
    let mut s = String::from(
        r#"set -e; cd /v
mkdir -p empty/nested-empty a/b/c setgid
chmod 2775 setgid; chown 999:999 setgid
echo secret > a/secret; chmod 0600 a/secret; chown 999:999 a/secret
touch -d '2020-01-02 03:04:05' a/secret
printf '#!/bin/sh\necho hi\n' > a/b/run.sh; chmod 4755 a/b/run.sh; chown 1000:1000 a/b/run.sh
echo in-setgid > setgid/f; chown 1000:999 setgid/f
ln -s ../secret a/b/rel-link
ln -s /nowhere/at/all dangling
ln -s a/b/c dir-link
ln a/secret hardlink
mkfifo a/fifo
p="deep/$(printf 'x%.0s' $(seq 1 120))/$(printf 'y%.0s' $(seq 1 90))"; mkdir -p "$p"; echo deep > "$p/file"
echo spaces > "name with spaces"; echo u > "ünïcödé"; echo dot > .hidden
dd if=/dev/urandom of=random.bin bs=1M count=3 2>/dev/null
"#,
    );
    if let Some(mib) = sparse_mib {
        s.push_str(&format!(
            r#"printf start > sparse.img
truncate -s {mib}M sparse.img
printf middle | dd of=sparse.img bs=1 seek=$(({mib} * 524288)) conv=notrunc 2>/dev/null
printf end | dd of=sparse.img bs=1 seek=$(({mib} * 1048576 - 3)) conv=notrunc 2>/dev/null
"#
        ));
    }
    s.push_str("touch -d '2021-05-06 07:08:09' a/b\nchown 999:999 /v; chmod 0750 /v\n");
    s
}
