//! PostgreSQL: back up several databases (200k rows, bytea, large text, a role), drop
//! everything, restore, compare fingerprints; restore over a database in use; unhappy paths.

use std::time::Instant;

use drctl_core::config::PostgresTarget;
use drctl_db::{DbError, PgDumpOptions, PgRestoreOptions, Postgres};
use drctl_docker::DockerClient;

use crate::common::{docker, docker_stdin, env_var, poll, temp_file, Cleanup, PG_IMAGE};
use crate::lab;

const SEED: &str = r#"
CREATE ROLE app_owner LOGIN PASSWORD 'app-owner-pw';
CREATE DATABASE app OWNER app_owner;
CREATE DATABASE analytics;
\c app
SET ROLE app_owner;
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text, score double precision,
                    created timestamptz, tags text[]);
INSERT INTO users SELECT i, 'user ' || i, 'u' || i || '@example.com', random() * 1000,
       now() - (i || ' minutes')::interval, ARRAY['a' || (i % 7), 'b' || (i % 3)]
  FROM generate_series(1, 100000) i;
CREATE TABLE documents (id serial PRIMARY KEY, user_id int REFERENCES users(id), title text,
                        body text, blob bytea);
INSERT INTO documents (user_id, title, body, blob)
  SELECT (i % 100000) + 1, 'doc ' || i, repeat(md5(i::text), 30 + (i % 30)),
         decode(repeat(md5((i * 7)::text), 16), 'hex')
  FROM generate_series(1, 10000) i;
CREATE SCHEMA audit;
CREATE TABLE audit.events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), payload jsonb);
INSERT INTO audit.events (payload)
  SELECT jsonb_build_object('n', i, 'kind', CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END)
  FROM generate_series(1, 40000) i;
RESET ROLE;
\c analytics
CREATE TABLE hits (id bigint, path text, ua text, at timestamp, raw bytea);
INSERT INTO hits SELECT i, '/p/' || (i % 500), 'agent ' || (i % 13),
       timestamp '2026-01-01' + (i || ' seconds')::interval, decode(md5(i::text), 'hex')
  FROM generate_series(1, 49950) i;
CREATE TABLE big_text (id int PRIMARY KEY, t text);
INSERT INTO big_text SELECT i, repeat('lorem ipsum dolor ', 15000) || i FROM generate_series(1, 50) i;
GRANT SELECT ON hits TO app_owner;
"#;

/// Built through serde, as drctl.yml is read (fields added to the model later keep their
/// defaults).
fn target(password_env: Option<String>) -> PostgresTarget {
    target_with(password_env, &[])
}

fn target_with(password_env: Option<String>, databases: &[&str]) -> PostgresTarget {
    serde_json::from_value(serde_json::json!({
        "service": "postgres",
        "user": "postgres",
        "databases": databases,
        "password_env": password_env,
    }))
    .unwrap()
}

fn psql(container: &str, db: &str, sql: &str) -> String {
    docker(&[
        "exec", container, "psql", "-X", "-At", "-U", "postgres", "-d", db, "-c", sql,
    ])
}

async fn start_pg(clean: &Cleanup, what: &str, password: &str) -> String {
    let env = format!("POSTGRES_PASSWORD={password}");
    clean.run(
        what,
        "/var/lib/postgresql/data",
        &["-e", &env],
        PG_IMAGE,
        &[],
    )
}

