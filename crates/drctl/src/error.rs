//! The one place where failures become exit codes.

use std::fmt;

use drctl_core::Diagnostics;

/// Exit codes (documented in the README).
pub mod code {
    /// A run, step or check failed.
    pub const FAILED: i32 = 1;
    /// Invalid input: a runbook, drctl.yml or the command line.
    pub const INVALID: i32 = 2;
    /// Something drctl needs is unreachable or missing: the Docker daemon, the repository,
    /// credentials, a compose CLI.
    pub const UNAVAILABLE: i32 = 3;
    /// Another run holds the stack.
    pub const LOCKED: i32 = 4;
    /// The operator interrupted the run; `drctl resume` continues it.
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug)]
pub enum CliError {
    /// Problems in input files, each with file:line:column.
    Invalid(Diagnostics),
    /// Bad input that is not in a file (a runbook name that does not exist, ...).
    Usage(String),
    /// A dependency is unreachable or missing.
    Unavailable(String),
    /// The work itself failed (already reported in detail).
    Failed(String),
    /// Another run holds the stack's lock.
    Locked(String),
    /// Interrupted by a signal; resumable.
    Interrupted(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) | CliError::Usage(_) => code::INVALID,
            CliError::Unavailable(_) => code::UNAVAILABLE,
            CliError::Failed(_) => code::FAILED,
            CliError::Locked(_) => code::LOCKED,
            CliError::Interrupted(_) => code::INTERRUPTED,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Invalid(d) => write!(f, "{d}"),
            CliError::Usage(m)
            | CliError::Unavailable(m)
            | CliError::Failed(m)
            | CliError::Locked(m)
            | CliError::Interrupted(m) => f.write_str(m),
        }
    }
}

impl From<Diagnostics> for CliError {
    fn from(d: Diagnostics) -> Self {
        CliError::Invalid(d)
    }
}

impl From<drctl_docker::DockerError> for CliError {
    fn from(e: drctl_docker::DockerError) -> Self {
        if e.is_unreachable() {
            CliError::Unavailable(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    }
}
