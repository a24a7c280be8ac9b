//! `drctl.yml`: the stack, the repository, targets, schedules and notifications.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{unknown_message, Diagnostics};
use crate::runbook::{Collector, Objectives};
use crate::source::{self, Env};
use crate::tagged::read_tagged;
use crate::yaml::{from_node, DeError, Node};

/// The file names looked for when no `--config` is given.
pub const CONFIG_NAMES: &[&str] = &["drctl.yml", "drctl.yaml"];

/// The compose stack drctl recovers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// The compose project name (the `com.docker.compose.project` label).
    pub project: String,
    /// Compose files, relative to this file's folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compose_files: Vec<PathBuf>,
    /// The compose project directory; defaults to the first compose file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_dir: Option<PathBuf>,
}

/// Client-side encryption key source: a file or an environment variable, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeySource {
    /// A file holding the key.
    KeyFile(PathBuf),
    /// An environment variable holding the key.
    KeyEnv(String),
}

/// Where backups live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// `s3://bucket/prefix`, `file:///path` or a plain path (relative to this file).
    pub url: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` for MinIO; empty for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An AWS-style credentials file; otherwise the standard AWS environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<KeySource>,
}

/// What kind of repository a URL names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum RepoLocation {
    Local { path: PathBuf },
    S3 { bucket: String, prefix: String },
}

impl Repository {
    /// Resolve the URL; relative local paths are taken from `base`.
    pub fn location(&self, base: &Path) -> Result<RepoLocation, String> {
        let url = self.url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "repository URL `{url}` has no bucket; write s3://BUCKET/PREFIX"
                ));
            }
            return Ok(RepoLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = if let Some(p) = url.strip_prefix("file://") {
            PathBuf::from(p)
        } else if url.contains("://") {
            return Err(format!(
                "repository URL `{url}` has an unknown scheme; use s3://bucket/prefix, file:///path or a path"
            ));
        } else {
            PathBuf::from(url)
        };
        if path.as_os_str().is_empty() {
            return Err("repository URL is empty".into());
        }
        Ok(RepoLocation::Local {
            path: if path.is_absolute() {
                path
            } else {
                base.join(path)
            },
        })
    }
}

/// A named volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeTarget {
    /// The compose volume key (`app-sessions`) or a full volume name.
    pub volume: String,
    /// Services to stop while the volume is copied (and start again after).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// May be absent (a profile-gated service, a Qdrant not run everywhere): backups note
    /// its absence instead of failing. Restores and verification still need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Read and write the files at the volume's mountpoint on this host instead of through
    /// the Docker archive API (faster, keeps sparse files sparse). Needs drctl to run as
    /// root on the Docker host and a plain local volume; otherwise the API is used and the
    /// report says why. `DRCTL_VOLUME_FAST_PATH=1` turns it on for every volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_path: bool,
    /// Restore by emptying the volume and then writing into it. By default the new contents
    /// are written beside the old ones and swapped in only once the whole object arrived
    /// intact, which needs room for both; set this when the disk cannot hold two copies
    /// (the object is still checked before the volume is emptied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place_restore: bool,
}

fn default_pg_user() -> String {
    "postgres".into()
}

/// PostgreSQL databases, dumped with the tools inside the service's container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    pub service: String,
    /// Databases to back up; empty means every non-template database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    #[serde(default = "default_pg_user")]
    pub user: String,
    /// The environment variable that holds the password (never the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// May be absent (a profile-gated service, a Qdrant not run everywhere): backups note
    /// its absence instead of failing. Restores and verification still need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// A Redis server's dataset (RDB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTarget {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// May be absent (a profile-gated service, a Qdrant not run everywhere): backups note
    /// its absence instead of failing. Restores and verification still need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Qdrant collections (snapshots through its REST API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QdrantTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The REST URL, e.g. `http://127.0.0.1:6333`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Collections; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// Also take a full storage snapshot.
    #[serde(default)]
    pub full_snapshot: bool,
    /// May be absent (a profile-gated service, a Qdrant not run everywhere): backups note
    /// its absence instead of failing. Restores and verification still need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// A path inside a service's container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathTarget {
    pub service: String,
    pub path: String,
    /// May be absent (a profile-gated service, a Qdrant not run everywhere): backups note
    /// its absence instead of failing. Restores and verification still need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

macro_rules! targets {
    ($($name:literal => $Variant:ident($Ty:ty),)*) => {
        /// Something drctl backs up and restores.
        #[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum Target { $(#[serde(rename = $name)] $Variant($Ty),)* }
        pub const TARGET_TYPES: &[&str] = &[$($name),*];
        impl Target {
            pub fn kind(&self) -> &'static str { match self { $(Target::$Variant(_) => $name,)* } }
            fn read_variant(kind: &str, node: &Node) -> Option<Result<Self, DeError>> {
                match kind { $($name => Some(from_node::<$Ty>(node).map(Target::$Variant)),)* _ => None }
            }
        }
    };
}

