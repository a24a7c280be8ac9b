//! Redis: `redis-cli` inside the container, an RDB file as the backup.
//!
//! # Backup: BGSAVE, then the file through `cat`
//! [`Redis::backup`] has Redis write a fresh RDB (`BGSAVE`), waits on `INFO persistence`
//! (`rdb_bgsave_in_progress:0`, then `rdb_last_bgsave_status:ok`), and streams
//! `dir/dbfilename` out through an exec'd `cat`. Why not the replication stream
//! (`redis-cli --rdb`, `SYNC`): with diskless replication (the default since 7.0) the
//! master waits `repl-diskless-sync-delay` (5 s) before it forks, the fork happens at a
//! moment drctl does not control, and it needs replication rights. `BGSAVE` forks inside
//! the command itself, so the dataset is fixed the moment it answers. That is what makes
//! an exact fingerprint possible: on Redis 7+, drctl sends `CLIENT PAUSE <t> WRITE`,
//! the fingerprint script (`EVALSHA_RO`), `BGSAVE` and `CLIENT UNPAUSE` on one
//! connection; no write can land between the fingerprint and the fork (writers wait for
//! that moment, they get no error). A save that another client starts right after ours
//! could replace the file before `cat` opens it: the save counter is read again after the
//! copy, and a change fails the backup (retryable) rather than store a file the
//! fingerprint does not describe. `cat` rather than the archive API: raw bytes, no tar to
//! unwrap, and it works while Redis runs.
//!
//! # Restore: files put in place while Redis is stopped
//! [`Redis::restore`] reads `dir`, `dbfilename`, `appendonly`, `appenddirname` and
//! `appendfilename` with `CONFIG GET` while Redis runs, then starts a helper container
//! from Redis's own image with `--volumes-from` it (so `dir` must be on a volume or bind
//! mount, which the official image's `VOLUME /data` guarantees). The RDB is streamed into
//! a staging file in `dir` and checked with `redis-check-rdb` while Redis still serves:
//! a truncated or too-new file is refused before anything stops. Then Redis is stopped and
//! the file put in place:
//! - AOF off: it becomes `dir/dbfilename`.
//! - AOF on, Redis 7+ (multi-part AOF): Redis loads the AOF and ignores dump.rdb
//!   (redis#12484), so the old `appenddirname` is removed and recreated holding the RDB as
//!   the base of a new AOF (`<appendfilename>.1.base.rdb`) and a manifest naming only it;
//!   Redis loads the base, opens a new incremental file and carries on. dump.rdb becomes a
//!   hard link to the same data (so that turning AOF off later does not bring back old
//!   data).
//! - AOF on, Redis < 7 (one `appendonly.aof`): the RDB becomes that file (an AOF may start
//!   with an RDB preamble).
//!
//! Redis is started again and waited for (PING answers PONG, `loading:0`). The other way
//! FACTS.md names, starting once with `--appendonly no` and then `CONFIG SET appendonly
//! yes`, needs control over the container's command line, which a compose service does
//! not give.
//!
//! # Credentials
//! With `password_env`, the password goes to `redis-cli` as `REDISCLI_AUTH` in the exec
//! environment, never in argv. `redis-cli` connects to 127.0.0.1:6379 inside the
//! container.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use drctl_core::config::RedisTarget;
use drctl_docker::health::wait_for;
use drctl_docker::{DockerClient, ExecOptions, Poll, Probe};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::container::{log_tail, mount_of, running_state, HelperContainer};
use crate::fingerprint::{compare_maps, Mismatch};
use crate::util::{one_line, secret_from_env, tail_lines, CappedBuf, Secret, TailBuf, Tap};
use crate::DbError;

const FINGERPRINT_SCRIPT: &str = include_str!("redis_fingerprint.lua");
/// Sampled keys per database, roughly (between this and twice as many).
const SAMPLE_TARGET: u32 = 2048;

/// A Redis target reached through `docker exec redis-cli` in its container.
#[derive(Clone)]
pub struct Redis {
    docker: DockerClient,
    container: String,
    password_env: Option<String>,
    password: Option<Secret>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("container", &self.container)
            .field("password_env", &self.password_env)
            .finish_non_exhaustive()
    }
}

/// Options of [`Redis::backup`].
#[derive(Debug, Clone)]
pub struct RedisBackupOptions {
    /// Fingerprint the dataset at the moment of the fork (see the module docs).
    pub fingerprint: bool,
    /// How long a running save or AOF rewrite, and then ours, may take.
    pub save_timeout: Duration,
    /// Longest write pause around the fingerprint and the fork (a safety net should drctl
    /// vanish mid-way: it unpauses as soon as the fork is done). A fingerprint that takes
    /// longer is reported as not exact.
    pub pause_limit: Duration,
    /// Above this many keys the fingerprint is taken just before the fork without pausing
    /// writes (`fingerprint_exact: false`): the script reads every key name, about 1 to
    /// 3 µs a key, and writers would wait that long.
    pub exact_max_keys: u64,
}

