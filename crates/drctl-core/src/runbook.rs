//! The runbook language, version 1: the model and its parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{unknown_message, Diagnostic, Diagnostics, Pos};
use crate::duration::Dur;
use crate::tagged::{pos_or, read_tagged};
use crate::yaml::{from_node, DeError, Node};

/// Recovery objectives: how long a recovery may take (RTO) and how old the restored data may
/// be (RPO). A planned operation (a migration) has no RPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    /// Recovery time objective: the longest the run may take.
    pub rto: Dur,
    /// Recovery point objective: the oldest the restored data may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Dur>,
}

/// What a failed step does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop the run (steps already running finish first).
    #[default]
    Abort,
    /// Record the failure and go on with the next steps.
    Continue,
    /// Run the runbook's `rollback:` steps, then stop.
    Rollback,
}

/// Retries with exponential backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// How many times to try again after the first failure.
    pub attempts: u32,
    /// Wait before the first retry.
    #[serde(default = "Retry::default_delay")]
    pub delay: Dur,
    /// Longest wait between two tries.
    #[serde(default = "Retry::default_max_delay")]
    pub max_delay: Dur,
    /// Each wait is the previous one times this factor.
    #[serde(default = "Retry::default_factor")]
    pub factor: f64,
}

impl Retry {
    fn default_delay() -> Dur {
        Dur::secs(1)
    }
    fn default_max_delay() -> Dur {
        Dur::secs(30)
    }
    fn default_factor() -> f64 {
        2.0
    }
    pub fn none() -> Self {
        Retry {
            attempts: 0,
            delay: Self::default_delay(),
            max_delay: Self::default_max_delay(),
            factor: Self::default_factor(),
        }
    }
    /// The wait before retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Dur {
        let secs = self.delay.0.as_secs_f64() * self.factor.powi(n.saturating_sub(1) as i32);
        let capped = secs.min(self.max_delay.0.as_secs_f64()).max(0.0);
        Dur(std::time::Duration::from_secs_f64(capped))
    }
}

/// Which backup set a restore uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Selection {
    /// The newest complete backup set.
    Latest,
    /// A backup set by id.
    Id(String),
    /// The newest complete set carrying this tag.
    Tag(String),
    /// The newest complete set taken before a time: an RFC 3339 timestamp
    /// (`2026-11-20T10:00:00Z`) or a duration meaning "that long ago" (`2h`).
    Before(String),
    /// The set taken by a `backup` step of this run (a safety snapshot).
    Step(String),
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::Latest => write!(f, "latest complete set"),
            Selection::Id(id) => write!(f, "set {id}"),
            Selection::Tag(t) => write!(f, "newest set tagged `{t}`"),
            Selection::Before(t) => write!(f, "newest set before {t}"),
            Selection::Step(s) => write!(f, "set taken by step `{s}` in this run"),
        }
    }
}

/// Values every step gets unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "Defaults::default_timeout")]
    pub timeout: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl Defaults {
    fn default_timeout() -> Dur {
        Dur::secs(300)
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timeout: Self::default_timeout(),
            retry: None,
            on_failure: OnFailure::Abort,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Step payloads

/// `stop`, `start`, `restart`: compose services (by label) or containers (by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicesStep {
    /// Compose services of the configured project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Containers by name, for what compose does not manage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// For stop and restart: how long to wait after SIGTERM before killing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<Dur>,
}

/// Where `up` gets the definition of a service whose containers are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpSource {
    /// The compose file when it is at hand, else the specs captured in the backup set.
    #[default]
    Auto,
    /// `docker compose` v2 or `docker-compose` v1 with the configured files.
    Compose,
    /// The container specs captured in the backup set.
    Spec,
}

/// `up`: create and start services (in `depends_on` order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpStep {
    /// Services to bring up; empty means all of the project's services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default)]
    pub from: UpSource,
    /// Recreate containers that exist (like `--force-recreate`).
    #[serde(default)]
    pub recreate: bool,
}