targets! {
    "volume" => Volume(VolumeTarget),
    "postgres" => Postgres(PostgresTarget),
    "redis" => Redis(RedisTarget),
    "qdrant" => Qdrant(QdrantTarget),
    "path" => Path(PathTarget),
}

impl Target {
    pub fn optional(&self) -> bool {
        match self {
            Target::Volume(t) => t.optional,
            Target::Postgres(t) => t.optional,
            Target::Redis(t) => t.optional,
            Target::Qdrant(t) => t.optional,
            Target::Path(t) => t.optional,
        }
    }

    /// The compose service the target lives in, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Target::Volume(_) => None,
            Target::Postgres(t) => Some(&t.service),
            Target::Redis(t) => Some(&t.service),
            Target::Qdrant(t) => t.service.as_deref(),
            Target::Path(t) => Some(&t.service),
        }
    }
}

/// Retention, with restic's `forget` meaning: keep the newest set of each of the last N
/// hours / days / weeks / months, plus the last N sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
}

fn default_schedule_runbook() -> String {
    "snapshot".into()
}

/// A scheduled job for `drctl schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    /// Five-field cron expression (minute hour day-of-month month day-of-week), in UTC.
    pub cron: String,
    #[serde(default = "default_schedule_runbook")]
    pub runbook: String,
    /// Prune with the configured retention after each successful run.
    #[serde(default)]
    pub prune: bool,
}

/// When a notification fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    Start,
    Success,
    Failure,
}

/// A webhook that receives a JSON POST. The URL may hold a token, so it comes from the
/// environment and is never printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub name: String,
    /// The environment variable holding the webhook URL.
    pub url_env: String,
    #[serde(default = "Notification::default_on")]
    pub on: Vec<NotifyOn>,
}

impl Notification {
    fn default_on() -> Vec<NotifyOn> {
        vec![NotifyOn::Success, NotifyOn::Failure]
    }
}

fn default_runbooks_dir() -> PathBuf {
    "runbooks".into()
}
fn default_state_dir() -> PathBuf {
    ".drctl".into()
}

/// The configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Config {
    pub version: u32,
    pub stack: Stack,
    pub repository: Repository,
    /// Where `drctl run NAME` finds `NAME.yml`; relative to this file.
    pub runbooks_dir: PathBuf,
    /// Journals, locks and reports; relative to this file.
    pub state_dir: PathBuf,
    /// Default objectives for runbooks that state none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Objectives>,
    /// What backups cover, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
    #[serde(skip)]
    #[schemars(skip)]
    pub file: PathBuf,
    /// Positions of target names, for diagnostics.
    #[serde(skip)]
    #[schemars(skip)]
    pub node: Node,
}

pub const CONFIG_FIELDS: &[&str] = &[
    "version",
    "stack",
    "repository",
    "runbooks_dir",
    "state_dir",
    "objectives",
    "targets",
    "retention",
    "schedules",
    "notifications",
];

impl Config {
    /// The folder relative paths are taken from.
    pub fn base_dir(&self) -> PathBuf {
        // An empty parent (a file in the current folder) keeps printed paths short.
        self.file.parent().unwrap_or(Path::new("")).to_path_buf()
    }
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }
    pub fn compose_files(&self) -> Vec<PathBuf> {
        self.stack
            .compose_files
            .iter()
            .map(|p| self.resolve(p))
            .collect()
    }
    pub fn runbooks_dir(&self) -> PathBuf {
        self.resolve(&self.runbooks_dir)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.state_dir)
    }
    pub fn repo_location(&self) -> Result<RepoLocation, String> {
        self.repository.location(&self.base_dir())
    }
}

/// Read and check a configuration file.
pub fn load_config(path: &Path, env: Env) -> Result<Config, Diagnostics> {
    let text = source::read_text(path).map_err(|d| Diagnostics(vec![d]))?;
    parse_config(path, &text, env)
}