impl Default for RedisBackupOptions {
    fn default() -> Self {
        RedisBackupOptions {
            fingerprint: true,
            save_timeout: Duration::from_secs(3600),
            pause_limit: Duration::from_secs(30),
            exact_max_keys: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisBackupReport {
    /// Size of the RDB written.
    pub bytes: u64,
    pub seconds: f64,
    pub redis_version: String,
    /// RDB format version from the file's header (`REDIS0010` -> 10).
    pub rdb_version: Option<u32>,
    /// Whether the server had AOF on (informational: the backup is an RDB either way).
    pub aof: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<RedisFingerprint>,
    /// The fingerprint was taken with writes paused up to the fork, so it describes the
    /// RDB exactly (Redis 7+); otherwise writes in between may make it differ.
    pub fingerprint_exact: bool,
}

/// Options of [`Redis::restore`].
#[derive(Debug, Clone)]
pub struct RedisRestoreOptions {
    /// Grace period of Redis's stop.
    pub grace: Duration,
    /// How long Redis may take to load the dataset after the start.
    pub load_timeout: Duration,
    /// Check the RDB with `redis-check-rdb` before stopping Redis (when the image has it).
    pub check_rdb: bool,
}

impl Default for RedisRestoreOptions {
    fn default() -> Self {
        RedisRestoreOptions {
            grace: Duration::from_secs(60),
            load_timeout: Duration::from_secs(600),
            check_rdb: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisRestoreReport {
    pub bytes: u64,
    pub seconds: f64,
    /// How the RDB was installed: `rdb` (dir/dbfilename), `aof-base` (the base of a new
    /// multi-part AOF), `aof-single` (Redis < 7's appendonly.aof).
    pub layout: String,
    /// The file Redis loaded it from, inside the container.
    pub path: String,
    /// `redis-check-rdb` approved the file before Redis was stopped.
    pub checked: bool,
    /// Seconds Redis was down (stop to loaded).
    pub downtime_seconds: f64,
}

/// Redis's persistence settings (`CONFIG GET`) and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisPersistence {
    pub version: String,
    pub dir: String,
    pub dbfilename: String,
    pub appendonly: bool,
    /// Redis 7+ (multi-part AOF); `None` before.
    pub appenddirname: Option<String>,
    pub appendfilename: String,
    pub databases: u32,
    pub stop_writes_on_bgsave_error: bool,
}

impl RedisPersistence {
    fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

/// Per database (by index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RedisFingerprint {
    pub databases: BTreeMap<u32, RedisDbFingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisDbFingerprint {
    pub keys: u64,
    /// Keys with a TTL.
    pub expires: u64,
    pub sample: RedisSample,
}

/// A deterministic sample (selected by a hash of the key name, see
/// `redis_fingerprint.lua`) with per-type checksums over type-aware canonical values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisSample {
    /// Keys whose name's SHA-1 starts with this many zero bits were sampled.
    pub bits: u32,
    pub keys: u64,
    pub checksum: String,
    /// By Redis type (`string`, `hash`, `list`, `set`, `zset`, `stream`, ...).
    pub types: BTreeMap<String, RedisTypeSample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisTypeSample {
    pub keys: u64,
    pub checksum: String,
}

impl RedisFingerprint {
    /// What differs between `self` (at backup) and `actual` (now): databases, key counts,
    /// TTL counts, and the sampled values by type.
    pub fn compare(&self, actual: &RedisFingerprint) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut inner = Vec::new();
        compare_maps(
            &self.databases,
            &actual.databases,
            |d| format!("redis database {d}"),
            |d, e, a| {
                if e.keys != a.keys {
                    inner.push(Mismatch::new(
                        format!("redis database {d} keys"),
                        e.keys,
                        a.keys,
                    ));
                }
                if e.expires != a.expires {
                    inner.push(Mismatch::new(
                        format!("redis database {d} keys with a TTL"),
                        e.expires,
                        a.expires,
                    ));
                }
                if e.keys != a.keys || e.sample.bits != a.sample.bits {
                    return; // different samples: their checksums say nothing more
                }
                let (es, as_) = (&e.sample, &a.sample);
                if es.checksum == as_.checksum {
                    return;
                }
                let mut named = false;
                let types: std::collections::BTreeSet<&String> =
                    es.types.keys().chain(as_.types.keys()).collect();
                for t in types {
                    match (es.types.get(t), as_.types.get(t)) {
                        (Some(x), Some(y)) if x == y => {}
                        (x, y) => {
                            named = true;
                            let show = |s: Option<&RedisTypeSample>| match s {
                                Some(s) => {
                                    format!("{} keys, checksum {}", s.keys, short(&s.checksum))
                                }
                                None => "none".to_string(),
                            };
                            inner.push(Mismatch::new(
                                format!("redis database {d} sampled `{t}` keys (values, types or TTL presence)"),
                                show(x),
                                show(y),
                            ));
                        }
                    }
                }
                if !named {
                    inner.push(Mismatch::new(
                        format!("redis database {d} sample"),
                        short(&es.checksum),
                        short(&as_.checksum),
                    ));
                }
            },
            &mut out,
        );
        out.extend(inner);
        out
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// One reply as `redis-cli --no-raw` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(String),
    Bulk(String),
    Int(i64),
    Nil,
    Array(Vec<Reply>),
    Error(String),
}

impl Reply {
    fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(s) => Some(s),
            _ => None,
        }
    }
}

/// Parse `redis-cli --no-raw` output of one command: `(error) ...`, `(integer) n`, `(nil)`,
/// `"quoted"` bulk strings, flat `n) item` arrays, and anything else as a status line
/// (INFO's text comes out verbatim).
pub(crate) fn parse_reply(text: &str) -> Reply {
    let t = text.trim_end_matches(['\n', '\r']);
    if let Some(e) = t.strip_prefix("(error) ") {
        return Reply::Error(e.to_string());
    }
    if let Some(i) = t.strip_prefix("(integer) ") {
        if let Ok(i) = i.trim().parse() {
            return Reply::Int(i);
        }
    }
    if t == "(nil)" {
        return Reply::Nil;
    }
    if t == "(empty array)" || t == "(empty list or set)" {
        return Reply::Array(vec![]);
    }
    if array_item(t.lines().next().unwrap_or("")).is_some() {
        let items = t.lines().filter_map(array_item).map(parse_reply).collect();
        return Reply::Array(items);
    }
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') && !t.contains('\n') {
        return Reply::Bulk(unescape(&t[1..t.len() - 1]));
    }
    Reply::Status(t.to_string())
}

/// `  12) rest` -> `rest`.
fn array_item(line: &str) -> Option<&str> {
    let l = line.trim_start();
    let digits = l.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    l[digits..].strip_prefix(") ")
}

/// Undo redis-cli's quoting (sdscatrepr): `\\ \" \n \r \t \a \b \xHH`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let c = b[i + 1];
            let mapped = match c {
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                b'a' => Some(7),
                b'b' => Some(8),
                b'\\' => Some(b'\\'),
                b'"' => Some(b'"'),
                _ => None,
            };
            if let Some(m) = mapped {
                out.push(m);
                i += 2;
                continue;
            }
            if c == b'x' && i + 3 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drop the `(2.18s)` lines redis-cli prints after replies that took over half a second.
fn strip_timings(out: &str) -> String {
    let is_timing = |l: &str| {
        l.strip_prefix('(')
            .and_then(|r| r.strip_suffix("s)"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    };
    let mut kept: String = out
        .lines()
        .filter(|l| !is_timing(l))
        .collect::<Vec<_>>()
        .join("\n");
    if out.ends_with('\n') {
        kept.push('\n');
    }
    kept
}

/// `key:value` lines of INFO.
pub(crate) fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_fingerprint(json: &str) -> Result<RedisFingerprint, String> {
    #[derive(Deserialize)]
    struct Db {
        keys: u64,
        expires: u64,
        bits: u32,
        sampled: u64,
        checksum: String,
        #[serde(default, deserialize_with = "map_or_empty_array")]
        types: BTreeMap<String, RedisTypeSample>,
    }
    let raw: BTreeMap<String, Db> =
        serde_json::from_str(json).map_err(|e| format!("unexpected fingerprint ({e})"))?;
    let mut fp = RedisFingerprint::default();
    for (k, d) in raw {
        let idx = k
            .parse()
            .map_err(|_| format!("unexpected database index {k:?}"))?;
        fp.databases.insert(
            idx,
            RedisDbFingerprint {
                keys: d.keys,
                expires: d.expires,
                sample: RedisSample {
                    bits: d.bits,
                    keys: d.sampled,
                    checksum: d.checksum,
                    types: d.types,
                },
            },
        );
    }
    Ok(fp)
}

/// cjson encodes an empty Lua table as `{}`, but be lenient about `[]` too.
fn map_or_empty_array<'de, D>(d: D) -> Result<BTreeMap<String, RedisTypeSample>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Array(a) if a.is_empty() => Ok(BTreeMap::new()),
        other => serde_json::from_value(other).map_err(serde::de::Error::custom),
    }
}

/// What a stream of RDB bytes starts with: `REDIS` and a four-digit version.
fn rdb_version(head: &[u8]) -> Option<u32> {
    if head.len() >= 9 && &head[..5] == b"REDIS" {
        std::str::from_utf8(&head[5..9]).ok()?.parse().ok()
    } else {
        None
    }
}

// Shell scripts run in the helper container; paths come in as positional arguments.
const STAGE: &str = "set -e; umask 077; cat > \"$1\"";
const CHECK: &str = "if ! command -v redis-check-rdb >/dev/null 2>&1; then \
     echo 'redis-check-rdb is not in this image' >&2; exit 127; fi; exec redis-check-rdb \"$1\"";
const UNSTAGE: &str = "rm -f -- \"$1\"";
/// $1 dir, $2 staged file, $3 appenddirname, $4 base file name, $5 manifest name,
/// $6 dbfilename.
const INSTALL_AOF: &str = r#"set -e
dir=$1; staged=$2; adir="$1/$3"; base=$4; manifest=$5; dbfile="$1/$6"
owner=$(stat -c %u:%g "$dir")
rm -rf -- "$adir"
mkdir -- "$adir"
mv -f -- "$staged" "$adir/$base"
printf 'file %s seq 1 type b\n' "$base" > "$adir/$manifest"
ln -f -- "$adir/$base" "$dbfile" 2>/dev/null || rm -f -- "$dbfile"
chown -R "$owner" "$adir"
if [ -e "$dbfile" ]; then chown "$owner" "$dbfile"; fi
sync
"#;
/// $1 dir, $2 staged file, $3 the file Redis loads, $4 (optional) a second name for it.
const INSTALL_FILE: &str = r#"set -e
dir=$1; staged=$2; target="$1/$3"
owner=$(stat -c %u:%g "$dir")
mv -f -- "$staged" "$target"
chown "$owner" "$target"
if [ -n "${4:-}" ]; then ln -f -- "$target" "$1/$4" 2>/dev/null || rm -f -- "$1/$4"; fi
sync
"#;

impl Redis {
    /// A target's Redis in `container`. Reads the password from `password_env` now, so
    /// that a missing variable fails before anything is touched.
    pub fn new(
        docker: DockerClient,
        container: impl Into<String>,
        target: &RedisTarget,
    ) -> Result<Self, DbError> {
        let password = target
            .password_env
            .as_deref()
            .map(|v| secret_from_env(v, "Redis password"))
            .transpose()?;
        Ok(Redis {
            docker,
            container: container.into(),
            password_env: target.password_env.clone(),
            password,
        })
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    fn exec_opts(&self) -> ExecOptions {
        ExecOptions {
            env: self
                .password
                .as_ref()
                .map(|p| vec![format!("REDISCLI_AUTH={}", p.expose())])
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn auth_hint(&self) -> String {
        match &self.password_env {
            Some(v) => format!("check the password in environment variable `{v}`"),
            None => "Redis wants a password: set `password_env` on the target to the variable that holds it".into(),
        }
    }

    /// Run redis-cli with `args` (or, with `stdin`, the commands it holds, one per line)
    /// and return its stdout. Connection and authentication failures become errors.
    async fn cli_raw(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        action: &str,
    ) -> Result<String, DbError> {
        let mut argv = vec!["redis-cli", "--no-raw", "-h", "127.0.0.1", "-p", "6379"];
        argv.extend_from_slice(args);
        let mut out = CappedBuf::new(64 << 20);
        let mut err = TailBuf::new(16 << 10);
        let mut input = stdin.unwrap_or_default();
        let code = self
            .docker
            .exec(
                &self.container,
                &argv,
                &self.exec_opts(),
                stdin
                    .is_some()
                    .then_some(&mut input as &mut (dyn AsyncRead + Unpin + Send)),
                &mut out,
                &mut err,
            )
            .await?;
        let stdout = strip_timings(&String::from_utf8_lossy(&out.buf));
        let stderr = err.text();
        let auth_line = stderr.lines().chain(stdout.lines()).find(|l| {
            l.contains("NOAUTH") || l.contains("WRONGPASS") || l.contains("invalid password")
        });
        if let Some(line) = auth_line {
            return Err(DbError::Auth {
                action: action.to_string(),
                detail: one_line(line.trim_start_matches("(error) "), 200),
                hint: self.auth_hint(),
            });
        }
        if let Some(line) = stderr.lines().find(|l| l.contains("Could not connect")) {
            return Err(DbError::Unavailable {
                action: action.to_string(),
                reason: format!(
                    "Redis in container `{}` is not accepting connections ({}); wait for it with a redis health gate",
                    self.container,
                    one_line(line, 200)
                ),
            });
        }
        if code != 0 {
            return Err(DbError::Tool {
                action: action.to_string(),
                tool: "redis-cli".into(),
                code,
                output: tail_lines(
                    if stderr.trim().is_empty() {
                        &stdout
                    } else {
                        &stderr
                    },
                    10,
                ),
                hint: String::new(),
            });
        }
        Ok(stdout)
    }

    /// One command; a `LOADING` error means "not yet".
    async fn cli(&self, args: &[&str], action: &str) -> Result<Reply, DbError> {
        let reply = parse_reply(&self.cli_raw(args, None, action).await?);
        if let Reply::Error(e) = &reply {
            if e.starts_with("LOADING") {
                return Err(DbError::Unavailable {
                    action: action.to_string(),
                    reason: format!(
                        "Redis in container `{}` is still loading its dataset; wait for it with a redis health gate",
                        self.container
                    ),
                });
            }
        }
        Ok(reply)
    }

    /// One command whose error reply is a failure.
    async fn cli_ok(&self, args: &[&str], action: &str) -> Result<Reply, DbError> {
        match self.cli(args, action).await? {
            Reply::Error(e) => Err(DbError::Refused {
                action: action.to_string(),
                reason: format!("Redis answered `{}`", one_line(&e, 300)),
            }),
            r => Ok(r),
        }
    }

    async fn info(&self, section: &str, action: &str) -> Result<HashMap<String, String>, DbError> {
        match self.cli_ok(&["INFO", section], action).await? {
            Reply::Status(t) | Reply::Bulk(t) => Ok(parse_info(&t)),
            other => Err(DbError::Protocol {
                action: action.to_string(),
                reason: format!("unexpected INFO reply {other:?}"),
            }),
        }
    }

    /// `CONFIG GET *` and `INFO server`: where and how Redis persists.
    pub async fn persistence(&self) -> Result<RedisPersistence, DbError> {
        let action = format!(
            "read Redis's persistence settings in container `{}`",
            self.container
        );
        let reply = self.cli_ok(&["CONFIG", "GET", "*"], &action).await?;
        let Reply::Array(items) = reply else {
            return Err(DbError::Protocol {
                action,
                reason: format!("unexpected CONFIG GET reply {reply:?}"),
            });
        };
        let texts: Vec<String> = items
            .iter()
            .map(|r| r.text().unwrap_or_default().to_string())
            .collect();
        let cfg: HashMap<&str, &str> = texts
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].as_str(), c[1].as_str()))
            .collect();
        let server = self.info("server", &action).await?;
        let get = |k: &str| cfg.get(k).map(|v| v.to_string());
        let dir = get("dir").ok_or_else(|| DbError::Protocol {
            action: action.clone(),
            reason: "CONFIG GET returned no `dir` (is CONFIG renamed or disabled?)".into(),
        })?;
        Ok(RedisPersistence {
            version: server.get("redis_version").cloned().unwrap_or_default(),
            dir,
            dbfilename: get("dbfilename").unwrap_or_else(|| "dump.rdb".into()),
            appendonly: get("appendonly").as_deref() == Some("yes"),
            appenddirname: get("appenddirname").filter(|s| !s.is_empty()),
            appendfilename: get("appendfilename").unwrap_or_else(|| "appendonly.aof".into()),
            databases: get("databases").and_then(|d| d.parse().ok()).unwrap_or(16),
            stop_writes_on_bgsave_error: get("stop-writes-on-bgsave-error").as_deref()
                == Some("yes"),
        })
    }

    /// Fingerprint the dataset now (atomically: one read-only script).
    pub async fn fingerprint(&self) -> Result<RedisFingerprint, DbError> {
        let p = self.persistence().await?;
        let action = format!("fingerprint Redis in container `{}`", self.container);
        let eval = if p.major() >= 7 { "EVAL_RO" } else { "EVAL" };
        let (target, ndb) = (SAMPLE_TARGET.to_string(), p.databases.to_string());
        let reply = self
            .cli_ok(&[eval, FINGERPRINT_SCRIPT, "0", &target, &ndb], &action)
            .await?;
        let json = reply.text().ok_or_else(|| DbError::Protocol {
            action: action.clone(),
            reason: format!("unexpected reply {reply:?}"),
        })?;
        parse_fingerprint(json).map_err(|reason| DbError::Protocol { action, reason })
    }

    /// Wait until no save or AOF rewrite runs (BGSAVE would be refused).
    async fn wait_no_child(
        &self,
        timeout: Duration,
        action: &str,
    ) -> Result<HashMap<String, String>, DbError> {
        let t0 = Instant::now();
        loop {
            let info = self.info("persistence", action).await?;
            let busy = |k: &str| info.get(k).is_some_and(|v| v != "0");
            if !busy("rdb_bgsave_in_progress")
                && !busy("aof_rewrite_in_progress")
                && !busy("module_fork_in_progress")
            {
                return Ok(info);
            }
            if t0.elapsed() > timeout {
                return Err(DbError::Timeout {
                    action: action.to_string(),
                    waited: timeout,
                    detail: "another save or AOF rewrite is still running".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A consistent RDB of the whole dataset, streamed into `out` (flushed, not shut
    /// down). See the module docs. On error the writer may hold a partial file that must be
    /// discarded.
    pub async fn backup(
        &self,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        opts: &RedisBackupOptions,
    ) -> Result<RedisBackupReport, DbError> {
        let t0 = Instant::now();
        let action = format!("back up Redis in container `{}`", self.container);
        let p = self.persistence().await?;
        let mut exact = opts.fingerprint && p.major() >= 7;
        if exact {
            let keys: u64 = self
                .info("keyspace", &action)
                .await?
                .values()
                .filter_map(|v| {
                    v.strip_prefix("keys=")?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            if keys > opts.exact_max_keys {
                tracing::info!(
                    "{action}: {keys} keys: fingerprinting without pausing writes (exact_max_keys {})",
                    opts.exact_max_keys
                );
                exact = false;
            }
        }
        let sha = if exact {
            match self
                .cli_ok(&["SCRIPT", "LOAD", FINGERPRINT_SCRIPT], &action)
                .await?
            {
                Reply::Bulk(s) | Reply::Status(s) => Some(s),
                other => {
                    return Err(DbError::Protocol {
                        action,
                        reason: format!("unexpected SCRIPT LOAD reply {other:?}"),
                    })
                }
            }
        } else {
            None
        };

        let mut attempt = 0;
        let fingerprint = loop {
            attempt += 1;
            self.wait_no_child(opts.save_timeout, &action).await?;
            let (fp, bgsave) = match &sha {
                Some(sha) => {
                    let (fp, bgsave, in_time) = self
                        .paused_fingerprint_and_bgsave(sha, &p, opts, &action)
                        .await?;
                    exact = in_time;
                    (fp, bgsave)
                }
                None => {
                    let fp = if opts.fingerprint {
                        Some(self.fingerprint().await?)
                    } else {
                        None
                    };
                    (fp, self.cli(&["BGSAVE"], &action).await?)
                }
            };
            match bgsave {
                Reply::Status(s) if s.contains("started") => break fp,
                Reply::Error(e)
                    if (e.contains("in progress") || e.contains("Another child process"))
                        && attempt < 5 =>
                {
                    tracing::debug!("{action}: BGSAVE refused for now ({e}); retrying");
                    continue;
                }
                Reply::Error(e) => {
                    return Err(DbError::Refused {
                        action,
                        reason: format!("Redis refused BGSAVE: {}", one_line(&e, 300)),
                    })
                }
                other => {
                    return Err(DbError::Protocol {
                        action,
                        reason: format!("unexpected BGSAVE reply {other:?}"),
                    })
                }
            }
        };

        // Our fork runs; wait for it and check it succeeded.
        let deadline = Instant::now() + opts.save_timeout;
        let info = loop {
            let info = self.info("persistence", &action).await?;
            if info.get("rdb_bgsave_in_progress").map(String::as_str) == Some("0") {
                break info;
            }
            if Instant::now() > deadline {
                return Err(DbError::Timeout {
                    action,
                    waited: opts.save_timeout,
                    detail: "BGSAVE is still running".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if info.get("rdb_last_bgsave_status").map(String::as_str) != Some("ok") {
            return Err(self.bgsave_failed(&p, action).await);
        }
        let saves = |i: &HashMap<String, String>| {
            i.get("rdb_saves")
                .or(i.get("rdb_last_save_time"))
                .cloned()
                .unwrap_or_default()
        };
        let saves_before = saves(&info);

        let path = format!("{}/{}", p.dir.trim_end_matches('/'), p.dbfilename);
        let mut tap = Tap::new(out, 9);
        let mut err = TailBuf::new(16 << 10);
        let code = self
            .docker
            .exec(
                &self.container,
                &["cat", "--", &path],
                &ExecOptions::default(),
                None,
                &mut tap,
                &mut err,
            )
            .await?;
        if code != 0 {
            return Err(DbError::Tool {
                action,
                tool: "cat".into(),
                code,
                output: err.tail(5),
                hint: format!("Redis saved `{path}` but it could not be read"),
            });
        }
        let after = self.info("persistence", &action).await?;
        if saves(&after) != saves_before {
            return Err(DbError::Protocol {
                action,
                reason: format!(
                    "another save replaced `{path}` while it was being copied, so the copy may not be the dataset fingerprinted; run the backup again"
                ),
            });
        }
        let rdb_version = rdb_version(&tap.head);
        if rdb_version.is_none() {
            return Err(DbError::Protocol {
                action,
                reason: format!(
                    "`{path}` ({} bytes) does not start like an RDB file",
                    tap.bytes
                ),
            });
        }
        Ok(RedisBackupReport {
            bytes: tap.bytes,
            seconds: t0.elapsed().as_secs_f64(),
            redis_version: p.version.clone(),
            rdb_version,
            aof: p.appendonly,
            fingerprint,
            fingerprint_exact: exact,
        })
    }

    /// `CLIENT PAUSE WRITE`, fingerprint, `BGSAVE`, `CLIENT UNPAUSE` on one connection.
    /// The last value is false when the sequence took longer than the pause lasts (writes
    /// may then have landed between the fingerprint and the fork).
    async fn paused_fingerprint_and_bgsave(
        &self,
        sha: &str,
        p: &RedisPersistence,
        opts: &RedisBackupOptions,
        action: &str,
    ) -> Result<(Option<RedisFingerprint>, Reply, bool), DbError> {
        let script = format!(
            "CLIENT PAUSE {} WRITE\nEVALSHA_RO {sha} 0 {SAMPLE_TARGET} {}\nBGSAVE\nCLIENT UNPAUSE\n",
            opts.pause_limit.as_millis().max(1000),
            p.databases
        );
        let t = Instant::now();
        let out = match self.cli_raw(&[], Some(script.as_bytes()), action).await {
            Ok(out) => out,
            Err(e) => {
                // Do not leave writers waiting for the pause to run out.
                let _ = self.cli(&["CLIENT", "UNPAUSE"], action).await;
                return Err(e);
            }
        };
        let in_time = t.elapsed() < opts.pause_limit;
        if !in_time {
            tracing::warn!("{action}: the fingerprint took longer than the write pause ({} s); it may not describe the RDB exactly", opts.pause_limit.as_secs());
        }
        let replies: Vec<Reply> = out.lines().map(parse_reply).collect();
        let [pause, fp, bgsave, unpause] = replies.as_slice() else {
            return Err(DbError::Protocol {
                action: action.to_string(),
                reason: format!("unexpected replies {:?}", one_line(&out, 300)),
            });
        };
        if let Reply::Error(e) = unpause {
            tracing::warn!("{action}: CLIENT UNPAUSE answered `{e}` (the pause ends by itself)");
        }
        if let Reply::Error(e) = pause {
            return Err(DbError::Refused {
                action: action.to_string(),
                reason: format!("Redis refused CLIENT PAUSE: {e}"),
            });
        }
        let fp = match fp {
            Reply::Bulk(json) => parse_fingerprint(json).map_err(|reason| DbError::Protocol {
                action: action.to_string(),
                reason,
            })?,
            other => {
                return Err(DbError::Refused {
                    action: action.to_string(),
                    reason: format!("the fingerprint script failed: {other:?}"),
                })
            }
        };
        Ok((Some(fp), bgsave.clone(), in_time))
    }

    async fn bgsave_failed(&self, p: &RedisPersistence, action: String) -> DbError {
        let logs = log_tail(&self.docker, &self.container, 200).await;
        let relevant: Vec<&str> = logs
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains("fail")
                    || l.contains("error")
                    || l.contains("denied")
                    || l.contains("no space"))
                    && !l.contains("overcommit")
            })
            .collect();
        let relevant = &relevant[relevant.len().saturating_sub(3)..];
        let mut reason = format!(
            "Redis could not write its RDB file (rdb_last_bgsave_status:err); check that its dir `{}` is writable by the Redis user and the disk has room",
            p.dir
        );
        if p.stop_writes_on_bgsave_error {
            reason.push_str(
                " (until a save succeeds, Redis refuses writes: stop-writes-on-bgsave-error)",
            );
        }
        if !relevant.is_empty() {
            reason.push_str("; Redis logged:");
            for l in relevant {
                reason.push_str("\n    ");
                reason.push_str(l.trim());
            }
        }
        DbError::Refused { action, reason }
    }

    /// Replace the dataset with the RDB read from `input` (see the module docs). Redis must
    /// be running (its settings are read first); it is stopped, and started again even
    /// when the restore fails.
    pub async fn restore(
        &self,
        input: &mut (dyn AsyncRead + Unpin + Send),
        opts: &RedisRestoreOptions,
    ) -> Result<RedisRestoreReport, DbError> {
        let t0 = Instant::now();
        let action = format!("restore Redis in container `{}`", self.container);
        let p = self.persistence().await?;
        let inspect = self.docker.inspect(&self.container).await?;
        if mount_of(&inspect, &p.dir).is_none() {
            return Err(DbError::Invalid {
                action,
                reason: format!(
                    "Redis's dir `{}` is not on a volume or bind mount of the container (its data would not survive the container anyway); mount a volume there",
                    p.dir
                ),
            });
        }
        // Check the magic before anything is touched.
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < head.len() {
            let n = input
                .read(&mut head[got..])
                .await
                .map_err(DbError::io(format!("{action}: read the RDB")))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if rdb_version(&head[..got]).is_none() {
            return Err(DbError::Invalid {
                action,
                reason: "the input is not an RDB file (it does not start with `REDIS` and a version); nothing was changed".into(),
            });
        }

        let dir = p.dir.trim_end_matches('/').to_string();
        let staged = format!("{dir}/{}.rdb", crate::util::unique(".drctl-restore"));
        let helper = HelperContainer::start(&self.docker, &inspect, "redis").await?;
        let result = self
            .restore_with(
                &helper.name,
                &p,
                &dir,
                &staged,
                &head[..got],
                input,
                opts,
                &action,
            )
            .await;
        if result.is_err() {
            let _ = self
                .helper_sh(&helper.name, UNSTAGE, &[&staged], None)
                .await;
        }
        if let Err(e) = helper.remove().await {
            tracing::warn!("{e}");
        }
        let mut report = result?;
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_with(
        &self,
        helper: &str,
        p: &RedisPersistence,
        dir: &str,
        staged: &str,
        head: &[u8],
        input: &mut (dyn AsyncRead + Unpin + Send),
        opts: &RedisRestoreOptions,
        action: &str,
    ) -> Result<RedisRestoreReport, DbError> {
        // 1. Stage the file next to where it goes, while Redis still serves.
        let mut chained = head.chain(input);
        let mut counting = crate::util::CountRead::new(&mut chained);
        let (code, output) = self
            .helper_sh(helper, STAGE, &[staged], Some(&mut counting))
            .await?;
        let bytes = counting.bytes;
        if code != 0 {
            return Err(DbError::Tool {
                action: action.to_string(),
                tool: "cat".into(),
                code,
                output,
                hint: format!(
                    "the RDB could not be written to `{dir}` (disk full?); nothing was changed"
                ),
            });
        }
        // 2. Check it.
        let mut checked = false;
        if opts.check_rdb {
            let (code, output) = self.helper_sh(helper, CHECK, &[staged], None).await?;
            match code {
                0 => checked = true,
                127 => tracing::warn!("{action}: redis-check-rdb is not in the image; the RDB is not checked before Redis is stopped"),
                _ => {
                    return Err(DbError::Invalid {
                        action: action.to_string(),
                        reason: format!(
                            "redis-check-rdb rejects the RDB ({bytes} bytes: truncated, corrupt, or from a newer Redis than {}); nothing was changed; it printed:\n    {}",
                            p.version,
                            tail_lines(&output, 6).replace('\n', "\n    ")
                        ),
                    })
                }
            }
        }
        // 3. Stop Redis, put the file in place, start it again.
        let down = Instant::now();
        let guard = self
            .docker
            .stop_guarded_for_restore(&[self.container.as_str()], opts.grace)
            .await?;
        let (layout, path, installed) = match (&p.appenddirname, p.appendonly) {
            (Some(adir), true) => {
                let base = format!("{}.1.base.rdb", p.appendfilename);
                let manifest = format!("{}.manifest", p.appendfilename);
                let r = self
                    .helper_sh(
                        helper,
                        INSTALL_AOF,
                        &[dir, staged, adir, &base, &manifest, &p.dbfilename],
                        None,
                    )
                    .await;
                ("aof-base", format!("{dir}/{adir}/{base}"), r)
            }
            (None, true) => {
                let r = self
                    .helper_sh(
                        helper,
                        INSTALL_FILE,
                        &[dir, staged, &p.appendfilename, &p.dbfilename],
                        None,
                    )
                    .await;
                ("aof-single", format!("{dir}/{}", p.appendfilename), r)
            }
            (_, false) => {
                let r = self
                    .helper_sh(helper, INSTALL_FILE, &[dir, staged, &p.dbfilename], None)
                    .await;
                ("rdb", format!("{dir}/{}", p.dbfilename), r)
            }
        };
        let install_error = match installed {
            Ok((0, _)) => None,
            Ok((code, output)) => Some(DbError::Tool {
                action: action.to_string(),
                tool: "sh".into(),
                code,
                output,
                hint: format!(
                    "the RDB could not be put in place in `{dir}`; Redis is started again with what is there now, which may be incomplete: restore again"
                ),
            }),
            Err(e) => Some(e),
        };
        let started = guard.restore().await;
        if let Some(e) = install_error {
            if let Err(s) = started {
                tracing::error!("{s}");
            }
            return Err(e);
        }
        started?;
        // 4. Wait for it to load.
        self.wait_loaded(
            Poll::new(opts.load_timeout, Duration::from_millis(250)),
            true,
        )
        .await?;
        let info = self.info("persistence", action).await?;
        if p.appendonly && info.get("aof_enabled").map(String::as_str) != Some("1") {
            return Err(DbError::Protocol {
                action: action.to_string(),
                reason: "Redis came back with AOF off although it was on".into(),
            });
        }
        Ok(RedisRestoreReport {
            bytes,
            seconds: 0.0,
            layout: layout.to_string(),
            path,
            checked,
            downtime_seconds: down.elapsed().as_secs_f64(),
        })
    }

    /// Run a script with `sh -c` in the helper container; returns the exit code and the
    /// last lines it printed.
    async fn helper_sh(
        &self,
        helper: &str,
        script: &str,
        args: &[&str],
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> Result<(i64, String), DbError> {
        let mut argv = vec!["sh", "-c", script, "drctl"];
        argv.extend_from_slice(args);
        let mut out = TailBuf::new(16 << 10);
        let mut err = TailBuf::new(16 << 10);
        let code = self
            .docker
            .exec(
                helper,
                &argv,
                &ExecOptions::default(),
                stdin,
                &mut out,
                &mut err,
            )
            .await?;
        let text = if err.text().trim().is_empty() {
            out.tail(12)
        } else {
            err.tail(12)
        };
        Ok((code, text))
    }

    /// Wait until Redis answers PING with PONG and has finished loading. Wrong
    /// credentials fail at once.
    pub async fn wait_ready(&self, poll: Poll) -> Result<(), DbError> {
        self.wait_loaded(poll, false).await
    }

    async fn wait_loaded(&self, poll: Poll, exited_is_fatal: bool) -> Result<(), DbError> {
        let subject = format!(
            "see Redis in container `{}` answer PING and finish loading",
            self.container
        );
        Ok(wait_for(&subject, poll, || self.probe(exited_is_fatal)).await?)
    }

    async fn probe(&self, exited_is_fatal: bool) -> Probe {
        let action = "probe";
        let ping = self.cli(&["PING"], action).await;
        let not_running = |e: &drctl_docker::DockerError| e.short();
        match ping {
            Ok(Reply::Status(s)) if s == "PONG" => match self.info("persistence", action).await {
                Ok(i) if i.get("loading").map(String::as_str) == Some("0") => Probe::Ready,
                Ok(i) => Probe::waiting(format!(
                    "still loading the dataset ({}% done)",
                    i.get("loading_loaded_perc")
                        .map(String::as_str)
                        .unwrap_or("?")
                )),
                Err(e) => Probe::waiting(format!("still failing: {}", strip(&e))),
            },
            Ok(Reply::Error(e)) => {
                Probe::waiting(format!("still answering `{}`", one_line(&e, 100)))
            }
            Ok(other) => Probe::waiting(format!("unexpected PING reply {other:?}")),
            Err(e @ (DbError::Auth { .. } | DbError::Credential { .. })) => Probe::Fatal(strip(&e)),
            Err(DbError::Unavailable { reason, .. }) => {
                Probe::waiting(format!("still failing: {reason}"))
            }
            Err(DbError::Docker(e)) => match running_state(&self.docker, &self.container).await {
                Ok(None) => Probe::Fatal(format!("no container `{}`", self.container)),
                Ok(Some((false, code, status))) => {
                    let logs = log_tail(&self.docker, &self.container, 5).await;
                    let msg = format!(
                        "container `{}` is `{status}` (exit code {code}); its last log lines:\n    {}",
                        self.container,
                        logs.replace('\n', "\n    ")
                    );
                    if exited_is_fatal && status == "exited" {
                        Probe::Fatal(msg)
                    } else {
                        Probe::waiting(msg)
                    }
                }
                _ => Probe::waiting(format!("still failing: {}", not_running(&e))),
            },
            Err(e) => Probe::waiting(format!("still failing: {}", strip(&e))),
        }
    }
}

fn strip(e: &DbError) -> String {
    let m = e.to_string();
    m.strip_prefix("failed to probe: ")
        .unwrap_or(&m)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply("PONG\n"), Reply::Status("PONG".into()));
        assert_eq!(parse_reply("(integer) 42\n"), Reply::Int(42));
        assert_eq!(parse_reply("(nil)\n"), Reply::Nil);
        assert_eq!(
            parse_reply("(error) NOAUTH Authentication required.\n"),
            Reply::Error("NOAUTH Authentication required.".into())
        );
        assert_eq!(
            parse_reply("\"a\\nb\\\"c\\x00\\\\\"\n"),
            Reply::Bulk("a\nb\"c\u{0}\\".into())
        );
        assert_eq!(
            parse_reply("1) \"dir\"\n2) \"/data\"\n"),
            Reply::Array(vec![Reply::Bulk("dir".into()), Reply::Bulk("/data".into())])
        );
        let mut long = String::new();
        for i in 1..=12 {
            long.push_str(&format!("{i:>2}) \"v{i}\"\n"));
        }
        let Reply::Array(items) = parse_reply(&long) else {
            panic!()
        };
        assert_eq!(items.len(), 12);
        assert_eq!(items[11], Reply::Bulk("v12".into()));
        assert_eq!(parse_reply("(empty array)\n"), Reply::Array(vec![]));
        assert_eq!(
            strip_timings("OK\n\"{}\"\n(2.18s)\nBackground saving started\n"),
            "OK\n\"{}\"\nBackground saving started\n"
        );
        assert_eq!(strip_timings("(12s)\n"), "\n");
        assert_eq!(strip_timings("(error) x (1s)\n"), "(error) x (1s)\n");
        let info = "# Persistence\r\nloading:0\r\nrdb_bgsave_in_progress:1\r\n";
        let Reply::Status(t) = parse_reply(info) else {
            panic!()
        };
        let i = parse_info(&t);
        assert_eq!(i["loading"], "0");
        assert_eq!(i["rdb_bgsave_in_progress"], "1");
    }

    #[test]
    fn fingerprints_parse_and_compare() {
        let json = r#"{"0":{"expires":5,"bits":6,"keys":100000,"sampled":1500,"checksum":"c0",
            "types":{"hash":{"keys":700,"checksum":"h"},"string":{"keys":800,"checksum":"s"}}},
            "3":{"expires":0,"bits":0,"keys":1,"sampled":0,"checksum":"e","types":{}}}"#;
        let a = parse_fingerprint(json).unwrap();
        assert_eq!(a.databases[&0].sample.types["hash"].keys, 700);
        assert!(a.compare(&a).is_empty());
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(serde_json::from_value::<RedisFingerprint>(v).unwrap(), a);

        let mut b = a.clone();
        let d0 = b.databases.get_mut(&0).unwrap();
        d0.sample.checksum = "c1".into();
        d0.sample.types.get_mut("hash").unwrap().checksum = "h2".into();
        b.databases.remove(&3);
        let m: Vec<String> = a.compare(&b).iter().map(|m| m.to_string()).collect();
        assert_eq!(
            m,
            vec![
                "redis database 3: present at backup, missing now",
                "redis database 0 sampled `hash` keys (values, types or TTL presence): 700 keys, checksum h at backup, 700 keys, checksum h2 now",
            ]
        );
        let mut c = a.clone();
        c.databases.get_mut(&0).unwrap().keys = 99999;
        c.databases.get_mut(&0).unwrap().expires = 4;
        let m: Vec<String> = a.compare(&c).iter().map(|m| m.to_string()).collect();
        assert_eq!(
            m,
            vec![
                "redis database 0 keys: 100000 at backup, 99999 now",
                "redis database 0 keys with a TTL: 5 at backup, 4 now",
            ]
        );
    }

    #[test]
    fn rdb_magic() {
        assert_eq!(rdb_version(b"REDIS0010\xfa"), Some(10));
        assert_eq!(rdb_version(b"REDIS00"), None);
        assert_eq!(rdb_version(b"PGDMP...."), None);
    }
}
