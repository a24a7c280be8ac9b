//! Every shipped runbook, end to end on a private copy of the lab stack: seed data, back up,
//! break something, run the scenario, and check that the data came back.

mod common;

use std::process::Command;

use common::{need_docker, run, shipped_stack, skipped, Stack};

/// A private stack with the shipped targets and runbooks, up and seeded.
fn seeded(name: &str) -> Stack {
    let st = shipped_stack(name);
    psql(&st, "create table items(id int primary key, body text, blob bytea); insert into items select g, repeat(md5(g::text), 20), decode(md5(g::text), 'hex') from generate_series(1, 20000) g;");
    redis(&st, &["sh", "-c", "for i in $(seq 1 200); do echo \"SET key:$i value-$i\"; echo \"HSET h:$i f $i\"; done | redis-cli > /dev/null"]);
    exec(
        &st,
        "app",
        &[
            "sh",
            "-c",
            "echo alpha > /data/sessions/alpha && echo beta > /data/sessions/beta",
        ],
    );
    st
}

fn exec(st: &Stack, service: &str, cmd: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("exec")
        .arg(st.container_id(service))
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn psql(st: &Stack, sql: &str) -> String {
    exec(
        st,
        "postgres",
        &[
            "psql",
            "-U",
            "postgres",
            "-d",
            "app",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ],
    )
}

fn redis(st: &Stack, cmd: &[&str]) -> String {
    exec(st, "redis", cmd)
}

fn state(st: &Stack) -> (String, String, String) {
    (
        psql(
            st,
            "select count(*), md5(string_agg(md5(i::text), '' order by id)) from items i",
        ),
        redis(st, &["redis-cli", "dbsize"]),
        exec(st, "app", &["sh", "-c", "cd /data/sessions && ls && cat *"]),
    )
}

fn backup(st: &Stack, tag: &str) -> String {
    let out = run(st.drctl(&["backup", "--tag", tag]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout.split_whitespace().nth(2).unwrap().to_string()
}

fn scenario(st: &Stack, args: &[&str], env: &[(&str, &str)]) -> common::Run {
    let mut c = st.drctl(&["run"]);
    c.args(args).args(["--yes"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run(c);
    assert!(
        out.stdout.contains("# Run "),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    out
}

#[test]
fn complete_failure_storage_failure_and_snapshot() {
    if !need_docker("complete_failure_storage_failure_and_snapshot") {
        return;
    }
    let st = seeded("complete");
    let before = state(&st);
    // snapshot: the scheduled backup runbook takes a set tagged `scheduled`.
    let out = scenario(&st, &["snapshot"], &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let sets: serde_json::Value =
        serde_json::from_str(&run(st.drctl(&["backups", "list", "--json"])).stdout).unwrap();
    assert_eq!(sets[0]["tags"], serde_json::json!(["scheduled"]));

    // complete-failure: every container and volume is gone.
    let down = st.compose(&["down", "-v"]);
    assert!(down.status.success());
    let out = scenario(&st, &["complete-failure"], &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(state(&st), before, "the data is back");
    assert!(out.stdout.contains("- RTO: "), "{}", out.stdout);
    assert!(
        out.stdout.contains("| verify-data | verify | ok |"),
        "{}",
        out.stdout
    );

    // storage-failure: volumes damaged; the stack is rebuilt on fresh volumes.
    psql(&st, "delete from items where id % 2 = 0");
    exec(
        &st,
        "app",
        &["sh", "-c", "echo garbage > /data/sessions/alpha"],
    );
    let damaged = state(&st);
    assert_ne!(damaged, before);
    let out = scenario(&st, &["storage-failure"], &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(state(&st), before);
    assert!(
        out.stdout.contains("safety backup"),
        "what was left is kept first: {}",
        out.stdout
    );
}

#[test]
fn session_partial_and_accidental_deletion() {
    if !need_docker("session_partial_and_accidental_deletion") {
        return;
    }
    let st = seeded("partial");
    let before = state(&st);
    let first = backup(&st, "first");

    // session-data-corruption: only the session volume comes back.
    exec(
        &st,
        "app",
        &[
            "sh",
            "-c",
            "rm /data/sessions/beta && echo broken > /data/sessions/alpha",
        ],
    );
    psql(&st, "insert into items values (999999, 'kept', null)");
    let out = scenario(&st, &["session-data-corruption"], &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(state(&st).2, before.2, "sessions restored");
    assert_eq!(
        psql(&st, "select body from items where id = 999999"),
        "kept",
        "the database was not touched"
    );
    psql(&st, "delete from items where id = 999999");

    // partial-data-corruption: one target, chosen by TARGET.
    redis(&st, &["redis-cli", "flushall"]);
    let out = scenario(&st, &["partial-data-corruption"], &[("TARGET", "redis")]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(state(&st).1, before.1);
    psql(&st, "drop table items");
    let out = scenario(&st, &["partial-data-corruption"], &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(state(&st).0, before.0);

    // accidental-deletion: a later set exists, but the one before BEFORE is used.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = jiff::Timestamp::now().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    psql(&st, "delete from items where id > 100");
    let second = backup(&st, "after-deletion");
    assert_ne!(first, second);
    let out = scenario(&st, &["accidental-deletion"], &[("BEFORE", &between)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("- backup sets: {first}")),
        "{}",
        out.stdout
    );
    assert_eq!(
        state(&st).0,
        before.0,
        "the rows deleted after BEFORE are back"
    );
}

#[test]
fn migration_rollback() {
    if !need_docker("migration_rollback") {
        return;
    }
    let st = seeded("migrate");
    let before = psql(&st, "select count(*) from items");
    // A migration that works: kept.
    let good =
        "psql -U postgres -d app -v ON_ERROR_STOP=1 -c 'alter table items add column note text'";
    let out = scenario(&st, &["migration-rollback"], &[("MIGRATION", good)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(psql(&st, "select count(*) from information_schema.columns where table_name = 'items' and column_name = 'note'"), "1");

    // A migration that changes data, then fails its check: rolled back to the snapshot.
    let bad = "psql -U postgres -d app -v ON_ERROR_STOP=1 -c 'alter table items add column broken int; delete from items where id > 10'";
    let check = "psql -U postgres -d app -v ON_ERROR_STOP=1 -Atc 'select count(*) from items' | grep -qx 20000";
    let out = scenario(
        &st,
        &["migration-rollback"],
        &[("MIGRATION", bad), ("CHECK", check)],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ROLLED BACK"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("| verify-snapshot (rollback) | verify | ok |"),
        "{}",
        out.stdout
    );
    assert_eq!(
        psql(&st, "select count(*) from items"),
        before,
        "data equal to before the migration"
    );
    assert_eq!(psql(&st, "select count(*) from information_schema.columns where table_name = 'items' and column_name = 'broken'"), "0");
}

#[test]
fn qdrant_failure() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        skipped(
            "qdrant_failure",
            "no Qdrant server: set QDRANT_URL (none can be installed in the lab)",
        );
        return;
    };
    if !need_docker("qdrant_failure") {
        return;
    }
    let st = seeded("qdrant");
    let cfg = std::fs::read_to_string(st.config()).unwrap();
    std::fs::write(
        st.config(),
        format!("{cfg}  vectors: {{ type: qdrant, url: \"{url}\" }}\n"),
    )
    .unwrap();
    let out = run(st.drctl(&["validate", "qdrant-failure"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
}
