//! One run per stack at a time.
//!
//! An advisory `flock` on `locks/<project>.lock`: the kernel releases it when the holder
//! dies, however it dies, so a dead holder never blocks the next run (no stale-lock
//! guessing from pids). The file also names the holder, for the refusal message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub pid: u32,
    pub host: String,
    pub since: String,
    pub command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another drctl run holds stack `{project}`: {holder}; wait for it to finish (or stop it), then try again")]
    Held { project: String, holder: String },
    #[error("failed to take the lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held until dropped.
#[derive(Debug)]
pub struct StackLock {
    _file: File,
    pub path: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl StackLock {
    pub fn acquire(
        state_dir: &Path,
        project: &str,
        run_id: &str,
        command: &str,
    ) -> Result<StackLock, LockError> {
        let dir = state_dir.join("locks");
        let path = dir.join(format!("{project}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match serde_json::from_str::<Holder>(&text) {
                    Ok(h) => format!(
                        "run {} (`{}`, pid {} on {}, since {})",
                        h.run_id, h.command, h.pid, h.host, h.since
                    ),
                    Err(_) => "a run whose details are not readable".into(),
                };
                return Err(LockError::Held {
                    project: project.to_string(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = Holder {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            host: hostname(),
            since: jiff::Timestamp::now().to_string(),
            command: command.to_string(),
        };
        let text = serde_json::to_string(&holder).expect("holder serializes");
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        let _ = file.sync_data();
        Ok(StackLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = StackLock::acquire(dir.path(), "p", "run-1", "run x").unwrap();
        let err = StackLock::acquire(dir.path(), "p", "run-2", "run y").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("stack `p`"), "{msg}");
        assert!(msg.contains("run run-1 (`run x`, pid"), "{msg}");
        drop(first);
        StackLock::acquire(dir.path(), "p", "run-3", "run z").unwrap();
    }
}
