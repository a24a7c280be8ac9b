//! `drctl backup`, `drctl backups ...` and the backup / restore / verify steps on a private
//! copy of the lab stack, with the local repository (the embedded default).

mod common;

use std::process::Command;

use common::{
    app_exec, damaged_restore_is_refused, item_key, need_docker, run, service_running, Stack,
};

const UP: &str = "version: 1
defaults: { timeout: 3m }
steps:
  - { id: up, kind: up, services: [app, postgres, redis] }
  - { id: app, kind: health, check: { type: docker, service: app } }
";

/// The volume's tree as `find` sees it: names, modes, owners, sizes, link targets, checksums.
fn tree(st: &Stack) -> String {
    app_exec(st, "cd /data/sessions && find . -printf '%p %m %U:%G %s %l\\n' | sort && find . -type f -exec sha256sum {} + | sort -k2")
}

/// Flip the byte at `at(len)` of an item's object in the stack's local repository; its key.
fn flip_byte(st: &Stack, set: &str, item: &str, at: impl Fn(usize) -> usize) -> String {
    let key = item_key(st, set, item);
    let path = st.dir.path().join("repo").join(&key);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let i = at(bytes.len());
    bytes[i] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    key
}

fn with_volume_targets(st: &Stack) {
    let cfg = std::fs::read_to_string(st.config()).unwrap();
    std::fs::write(
        st.config(),
        format!("{cfg}targets:\n  sessions: {{ type: volume, volume: app-sessions, stop: [app] }}\nretention: {{ keep_last: 2 }}\n"),
    )
    .unwrap();
}

