//! `drctl rehearse`: runbooks on a scratch copy of the stack leave the live stack untouched.

mod common;

use std::process::Command;

use common::{need_docker, run, shipped_stack, Stack};

fn live_state(st: &Stack) -> Vec<String> {
    let ids: Vec<String> = ["app", "postgres", "redis"]
        .iter()
        .map(|s| st.container_id(s))
        .collect();
    let mut out: Vec<String> = ids
        .iter()
        .map(|id| {
            String::from_utf8_lossy(
                &Command::new("docker")
                    .args([
                        "inspect",
                        "-f",
                        "{{.Id}} {{.State.StartedAt}} {{.State.Status}}",
                        id,
                    ])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .trim()
            .to_string()
        })
        .collect();
    let rows = Command::new("docker")
        .args([
            "exec",
            &ids[1],
            "psql",
            "-U",
            "postgres",
            "-d",
            "app",
            "-Atc",
            "select count(*), md5(string_agg(t::text, ',' order by id)) from t",
        ])
        .output()
        .unwrap();
    out.push(String::from_utf8_lossy(&rows.stdout).trim().to_string());
    out
}

#[test]
fn rehearsals_leave_the_live_stack_untouched() {
    if !need_docker("rehearsals_leave_the_live_stack_untouched") {
        return;
    }
    let st = shipped_stack("rehearse");
    let pg = st.container_id("postgres");
    let seed = Command::new("docker").args(["exec", &pg, "psql", "-U", "postgres", "-d", "app", "-c", "create table t(id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g"]).output().unwrap();
    assert!(seed.status.success());
    let out = run(st.drctl(&["backup"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = live_state(&st);

    let out = run(st.drctl(&["rehearse", "complete-failure", "--yes"]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("| rehearsal-verify | verify | ok |"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("| verify-data | verify | ok |"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("- RTO: "), "{}", out.stdout);
    assert!(out.stdout.contains("torn down: down: ok"), "{}", out.stdout);

    // migration-rollback on the copy: a migration that breaks data is rolled back there.
    let bad = "psql -U postgres -d app -v ON_ERROR_STOP=1 -c 'delete from t where id > 10'";
    let check = "psql -U postgres -d app -Atc 'select count(*) from t' | grep -qx 5000";
    let out = run(st
        .drctl(&["rehearse", "migration-rollback", "--yes"])
        .env("MIGRATION", bad)
        .env("CHECK", check));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ROLLED BACK"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("| verify-snapshot (rollback) | verify | ok |"),
        "data equal to the pre-migration fingerprint: {}",
        out.stdout
    );

    assert_eq!(
        live_state(&st),
        before,
        "live containers keep their ids and start times, and their data"
    );
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=com.docker.compose.project"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(
        &Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !names.contains("drctl-rehearse-"),
        "scratch copies are torn down: {names}"
    );
    let _ = left;
    // The sets the rehearsals took (the migration's safety snapshot) are gone; the live set stays.
    let sets: serde_json::Value =
        serde_json::from_str(&run(st.drctl(&["backups", "list", "--json"])).stdout).unwrap();
    assert!(
        sets.as_array()
            .unwrap()
            .iter()
            .all(|s| s["stack"] == st.project.as_str()),
        "{sets}"
    );
}