/// A PostgreSQL container (cleaned up), its adapter with the password in `var`, ready.
async fn ready_pg(
    docker_client: &DockerClient,
    clean: &Cleanup,
    what: &str,
    var: &str,
    password: &str,
) -> (String, Postgres) {
    let c = start_pg(clean, what, password).await;
    let pg = Postgres::new(
        docker_client.clone(),
        &c,
        &target(Some(env_var(var, password))),
    )
    .unwrap();
    pg.wait_ready(None, poll(90)).await.unwrap();
    (c, pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_drop_restore_roundtrip() {
    let docker_client = lab!("postgres roundtrip", PG_IMAGE);
    let t0 = Instant::now();
    let clean = Cleanup::default();
    let password = "pg-roundtrip-secret";
    let (c, pg) = ready_pg(&docker_client, &clean, "pg", "pg_rt", password).await;
    docker_stdin(
        &[
            "exec",
            "-i",
            &c,
            "psql",
            "-X",
            "-q",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ],
        SEED,
    );
    eprintln!("postgres: seeded in {:.1} s", t0.elapsed().as_secs_f64());

    let dbs = pg.selected_databases().await.unwrap();
    assert_eq!(dbs, ["analytics", "app", "postgres"]);
    let before = pg.fingerprint(&dbs).await.unwrap();
    let rows: u64 = before
        .databases
        .values()
        .flat_map(|d| d.tables.values())
        .map(|t| t.rows)
        .sum();
    assert_eq!(rows, 200_000);
    assert_eq!(before.databases["app"].tables["public.users"].rows, 100_000);
    assert!(before.databases["app"].tables.contains_key("audit.events"));

    // Back up: globals in memory, databases to files, each with its fingerprint taken in
    // the dump's own snapshot.
    let t = Instant::now();
    let mut globals: Vec<u8> = Vec::new();
    pg.dump_globals(&mut globals).await.unwrap();
    let globals_text = String::from_utf8_lossy(&globals).to_string();
    assert!(
        globals_text.contains("CREATE ROLE app_owner;"),
        "{globals_text}"
    );
    let mut files = Vec::new();
    for db in &dbs {
        let file = temp_file();
        let mut f = tokio::fs::File::create(file.path()).await.unwrap();
        let report = pg
            .dump_database(db, &mut f, &PgDumpOptions { fingerprint: true })
            .await
            .unwrap();
        assert_eq!(
            report.fingerprint.as_ref(),
            Some(&before.databases[db]),
            "{db}"
        );
        assert_eq!(report.bytes, std::fs::metadata(file.path()).unwrap().len());
        eprintln!(
            "postgres: dumped `{db}`: {} bytes in {:.1} s",
            report.bytes, report.seconds
        );
        files.push((db.clone(), file));
    }
    eprintln!("postgres: backup in {:.1} s", t.elapsed().as_secs_f64());

    // Drop everything.
    psql(&c, "postgres", "DROP DATABASE app WITH (FORCE)");
    psql(&c, "postgres", "DROP DATABASE analytics WITH (FORCE)");
    psql(&c, "postgres", "DROP ROLE app_owner");
    psql(&c, "postgres", "CREATE TABLE stray (x int)");

    // Restore: globals first (so owners and grants come back), then the databases.
    let t = Instant::now();
    let g = pg.restore_globals(&mut globals.as_slice()).await.unwrap();
    assert!(g.skipped_own_role >= 1, "{g:?}");
    // Again, now that the roles exist: "already exists" is expected, not a failure.
    let g = pg.restore_globals(&mut globals.as_slice()).await.unwrap();
    assert!(g.already_existed >= 1, "{g:?}");
    for (db, file) in &files {
        let mut f = tokio::fs::File::open(file.path()).await.unwrap();
        let r = pg
            .restore_database(db, &mut f, &PgRestoreOptions::default())
            .await
            .unwrap();
        assert!(r.created_from_archive);
        assert_eq!(r.bytes, std::fs::metadata(file.path()).unwrap().len());
    }
    eprintln!("postgres: restore in {:.1} s", t.elapsed().as_secs_f64());
    let after = pg.fingerprint(&dbs).await.unwrap();
    assert!(
        before.compare(&after).is_empty(),
        "{:?}",
        before.compare(&after)
    );
    assert_eq!(before, after);
    // The postgres database was restored too: the stray table is gone.
    assert_eq!(
        psql(
            &c,
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'stray'"
        ),
        "0"
    );
    // Owners, grants and the role's password came back.
    assert_eq!(
        psql(
            &c,
            "app",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'users'"
        ),
        "app_owner"
    );
    assert_eq!(
        psql(
            &c,
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
        ),
        "app_owner"
    );
    assert_eq!(
        docker(&[
            "exec",
            "-e",
            "PGPASSWORD=app-owner-pw",
            &c,
            "psql",
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-U",
            "app_owner",
            "-d",
            "analytics",
            "-c",
            "SELECT count(*) FROM hits"
        ]),
        "49950"
    );

    // A restore over a database in use: first make it differ from the backup.
    docker(&[
        "exec",
        &c,
        "psql",
        "-X",
        "-U",
        "postgres",
        "-d",
        "app",
        "-c",
        "UPDATE users SET name = 'changed' WHERE id = 7",
    ]);
    let changed = pg.fingerprint(&["app".to_string()]).await.unwrap();
    let diff = before.databases["app"].compare_database("app", &changed.databases["app"]);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(
        diff[0]
            .subject
            .contains("database `app` table `public.users`"),
        "{}",
        diff[0]
    );
    // A session holds a connection and a lock on the database while it is restored.
    docker(&[
        "exec",
        "-d",
        &c,
        "psql",
        "-X",
        "-U",
        "postgres",
        "-d",
        "app",
        "-c",
        "BEGIN; LOCK TABLE audit.events; SELECT pg_sleep(600);",
    ]);
    let mut held = false;
    for _ in 0..40 {
        if psql(&c, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND query LIKE '%pg_sleep%'") == "1" {
            held = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(held, "the holding session did not show up");
    let t = Instant::now();
    let app = &files.iter().find(|(d, _)| d == "app").unwrap().1;
    let mut f = tokio::fs::File::open(app.path()).await.unwrap();
    pg.restore_database("app", &mut f, &PgRestoreOptions::default())
        .await
        .unwrap();
    eprintln!(
        "postgres: restore over a database in use in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let again = pg.fingerprint(&["app".to_string()]).await.unwrap();
    assert_eq!(again.databases["app"], before.databases["app"]);
    assert_eq!(
        psql(&c, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()"),
        "0"
    );
    eprintln!("postgres roundtrip: {:.1} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unhappy_paths() {
    let docker_client = lab!("postgres unhappy paths", PG_IMAGE);
    let t0 = Instant::now();
    let clean = Cleanup::default();
    let password = "pg-unhappy-secret";
    let (c, pg) = ready_pg(&docker_client, &clean, "pg-bad", "pg_ok", password).await;
    psql(&c, "postgres", "CREATE DATABASE shop");
    psql(&c, "shop", "CREATE TABLE orders AS SELECT i AS id, md5(i::text) AS ref, repeat('x', 200) AS note FROM generate_series(1, 30000) i");

    // A gate with a query: passes when it answers, says why when it does not.
    pg.wait_query(Some("shop"), "SELECT 1 FROM orders LIMIT 1;", poll(10))
        .await
        .unwrap();
    let e = pg
        .wait_query(Some("shop"), "SELECT 1 FROM not_migrated_yet", poll(2))
        .await
        .unwrap_err();
    assert!(e.is_gate_timeout(), "{e}");
    assert!(
        e.to_string().contains("not_migrated_yet\" does not exist"),
        "{e}"
    );

    // The variable named by password_env is missing.
    let e = Postgres::new(
        docker_client.clone(),
        &c,
        &target(Some(format!("DRCTL_TEST_{}_UNSET", std::process::id()))),
    )
    .unwrap_err();
    assert!(matches!(e, DbError::Credential { .. }), "{e}");

    // Wrong password: the error names the variable, never the password, and the gate
    // fails at once instead of waiting out its timeout.
    let wrong = Postgres::new(
        docker_client.clone(),
        &c,
        &target(Some(env_var("pg_wrong", "not-the-password"))),
    )
    .unwrap();
    let e = wrong.list_databases().await.unwrap_err();
    assert!(e.is_auth(), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("password authentication failed") && m.contains("DRCTL_TEST_"),
        "{m}"
    );
    assert!(
        !m.contains("not-the-password") && !m.contains(password),
        "{m}"
    );
    let t = Instant::now();
    let e = wrong.wait_ready(None, poll(30)).await.unwrap_err();
    assert!(!e.is_gate_timeout() && t.elapsed().as_secs() < 10, "{e}");
    let mut sink: Vec<u8> = Vec::new();
    assert!(wrong
        .dump_database("shop", &mut sink, &PgDumpOptions::default())
        .await
        .unwrap_err()
        .is_auth());

    // A database that does not exist.
    let e = pg
        .dump_database("nope", &mut sink, &PgDumpOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DbError::NotFound { what, .. } if what == "database `nope`"),
        "{e}"
    );
    let e = pg
        .dump_database("nope", &mut sink, &PgDumpOptions { fingerprint: true })
        .await
        .unwrap_err();
    assert!(matches!(&e, DbError::NotFound { .. }), "{e}");
    let listed = Postgres::new(
        docker_client.clone(),
        &c,
        &target_with(Some(env_var("pg_ok2", password)), &["shop", "nope"]),
    )
    .unwrap();
    let e = listed.selected_databases().await.unwrap_err().to_string();
    assert!(e.contains("`nope`") && e.contains("`shop`"), "{e}");

    // A dump, then restores that must fail.
    let mut dump: Vec<u8> = Vec::new();
    let report = pg
        .dump_database("shop", &mut dump, &PgDumpOptions { fingerprint: true })
        .await
        .unwrap();
    let shop_fp = report.fingerprint.unwrap();

    // Not a dump at all: refused before anything is dropped.
    let e = pg
        .restore_database(
            "shop",
            &mut &b"SELECT 1;\n"[..],
            &PgRestoreOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert_eq!(pg.fingerprint_database("shop").await.unwrap(), shop_fp);

    // Truncated halfway: pg_restore fails and its message is in the error.
    let truncated = &dump[..dump.len() * 6 / 10];
    let e = pg
        .restore_database("shop", &mut &truncated[..], &PgRestoreOptions::default())
        .await
        .unwrap_err();
    let m = e.to_string();
    eprintln!("truncated dump: {m}");
    assert!(
        matches!(&e, DbError::Tool { tool, .. } if tool == "pg_restore"),
        "{m}"
    );
    assert!(
        m.contains("database `shop`") && m.contains("pg_restore: error"),
        "{m}"
    );

    // Under another name (no --create): same tables and rows.
    let r = pg
        .restore_database(
            "shop_copy",
            &mut dump.as_slice(),
            &PgRestoreOptions::default(),
        )
        .await
        .unwrap();
    assert!(!r.created_from_archive);
    assert_eq!(pg.fingerprint_database("shop_copy").await.unwrap(), shop_fp);
    // And back under its own name after the failed attempt.
    pg.restore_database("shop", &mut dump.as_slice(), &PgRestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(pg.fingerprint_database("shop").await.unwrap(), shop_fp);
    eprintln!(
        "postgres unhappy paths: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
