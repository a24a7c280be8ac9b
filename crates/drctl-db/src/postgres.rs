//! PostgreSQL: `pg_dump` / `pg_restore` / `psql` run inside the database container.
//!
//! # Backup
//! [`Postgres::dump_database`] runs `pg_dump -Fc -Z0` and streams its stdout into the
//! caller's writer. Custom format because `pg_restore` can restore it selectively and it
//! carries the database's own properties (encoding, locale, owner, grants) for
//! `--create`; `-Z0` because the repository compresses (zstd) anyway, and compressing twice
//! costs CPU and ratio. With a fingerprint asked for, a `psql` session first opens a
//! `REPEATABLE READ` transaction and exports its snapshot; `pg_dump --snapshot` dumps
//! exactly that snapshot and the fingerprint is computed in it too, so the fingerprint
//! describes the dump even while the application writes.
//!
//! [`Postgres::dump_globals`] is `pg_dumpall --globals-only`: roles (with their password
//! hashes, which needs a superuser), role memberships, tablespaces.
//!
//! # Restore
//! [`Postgres::restore_database`] reads the archive header first and refuses (changing
//! nothing) an input that is not a custom-format archive, or that this server's
//! `pg_restore` cannot read, or that a newer pg_dump made. Then it ends the other sessions
//! and drops the database (`DROP DATABASE ... WITH (FORCE)` on 13+, else blocking new
//! connections and `pg_terminate_backend`), and runs `pg_restore --create --exit-on-error`
//! fed through exec stdin, so the database comes back with its recorded encoding, locale,
//! owner and grants. Restoring under another name creates the database from `template0`
//! and restores into it (database-level properties are then not restored).
//!
//! Owners and grants are kept (no `--no-owner`): the application's role must own its
//! tables again, and restoring the globals first (the restore order drctl uses) creates
//! the roles. `ignore_roles` adds `--no-owner --no-privileges` for a server without them.
//! `--exit-on-error` stops at the first error: a half-restored database is a failed
//! restore either way, and the first error is the cause; it is quoted in the error.
//! `--single-transaction` cannot go with `--create`, and `-j` needs a seekable file, not
//! a stream.
//!
//! # Gate and fingerprint
//! [`Postgres::wait_ready`]: a query answers and `pg_is_in_recovery()` is false.
//! [`Postgres::fingerprint`]: per table of every user schema, the row count and a content
//! checksum computed in the server (see [`PgTableFingerprint`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drctl_core::config::PostgresTarget;
use drctl_docker::health::wait_for;
use drctl_docker::{DockerClient, ExecOptions, Poll, Probe};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::fingerprint::{compare_maps, Mismatch};
use crate::util::{one_line, secret_from_env, CappedBuf, CountRead, Secret, TailBuf, Tap};
use crate::DbError;

/// Settings that make a row's text form the same on every server and session.
const STABLE_OUTPUT: &str = "SET extra_float_digits = 3;\nSET bytea_output = 'hex';\n\
SET TimeZone = 'UTC';\nSET DateStyle = 'ISO, YMD';\nSET IntervalStyle = 'postgres';\n\
SET lc_monetary = 'C';\n";

/// Per ordinary table of every user schema (partitions included, inheritance parents
/// counted `ONLY` for their own rows): the row count, and two 64-bit sums over the rows'
/// md5 (first and second half), which make an order-independent checksum of the multiset
/// of rows with constant memory and no sort. One static query: `query_to_xml` runs the
/// per-table SQL that `format(%I)` builds.
const FINGERPRINT_QUERY: &str = r#"SELECT 'drctl-fp:' || coalesce(json_agg(json_build_object(
    'table', q.nspname || '.' || q.relname,
    'rows', (xpath('/row/n/text()', q.x))[1]::text::bigint,
    'checksum', md5((xpath('/row/a/text()', q.x))[1]::text || ':' || (xpath('/row/b/text()', q.x))[1]::text)
  ) ORDER BY q.nspname, q.relname), '[]')
FROM (
  SELECT n.nspname, c.relname, query_to_xml(format(
    'SELECT count(*) AS n, coalesce(sum((''x'' || substr(h, 1, 16))::bit(64)::bigint), 0) AS a, '
    'coalesce(sum((''x'' || substr(h, 17, 16))::bit(64)::bigint), 0) AS b '
    'FROM (SELECT md5(ROW(r.*)::text) AS h FROM ONLY %I.%I AS r) AS s', n.nspname, c.relname),
    false, true, '') AS x
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
) AS q;
"#;

/// Cap on a query's output kept in memory (fingerprints of databases with very many tables
/// stay far below).
const QUERY_OUTPUT_CAP: usize = 64 << 20;

/// A PostgreSQL target reached through `docker exec` in its container.
#[derive(Clone)]
pub struct Postgres {
    docker: DockerClient,
    container: String,
    user: String,
    password_env: Option<String>,
    password: Option<Secret>,
    databases: Vec<String>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("container", &self.container)
            .field("user", &self.user)
            .field("password_env", &self.password_env)
            .field("databases", &self.databases)
            .finish_non_exhaustive()
    }
}