/// `down`: remove services' containers (and, if asked, their volumes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownStep {
    /// Services to remove; empty means the whole project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Also remove the named volumes of these services. Destructive: a safety backup is
    /// taken first unless `safety_backup: false`.
    #[serde(default)]
    pub volumes: bool,
    #[serde(default = "yes")]
    pub safety_backup: bool,
}

fn yes() -> bool {
    true
}

fn default_status() -> u16 {
    200
}

fn default_host() -> String {
    "127.0.0.1".into()
}

/// A Docker healthcheck must report `healthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerCheck {
    pub service: String,
}

/// A TCP port must accept connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
}

/// An HTTP GET must answer with a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_status")]
    pub status: u16,
}

/// PostgreSQL must accept a connection, not be in recovery, and answer a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresCheck {
    /// A `postgres` target of drctl.yml, or a compose service running PostgreSQL.
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Redis must answer PING and have finished loading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisCheck {
    pub service: String,
}

/// Qdrant must be ready (`/readyz`) and list these collections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QdrantCheck {
    /// A `qdrant` target of drctl.yml.
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
}

/// A command in a service's container must exit 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    pub service: String,
    pub command: Vec<String>,
}

macro_rules! tagged_enum {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident / $KINDS:ident / $tag:literal {
            $($(#[$vmeta:meta])* $name:literal => $Variant:ident($Ty:ty),)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
        #[serde(tag = $tag)]
        pub enum $Enum {
            $($(#[$vmeta])* #[serde(rename = $name)] $Variant($Ty),)*
        }

        pub const $KINDS: &[&str] = &[$($name),*];

        impl $Enum {
            pub fn kind(&self) -> &'static str {
                match self { $($Enum::$Variant(_) => $name,)* }
            }
            fn read_variant(kind: &str, node: &Node) -> Option<Result<Self, DeError>> {
                match kind {
                    $($name => Some(from_node::<$Ty>(node).map($Enum::$Variant)),)*
                    _ => None,
                }
            }
        }
    };
}

tagged_enum! {
    /// A health gate.
    pub enum Check / CHECK_TYPES / "type" {
        "docker" => Docker(DockerCheck),
        "tcp" => Tcp(TcpCheck),
        "http" => Http(HttpCheck),
        "postgres" => Postgres(PostgresCheck),
        "redis" => Redis(RedisCheck),
        "qdrant" => Qdrant(QdrantCheck),
        "command" => Command(CommandCheck),
    }
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a check is read with Check::read, which keeps positions",
        ))
    }
}

impl Check {
    pub(crate) fn read(node: &Node) -> Result<Self, Vec<DeError>> {
        read_tagged(node, "type", "check", CHECK_TYPES, &[], Check::read_variant)
    }
}

/// `health`: wait until a gate passes, polling at `interval`, up to the step's timeout.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HealthStep {
    pub check: Check,
    pub interval: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthStepFields {
    #[allow(dead_code)]
    check: serde::de::IgnoredAny,
    #[serde(default = "HealthStepFields::default_interval")]
    interval: Dur,
}

impl HealthStepFields {
    fn default_interval() -> Dur {
        Dur::secs(2)
    }
}

/// `backup`: take a backup set of targets (all configured targets when none are listed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupStep {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `restore`: put targets back from a backup set. A safety backup of what is about to be
/// overwritten is taken first unless `safety_backup: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreStep {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Which set; defaults to the runbook's `backup:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Selection>,
    #[serde(default = "yes")]
    pub safety_backup: bool,
}

/// `verify`: compare targets' fingerprints with those recorded in the backup set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Which set to compare with; defaults to the set restored in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<Selection>,
}

/// `exec`: run a command in a service's container; the step fails on a non-zero exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStep {
    pub service: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// `notify`: send a message to the configured notifications (all, or those named).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyStep {
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
}

