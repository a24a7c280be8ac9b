//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests run with the crate folder as working directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A `drctl` command run from the repository root, with a clean environment for drctl's own
/// variables so that the developer's shell cannot change the outcome.
pub fn drctl(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drctl"));
    c.current_dir(root()).args(args);
    for v in [
        "DRCTL_CONFIG",
        "DRCTL_LOG",
        "DRCTL_REPO",
        "DRCTL_FIXTURE_UNSET_PORT",
    ] {
        c.env_remove(v);
    }
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.borrow_mut().output().expect("drctl runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Record a skipped suite where scripts/test.sh prints it at the end.
pub fn skipped(suite: &str, reason: &str) {
    eprintln!("SKIPPED {suite}: {reason}");
    let dir = std::env::var("DRCTL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/drctl")
        });
    if std::fs::create_dir_all(&dir).is_ok() {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("skipped.txt"))
        {
            let _ = writeln!(f, "{suite}: {reason}");
        }
    }
}