/// Options of [`Postgres::dump_database`].
#[derive(Debug, Clone, Default)]
pub struct PgDumpOptions {
    /// Also fingerprint the database, in the dump's own snapshot.
    pub fingerprint: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgDumpReport {
    pub database: String,
    /// Size of the archive written.
    pub bytes: u64,
    pub seconds: f64,
    /// `server_version_num`, e.g. 150018.
    pub server_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<PgDatabaseFingerprint>,
}

/// Options of [`Postgres::restore_database`].
#[derive(Debug, Clone, Default)]
pub struct PgRestoreOptions {
    /// `--no-owner --no-privileges`: restore into a server that lacks the dump's roles;
    /// everything is then owned by the connecting user and grants are dropped.
    pub ignore_roles: bool,
    /// Restore a dump made by a newer pg_dump major than this server's (refused by
    /// default: its SQL may use what this server lacks).
    pub allow_older_server: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgRestoreReport {
    pub database: String,
    /// Bytes of the archive read.
    pub bytes: u64,
    pub seconds: f64,
    /// The database was created by pg_restore from the archive's own definition
    /// (`--create`), rather than from `template0` under another name.
    pub created_from_archive: bool,
    /// What the archive header says: the database it was taken from, the pg_dump version.
    pub source_database: Option<String>,
    pub dump_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgGlobalsReport {
    pub bytes: u64,
    /// Statements about the connecting role itself that were left out (see
    /// [`Postgres::restore_globals`]).
    pub skipped_own_role: u32,
    /// "already exists" errors, which are expected and ignored.
    pub already_existed: u32,
}

/// Per database, per table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PgFingerprint {
    pub databases: BTreeMap<String, PgDatabaseFingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PgDatabaseFingerprint {
    /// Keyed by `schema.table`.
    pub tables: BTreeMap<String, PgTableFingerprint>,
}

/// A table's rows: their number, and `md5(a || ':' || b)` where `a` and `b` are the sums
/// (as numeric, exact) of the first and second 64-bit halves of each row's
/// `md5(ROW(r.*)::text)`, the row's text form under fixed output settings (UTC, ISO dates,
/// hex bytea, full float precision). Order-independent, duplicates count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgTableFingerprint {
    pub rows: u64,
    pub checksum: String,
}

impl PgFingerprint {
    /// What differs between `self` (at backup) and `actual` (now): databases and tables
    /// missing or extra, row counts, contents.
    pub fn compare(&self, actual: &PgFingerprint) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut inner = Vec::new();
        compare_maps(
            &self.databases,
            &actual.databases,
            |d| format!("database `{d}`"),
            |d, e, a| inner.extend(e.compare_database(d, a)),
            &mut out,
        );
        out.extend(inner);
        out
    }
}

impl PgDatabaseFingerprint {
    /// What differs between `self` (database `db` at backup) and `actual` (now).
    pub fn compare_database(&self, db: &str, actual: &PgDatabaseFingerprint) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut inner = Vec::new();
        compare_maps(
            &self.tables,
            &actual.tables,
            |t| format!("database `{db}` table `{t}`"),
            |t, e, a| {
                if e.rows != a.rows {
                    inner.push(Mismatch::new(
                        format!("database `{db}` table `{t}` rows"),
                        e.rows,
                        a.rows,
                    ));
                } else if e.checksum != a.checksum {
                    inner.push(Mismatch::new(
                        format!("database `{db}` table `{t}` contents (same row count)"),
                        format!("checksum {}", e.checksum),
                        format!("checksum {}", a.checksum),
                    ));
                }
            },
            &mut out,
        );
        out.extend(inner);
        out
    }
}

