//! `drctl validate`: broken runbooks and the exact errors they must give (as a spec).
//!
//! Each `tests/fixtures/broken/NAME.yml` has `NAME.expected`: the exact stderr of
//! `drctl --config tests/fixtures/drctl.yml validate NAME.yml`. Set `UPDATE_EXPECT=1` to
//! rewrite them, then read the diff.

mod common;

use std::time::{Duration, Instant};

use common::{drctl, root, run};

#[test]
fn broken_runbooks_give_their_exact_errors() {
    let dir = root().join("tests/fixtures/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "fixtures missing");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let out = run(drctl(&[
            "--config",
            "tests/fixtures/drctl.yml",
            "validate",
            &rel,
        ]));
        let expected_path = f.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &out.stderr).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing", expected_path.display()));
        if out.code != 2 {
            failures.push(format!("{rel}: exit code {} (want 2)", out.code));
        }
        if out.stderr != expected {
            failures.push(format!(
                "{rel}:\n--- want\n{expected}--- got\n{}",
                out.stderr
            ));
        }
        assert!(
            out.stdout.is_empty(),
            "{rel}: nothing on stdout, got {}",
            out.stdout
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_of_all_files_at_once() {
    let out = run(drctl(&[
        "--config",
        "tests/fixtures/drctl.yml",
        "validate",
        "tests/fixtures/broken/unknown-fields.yml",
        "tests/fixtures/broken/cycle.yml",
        "runbooks/snapshot.yml",
    ]));
    assert_eq!(out.code, 2);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines
        .iter()
        .any(|l| l
            .starts_with("tests/fixtures/broken/unknown-fields.yml:2:1: unknown field `setps`")));
    assert!(lines.iter().any(|l| l
        .starts_with("tests/fixtures/broken/cycle.yml:6:12: dependency cycle: a -> c -> b -> a")));
    assert_eq!(lines.last(), Some(&"error: 4 problems found"));
}

#[test]
fn shipped_runbooks_are_valid() {
    let out = run(&mut drctl(&["validate"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let n = std::fs::read_dir(root().join("runbooks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yml")
        })
        .count();
    assert!(n >= 2);
    assert_eq!(
        out.stdout.trim(),
        format!("ok: {n} runbooks valid (with drctl.yml)")
    );
}

#[test]
fn huge_file_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.yml");
    let mut text = String::from("version: 1\nsteps:\n");
    while text.len() < 10 * 1024 * 1024 {
        text.push_str("  - { id: s, kind: stop, services: [app] }\n");
    }
    std::fs::write(&f, text).unwrap();
    let t = Instant::now();
    let out = run(drctl(&["validate", f.to_str().unwrap()]));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("huge.yml:1:1: file is 10.0 MiB; drctl reads runbooks and configuration of at most 1024 KiB"),
        "{}",
        out.stderr
    );
}

#[test]
fn alias_bomb_is_refused_quickly() {
    let t = Instant::now();
    let out = run(drctl(&["validate", "tests/fixtures/broken/alias-bomb.yml"]));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("alias bomb"), "{}", out.stderr);
}

#[test]
fn variables_come_from_the_environment() {
    let f = "tests/fixtures/broken/unset-variable.yml";
    let out = run(
        drctl(&["--config", "tests/fixtures/drctl.yml", "validate", f])
            .env("DRCTL_FIXTURE_UNSET_PORT", "8080"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn unknown_runbook_name_is_usage_error() {
    let out = run(&mut drctl(&["validate", "complete-falure"]));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no runbook `complete-falure`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `complete-failure`?"),
        "{}",
        out.stderr
    );
}

#[test]
fn broken_config_is_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("drctl.yml");
    std::fs::write(
        &cfg,
        "version: 1\nstack:\n  project: x\n  compose_file: [c.yml]\nrepository:\n  url: ftp://nope\ntargets:\n  db: { type: postgress, service: db }\nschedules:\n  - { name: h, cron: '0 25 * * *' }\n",
    )
    .unwrap();
    let out = run(drctl(&["--config", cfg.to_str().unwrap(), "validate"]));
    assert_eq!(out.code, 2);
    let c = cfg.to_str().unwrap();
    let want = [
        format!("{c}:4:3: unknown field `compose_file`; did you mean `compose_files`?"),
        format!("{c}:6:8: repository URL `ftp://nope` has an unknown scheme; use s3://bucket/prefix, file:///path or a path"),
        format!("{c}:8:15: unknown target type `postgress`; did you mean `postgres`?"),
        format!("{c}:10:22: bad hour `25` in cron expression `0 25 * * *`: expected 0 to 23"),
    ];
    for w in &want {
        assert!(
            out.stderr.contains(w.as_str()),
            "missing {w}\nin:\n{}",
            out.stderr
        );
    }
}

#[test]
fn schema_files_are_in_step_with_the_types() {
    for (which, file) in [
        ("runbook", "runbooks/schema/runbook.schema.json"),
        ("config", "runbooks/schema/drctl.schema.json"),
    ] {
        let out = run(&mut drctl(&["schema", which]));
        assert_eq!(out.code, 0);
        let committed = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(root().join(file), &out.stdout).unwrap();
            continue;
        }
        assert_eq!(
            committed, out.stdout,
            "{file} is stale: run `drctl schema {which} > {file}`"
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let defs = &v["definitions"];
        if which == "runbook" {
            assert_eq!(defs["Step"]["oneOf"].as_array().unwrap().len(), 13);
        } else {
            assert_eq!(defs["Target"]["oneOf"].as_array().unwrap().len(), 5);
        }
    }
}