/// `confirm`: pause for an operator's yes; `--yes` skips it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmStep {
    pub message: String,
}

/// `parallel`: run the listed steps at the same time; the next step waits for all of them.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ParallelStep {
    pub steps: Vec<Step>,
}

tagged_enum! {
    /// What a step does.
    pub enum Action / STEP_KINDS / "kind" {
        "stop" => Stop(ServicesStep),
        "start" => Start(ServicesStep),
        "restart" => Restart(ServicesStep),
        "up" => Up(UpStep),
        "down" => Down(DownStep),
        "health" => Health(HealthStep),
        "backup" => Backup(BackupStep),
        "restore" => Restore(RestoreStep),
        "verify" => Verify(VerifyStep),
        "exec" => Exec(ExecStep),
        "notify" => Notify(NotifyStep),
        "confirm" => Confirm(ConfirmStep),
        "parallel" => Parallel(ParallelStep),
    }
}

// `health` and `parallel` hold values read by hand (a check, nested steps); these impls
// exist only so that the macro's table can name them, and are never called.
impl<'de> Deserialize<'de> for HealthStep {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("read by hand"))
    }
}
impl<'de> Deserialize<'de> for ParallelStep {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("read by hand"))
    }
}

/// Fields every step may have, beside its kind's own.
pub const COMMON_FIELDS: &[&str] = &["id", "name", "needs", "timeout", "retry", "on_failure"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonFields {
    id: Option<String>,
    name: Option<String>,
    needs: Option<Vec<String>>,
    timeout: Option<Dur>,
    retry: Option<Retry>,
    on_failure: Option<OnFailure>,
}

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Step {
    /// Unique in the runbook; the journal and `needs:` refer to it.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Steps this one waits for. Without `needs:` a step waits for the step written before it;
    /// `needs: []` lets it start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    #[serde(flatten)]
    pub action: Action,
    /// Where the step is written, for later diagnostics.
    #[serde(skip)]
    #[schemars(skip)]
    pub node: Node,
}

impl Step {
    pub fn pos(&self) -> Pos {
        self.node.pos
    }
    pub fn kind(&self) -> &'static str {
        self.action.kind()
    }
}

/// A runbook: an ordered list of recovery steps with objectives.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Runbook {
    /// The language version; always 1.
    pub version: u32,
    /// Defaults to the file name without `.yml`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Objectives>,
    /// Defaults for `${NAME}` references; the environment wins over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub defaults: Defaults,
    /// The backup set restores use unless they say `from:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Selection>,
    pub steps: Vec<Step>,
    /// Steps run when a step with `on_failure: rollback` fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<Step>,
    #[serde(skip)]
    #[schemars(skip)]
    pub file: PathBuf,
    /// Ids of steps, and top-level fields, that failed to parse (their errors are already
    /// reported, so later checks must not report them again as missing).
    #[serde(skip)]
    #[schemars(skip)]
    pub broken_ids: Vec<String>,
    #[serde(skip)]
    #[schemars(skip)]
    pub broken_fields: Vec<String>,
    /// Where `backup:` is written.
    #[serde(skip)]
    #[schemars(skip)]
    pub backup_pos: Pos,
}

pub const RUNBOOK_FIELDS: &[&str] = &[
    "version",
    "name",
    "description",
    "objectives",
    "vars",
    "defaults",
    "backup",
    "steps",
    "rollback",
];

// ---------------------------------------------------------------------------------------
// Parsing

pub(crate) struct Collector<'a> {
    pub file: &'a Path,
    pub diags: Diagnostics,
}

impl Collector<'_> {
    pub fn at(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, pos, msg));
    }
    pub fn de(&mut self, e: DeError, node: &Node) {
        let pos = pos_or(&e, node);
        self.at(pos, e.message);
    }
    pub fn field<T: serde::de::DeserializeOwned>(&mut self, node: &Node) -> Option<T> {
        match from_node::<T>(node) {
            Ok(v) => Some(v),
            Err(e) => {
                self.de(e, node);
                None
            }
        }
    }
}