pub fn parse_config(path: &Path, text: &str, env: Env) -> Result<Config, Diagnostics> {
    let mut root = source::parse_yaml(path, text, "configuration")?;
    let subst = source::substitute(path, &mut root, &BTreeMap::new(), env);
    if !subst.is_empty() {
        return Err(subst);
    }
    let mut c = Collector {
        file: path,
        diags: Diagnostics::default(),
    };
    let Some(entries) = root.as_map() else {
        c.at(
            root.pos,
            format!(
                "drctl.yml is a mapping with `version:`, `stack:` and `repository:`, found {}",
                root.type_name()
            ),
        );
        return Err(c.diags);
    };
    let mut version = None;
    let mut stack = None;
    let mut repository = None;
    let mut runbooks_dir = default_runbooks_dir();
    let mut state_dir = default_state_dir();
    let mut objectives = None;
    let mut targets = BTreeMap::new();
    let mut retention = None;
    let mut schedules = Vec::new();
    let mut notifications = Vec::new();
    for (k, v) in entries {
        let key = k.as_str().unwrap_or("");
        match key {
            "version" => match c.field::<u32>(v) {
                Some(1) => version = Some(1),
                Some(n) => c.at(
                    v.pos,
                    format!("unsupported configuration version {n}; this drctl reads version 1"),
                ),
                None => {}
            },
            "stack" => stack = c.field::<Stack>(v),
            "repository" => {
                repository = c.field::<Repository>(v);
                if let Some(r) = &repository {
                    if let Err(m) = r.location(Path::new(".")) {
                        c.at(v.get("url").map_or(v.pos, |n| n.pos), m);
                    }
                }
            }
            "runbooks_dir" => runbooks_dir = c.field(v).unwrap_or_else(default_runbooks_dir),
            "state_dir" => state_dir = c.field(v).unwrap_or_else(default_state_dir),
            "objectives" => objectives = c.field::<Objectives>(v),
            "targets" => match v.as_map() {
                Some(items) => {
                    for (name, t) in items {
                        match read_tagged(
                            t,
                            "type",
                            "target",
                            TARGET_TYPES,
                            &[],
                            Target::read_variant,
                        ) {
                            Ok(target) => {
                                targets
                                    .insert(name.as_str().unwrap_or_default().to_string(), target);
                            }
                            Err(errs) => errs.into_iter().for_each(|e| c.de(e, t)),
                        }
                    }
                }
                None => c.at(
                    v.pos,
                    format!(
                        "`targets` is a mapping of names to targets, found {}",
                        v.type_name()
                    ),
                ),
            },
            "retention" => retention = c.field::<Retention>(v),
            "schedules" => {
                schedules = c.field::<Vec<Schedule>>(v).unwrap_or_default();
                for (s, n) in schedules.iter().zip(v.as_seq().unwrap_or_default()) {
                    if let Err(m) = check_cron(&s.cron) {
                        c.at(n.get("cron").map_or(n.pos, |x| x.pos), m);
                    }
                }
            }
            "notifications" => notifications = c.field::<Vec<Notification>>(v).unwrap_or_default(),
            _ => c.at(k.pos, unknown_message("field", key, CONFIG_FIELDS)),
        }
    }
    if version.is_none() && root.get("version").is_none() {
        c.at(root.pos, "missing `version: 1` at the top of drctl.yml");
    }
    if stack.is_none() && root.get("stack").is_none() {
        c.at(
            root.pos,
            "missing `stack:` (the compose project drctl recovers)",
        );
    }
    if repository.is_none() && root.get("repository").is_none() {
        c.at(
            root.pos,
            "missing `repository:` (where backups live, e.g. `url: ./backups`)",
        );
    }
    if !c.diags.is_empty() {
        return Err(c.diags);
    }
    Ok(Config {
        version: 1,
        stack: stack.expect("checked"),
        repository: repository.expect("checked"),
        runbooks_dir,
        state_dir,
        objectives,
        targets,
        retention,
        schedules,
        notifications,
        file: path.to_path_buf(),
        node: root,
    })
}

/// Check a five-field cron expression: minute hour day-of-month month day-of-week.
pub fn check_cron(expr: &str) -> Result<(), String> {
    crate::cron::Cron::parse(expr).map(|_| ())
}

/// Find the configuration file: an explicit path, `$DRCTL_CONFIG`, or `drctl.yml` in the
/// current folder or one of its parents.
pub fn find_config(explicit: Option<&Path>, env: Env) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env("DRCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().ok()?;
    let mut dir = cwd.clone();
    loop {
        for name in CONFIG_NAMES {
            let candidate = dir.join(name);
            if candidate.is_file() {
                // Relative when it is right here, so that messages stay short.
                return Some(if dir == cwd {
                    PathBuf::from(name)
                } else {
                    candidate
                });
            }
        }
        if !dir.pop() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_checks() {
        assert!(check_cron("0 */6 * * *").is_ok());
        assert!(check_cron("15,45 1-5 * * 1-5").is_ok());
        assert!(check_cron("0 24 * * *").unwrap_err().contains("hour"));
        assert!(check_cron("* * *").is_err());
        // The grammar `drctl schedule` runs: a backwards range is refused here too.
        assert!(check_cron("5-1 * * * *")
            .unwrap_err()
            .contains("runs backwards"));
    }

    #[test]
    fn repo_urls() {
        let r = |u: &str| Repository {
            url: u.into(),
            endpoint: None,
            region: None,
            credentials_file: None,
            encryption: None,
        };
        assert_eq!(
            r("s3://b/p/q/").location(Path::new("/x")).unwrap(),
            RepoLocation::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            r("backups").location(Path::new("/x")).unwrap(),
            RepoLocation::Local {
                path: "/x/backups".into()
            }
        );
        assert!(r("ftp://x").location(Path::new("/")).is_err());
    }
}
