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

/// One record: which container, stopped by which process on which host, when.
struct Entry {
    container: String,
    host: String,
    pid: u32,
    since: String,
}

fn file_name(container: &str) -> String {
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
    format!("{safe}.stopped")
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
        pid: field("pid")?.parse().ok()?,
        since: field("since").unwrap_or_default(),
    })
}

impl Ledger {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Ledger { dir }
    }

    /// Note that this process is about to stop `container` (written before the stop, so
    /// that no kill can fall between the two).
    pub(crate) fn record(&self, container: &str) {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = format!(
            "container={container}\nhost={}\npid={}\nsince={since}\n",
            crate::this_host(),
            std::process::id()
        );
        let path = self.dir.join(file_name(container));
        let tmp = path.with_extension("tmp");
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(
                container,
                "cannot record the stop in {}: {e} (if drctl is killed now, start it by hand)",
                self.dir.display()
            );
        }
    }

    /// `container` runs again (or was not running, or stopping it was the point).
    pub(crate) fn clear(&self, container: &str) {
        match std::fs::remove_file(self.dir.join(file_name(container))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(container, "cannot clear the stop record: {e}"),
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
    /// start again because it was killed. Records of live processes on this host are left
    /// alone. Call it while holding the stack's lock. Returns the containers started; what
    /// cannot be started is logged with the command to do it by hand.
    pub async fn start_left_stopped(&self) -> Vec<String> {
        let Some(ledger) = &self.ledger else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir(&ledger.dir) else {
            return Vec::new();
        };
        let host = crate::this_host();
        let mut started = Vec::new();
        for path in dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "stopped"))
        {
            let Some(e) = read_entry(&path) else {
                tracing::warn!("unreadable stop record {}; removed", path.display());
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let alive = e.host == host
                && (e.pid == std::process::id() || Path::new(&format!("/proc/{}", e.pid)).exists());
            if alive {
                continue;
            }
            let running = match self.inspect(&e.container).await {
                Ok(i) => i.state.and_then(|s| s.running).unwrap_or(false),
                Err(err) if err.is_not_found() => {
                    ledger.clear(&e.container);
                    continue;
                }
                Err(err) => {
                    tracing::warn!("cannot look at container `{}`: {err}", e.container);
                    continue;
                }
            };
            if running {
                ledger.clear(&e.container);
                continue;
            }
            match self.start(&[&e.container]).await {
                Ok(()) => {
                    tracing::warn!(
                        container = e.container,
                        pid = e.pid,
                        since = e.since,
                        "started container `{}` again: a drctl process stopped it for an operation and was killed before it could start it",
                        e.container
                    );
                    ledger.clear(&e.container);
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
