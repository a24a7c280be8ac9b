//! The one error type of the database adapters.
//!
//! Every message reads "failed to <action>: <why>; <what to do>", names the container,
//! database, collection or service, and quotes the last lines a failing tool printed.
//! Secrets never appear: passwords travel only in exec environments and HTTP headers, and
//! no message is built from those.

use std::time::Duration;

use drctl_docker::DockerError;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A Docker operation failed (daemon unreachable, exec, stop/start, a health gate).
    #[error(transparent)]
    Docker(#[from] DockerError),

    /// A credential the target names could not be read from the environment.
    #[error("failed to read the {what} from environment variable `{var}`: {reason}")]
    Credential {
        what: String,
        var: String,
        reason: String,
    },

    /// The server refused the credentials (or wanted some and got none).
    #[error("failed to {action}: authentication failed ({detail}); {hint}")]
    Auth {
        action: String,
        detail: String,
        hint: String,
    },

    /// A database, collection, container or service that does not exist.
    #[error("failed to {action}: {what} does not exist{}", suffix(hint))]
    NotFound {
        action: String,
        what: String,
        hint: String,
    },

    /// The server is not there or not accepting connections (yet).
    #[error("failed to {action}: {reason}")]
    Unavailable { action: String, reason: String },

    /// A tool inside the container (pg_dump, pg_restore, psql, redis-cli, sh) failed.
    #[error(
        "failed to {action}: `{tool}` exited with code {code}{}{}",
        suffix(hint),
        printed(tool, output)
    )]
    Tool {
        action: String,
        tool: String,
        code: i64,
        /// The last lines it printed (stderr, else stdout).
        output: String,
        hint: String,
    },

    /// The server refused or failed the operation (BGSAVE failed, a snapshot refused).
    #[error("failed to {action}: {reason}")]
    Refused { action: String, reason: String },

    /// The input is not what the operation needs (not a pg_dump archive, not an RDB file,
    /// from a newer server); nothing was changed.
    #[error("failed to {action}: {reason}")]
    Invalid { action: String, reason: String },

    /// Data whose SHA-256 is not the one expected.
    #[error(
        "failed to {action}: SHA-256 mismatch (expected {expected}, got {actual}){}",
        suffix(hint)
    )]
    Checksum {
        action: String,
        expected: String,
        actual: String,
        hint: String,
    },

    /// An HTTP API (Qdrant) answered with an error status.
    #[error("failed to {action}: HTTP {status} from {url}: {message}")]
    Http {
        action: String,
        status: u16,
        url: String,
        message: String,
    },

    /// Something did not finish in time.
    #[error("failed to {action}: {detail} after {}", secs(*waited))]
    Timeout {
        action: String,
        waited: Duration,
        detail: String,
    },

    /// The caller's reader or writer (the repository stream) failed.
    #[error("failed to {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },

    /// An answer drctl cannot make sense of, or a race it refuses to paper over.
    #[error("failed to {action}: {reason}")]
    Protocol { action: String, reason: String },
}

fn suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}

fn printed(tool: &str, output: &str) -> String {
    if output.trim().is_empty() {
        format!("; `{tool}` printed nothing")
    } else {
        let lines: Vec<String> = output.lines().map(|l| format!("\n    {l}")).collect();
        format!("; `{tool}` printed:{}", lines.concat())
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && (s - s.round()).abs() < 0.05 {
        format!("{} s", s.round() as u64)
    } else {
        format!("{s:.1} s")
    }
}

impl DbError {
    /// The Docker daemon could not be reached (exit code 3 territory).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DbError::Docker(e) if e.is_unreachable())
    }

    /// A health gate ran out of time (worth a retry, unlike a gate that cannot pass).
    pub fn is_gate_timeout(&self) -> bool {
        matches!(self, DbError::Docker(e) if e.is_gate_timeout())
    }

    /// Worth retrying as is: a gate or wait that timed out, a server not ready yet, a save
    /// that raced with another one.
    pub fn is_retryable(&self) -> bool {
        self.is_gate_timeout()
            || matches!(
                self,
                DbError::Unavailable { .. } | DbError::Timeout { .. } | DbError::Protocol { .. }
            )
    }

    /// Credentials are missing or wrong: retrying will not help, the configuration must.
    pub fn is_auth(&self) -> bool {
        matches!(self, DbError::Auth { .. } | DbError::Credential { .. })
    }

    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> DbError {
        let action = action.into();
        move |source| DbError::Io { action, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_well() {
        let e = DbError::Tool {
            action: "restore database `app` in container `pg`".into(),
            tool: "pg_restore".into(),
            code: 1,
            output: "pg_restore: error: could not read from input file: end of file".into(),
            hint: "the database is incomplete: restore it again".into(),
        };
        assert_eq!(
            e.to_string(),
            "failed to restore database `app` in container `pg`: `pg_restore` exited with code 1; \
             the database is incomplete: restore it again; `pg_restore` printed:\n    \
             pg_restore: error: could not read from input file: end of file"
        );
        let e = DbError::NotFound {
            action: "dump database `nope` in container `pg`".into(),
            what: "database `nope`".into(),
            hint: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "failed to dump database `nope` in container `pg`: database `nope` does not exist"
        );
        let e = DbError::Timeout {
            action: "save redis".into(),
            waited: Duration::from_secs(60),
            detail: "BGSAVE still running".into(),
        };
        assert_eq!(
            e.to_string(),
            "failed to save redis: BGSAVE still running after 60 s"
        );
        assert!(e.is_retryable());
    }
}
