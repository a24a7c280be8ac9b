//! `drctl run`, `resume`, `status` and `report` against a real dockerd, on private copies of
//! the lab stack.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{need_docker, run, Stack};

const UP: &str = "version: 1
objectives: { rto: 10m }
defaults: { timeout: 3m }
steps:
  - { id: up, kind: up, services: [app, postgres, redis] }
  - id: gates
    kind: parallel
    steps:
      - { id: pg, kind: health, check: { type: postgres, service: postgres } }
      - { id: redis, kind: health, check: { type: redis, service: redis } }
      - { id: app, kind: health, check: { type: docker, service: app } }
  - { id: app-http, kind: health, check: { type: http, url: 'http://127.0.0.1:${DRCTL_LAB_APP_PORT}/health' }, timeout: 1m }
";

#[test]
fn up_stop_start_restart_exec_and_a_removed_container() {
    if !need_docker("up_stop_start_restart_exec_and_a_removed_container") {
        return;
    }
    let st = Stack::new("ops");
    let up = st.runbook("up", UP);
    let out = run(st.drctl(&["run", &up]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCEEDED"));
    let app_before = st.container_id("app");
    assert!(!app_before.is_empty());

    let cycle = st.runbook(
        "cycle",
        "version: 1
steps:
  - { id: stop, kind: stop, services: [app, redis], grace: 5s }
  - { id: start, kind: start, services: [redis, app] }
  - { id: restart, kind: restart, services: [postgres] }
  - { id: pg, kind: health, check: { type: postgres, service: postgres }, timeout: 1m }
  - { id: write, kind: exec, service: postgres, command: [psql, -U, postgres, -d, app, -c, 'create table t(x int); insert into t values (7)'] }
  - { id: read, kind: health, check: { type: command, service: postgres, command: [sh, -c, 'test \"$(psql -U postgres -d app -Atc \"select x from t\")\" = 7'] }, timeout: 30s }
",
    );
    let out = run(st.drctl(&["run", &cycle]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("| stop | stop | ok | 1 |"),
        "{}",
        out.stdout
    );
    assert_eq!(
        st.container_id("app"),
        app_before,
        "start keeps the container"
    );

    // A service whose container is gone comes back through `up`.
    let rm = Command::new("docker")
        .args(["rm", "-f", &app_before])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let plan = run(st.drctl(&["plan", &up]));
    assert!(
        plan.stdout
            .contains("app -> no container (gone or never created)"),
        "{}",
        plan.stdout
    );
    let out = run(st.drctl(&["run", &up]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let app_after = st.container_id("app");
    assert!(!app_after.is_empty() && app_after != app_before);

    // Stopping a service that has no container is reported, not an error; starting one fails clearly.
    let gone = st.runbook("gone", "version: 1\nsteps:\n  - { id: stop-q, kind: stop, services: [qdrant] }\n  - { id: start-q, kind: start, services: [qdrant] }\n");
    let out = run(st.drctl(&["run", &gone]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("stop-q ok"), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("nothing to start: qdrant has no container; bring it up with an `up` step"),
        "{}",
        out.stdout
    );

    // status shows the containers and the last run.
    let out = run(st.drctl(&["status"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("stack `{}`", st.project)));
    assert!(out.stdout.contains("(running, healthy)"), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("qdrant") && l.ends_with("no container")),
        "{}",
        out.stdout
    );
}

#[test]
fn health_gate_timeout_says_what_it_saw() {
    if !need_docker("health_gate_timeout_says_what_it_saw") {
        return;
    }
    let st = Stack::new("gate");
    let port = common::free_port();
    let rb = st.runbook(
        "gate",
        &format!("version: 1\nsteps:\n  - {{ id: wait-port, kind: health, check: {{ type: tcp, port: {port} }}, timeout: 3s, interval: 500ms }}\n"),
    );
    let t = Instant::now();
    let out = run(st.drctl(&["run", &rb]));
    assert_eq!(out.code, 1);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(
        out.stdout.contains(&format!(
            "failed to connect to 127.0.0.1:{port}: still not accepting connections"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("after 2.9 s") || out.stdout.contains("after 3 s"),
        "{}",
        out.stdout
    );
}

#[test]
fn confirm_without_terminal_or_yes_is_refused() {
    if !need_docker("confirm_without_terminal_or_yes_is_refused") {
        return;
    }
    let st = Stack::new("confirm");
    let rb = st.runbook("c", "version: 1\nsteps:\n  - { id: ask, kind: confirm, message: Wipe it? }\n  - { id: after, kind: notify, message: x }\n");
    let out = run(st.drctl(&["run", &rb]).stdin(Stdio::null()));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(
            "this step asks \"Wipe it?\", but there is no terminal to answer it; pass --yes"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("| after | notify | skipped |"),
        "{}",
        out.stdout
    );
    let out = run(st.drctl(&["run", &rb, "--yes"]));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("confirmed by --yes"));
}

#[test]
fn unreachable_daemon_is_one_clear_message() {
    let st = Stack::new("nodaemon");
    let rb = st.runbook(
        "x",
        "version: 1\nsteps:\n  - { id: a, kind: stop, services: [app] }\n",
    );
    let out = run(st
        .drctl(&["run", &rb])
        .env("DOCKER_HOST", "unix:///nonexistent/drctl.sock"));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "error: failed to reach the Docker daemon at unix:///nonexistent/drctl.sock: "
        ),
        "{err}"
    );
    assert!(err.contains("set DOCKER_HOST"), "{err}");
}

/// The controller is killed (SIGKILL) in the middle of a run; a second run meanwhile is
/// refused; `drctl resume` finishes the run without redoing what was done.
#[test]
fn killed_run_resumes_and_concurrent_run_is_refused() {
    if !need_docker("killed_run_resumes_and_concurrent_run_is_refused") {
        return;
    }
    let st = Stack::new("resume");
    let out = run(st.drctl(&["run", &st.runbook("up", UP)]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let rb = st.runbook(
        "long",
        "version: 1
steps:
  - { id: count, kind: exec, service: postgres, command: [sh, -c, 'echo x >> /tmp/drctl-count'] }
  - { id: slow, kind: exec, service: postgres, command: [sleep, '8'] }
  - { id: after, kind: exec, service: postgres, command: [sh, -c, 'echo y >> /tmp/drctl-after'] }
",
    );
    let mut child = st
        .drctl(&["run", &rb, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the slow step has started (the journal says so).
    let state = st.dir.path().join("state/runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id = loop {
        assert!(Instant::now() < deadline, "the slow step never started");
        let newest = std::fs::read_dir(&state).ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .max()
        });
        if let Some(id) = newest {
            if st
                .events(&id)
                .iter()
                .any(|e| e["event"] == "step_started" && e["id"] == "slow")
            {
                break id;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // While it runs, a second run on the same stack is refused, naming the holder.
    let second = run(st.drctl(&["run", &rb]));
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "another drctl run holds stack `{}`: run {run_id} (`drctl run",
            st.project
        )),
        "{}",
        second.stderr
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let events = st.events(&run_id);
    assert!(!events.iter().any(|e| e["event"] == "run_finished"));

    let out = run(st.drctl(&["resume", &run_id]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("count done"), "{}", out.stderr);
    let counted = Command::new("docker")
        .args([
            "exec",
            &st.container_id("postgres"),
            "sh",
            "-c",
            "wc -l < /tmp/drctl-count; wc -l < /tmp/drctl-after",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec!["1", "1"],
        "no step done twice"
    );
    let report = run(st.drctl(&["report", &run_id, "--format", "json"]));
    let r: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["attempts"], 2);
    let slow_starts = st
        .events(&run_id)
        .iter()
        .filter(|e| e["event"] == "step_started" && e["id"] == "slow")
        .count();
    assert_eq!(slow_starts, 2, "the cut-off step ran again");
    // Resuming a finished run is refused.
    let again = run(st.drctl(&["resume", &run_id]));
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("already succeeded"));
}