#[test]
fn volume_backup_restore_verify_round_trip() {
    if !need_docker("volume_backup_restore_verify_round_trip") {
        return;
    }
    let st = Stack::new("backup");
    with_volume_targets(&st);
    let out = run(st.drctl(&["run", &st.runbook("up", UP)]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    app_exec(
        &st,
        "cd /data/sessions && echo one > a && mkdir -p d/empty && echo two > d/b && chmod 600 d/b && chown 999:999 d/b && ln -s d/b link && ln -s nowhere dangling && dd if=/dev/urandom of=big bs=1M count=8 2>/dev/null",
    );
    let before = tree(&st);

    let out = run(st.drctl(&["backup", "--tag", "first"]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("backup set "), "{}", out.stdout);
    let set = out.stdout.split_whitespace().nth(2).unwrap().to_string();

    let list = run(st.drctl(&["backups", "list", "--json"]));
    let sets: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(sets[0]["id"], set.as_str());
    assert_eq!(sets[0]["complete"], true);
    assert_eq!(sets[0]["tags"], serde_json::json!(["first"]));
    let show = run(st.drctl(&["backups", "show", &set, "--json"]));
    let m: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    let names: Vec<&str> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"volume/sessions"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("spec/app/")),
        "container specs are captured: {names:?}"
    );
    let verify = run(st.drctl(&["backups", "verify", &set]));
    assert_eq!(verify.code, 0, "{}", verify.stdout);

    // Break the data, restore it, verify it.
    app_exec(
        &st,
        "cd /data/sessions && rm -rf d big && echo junk > junk && echo changed > a",
    );
    assert_ne!(tree(&st), before);
    let rb = st.runbook(
        "restore",
        "version: 1\nobjectives: { rto: 10m, rpo: 1h }\nbackup: { tag: first }\nsteps:\n  - { id: restore, kind: restore, targets: [sessions] }\n  - { id: verify, kind: verify, targets: [sessions] }\n",
    );
    let out = run(st.drctl(&["run", &rb]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        tree(&st),
        before,
        "the volume came back byte for byte, with owners, modes and links"
    );
    assert!(
        out.stdout.contains("RPO (age of the restored data): "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("against an objective of 1h: met"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("safety backup"),
        "a safety backup is taken first: {}",
        out.stderr
    );
    let sets: serde_json::Value =
        serde_json::from_str(&run(st.drctl(&["backups", "list", "--json"])).stdout).unwrap();
    assert!(
        sets.as_array()
            .unwrap()
            .iter()
            .any(|s| s["tags"] == serde_json::json!(["safety"])),
        "{sets}"
    );

    // A verify against a changed volume fails and says what differs.
    app_exec(&st, "echo extra > /data/sessions/extra");
    let vb = st.runbook("verify", "version: 1\nsteps:\n  - { id: verify, kind: verify, targets: [sessions], against: { tag: first } }\n");
    let out = run(st.drctl(&["run", &vb]));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("sessions: 9 entries at backup, 10 now")
            || out.stdout.contains("entries at backup"),
        "{}",
        out.stdout
    );

    // A service whose container is gone comes back from the specs captured in the set,
    // without the compose file.
    let app = st.container_id("app");
    let name = String::from_utf8_lossy(
        &Command::new("docker")
            .args(["inspect", "-f", "{{.Name}}", &app])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .trim_start_matches('/')
    .to_string();
    assert!(Command::new("docker")
        .args(["rm", "-f", &app])
        .status()
        .unwrap()
        .success());
    let sb = st.runbook("spec", "version: 1\nbackup: { tag: first }\nsteps:\n  - { id: up, kind: up, services: [app], from: spec }\n  - { id: ok, kind: health, check: { type: docker, service: app }, timeout: 1m }\n");
    let out = run(st.drctl(&["run", &sb]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{name} recreated from set {set}")),
        "{}",
        out.stderr
    );
    assert!(
        app_exec(&st, "cat /data/sessions/a").contains("one"),
        "the recreated container mounts the same volume"
    );

    // Prune keeps the newest two complete sets, and says why.
    let out = run(st.drctl(&["backups", "prune", "--dry-run"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("dry run: nothing was deleted"));
}

#[test]
fn corrupted_object_is_caught_before_anything_is_destroyed() {
    if !need_docker("corrupted_object_is_caught_before_anything_is_destroyed") {
        return;
    }
    let st = Stack::new("corrupt");
    with_volume_targets(&st);
    let out = run(st.drctl(&["run", &st.runbook("up", UP)]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    app_exec(&st, "echo precious > /data/sessions/p");
    let out = run(st.drctl(&["backup"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let set = out.stdout.split_whitespace().nth(2).unwrap().to_string();
    let key = flip_byte(&st, &set, "volume/sessions", |len| len / 2);

    let verify = run(st.drctl(&["backups", "verify", &set]));
    assert_eq!(verify.code, 1);
    assert!(
        verify.stdout.contains("FAIL  volume/sessions"),
        "{}",
        verify.stdout
    );
    assert!(verify.stderr.contains(&set), "{}", verify.stderr);

    damaged_restore_is_refused(&st, &set, &key);
}

/// Two volumes in one restore: the larger streams first into a staging folder, unchecked;
/// the other is checked before anything is touched. A damaged smaller object stops the
/// restore before the larger volume is swapped.
#[test]
fn damaged_second_object_stops_the_restore_before_anything_is_swapped() {
    if !need_docker("damaged_second_object_stops_the_restore_before_anything_is_swapped") {
        return;
    }
    let st = Stack::new("corrupt2");
    let cfg = std::fs::read_to_string(st.config()).unwrap();
    std::fs::write(
        st.config(),
        format!("{cfg}targets:\n  sessions: {{ type: volume, volume: app-sessions, stop: [app] }}\n  cache: {{ type: volume, volume: redis-data, stop: [redis] }}\n"),
    )
    .unwrap();
    let out = run(st.drctl(&["run", &st.runbook("up", UP)]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    app_exec(
        &st,
        "echo precious > /data/sessions/p && dd if=/dev/urandom of=/data/sessions/big bs=1M count=4 2>/dev/null",
    );
    let out = run(st.drctl(&["backup"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let set = out.stdout.split_whitespace().nth(2).unwrap().to_string();
    let key = flip_byte(&st, &set, "volume/cache", |len| len - 1);

    app_exec(&st, "echo newer > /data/sessions/p");
    let before = tree(&st);
    let rb = st.runbook(
        "r",
        "version: 1\nbackup: latest\nsteps:\n  - { id: restore, kind: restore, targets: [sessions, cache], safety_backup: false }\n",
    );
    let out = run(st.drctl(&["run", &rb]));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&key) && out.stdout.contains("SHA-256"),
        "the message names the object and what is wrong: {}",
        out.stdout
    );
    assert_eq!(tree(&st), before, "the sessions volume was not touched");

    // With a safety backup: the damage is found first, so no safety set is taken.
    let sets = |st: &Stack| -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&run(st.drctl(&["backups", "list", "--json"])).stdout).unwrap();
        v.as_array().unwrap().len()
    };
    let before_sets = sets(&st);
    let rb = st.runbook(
        "rs",
        "version: 1\nbackup: latest\nsteps:\n  - { id: restore, kind: restore, targets: [sessions, cache] }\n",
    );
    let out = run(st.drctl(&["run", &rb]));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&key), "{}", out.stdout);
    assert_eq!(sets(&st), before_sets, "no safety set for a damaged set");
    assert_eq!(tree(&st), before);
}

/// The controller is killed (SIGKILL) while a volume streams into its staging folder: the
/// swap container waiting for `go` sees its input end, removes the staging folder and leaves
/// the old contents; `drctl resume` then finishes the restore.
#[test]
fn controller_killed_mid_restore_leaves_the_old_contents_and_no_staging_folder() {
    if !need_docker("controller_killed_mid_restore_leaves_the_old_contents_and_no_staging_folder") {
        return;
    }
    let st = Stack::new("killrestore");
    with_volume_targets(&st);
    let out = run(st.drctl(&["run", &st.runbook("up", UP)]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    app_exec(
        &st,
        "dd if=/dev/urandom of=/data/sessions/big bs=1M count=300 2>/dev/null && echo old > /data/sessions/p",
    );
    let out = run(st.drctl(&["backup"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    app_exec(&st, "echo newer > /data/sessions/p");
    let volume = format!("{}_app-sessions", st.project);
    let inspect = Command::new("docker")
        .args(["volume", "inspect", "-f", "{{.Mountpoint}}", &volume])
        .output()
        .unwrap();
    let root = std::path::PathBuf::from(String::from_utf8_lossy(&inspect.stdout).trim());
    if std::fs::read_dir(&root).is_err() {
        common::skipped(
            "controller_killed_mid_restore_leaves_the_old_contents_and_no_staging_folder",
            "the volume's mountpoint is not readable here (needs root and a local daemon)",
        );
        return;
    }
    let staging = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(".drctl-staging-")
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };

    let rb = st.runbook(
        "r",
        "version: 1\nbackup: latest\nsteps:\n  - { id: restore, kind: restore, targets: [sessions], safety_backup: false }\n",
    );
    let mut child = common::KillOnDrop(
        st.drctl(&["run", &rb, "--json"])
            .env("DRCTL_VOLUME_FAST_PATH", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill it once the upload has written something into the staging folder.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no staging folder appeared"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the restore ended before it could be killed"
        );
        let written = staging()
            .iter()
            .any(|s| std::fs::read_dir(s).is_ok_and(|mut d| d.next().is_some()));
        if written {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !staging().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the staging folder stayed: {:?}",
            staging()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(root.join("p")).unwrap(),
        "newer\n",
        "the old contents stay"
    );

    let runs = st.dir.path().join("state/runs");
    let run_id = std::fs::read_dir(&runs)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .unwrap();
    // The app, stopped for the restore, is still down: the killed drctl could not start it.
    // A run that restores nothing (a scheduled snapshot, say) leaves it so: its data may be
    // half-written.
    let app_running = || service_running(&st, "app");
    assert!(!app_running());
    let other = st.runbook(
        "other",
        "version: 1\nsteps:\n  - { id: hi, kind: notify, message: hi }\n",
    );
    let out = run(st.drctl(&["run", &other]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("stopped for a restore that a killed drctl did not finish"),
        "{}",
        out.stderr
    );
    assert!(!app_running());
    let out = run(st
        .drctl(&["resume", &run_id])
        .env("DRCTL_VOLUME_FAST_PATH", "0"));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("a drctl process stopped it for an operation and was killed"),
        "{}",
        out.stderr
    );
    assert!(app_running(), "the app runs again after the resume");
    assert_eq!(std::fs::read_to_string(root.join("p")).unwrap(), "old\n");
    assert!(staging().is_empty());
    // The killed run's temporary containers (which keep the volume referenced) are gone.
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=org.drctl.volume={volume}"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}
