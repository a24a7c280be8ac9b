//! A record on disk of the containers drctl stopped for an operation (a volume snapshot or
//! restore, a Redis restore) and has yet to start again: one small file per container in a
//! folder of the stack's state. A guard's cleanup cannot run when drctl is killed (SIGKILL,
//! the OOM killer); the next drctl on the stack reads the record and starts what was left
//! down ([`DockerClient::start_left_stopped`]).

use std::path::{Path, PathBuf};

use crate::DockerClient;

#[derive(Debug)]
pub(crate) struct Ledger {
    dir: PathBuf,
}

/// One record: which container, stopped by which process on which host, when, and for a
/// restore or not.
struct Entry {
    container: String,
    host: String,
    pid: String,
    since: jiff::Timestamp,
    restore: bool,
}

/// A record's file: one per guard and container, so that guards never clear each other's.
fn file_name(container: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let safe: String = container
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}.{}.{}.stopped",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn read_entry(path: &Path) -> Option<Entry> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(Entry {
        container: field("container")?,
        host: field("host").unwrap_or_default(),
        pid: field("pid")?,
        since: field("since")?.parse().ok()?,
        restore: field("purpose").as_deref() == Some("restore"),
    })
}

impl Ledger {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Ledger { dir }
    }

    /// Note that this process is about to stop `container` (written before the stop, so
    /// that no kill can fall between the two), for a restore or not. The record's path is
    /// the token to [`Ledger::clear`] it with.
    pub(crate) fn record(&self, container: &str, restore: bool) -> Option<PathBuf> {
        let since = jiff::Timestamp::now();
        let text = format!(
            "container={container}\nhost={}\npid={}\nsince={since}\npurpose={}\n",
            crate::this_host(),
            std::process::id(),
            if restore { "restore" } else { "copy" }
        );
        let path = self.dir.join(file_name(container));
        let tmp = path.with_extension("tmp");
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(
                    container,
                    "cannot record the stop in {}: {e} (if drctl is killed now, start it by hand)",
                    self.dir.display()
                );
                None
            }
        }
    }

    /// A record is done with: the container runs again, was not running, or stopping it
    /// was the point.
    pub(crate) fn clear(path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot clear the stop record {}: {e}", path.display()),
        }
    }
}

impl DockerClient {
    /// Record the containers this client's guards stop in `dir` (one file each, removed
    /// when they run again), for [`DockerClient::start_left_stopped`].
    pub fn with_stop_ledger(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ledger = Some(std::sync::Arc::new(Ledger::new(dir.into())));
        self
    }

    /// Start the containers that a drctl process stopped for an operation and could not
    /// start again because it was killed. Records of live processes on this host (or of
    /// another host) are left alone, and so are containers started, or created anew, since
    /// the record: someone else looks after them now. Containers stopped for a restore are
    /// started only with `restores` (after a run that succeeded: the data is whole again);
    /// otherwise they are named and left stopped. Call it while holding the stack's lock.
    /// Returns the containers started; what cannot be started is logged with the command to
    /// do it by hand.
    pub async fn start_left_stopped(&self, restores: bool) -> Vec<String> {
        let Some(ledger) = &self.ledger else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir(&ledger.dir) else {
            return Vec::new();
        };
        let mut started = Vec::new();
        for path in dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "stopped"))
        {
            let Some(e) = read_entry(&path) else {
                tracing::warn!("unreadable stop record {}; removed", path.display());
                Ledger::clear(&path);
                continue;
            };
            if !crate::temp::owner_gone(&e.host, &e.pid) {
                continue;
            }
            let info = match self.inspect(&e.container).await {
                Ok(i) => i,
                Err(err) if err.is_not_found() => {
                    Ledger::clear(&path);
                    continue;
                }
                Err(err) => {
                    tracing::warn!("cannot look at container `{}`: {err}", e.container);
                    continue;
                }
            };
            let after = |t: Option<&String>| {
                t.and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| t > e.since)
            };
            let state = info.state.clone().unwrap_or_default();
            if state.running.unwrap_or(false)
                || after(state.started_at.as_ref())
                || after(info.created.as_ref())
            {
                Ledger::clear(&path);
                continue;
            }
            if e.restore && !restores {
                tracing::warn!(
                    container = e.container,
                    "container `{}` was stopped for a restore that a killed drctl did not finish; finishing the restore (`drctl resume`) starts it, or start it by hand: docker start {}",
                    e.container,
                    e.container
                );
                continue;
            }
            match self.start(&[&e.container]).await {
                Ok(()) => {
                    tracing::warn!(
                        container = e.container,
                        pid = e.pid,
                        "started container `{}` again: a drctl process stopped it for an operation and was killed before it could start it",
                        e.container
                    );
                    Ledger::clear(&path);
                    started.push(e.container);
                }
                Err(err) => tracing::warn!(
                    "container `{}` was left stopped by a killed drctl and does not start: {err}; start it by hand: docker start {}",
                    e.container,
                    e.container
                ),
            }
        }
        started
    }
}