fn read_steps(c: &mut Collector, node: &Node, nested: bool) -> Vec<Step> {
    let Some(items) = node.as_seq() else {
        if node.value != crate::yaml::Value::Null {
            c.at(
                node.pos,
                format!("expected a list of steps, found {}", node.type_name()),
            );
        }
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|n| read_step(c, n, nested))
        .collect()
}

fn read_step(c: &mut Collector, node: &Node, nested: bool) -> Option<Step> {
    if node.as_map().is_none() {
        c.at(
            node.pos,
            format!(
                "expected a step (a mapping with `id:` and `kind:`), found {}",
                node.type_name()
            ),
        );
        return None;
    }
    let kind = node.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    // The common fields, then the kind's own fields from what is left.
    let common_node = Node::new(
        node.pos,
        crate::yaml::Value::Map(
            node.as_map()
                .unwrap_or_default()
                .iter()
                .filter(|(k, _)| k.as_str().is_some_and(|k| COMMON_FIELDS.contains(&k)))
                .cloned()
                .collect(),
        ),
    );
    let common: Option<CommonFields> = c.field(&common_node);
    let mut body = node.without_keys(COMMON_FIELDS);

    let action = match kind {
        "health" => read_health(c, &body),
        "parallel" => {
            if nested {
                c.at(
                    node.get("kind").map_or(node.pos, |k| k.pos),
                    "a `parallel` step cannot hold another `parallel` step; list the steps in one group",
                );
                None
            } else {
                let steps_node = body.get("steps").cloned();
                body = body.without_keys(&["steps"]);
                let steps = match steps_node {
                    Some(s) => read_steps(c, &s, true),
                    None => {
                        c.at(
                            node.pos,
                            "a `parallel` step needs `steps:`, the steps to run together",
                        );
                        Vec::new()
                    }
                };
                for (k, _) in body.as_map().unwrap_or_default() {
                    if k.as_str() != Some("kind") {
                        let mut cands = COMMON_FIELDS.to_vec();
                        cands.push("steps");
                        c.at(
                            k.pos,
                            format!(
                                "{} (in a `parallel` step)",
                                unknown_message("field", k.as_str().unwrap_or(""), &cands)
                            ),
                        );
                    }
                }
                Some(Action::Parallel(ParallelStep { steps }))
            }
        }
        _ => match read_tagged(
            &body,
            "kind",
            "step",
            STEP_KINDS,
            COMMON_FIELDS,
            Action::read_variant,
        ) {
            Ok(a) => Some(a),
            Err(errs) => {
                for e in errs {
                    c.de(e, node);
                }
                None
            }
        },
    };
    let common = common?;
    let action = action?;
    let Some(id) = common.id else {
        c.at(
            node.pos,
            format!(
                "this `{kind}` step has no `id`; give every step a unique id, like `id: {kind}-1`"
            ),
        );
        return None;
    };
    Some(Step {
        id,
        name: common.name,
        needs: common.needs,
        timeout: common.timeout,
        retry: common.retry,
        on_failure: common.on_failure,
        action,
        node: node.clone(),
    })
}

fn read_health(c: &mut Collector, body: &Node) -> Option<Action> {
    let check_node = body.get("check");
    let fields: Option<HealthStepFields> = c.field(&body.without_keys(&["kind"]));
    let check = match check_node {
        Some(n) => match Check::read(n) {
            Ok(ch) => Some(ch),
            Err(errs) => {
                for e in errs {
                    c.de(e, n);
                }
                None
            }
        },
        None => None, // `missing field check` already reported by the fields read
    };
    Some(Action::Health(HealthStep {
        check: check?,
        interval: fields?.interval,
    }))
}