impl Postgres {
    /// A target's PostgreSQL in `container`. Reads the password from `password_env` now,
    /// so that a missing variable fails before anything is touched.
    pub fn new(
        docker: DockerClient,
        container: impl Into<String>,
        target: &PostgresTarget,
    ) -> Result<Self, DbError> {
        let password = target
            .password_env
            .as_deref()
            .map(|v| secret_from_env(v, &format!("PostgreSQL password of user `{}`", target.user)))
            .transpose()?;
        Ok(Postgres {
            docker,
            container: container.into(),
            user: target.user.clone(),
            password_env: target.password_env.clone(),
            password,
            databases: target.databases.clone(),
        })
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// `-U user`, and with a password TCP to 127.0.0.1 inside the container (a Unix
    /// socket is usually `trust`ed, which would not check the password at all).
    fn conn_args(&self) -> Vec<String> {
        let mut v = vec!["-w".to_string(), "-U".to_string(), self.user.clone()];
        if self.password.is_some() {
            v.extend(["-h".to_string(), "127.0.0.1".to_string()]);
        }
        v
    }

    fn exec_opts(&self) -> ExecOptions {
        let mut env = vec![
            "PGAPPNAME=drctl".to_string(),
            "PGCONNECT_TIMEOUT=10".to_string(),
        ];
        if let Some(p) = &self.password {
            env.push(format!("PGPASSWORD={}", p.expose()));
        }
        ExecOptions {
            env,
            ..Default::default()
        }
    }

    async fn exec(
        &self,
        argv: &[String],
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        stdout: &mut (dyn AsyncWrite + Unpin + Send),
        stderr: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<i64, DbError> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        Ok(self
            .docker
            .exec(
                &self.container,
                &argv,
                &self.exec_opts(),
                stdin,
                stdout,
                stderr,
            )
            .await?)
    }

    fn auth_hint(&self) -> String {
        match &self.password_env {
            Some(v) => format!(
                "check the password of user `{}` in environment variable `{v}`",
                self.user
            ),
            None => format!(
                "the server wants a password for user `{}`: set `password_env` on the target to the variable that holds it",
                self.user
            ),
        }
    }

    /// Turn a failed tool run into the error that says what to do.
    fn failure(&self, action: String, tool: &str, code: i64, output: &str, hint: &str) -> DbError {
        let find = |pat: &str| output.lines().find(|l| l.contains(pat)).map(str::trim);
        if let Some(line) = find("password authentication failed")
            .or_else(|| find("no password supplied"))
            .or_else(|| find("fe_sendauth"))
            .or_else(|| find("authentication failed"))
        {
            return DbError::Auth {
                action,
                detail: one_line(line, 300),
                hint: self.auth_hint(),
            };
        }
        if let Some(line) = output.lines().find(|l| {
            l.contains("FATAL:") && l.contains("database \"") && l.contains("\" does not exist")
        }) {
            let name = line
                .split("database \"")
                .nth(1)
                .and_then(|r| r.split("\" does not exist").next())
                .unwrap_or("?");
            return DbError::NotFound {
                action,
                what: format!("database `{name}`"),
                hint: format!(
                    "list the databases with `docker exec {} psql -U {} -l`",
                    self.container, self.user
                ),
            };
        }
        if let Some(line) = find("Connection refused")
            .or_else(|| find("the database system is starting up"))
            .or_else(|| find("the database system is shutting down"))
            .or_else(|| find("the database system is in recovery mode"))
            .or_else(|| find("Is the server running"))
        {
            return DbError::Unavailable {
                action,
                reason: format!(
                    "PostgreSQL in container `{}` is not accepting connections ({}); wait for it with a postgres health gate",
                    self.container,
                    one_line(line, 300)
                ),
            };
        }
        DbError::Tool {
            action,
            tool: tool.to_string(),
            code,
            output: crate::util::tail_lines(output, 12),
            hint: hint.to_string(),
        }
    }

    /// Run SQL (fed through stdin, so `:'var'` / `:"var"` interpolation quotes the values)
    /// with `psql -X -q -A -t -v ON_ERROR_STOP=1`, and return its output.
    async fn query(
        &self,
        db: &str,
        sql: &str,
        vars: &[(&str, &str)],
        action: &str,
    ) -> Result<String, DbError> {
        let mut argv: Vec<String> = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
            .map(String::from)
            .to_vec();
        for (k, v) in vars {
            argv.push("-v".into());
            argv.push(format!("{k}={v}"));
        }
        argv.extend(self.conn_args());
        argv.extend(["-d".to_string(), conninfo_db(db), "-f".into(), "-".into()]);
        let mut out = CappedBuf::new(QUERY_OUTPUT_CAP);
        let mut err = TailBuf::new(64 << 10);
        let mut input = sql.as_bytes();
        let code = self
            .exec(&argv, Some(&mut input), &mut out, &mut err)
            .await
            .map_err(|e| match e {
                DbError::Docker(drctl_docker::DockerError::Io { source, .. }) => {
                    DbError::Protocol {
                        action: action.to_string(),
                        reason: format!("psql's output could not be kept: {source}"),
                    }
                }
                e => e,
            })?;
        if code != 0 {
            return Err(self.failure(action.to_string(), "psql", code, &err.text(), ""));
        }
        Ok(String::from_utf8_lossy(&out.buf).into_owned())
    }

    /// `server_version_num`, e.g. 150018.
    pub async fn server_version(&self) -> Result<u32, DbError> {
        let action = format!(
            "read the PostgreSQL version in container `{}`",
            self.container
        );
        let out = self
            .query("postgres", "SHOW server_version_num;\n", &[], &action)
            .await?;
        out.trim().parse().map_err(|_| DbError::Protocol {
            action,
            reason: format!("unexpected answer {:?}", one_line(&out, 100)),
        })
    }

    /// The databases that take connections and are not templates, by name.
    pub async fn list_databases(&self) -> Result<Vec<String>, DbError> {
        let action = format!("list the databases in container `{}`", self.container);
        let out = self
            .query(
                "postgres",
                "SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database \
                 WHERE NOT datistemplate AND datallowconn;\n",
                &[],
                &action,
            )
            .await?;
        serde_json::from_str(out.trim()).map_err(|e| DbError::Protocol {
            action,
            reason: format!("unexpected answer ({e})"),
        })
    }

    /// The target's databases: the listed ones (each must exist), or all of them.
    pub async fn selected_databases(&self) -> Result<Vec<String>, DbError> {
        let all = self.list_databases().await?;
        if self.databases.is_empty() {
            return Ok(all);
        }
        let missing: Vec<&String> = self.databases.iter().filter(|d| !all.contains(d)).collect();
        if !missing.is_empty() {
            return Err(DbError::NotFound {
                action: format!(
                    "select the databases to back up in container `{}`",
                    self.container
                ),
                what: format!(
                    "database{} {}",
                    if missing.len() > 1 { "s" } else { "" },
                    missing
                        .iter()
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                hint: format!(
                    "the server has {}; fix the target's `databases` in drctl.yml",
                    all.iter()
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(self.databases.clone())
    }

    /// Stream `pg_dump -Fc -Z0` of `db` into `out` (flushed, not shut down). On error the
    /// writer holds a partial archive that must be discarded.
    pub async fn dump_database(
        &self,
        db: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        opts: &PgDumpOptions,
    ) -> Result<PgDumpReport, DbError> {
        let t0 = Instant::now();
        let server_version = self.server_version().await?;
        let (bytes, fingerprint) = if opts.fingerprint {
            let (b, f) = self.dump_in_snapshot(db, out).await?;
            (b, Some(f))
        } else {
            (self.pg_dump(db, None, out).await?, None)
        };
        Ok(PgDumpReport {
            database: db.to_string(),
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
            server_version,
            fingerprint,
        })
    }

    async fn pg_dump(
        &self,
        db: &str,
        snapshot: Option<&str>,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, DbError> {
        let action = format!("dump database `{db}` in container `{}`", self.container);
        let mut argv: Vec<String> = ["pg_dump", "-Fc", "-Z0"].map(String::from).to_vec();
        argv.extend(self.conn_args());
        if let Some(s) = snapshot {
            argv.push(format!("--snapshot={s}"));
        }
        argv.extend(["-d".to_string(), conninfo_db(db)]);
        let mut tap = Tap::new(out, 5);
        let mut err = TailBuf::new(64 << 10);
        let code = self.exec(&argv, None, &mut tap, &mut err).await?;
        if code != 0 {
            return Err(self.failure(
                action,
                "pg_dump",
                code,
                &err.text(),
                "what was written is incomplete and must not be kept",
            ));
        }
        if tap.head != b"PGDMP" {
            return Err(DbError::Protocol {
                action,
                reason: format!(
                    "pg_dump exited 0 but wrote {} bytes that do not start like a custom-format archive",
                    tap.bytes
                ),
            });
        }
        Ok(tap.bytes)
    }

    /// pg_dump and the fingerprint in one exported snapshot (see the module docs).
    async fn dump_in_snapshot(
        &self,
        db: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<(u64, PgDatabaseFingerprint), DbError> {
        let action = format!(
            "dump and fingerprint database `{db}` in container `{}`",
            self.container
        );
        let mut argv: Vec<String> = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
            .map(String::from)
            .to_vec();
        argv.extend(self.conn_args());
        argv.extend(["-d".to_string(), conninfo_db(db)]);

        let (mut sql_w, sql_r) = tokio::io::duplex(64 << 10);
        let (res_w, res_r) = tokio::io::duplex(1 << 20);
        let mut sess_err = TailBuf::new(64 << 10);
        let err_ref = &mut sess_err;
        let argv_ref = &argv;
        // The psql session holding the snapshot. It owns its ends of the pipes, so that
        // when it ends the controller sees EOF / a broken pipe instead of waiting forever.
        let session = async move {
            let (mut r, mut w) = (sql_r, res_w);
            self.exec(argv_ref, Some(&mut r), &mut w, err_ref).await
        };
        let control = async move {
            let mut lines = BufReader::new(res_r).lines();
            let start = format!(
                "{STABLE_OUTPUT}BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n\
                 SELECT 'drctl-snapshot:' || pg_export_snapshot();\n"
            );
            sql_w
                .write_all(start.as_bytes())
                .await
                .map_err(Ctl::Session)?;
            let snapshot = read_marker(&mut lines, "drctl-snapshot:").await?;
            sql_w
                .write_all(FINGERPRINT_QUERY.as_bytes())
                .await
                .map_err(Ctl::Session)?;
            let (dumped, fp) = tokio::join!(
                self.pg_dump(db, Some(&snapshot), out),
                read_marker(&mut lines, "drctl-fp:")
            );
            let bytes = dumped.map_err(Ctl::Db)?;
            let fp = fp?;
            sql_w
                .write_all(b"COMMIT;\n\\q\n")
                .await
                .map_err(Ctl::Session)?;
            drop(sql_w);
            // Drain whatever else the session prints until it ends.
            while let Ok(Some(_)) = lines.next_line().await {}
            Ok::<_, Ctl>((bytes, fp))
        };
        let (sess, ctl) = tokio::join!(session, control);
        let session_failure = |code: i64| {
            self.failure(
                action.clone(),
                "psql",
                code,
                &sess_err.text(),
                "the snapshot session for the dump failed",
            )
        };
        match ctl {
            Ok((bytes, fp_json)) => {
                let fp = parse_db_fingerprint(&fp_json).map_err(|reason| DbError::Protocol {
                    action: action.clone(),
                    reason,
                })?;
                match sess {
                    Ok(0) => {}
                    Ok(code) => tracing::warn!("{}", session_failure(code)),
                    Err(e) => tracing::warn!("{e}"),
                }
                Ok((bytes, fp))
            }
            Err(Ctl::Db(e)) => Err(e),
            Err(Ctl::Session(io)) => match sess {
                Ok(code) if code != 0 => Err(session_failure(code)),
                Ok(_) => Err(DbError::Protocol {
                    action,
                    reason: format!("the snapshot session ended early ({io})"),
                }),
                Err(e) => Err(e),
            },
        }
    }

    /// Stream `pg_dumpall --globals-only` (roles, memberships, tablespaces) into `out`.
    /// Role passwords are included, which needs a superuser.
    pub async fn dump_globals(
        &self,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, DbError> {
        let action = format!("dump the roles (globals) in container `{}`", self.container);
        let mut argv: Vec<String> = vec!["pg_dumpall".into(), "--globals-only".into()];
        argv.extend(self.conn_args());
        let mut tap = Tap::new(out, 0);
        let mut err = TailBuf::new(64 << 10);
        let code = self.exec(&argv, None, &mut tap, &mut err).await?;
        if code != 0 {
            let text = err.text();
            let hint = if text.contains("permission denied") {
                format!(
                    "user `{}` must be a superuser to read the roles' passwords",
                    self.user
                )
            } else {
                String::new()
            };
            return Err(self.failure(action, "pg_dumpall", code, &text, &hint));
        }
        Ok(tap.bytes)
    }

    /// Run a globals script through `psql` (no ON_ERROR_STOP): "already exists" errors are
    /// expected (roles that are there) and counted; any other error fails the step, quoted.
    /// Statements about the role drctl connects as (`CREATE ROLE me;`,
    /// `ALTER ROLE me WITH ... PASSWORD ...`) are left out: that role exists, and giving it
    /// back its old password would lock drctl (and `password_env`) out halfway.
    pub async fn restore_globals(
        &self,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<PgGlobalsReport, DbError> {
        let action = format!(
            "restore the roles (globals) in container `{}`",
            self.container
        );
        let mut argv: Vec<String> = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0"]
            .map(String::from)
            .to_vec();
        argv.extend(self.conn_args());
        argv.extend(["-d", "postgres", "-f", "-"].map(String::from));
        let (mut pipe_w, pipe_r) = tokio::io::duplex(64 << 10);
        let mut out = TailBuf::new(16 << 10);
        let mut scan = ErrorScan::default();
        let scan_ref = &mut scan;
        let out_ref = &mut out;
        let argv_ref = &argv;
        let run = async move {
            let mut r = pipe_r;
            self.exec(argv_ref, Some(&mut r), out_ref, scan_ref).await
        };
        let user = self.user.clone();
        let filter = async move {
            let mut reader = BufReader::new(input);
            let mut line = Vec::new();
            let (mut bytes, mut skipped) = (0u64, 0u32);
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(FeedEnd::Input)?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                if is_own_role_line(&String::from_utf8_lossy(&line), &user) {
                    skipped += 1;
                    continue;
                }
                pipe_w.write_all(&line).await.map_err(FeedEnd::Closed)?;
            }
            pipe_w.shutdown().await.map_err(FeedEnd::Closed)?;
            Ok::<_, FeedEnd>((bytes, skipped))
        };
        let (ran, filtered) = tokio::join!(run, filter);
        let code = ran?;
        let (bytes, skipped) = match filtered {
            Ok(v) => v,
            // The caller's reader failed: psql got a truncated script.
            Err(FeedEnd::Input(e)) => {
                return Err(DbError::io(format!("{action}: read the globals"))(e))
            }
            // psql stopped reading (it exited): its exit code and errors say why.
            Err(FeedEnd::Closed(e)) => {
                tracing::debug!("{action}: psql stopped reading its input: {e}");
                (0, 0)
            }
        };
        scan.finish();
        if code != 0 {
            return Err(self.failure(action, "psql", code, &scan.tail.text(), ""));
        }
        if !scan.errors.is_empty() {
            return Err(DbError::Tool {
                action,
                tool: "psql".into(),
                code,
                output: scan.errors.join("\n"),
                hint: format!(
                    "{} statement(s) failed ({} \"already exists\" ignored)",
                    scan.failed, scan.tolerated
                ),
            });
        }
        Ok(PgGlobalsReport {
            bytes,
            skipped_own_role: skipped,
            already_existed: scan.tolerated,
        })
    }

    /// Recreate `db` from a custom-format archive read from `input` (see the module docs).
    /// Other sessions on the database are ended. On failure after the drop, the database
    /// is missing or incomplete; the error says so.
    pub async fn restore_database(
        &self,
        db: &str,
        input: &mut (dyn AsyncRead + Unpin + Send),
        opts: &PgRestoreOptions,
    ) -> Result<PgRestoreReport, DbError> {
        let t0 = Instant::now();
        let action = format!("restore database `{db}` in container `{}`", self.container);
        let (head, header) = read_archive_header(input, &action).await?;
        let version = self.server_version().await?;
        check_restorable(&header, version, opts, &action)?;
        let create = header.dbname.as_deref() == Some(db);
        let maint = maintenance_db(db);

        self.drop_database(db, version, &action).await?;
        if !create {
            self.query(
                maint,
                "CREATE DATABASE :\"db\" TEMPLATE template0;\n",
                &[("db", db)],
                &action,
            )
            .await?;
        }

        let mut argv: Vec<String> = vec!["pg_restore".into(), "--exit-on-error".into()];
        argv.extend(self.conn_args());
        if opts.ignore_roles {
            argv.extend(["--no-owner".into(), "--no-privileges".into()]);
        }
        if create {
            argv.extend(["--create".into(), "-d".into(), conninfo_db(maint)]);
        } else {
            argv.extend(["-d".into(), conninfo_db(db)]);
        }
        let mut counted = CountRead::new((&head[..]).chain(input));
        let mut out = TailBuf::new(16 << 10);
        let mut err = TailBuf::new(64 << 10);
        let code = self
            .exec(&argv, Some(&mut counted), &mut out, &mut err)
            .await?;
        if code != 0 {
            let text = err.text();
            let mut hint = format!(
                "database `{db}` was dropped and is now incomplete: fix the cause and restore it again (from this backup or the safety backup)"
            );
            if text.contains("role \"") && text.contains("does not exist") {
                hint.push_str("; a role is missing: restore the globals (roles) first, or restore with ignore_roles");
            }
            return Err(self.failure(action, "pg_restore", code, &text, &hint));
        }
        Ok(PgRestoreReport {
            database: db.to_string(),
            bytes: counted.bytes,
            seconds: t0.elapsed().as_secs_f64(),
            created_from_archive: create,
            source_database: header.dbname,
            dump_version: header.dump_version,
        })
    }

    /// End every other session on `db` and drop it (nothing to do when it does not exist).
    async fn drop_database(&self, db: &str, version: u32, action: &str) -> Result<(), DbError> {
        let sql = if version >= 130000 {
            "DROP DATABASE IF EXISTS :\"db\" WITH (FORCE);\n"
        } else {
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') AS drctl_exists \\gset\n\
             \\if :drctl_exists\n\
             ALTER DATABASE :\"db\" ALLOW_CONNECTIONS false;\n\
             SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :'db' AND pid <> pg_backend_pid();\n\
             \\endif\n\
             DROP DATABASE IF EXISTS :\"db\";\n"
        };
        let mut attempt = 0;
        loop {
            match self
                .query(maintenance_db(db), sql, &[("db", db)], action)
                .await
            {
                // Terminated backends take a moment to go away.
                Err(DbError::Tool { output, .. })
                    if output.contains("is being accessed by other users") && attempt < 20 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// Wait until PostgreSQL answers a query on `database` (default `postgres`) and is not
    /// in recovery. Wrong credentials or a missing database fail at once.
    pub async fn wait_ready(&self, database: Option<&str>, poll: Poll) -> Result<(), DbError> {
        self.wait(database, None, poll).await
    }

    /// [`Postgres::wait_ready`], and then `query` must succeed too (the runbook's
    /// `check: { type: postgres, query: ... }`, e.g. a table the application migrates).
    pub async fn wait_query(
        &self,
        database: Option<&str>,
        query: &str,
        poll: Poll,
    ) -> Result<(), DbError> {
        self.wait(database, Some(query), poll).await
    }

    async fn wait(
        &self,
        database: Option<&str>,
        query: Option<&str>,
        poll: Poll,
    ) -> Result<(), DbError> {
        let db = database.unwrap_or("postgres");
        let mut subject = format!(
            "see PostgreSQL in container `{}` accept connections to `{db}` and leave recovery",
            self.container
        );
        if let Some(q) = query {
            subject.push_str(&format!(" and answer `{}`", one_line(q, 80)));
        }
        Ok(wait_for(&subject, poll, || self.probe(db, query)).await?)
    }

    async fn probe(&self, db: &str, query: Option<&str>) -> Probe {
        let action = "probe".to_string();
        match self
            .query(db, "SELECT pg_is_in_recovery();\n", &[], &action)
            .await
        {
            Ok(o) if o.trim() == "f" => match query {
                None => Probe::Ready,
                Some(q) => match self
                    .query(
                        db,
                        &format!("{}\n;\n", q.trim().trim_end_matches(';')),
                        &[],
                        &action,
                    )
                    .await
                {
                    Ok(_) => Probe::Ready,
                    Err(e) => Probe::waiting(format!(
                        "the query still fails: {}",
                        one_line(&strip_failed(&e.to_string(), "probe"), 300)
                    )),
                },
            },
            Ok(o) if o.trim() == "t" => {
                Probe::waiting("still in recovery (replaying WAL, or a standby)")
            }
            Ok(o) => Probe::waiting(format!("unexpected answer {:?}", one_line(&o, 80))),
            Err(
                e @ (DbError::Auth { .. } | DbError::NotFound { .. } | DbError::Credential { .. }),
            ) => Probe::Fatal(strip_failed(&e.to_string(), "probe")),
            Err(DbError::Unavailable { reason, .. }) => {
                Probe::waiting(format!("still failing: {reason}"))
            }
            Err(DbError::Docker(e)) if e.is_not_found() => {
                Probe::Fatal(format!("no container `{}`", self.container))
            }
            Err(e) => Probe::waiting(format!(
                "still failing: {}",
                strip_failed(&e.to_string(), "probe")
            )),
        }
    }

    /// Fingerprint the given databases (see [`PgTableFingerprint`]).
    pub async fn fingerprint(&self, databases: &[String]) -> Result<PgFingerprint, DbError> {
        let mut fp = PgFingerprint::default();
        for db in databases {
            fp.databases
                .insert(db.clone(), self.fingerprint_database(db).await?);
        }
        Ok(fp)
    }

    pub async fn fingerprint_database(&self, db: &str) -> Result<PgDatabaseFingerprint, DbError> {
        let action = format!(
            "fingerprint database `{db}` in container `{}`",
            self.container
        );
        let sql = format!("{STABLE_OUTPUT}{FINGERPRINT_QUERY}");
        let out = self.query(db, &sql, &[], &action).await?;
        let json = out
            .lines()
            .find_map(|l| l.strip_prefix("drctl-fp:"))
            .ok_or_else(|| DbError::Protocol {
                action: action.clone(),
                reason: format!("no fingerprint in psql's output {:?}", one_line(&out, 200)),
            })?;
        parse_db_fingerprint(json).map_err(|reason| DbError::Protocol { action, reason })
    }
}

/// "failed to probe: x" -> "x" (the gate's own message says what it was doing).
fn strip_failed(msg: &str, action: &str) -> String {
    msg.strip_prefix(&format!("failed to {action}: "))
        .unwrap_or(msg)
        .to_string()
}

/// Why feeding a filtered stream to a tool stopped.
enum FeedEnd {
    /// The caller's reader failed.
    Input(std::io::Error),
    /// The tool stopped reading.
    Closed(std::io::Error),
}

enum Ctl {
    Session(std::io::Error),
    Db(DbError),
}

async fn read_marker<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    marker: &str,
) -> Result<String, Ctl> {
    loop {
        match lines.next_line().await.map_err(Ctl::Session)? {
            Some(l) => {
                if let Some(rest) = l.strip_prefix(marker) {
                    return Ok(rest.to_string());
                }
            }
            None => {
                return Err(Ctl::Session(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "psql ended before answering",
                )))
            }
        }
    }
}

fn parse_db_fingerprint(json: &str) -> Result<PgDatabaseFingerprint, String> {
    #[derive(Deserialize)]
    struct Row {
        table: String,
        rows: u64,
        checksum: String,
    }
    let rows: Vec<Row> = serde_json::from_str(json.trim())
        .map_err(|e| format!("unexpected fingerprint from psql ({e})"))?;
    Ok(PgDatabaseFingerprint {
        tables: rows
            .into_iter()
            .map(|r| {
                (
                    r.table,
                    PgTableFingerprint {
                        rows: r.rows,
                        checksum: r.checksum,
                    },
                )
            })
            .collect(),
    })
}

/// The database to connect to while dropping or creating `db`.
fn maintenance_db(db: &str) -> &'static str {
    if db == "postgres" {
        "template1"
    } else {
        "postgres"
    }
}

/// `dbname='...'` as a libpq connection string, so that no database name (one with `=`,
/// or starting with `postgres://`) is read as something else.
fn conninfo_db(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Whether a globals line is about the role drctl connects as.
fn is_own_role_line(line: &str, user: &str) -> bool {
    let line = line.trim_end();
    let quoted = format!("\"{}\"", user.replace('"', "\"\""));
    [user.to_string(), quoted].iter().any(|id| {
        line == format!("CREATE ROLE {id};") || line.starts_with(&format!("ALTER ROLE {id} WITH "))
    })
}

/// psql's stderr, scanned line by line for `ERROR:`s.
#[derive(Default)]
struct ErrorScan {
    partial: Vec<u8>,
    tolerated: u32,
    failed: u32,
    errors: Vec<String>,
    tail: TailBuf,
}

impl ErrorScan {
    fn line(&mut self, l: &str) {
        if !l.contains("ERROR:") {
            return;
        }
        if l.contains("already exists") {
            self.tolerated += 1;
        } else {
            self.failed += 1;
            if self.errors.len() < 10 {
                self.errors.push(one_line(l, 400));
            }
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let l = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.line(&l);
        }
    }
}

impl AsyncWrite for ErrorScan {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let _ = std::pin::Pin::new(&mut this.tail).poll_write(cx, data);
        this.partial.extend_from_slice(data);
        while let Some(i) = this.partial.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = this.partial.drain(..=i).collect();
            let l = String::from_utf8_lossy(&l).into_owned();
            this.line(&l);
        }
        if this.partial.len() > 64 << 10 {
            this.partial.clear();
        }
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// What the header of a custom-format archive says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    /// Archive format version (major, minor, revision), e.g. (1, 14, 0) for PostgreSQL 12-15.
    pub version: (u8, u8, u8),
    pub dbname: Option<String>,
    /// The server the dump was taken from, e.g. "15.18 (Debian 15.18-0+deb12u1)".
    pub server_version: Option<String>,
    /// The pg_dump that made it.
    pub dump_version: Option<String>,
}

enum Parse {
    Done(ArchiveHeader),
    NeedMore,
    Bad(String),
}

/// Parse the header of `pg_dump -Fc` output (pg_backup_archiver.c, WriteHead):
/// "PGDMP", version bytes, int size, offset size, format, compression (an int before
/// 1.15, a byte since), seven ints of creation time, then the database name, the server
/// version and the pg_dump version as length-prefixed strings.
fn parse_header(b: &[u8]) -> Parse {
    if b.len() < 5 {
        return if b"PGDMP".starts_with(b) {
            Parse::NeedMore
        } else {
            Parse::Bad(magic_text(b))
        };
    }
    if &b[..5] != b"PGDMP" {
        return Parse::Bad(magic_text(b));
    }
    if b.len() < 11 {
        return Parse::NeedMore;
    }
    let version = (b[5], b[6], b[7]);
    let int_size = b[8] as usize;
    let format = b[10];
    if format != 1 {
        return Parse::Bad(format!(
            "it is a pg_dump archive in format {format}, not the custom format (-Fc) drctl writes"
        ));
    }
    if !(1..=8).contains(&int_size) {
        return Parse::Bad(format!("its header has an implausible int size {int_size}"));
    }
    let mut pos = 11usize;
    let read_int = |pos: &mut usize| -> Option<i64> {
        let end = *pos + 1 + int_size;
        if b.len() < end {
            return None;
        }
        let sign = b[*pos];
        let mut v: i64 = 0;
        for (i, byte) in b[*pos + 1..end].iter().enumerate() {
            v |= (*byte as i64) << (8 * i);
        }
        *pos = end;
        Some(if sign != 0 { -v } else { v })
    };
    // Compression: a byte since 1.15, an int before.
    if version >= (1, 15, 0) {
        if b.len() < pos + 1 {
            return Parse::NeedMore;
        }
        pos += 1;
    } else if read_int(&mut pos).is_none() {
        return Parse::NeedMore;
    }
    for _ in 0..7 {
        if read_int(&mut pos).is_none() {
            return Parse::NeedMore;
        }
    }
    let mut strings = Vec::new();
    for _ in 0..3 {
        let Some(len) = read_int(&mut pos) else {
            return Parse::NeedMore;
        };
        if len < 0 {
            strings.push(None);
            continue;
        }
        let len = len as usize;
        if len > 64 << 10 {
            return Parse::Bad("its header has an implausible string length".into());
        }
        if b.len() < pos + len {
            return Parse::NeedMore;
        }
        strings.push(Some(
            String::from_utf8_lossy(&b[pos..pos + len]).into_owned(),
        ));
        pos += len;
    }
    let mut it = strings.into_iter();
    Parse::Done(ArchiveHeader {
        version,
        dbname: it.next().flatten(),
        server_version: it.next().flatten(),
        dump_version: it.next().flatten(),
    })
}

fn magic_text(b: &[u8]) -> String {
    let shown: String = b
        .iter()
        .take(16)
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect();
    format!(
        "the input is not a pg_dump custom-format archive (it starts with \"{shown}\"); nothing was changed"
    )
}

/// Read enough of `input` to parse the archive header; returns the bytes read (to be sent
/// on before the rest) and the header.
async fn read_archive_header(
    input: &mut (dyn AsyncRead + Unpin + Send),
    action: &str,
) -> Result<(Vec<u8>, ArchiveHeader), DbError> {
    let mut head = Vec::with_capacity(8192);
    let mut buf = [0u8; 4096];
    loop {
        match parse_header(&head) {
            Parse::Done(h) => return Ok((head, h)),
            Parse::Bad(reason) => {
                return Err(DbError::Invalid {
                    action: action.to_string(),
                    reason,
                })
            }
            Parse::NeedMore if head.len() > 256 << 10 => {
                return Err(DbError::Invalid {
                    action: action.to_string(),
                    reason: "the archive header is not readable; nothing was changed".into(),
                })
            }
            Parse::NeedMore => {}
        }
        let n = input
            .read(&mut buf)
            .await
            .map_err(DbError::io(format!("{action}: read the archive")))?;
        if n == 0 {
            return Err(DbError::Invalid {
                action: action.to_string(),
                reason: if head.is_empty() {
                    "the input is empty; nothing was changed".into()
                } else {
                    format!(
                        "the input ends after {} bytes, inside the archive header; nothing was changed",
                        head.len()
                    )
                },
            });
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// The newest archive format a server's own pg_restore reads.
fn max_archive_version(server_version: u32) -> Option<(u8, u8)> {
    match server_version / 10000 {
        0..=11 => Some((1, 13)),
        12..=15 => Some((1, 14)),
        16 => Some((1, 15)),
        17 => Some((1, 16)),
        _ => None, // newer servers: let their pg_restore judge
    }
}

fn major_of(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Refuse, before anything is dropped, an archive this server cannot take.
fn check_restorable(
    h: &ArchiveHeader,
    server_version: u32,
    opts: &PgRestoreOptions,
    action: &str,
) -> Result<(), DbError> {
    let server_major = server_version / 10000;
    if let Some(max) = max_archive_version(server_version) {
        if (h.version.0, h.version.1) > max {
            return Err(DbError::Invalid {
                action: action.to_string(),
                reason: format!(
                    "the archive (format {}.{}, from pg_dump {}) is newer than PostgreSQL {server_major}'s pg_restore reads (up to {}.{}); restore into a server of the dump's version; nothing was changed",
                    h.version.0,
                    h.version.1,
                    h.dump_version.as_deref().unwrap_or("?"),
                    max.0,
                    max.1
                ),
            });
        }
    }
    if let Some(dump_major) = h.dump_version.as_deref().and_then(major_of) {
        if dump_major > server_major && !opts.allow_older_server {
            return Err(DbError::Invalid {
                action: action.to_string(),
                reason: format!(
                    "the dump was made by pg_dump {dump_major}, and this server is PostgreSQL {server_major}: restoring into an older major is not supported (its SQL may use what this server lacks); restore into PostgreSQL {dump_major} or newer; nothing was changed"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of a real `pg_dump -Fc -Z0` of database `postgres` (PostgreSQL 15).
    fn pg15_header() -> Vec<u8> {
        let mut v = b"PGDMP\x01\x0e\x00\x04\x08\x01".to_vec();
        v.extend([0, 0, 0, 0, 0]); // compression
        for x in [42u8, 28, 4, 22, 10, 126, 0] {
            v.extend([0, x, 0, 0, 0]);
        }
        for s in [
            "postgres",
            "15.18 (Debian 15.18-0+deb12u1)",
            "15.18 (Debian 15.18-0+deb12u1)",
        ] {
            v.extend([0, s.len() as u8, 0, 0, 0]);
            v.extend(s.as_bytes());
        }
        v.extend(b"rest of the archive");
        v
    }

    #[test]
    fn header_parses_incrementally() {
        let full = pg15_header();
        for cut in 0..60 {
            assert!(
                matches!(parse_header(&full[..cut]), Parse::NeedMore),
                "cut {cut}"
            );
        }
        let Parse::Done(h) = parse_header(&full) else {
            panic!()
        };
        assert_eq!(h.version, (1, 14, 0));
        assert_eq!(h.dbname.as_deref(), Some("postgres"));
        assert_eq!(major_of(h.dump_version.as_deref().unwrap()), Some(15));
        assert!(matches!(parse_header(b"REDIS0010"), Parse::Bad(m) if m.contains("REDIS0010")));
        assert!(matches!(parse_header(b"-- PostgreSQL"), Parse::Bad(_)));
        // 1.15: a compression byte instead of an int.
        let mut v = b"PGDMP\x01\x0f\x00\x04\x08\x01\x00".to_vec();
        for _ in 0..7 {
            v.extend([0, 1, 0, 0, 0]);
        }
        v.extend([0, 3, 0, 0, 0]);
        v.extend(b"app");
        v.extend([1, 1, 0, 0, 0]); // NULL string (negative length)
        v.extend([0, 2, 0, 0, 0]);
        v.extend(b"16");
        let Parse::Done(h) = parse_header(&v) else {
            panic!()
        };
        assert_eq!(h.dbname.as_deref(), Some("app"));
        assert_eq!(h.server_version, None);
    }

    #[test]
    fn restorability() {
        let Parse::Done(h) = parse_header(&pg15_header()) else {
            panic!()
        };
        let o = PgRestoreOptions::default();
        assert!(check_restorable(&h, 150018, &o, "x").is_ok());
        assert!(check_restorable(&h, 170002, &o, "x").is_ok());
        let e = check_restorable(&h, 140010, &o, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("older major"), "{e}");
        let newer = ArchiveHeader {
            version: (1, 16, 0),
            dump_version: Some("17.2".into()),
            ..h.clone()
        };
        let e = check_restorable(&newer, 150018, &o, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("format 1.16"), "{e}");
    }

    #[test]
    fn own_role_lines() {
        assert!(is_own_role_line("CREATE ROLE postgres;\n", "postgres"));
        assert!(is_own_role_line(
            "ALTER ROLE postgres WITH SUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$x';",
            "postgres"
        ));
        assert!(is_own_role_line("CREATE ROLE \"Admin\";", "Admin"));
        assert!(!is_own_role_line("CREATE ROLE app;", "postgres"));
        assert!(!is_own_role_line(
            "ALTER ROLE postgres SET search_path TO x;",
            "postgres"
        ));
        assert!(!is_own_role_line(
            "ALTER ROLE postgresql WITH LOGIN;",
            "postgres"
        ));
    }

    #[test]
    fn conninfo_quoting() {
        assert_eq!(conninfo_db("app"), "dbname='app'");
        assert_eq!(conninfo_db("it's\\x"), "dbname='it\\'s\\\\x'");
        assert_eq!(conninfo_db("postgres://evil"), "dbname='postgres://evil'");
    }

    #[test]
    fn fingerprint_compare_names_tables() {
        let fp = |rows: u64, sum: &str| PgTableFingerprint {
            rows,
            checksum: sum.into(),
        };
        let a = PgFingerprint {
            databases: BTreeMap::from([
                (
                    "app".to_string(),
                    PgDatabaseFingerprint {
                        tables: BTreeMap::from([
                            ("public.users".to_string(), fp(10, "a")),
                            ("public.docs".to_string(), fp(5, "b")),
                            ("public.gone".to_string(), fp(1, "c")),
                        ]),
                    },
                ),
                ("old".to_string(), PgDatabaseFingerprint::default()),
            ]),
        };
        assert!(a.compare(&a).is_empty());
        let mut b = a.clone();
        b.databases.remove("old");
        let t = &mut b.databases.get_mut("app").unwrap().tables;
        t.insert("public.users".into(), fp(9, "a"));
        t.insert("public.docs".into(), fp(5, "x"));
        t.remove("public.gone");
        t.insert("public.new".into(), fp(0, "z"));
        let m: Vec<String> = a.compare(&b).iter().map(|m| m.to_string()).collect();
        assert_eq!(
            m,
            vec![
                "database `old`: present at backup, missing now",
                "database `app` table `public.gone`: present at backup, missing now",
                "database `app` table `public.new`: missing at backup, present now",
                "database `app` table `public.docs` contents (same row count): checksum b at backup, checksum x now",
                "database `app` table `public.users` rows: 10 at backup, 9 now",
            ]
        );
    }

    #[test]
    fn failures_are_classified() {
        let pg = Postgres {
            docker: DockerClient::connect_to("tcp://127.0.0.1:9").unwrap(),
            container: "pg".into(),
            user: "postgres".into(),
            password_env: Some("PGPW".into()),
            password: Some(Secret::new("s3cret")),
            databases: vec![],
        };
        let e = pg.failure(
            "dump database `app`".into(),
            "pg_dump",
            1,
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"postgres\"",
            "",
        );
        assert!(e.is_auth());
        let m = e.to_string();
        assert!(m.contains("`PGPW`") && !m.contains("s3cret"), "{m}");
        let e = pg.failure(
            "dump database `nope`".into(),
            "pg_dump",
            1,
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  database \"nope\" does not exist",
            "",
        );
        assert!(
            matches!(&e, DbError::NotFound { what, .. } if what == "database `nope`"),
            "{e}"
        );
        let e = pg.failure(
            "x".into(),
            "psql",
            2,
            "psql: error: connection to server at \"127.0.0.1\", port 5432 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
            "",
        );
        assert!(matches!(e, DbError::Unavailable { .. }), "{e}");
    }
}
