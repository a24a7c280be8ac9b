//! `drctl plan` and `drctl doctor`, with the Docker daemon reachable and not.

mod common;

use std::process::Command;

use common::{drctl, root, run, skipped};

const NO_DAEMON: &str = "unix:///nonexistent/drctl-test.sock";

fn docker_ok() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Docker tests run for real in scripts/test.sh (DRCTL_LAB=1); elsewhere they are skipped
/// when no daemon answers, and say so.
fn need_docker(test: &str) -> bool {
    if docker_ok() {
        return true;
    }
    assert!(
        std::env::var_os("DRCTL_LAB").is_none(),
        "DRCTL_LAB is set but no Docker daemon answers"
    );
    skipped(test, "no Docker daemon answers (run scripts/test.sh)");
    false
}

#[test]
fn plan_json_is_the_plan_in_stages() {
    let out = run(drctl(&["plan", "complete-failure", "--json", "--offline"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["runbook"], "complete-failure");
    assert_eq!(plan["docker"]["status"], "not_checked");
    assert_eq!(plan["objectives"]["rto"], "4h");
    let stages = plan["stages"].as_array().unwrap();
    let ids: Vec<Vec<&str>> = stages
        .iter()
        .map(|s| {
            s["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            vec!["confirm"],
            vec!["stop-all"],
            vec!["up-databases"],
            vec!["postgres-healthy", "redis-healthy"],
            vec!["restore-postgres", "restore-redis", "restore-sessions"],
            vec!["verify-data"],
            vec!["up-app"],
            vec!["app-healthy"],
            vec!["announce"],
        ]
    );
    let restore = &stages[4]["steps"][0];
    assert_eq!(restore["group"], "restore-data");
    assert_eq!(
        restore["after"],
        serde_json::json!(["postgres-healthy", "redis-healthy"])
    );
    assert_eq!(restore["step"]["kind"], "restore");
    assert_eq!(restore["timeout"], "10m");
}

#[test]
fn plan_uses_environment_variables() {
    let out =
        run(drctl(&["plan", "complete-failure", "--offline"]).env("DRCTL_LAB_APP_PORT", "19999"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("GET http://127.0.0.1:19999/health answers 200"),
        "{}",
        out.stdout
    );
}

#[test]
fn plan_without_daemon_says_so_and_still_plans() {
    let out = run(drctl(&["plan", "snapshot"]).env("DOCKER_HOST", NO_DAEMON));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("docker:     unreachable, so containers are not resolved (cannot reach unix:///nonexistent/drctl-test.sock"), "{}", out.stdout);
    assert!(out
        .stdout
        .contains("back up all targets tagged `scheduled`"));
    assert!(out.stdout.contains("containers not looked up"));
    assert!(
        out.stderr.contains("planning without Docker"),
        "{}",
        out.stderr
    );
}

#[test]
fn plan_of_invalid_runbook_exits_2() {
    let out = run(drctl(&[
        "--config",
        "tests/fixtures/drctl.yml",
        "plan",
        "tests/fixtures/broken/cycle.yml",
    ]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cycle.yml:6:12: dependency cycle"));
    assert!(out.stdout.is_empty());
}

#[test]
fn doctor_without_daemon_names_the_socket_and_exits_3() {
    let out = run(drctl(&["doctor"]).env("DOCKER_HOST", NO_DAEMON));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("docker daemon"))
        .unwrap();
    assert!(
        line.starts_with("FAIL  docker daemon   cannot reach unix:///nonexistent/drctl-test.sock"),
        "{line}"
    );
    assert!(out.stdout.contains("-> start dockerd"), "{}", out.stdout);
    assert!(out
        .stdout
        .contains("ok    config          drctl.yml is valid"));
    assert!(out
        .stdout
        .contains("skip  stack           Docker daemon unreachable"));
    assert_eq!(out.stderr.trim(), "error: 1 check(s) failed");
}

#[test]
fn doctor_json_lists_every_check() {
    let out = run(drctl(&["doctor", "--json"]).env("DOCKER_HOST", NO_DAEMON));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "config",
        "docker daemon",
        "compose cli",
        "compose files",
        "stack",
        "repository",
        "encryption key",
        "state folder",
        "runbooks",
    ] {
        assert!(names.contains(&n), "{n} missing in {names:?}");
    }
}

#[test]
fn doctor_reports_bad_repository_and_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file-not-folder");
    std::fs::write(&blocker, "x").unwrap();
    let cfg = dir.path().join("drctl.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 1\nstack: {{ project: drctl-test-doctor }}\nrepository:\n  url: {}/sub\n  encryption: {{ key_env: DRCTL_TEST_MISSING_KEY }}\n",
            blocker.display()
        ),
    )
    .unwrap();
    let out = run(drctl(&["--config", cfg.to_str().unwrap(), "doctor"])
        .env("DOCKER_HOST", NO_DAEMON)
        .env_remove("DRCTL_TEST_MISSING_KEY"));
    assert_eq!(out.code, 3);
    assert!(
        out.stdout
            .contains("FAIL  repository      failed to create"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("FAIL  encryption key  $DRCTL_TEST_MISSING_KEY is not set"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("warn  compose files   none configured"),
        "{}",
        out.stdout
    );
}

#[test]
fn doctor_s3_without_credentials_or_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("drctl.yml");
    // Port 9 (discard) on loopback: nothing listens there in the lab.
    std::fs::write(&cfg, "version: 1\nstack: { project: drctl-test-doctor }\nrepository:\n  url: s3://drctl-test/x\n  endpoint: http://127.0.0.1:9\n").unwrap();
    let out = run(drctl(&["--config", cfg.to_str().unwrap(), "doctor"])
        .env("DOCKER_HOST", NO_DAEMON)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY"));
    assert_eq!(out.code, 3);
    assert!(
        out.stdout
            .contains("FAIL  credentials     no S3 credentials"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("FAIL  repository      s3://drctl-test/x: failed to connect to 127.0.0.1:9"),
        "{}",
        out.stdout
    );
}

/// A container labelled as a compose service of a throwaway project, removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn plan_and_doctor_with_a_live_daemon_name_containers() {
    if !need_docker("plan_and_doctor_with_a_live_daemon_name_containers") {
        return;
    }
    let project = format!("drctl-test-plan-{}", std::process::id());
    let name = format!("{project}-pg-1");
    let created = Command::new("docker")
        .args([
            "create",
            "--name",
            &name,
            "--label",
            &format!("com.docker.compose.project={project}"),
            "--label",
            "com.docker.compose.service=postgres",
            "--label",
            "org.drctl.test=1",
            "drctl-lab-base:1",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let _guard = Container(name.clone());
    let out = run(drctl(&["plan", "snapshot"]).env("DRCTL_LAB_PROJECT", &project));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("(API "), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("postgres -> {name} (")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(", created)"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("redis -> no container (gone or never created)"),
        "{}",
        out.stdout
    );

    let out = run(drctl(&["doctor"]).env("DRCTL_LAB_PROJECT", &project));
    assert!(
        out.stdout.contains("ok    docker daemon   Docker "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "ok    stack           project `{project}`: 0 of 1 container(s) running"
        )),
        "{}",
        out.stdout
    );
    let _ = root();
}
