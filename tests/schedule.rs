//! `drctl schedule` on private copies of the lab stack, against a real dockerd: a job fired
//! by its cron expression, the lock shared with `drctl run`, the metrics endpoint, JSON logs,
//! pruning; a job killed (SIGKILL) and one interrupted (SIGTERM past the grace period) in
//! the middle of a backup leave no complete-looking set; SIGTERM within the grace period
//! lets the job finish.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{app_exec, free_port, need_docker, run, service_running, Stack};

const UP: &str = "version: 1
defaults: { timeout: 3m }
steps:
  - { id: up, kind: up, services: [app, postgres, redis] }
  - { id: app, kind: health, check: { type: docker, service: app } }
";

const SNAP: &str = "version: 1
objectives: { rto: 30m, rpo: 1h }
steps:
  - { id: backup, kind: backup, targets: [sessions], tag: scheduled, timeout: 10m }
";

/// A private stack, up, with a volume target, a retention of one set and one schedule
/// `snap` running the SNAP runbook at `cron`.
fn stack(name: &str, cron: &str) -> Stack {
    let st = Stack::new(name);
    let snap = st.runbook("snap", SNAP);
    let cfg = std::fs::read_to_string(st.config()).unwrap();
    std::fs::write(
        st.config(),
        format!(
            "{cfg}targets:\n  sessions: {{ type: volume, volume: app-sessions, stop: [app] }}\nretention: {{ keep_last: 1 }}\nschedules:\n  - {{ name: snap, cron: \"{cron}\", runbook: {snap}, prune: true }}\n"
        ),
    )
    .unwrap();
    let out = run(st.drctl(&["run", &st.runbook("up", UP)]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    st
}

fn sets(st: &Stack) -> Vec<serde_json::Value> {
    let out = run(st.drctl(&["backups", "list", "--json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn complete(st: &Stack) -> Vec<String> {
    sets(st)
        .iter()
        .filter(|s| s["complete"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `drctl schedule ARGS` in the background, its stderr in a file.
fn spawn(st: &Stack, args: &[&str], log: &Path) -> Child {
    let mut c = st.drctl(&["schedule"]);
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    c.spawn().unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a child to exit (at most `limit`); its exit code and stdout.
fn wait_exit(child: &mut Child, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (status.code().unwrap_or(-1), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("drctl schedule did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Files being written into sets of the local repository (the local backend writes
/// `.NAME.tmp-XXXX` and renames it when the object is whole); a SIGKILL leaves them behind.
fn objects_in_flight(st: &Stack) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(sets) = std::fs::read_dir(st.dir.path().join("repo/sets")) else {
        return out;
    };
    for s in sets.flatten() {
        let Ok(objects) = std::fs::read_dir(s.path().join("objects")) else {
            continue;
        };
        for o in objects.flatten() {
            if o.file_name().to_string_lossy().contains(".tmp-") {
                out.push(o.path());
            }
        }
    }
    out
}

/// Wait until a backup started after `before` (a list of objects in flight then) is
/// writing its first object, and has written some of it.
fn wait_for_backup(st: &Stack, before: &[PathBuf]) {
    wait_for("the backup to be written", Duration::from_secs(60), || {
        objects_in_flight(st)
            .iter()
            .any(|p| !before.contains(p) && std::fs::metadata(p).is_ok_and(|m| m.len() > 4 << 20))
    });
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.contains("Content-Type: text/plain; version=0.0.4"),
        "{out}"
    );
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every line of a log file is a JSON object; returns them.
fn json_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("error: "))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

fn logged(lines: &[serde_json::Value], needle: &str) -> bool {
    lines
        .iter()
        .any(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
}

#[test]
fn cron_job_runs_prunes_shares_the_lock_and_exports_metrics() {
    if !need_docker("cron_job_runs_prunes_shares_the_lock_and_exports_metrics") {
        return;
    }
    let st = stack("sched", "* * * * *");
    app_exec(&st, "echo hello > /data/sessions/a");
    let logs = tempfile::tempdir().unwrap();

    // A run holding the stack: the job is skipped, counted, and says who holds it.
    let slow = st.runbook(
        "slow",
        "version: 1\nsteps:\n  - { id: slow, kind: exec, service: postgres, command: [sleep, '5'] }\n",
    );
    let mut holder = st
        .drctl(&["run", &slow])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = st
        .dir
        .path()
        .join(format!("state/locks/{}.lock", st.project));
    wait_for("the run to take the lock", Duration::from_secs(30), || {
        // The file keeps the last holder's details after release: wait for this run's.
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("drctl run {slow}")))
    });
    let log = logs.path().join("skip.log");
    let out = run(st
        .drctl(&["schedule", "--once", "--job", "snap"])
        .stderr(std::fs::File::create(&log).unwrap()));
    assert_eq!(out.code, 4, "{}", std::fs::read_to_string(&log).unwrap());
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(summary["result"], "skipped", "{summary}");
    let lines = json_lines(&log);
    assert!(
        logged(&lines, "job skipped: another drctl run holds stack"),
        "{lines:?}"
    );
    assert!(holder.wait().unwrap().success());

    // An older set, for the prune to remove.
    let out = run(st.drctl(&["backup", "--tag", "old"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let old = out.stdout.split_whitespace().nth(2).unwrap().to_string();

    // The daemon: the job fires at the next minute.
    let port = free_port();
    let log = logs.path().join("daemon.log");
    let mut child = spawn(
        &st,
        &[
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--catch-up",
            "never",
        ],
        &log,
    );
    wait_for("the metrics endpoint", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let m = scrape(port);
    assert!(
        sample(&m, "drctl_job_next_run_timestamp_seconds{job=\"snap\"}").is_some(),
        "{m}"
    );
    assert_eq!(
        sample(&m, "drctl_job_last_success_timestamp_seconds{job=\"snap\"}"),
        Some(0.0),
        "{m}"
    );
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    wait_for(
        "a scheduled run to succeed",
        Duration::from_secs(100),
        || {
            sample(
                &scrape(port),
                "drctl_job_runs_total{job=\"snap\",result=\"success\"}",
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    let m = scrape(port);
    for help in [
        "# HELP drctl_job_last_success_timestamp_seconds ",
        "# TYPE drctl_job_last_success_timestamp_seconds gauge",
        "# TYPE drctl_job_last_duration_seconds gauge",
        "# TYPE drctl_job_runs_total counter",
        "# TYPE drctl_job_bytes_total counter",
        "# TYPE drctl_job_running gauge",
    ] {
        assert!(m.contains(help), "{help}\n{m}");
    }
    let last = sample(&m, "drctl_job_last_success_timestamp_seconds{job=\"snap\"}").unwrap();
    assert!(last >= started, "{m}");
    assert!(
        sample(&m, "drctl_job_last_duration_seconds{job=\"snap\"}").unwrap() > 0.0,
        "{m}"
    );
    assert!(
        sample(&m, "drctl_job_bytes_total{job=\"snap\"}").unwrap() > 0.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "drctl_job_runs_total{job=\"snap\",result=\"failure\"}"),
        Some(0.0),
        "{m}"
    );
    // The set is there and complete; the prune removed the older one (keep_last: 1).
    let all = sets(&st);
    let scheduled: Vec<&serde_json::Value> = all
        .iter()
        .filter(|s| s["complete"] == true && s["tags"] == serde_json::json!(["scheduled"]))
        .collect();
    assert!(!scheduled.is_empty(), "{all:?}");
    assert!(
        !all.iter().any(|s| s["id"] == old.as_str()),
        "pruned: {all:?}"
    );

    // SIGTERM while idle: a clean, quick exit.
    if sample(&scrape(port), "drctl_job_running{job=\"snap\"}") == Some(1.0) {
        wait_for("the job to end", Duration::from_secs(60), || {
            sample(&scrape(port), "drctl_job_running{job=\"snap\"}") == Some(0.0)
        });
    }
    signal(&child, "-TERM");
    let (code, _) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(code, 0, "{}", std::fs::read_to_string(&log).unwrap());
    let lines = json_lines(&log);
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()
            && l["level"].is_string()
            && l["message"].is_string()),
        "{lines:?}"
    );
    let ended = lines
        .iter()
        .find(|l| l["message"] == "job ended")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(ended["job"], "snap");
    assert_eq!(ended["result"], "success");
    assert!(
        lines
            .iter()
            .any(|l| l["step"] == "backup" && l["status"] == "ok" && l["run_id"].is_string()),
        "executor events are logged with the step and run: {lines:?}"
    );
    assert!(logged(&lines, "pruned: removed"), "{lines:?}");
    assert!(logged(&lines, "drctl schedule stopped"), "{lines:?}");
    // The job's run is an ordinary run: its report is there.
    let run_id = ended_run_id(&lines);
    let report = run(st.drctl(&["report", &run_id, "--format", "json"]));
    let r: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(r["status"], "succeeded");
}

fn ended_run_id(lines: &[serde_json::Value]) -> String {
    lines
        .iter()
        .find(|l| l["message"] == "run started")
        .and_then(|l| l["run_id"].as_str())
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string()
}

#[test]
fn killed_or_interrupted_backup_leaves_no_complete_set_and_the_next_run_succeeds() {
    if !need_docker("killed_or_interrupted_backup_leaves_no_complete_set_and_the_next_run_succeeds")
    {
        return;
    }
    // A cron expression that does not fire during the test: runs are asked for.
    let st = stack("schedkill", "0 0 1 1 *");
    app_exec(
        &st,
        "head -c 300000000 /dev/urandom > /data/sessions/big && echo small > /data/sessions/small",
    );
    let logs = tempfile::tempdir().unwrap();

    // 1. SIGKILL in the middle of the backup.
    let log = logs.path().join("kill.log");
    let before = objects_in_flight(&st);
    let mut child = spawn(&st, &["--once", "--job", "snap"], &log);
    wait_for_backup(&st, &before);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        complete(&st).is_empty(),
        "a killed backup looks complete: {:?}",
        sets(&st)
    );
    // The snapshot had stopped the app, and the killed drctl could not start it again.
    assert!(!service_running(&st, "app"), "the snapshot stopped the app");

    // 2. SIGTERM with a grace period shorter than the backup: the job is interrupted,
    // journaled as such, and what the snapshot stopped runs again.
    let log = logs.path().join("term.log");
    let before = objects_in_flight(&st);
    let mut child = spawn(
        &st,
        &[
            "--now",
            "--job",
            "snap",
            "--grace",
            "1s",
            "--metrics",
            "off",
        ],
        &log,
    );
    wait_for_backup(&st, &before);
    signal(&child, "-TERM");
    let (code, _) = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(code, 0, "{}", std::fs::read_to_string(&log).unwrap());
    let lines = json_lines(&log);
    // The next scheduler started first what the killed one had left stopped.
    assert!(
        logged(
            &lines,
            "a drctl process stopped it for an operation and was killed"
        ),
        "{lines:?}"
    );
    assert!(logged(&lines, "interrupting the running job"), "{lines:?}");
    assert!(logged(&lines, "job interrupted"), "{lines:?}");
    let run_id = ended_run_id(&lines);
    let events = st.events(&run_id);
    assert!(
        events.iter().any(|e| e["event"] == "step_finished"
            && e["id"] == "backup"
            && e["status"] == "interrupted"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run_finished" && e["status"] == "interrupted"),
        "{events:?}"
    );
    assert!(
        complete(&st).is_empty(),
        "an interrupted backup looks complete: {:?}",
        sets(&st)
    );
    assert!(
        service_running(&st, "app"),
        "the app, stopped for the snapshot, runs again"
    );

    // 3. The next start catches the cut-off run up (nothing is due by the cron expression);
    // SIGTERM arrives in the middle, and the grace period (30s) lets it finish.
    let log = logs.path().join("next.log");
    let before = objects_in_flight(&st);
    let mut child = spawn(&st, &["--once"], &log);
    wait_for_backup(&st, &before);
    signal(&child, "-TERM");
    let (code, out) = wait_exit(&mut child, Duration::from_secs(90));
    assert_eq!(code, 0, "{}", std::fs::read_to_string(&log).unwrap());
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["result"], "success", "{summary}");
    assert!(summary["stored_bytes"].as_u64().unwrap() > 100_000_000);
    let lines = json_lines(&log);
    assert!(logged(&lines, "stopping: no new job starts"), "{lines:?}");
    assert!(
        logged(&lines, "the job's last run was cut off; it runs once now"),
        "{lines:?}"
    );
    let done = complete(&st);
    assert_eq!(done.len(), 1, "{:?}", sets(&st));
    let verify = run(st.drctl(&["backups", "verify", &done[0]]));
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    // Caught up: nothing is due any more.
    let out = run(st.drctl(&["schedule", "--once"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("nothing is due now"), "{}", out.stderr);
}