/// Ids written in step mappings, parsed or not.
fn raw_ids(node: &Node, out: &mut Vec<String>) {
    for step in node.as_seq().unwrap_or_default() {
        if let Some(id) = step.get("id").and_then(|i| i.as_str()) {
            out.push(id.to_string());
        }
        if let Some(inner) = step.get("steps") {
            raw_ids(inner, out);
        }
    }
}

/// Parse a runbook document (after variable substitution). Returns every problem found, and
/// the runbook as far as it could be read (when the document is a mapping at all), so that
/// whole-runbook checks can run on it too.
pub(crate) fn read_runbook(file: &Path, root: &Node) -> (Option<Runbook>, Diagnostics) {
    let mut c = Collector {
        file,
        diags: Diagnostics::default(),
    };
    let Some(entries) = root.as_map() else {
        c.at(
            root.pos,
            format!(
                "a runbook is a mapping with `version:` and `steps:`, found {}",
                root.type_name()
            ),
        );
        return (None, c.diags);
    };
    let mut version = None;
    let mut name = None;
    let mut description = None;
    let mut objectives = None;
    let mut vars = BTreeMap::new();
    let mut defaults = Defaults::default();
    let mut backup = None;
    let mut steps = None;
    let mut rollback = Vec::new();
    let mut broken_fields = Vec::new();
    let mut backup_pos = Pos::START;
    for (k, v) in entries {
        let key = k.as_str().unwrap_or("");
        let before = c.diags.len();
        match key {
            "version" => match c.field::<u32>(v) {
                Some(1) => version = Some(1),
                Some(n) => c.at(
                    v.pos,
                    format!("unsupported runbook version {n}; this drctl reads version 1"),
                ),
                None => {}
            },
            "name" => name = c.field::<String>(v),
            "description" => description = c.field::<String>(v),
            "objectives" => objectives = c.field::<Objectives>(v),
            "vars" => vars = c.field::<BTreeMap<String, String>>(v).unwrap_or_default(),
            "defaults" => defaults = c.field::<Defaults>(v).unwrap_or_default(),
            "backup" => {
                backup_pos = v.pos;
                backup = c.field::<Selection>(v)
            }
            "steps" => steps = Some((read_steps(&mut c, v, false), v.pos)),
            "rollback" => rollback = read_steps(&mut c, v, false),
            _ => c.at(k.pos, unknown_message("field", key, RUNBOOK_FIELDS)),
        }
        if c.diags.len() > before {
            broken_fields.push(key.to_string());
        }
    }
    if version.is_none() && root.get("version").is_none() {
        c.at(Pos::START, "missing `version: 1` at the top of the runbook");
    }
    match &steps {
        None => c.at(
            Pos::START,
            "missing `steps:`; a runbook needs at least one step",
        ),
        Some((s, pos))
            if s.is_empty()
                && root
                    .get("steps")
                    .is_some_and(|n| n.as_seq().is_none_or(|x| x.is_empty())) =>
        {
            c.at(*pos, "`steps:` is empty; a runbook needs at least one step")
        }
        _ => {}
    }
    let name = name.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let steps = steps.map(|(s, _)| s).unwrap_or_default();
    let mut ids = Vec::new();
    for key in ["steps", "rollback"] {
        if let Some(n) = root.get(key) {
            raw_ids(n, &mut ids);
        }
    }
    let parsed: Vec<&str> = steps
        .iter()
        .chain(rollback.iter())
        .flat_map(|s| {
            let mut v = vec![s.id.as_str()];
            if let Action::Parallel(p) = &s.action {
                v.extend(p.steps.iter().map(|m| m.id.as_str()));
            }
            v
        })
        .collect();
    let broken_ids = ids
        .into_iter()
        .filter(|i| !parsed.contains(&i.as_str()))
        .collect();
    let rb = Runbook {
        version: 1,
        name,
        description,
        objectives,
        vars,
        defaults,
        backup,
        steps,
        rollback,
        file: file.to_path_buf(),
        broken_ids,
        broken_fields,
        backup_pos,
    };
    (Some(rb), c.diags)
}
