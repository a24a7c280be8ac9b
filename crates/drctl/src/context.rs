//! Loading drctl.yml and the compose files once, for every command.

use std::path::{Path, PathBuf};

use drctl_core::compose::{load_compose, ComposeModel};
use drctl_core::config::{find_config, load_config, Config};
use drctl_core::source::process_env;
use drctl_core::validate::{self, Context};
use drctl_core::Diagnostics;

use crate::error::CliError;

pub struct Loaded {
    pub config_path: Option<PathBuf>,
    pub config: Option<Config>,
    pub compose: Option<ComposeModel>,
    /// Problems in drctl.yml or the compose files.
    pub diags: Diagnostics,
}

impl Loaded {
    pub fn ctx(&self) -> Context<'_> {
        Context {
            config: self.config.as_ref(),
            compose: self.compose.as_ref(),
        }
    }

    pub fn runbooks_dir(&self) -> Option<PathBuf> {
        self.config.as_ref().map(|c| c.runbooks_dir())
    }

    pub fn require_config(&self) -> Result<&Config, CliError> {
        self.require_valid()?;
        self.config.as_ref().ok_or_else(|| {
            CliError::Usage(
                "no drctl.yml found in this folder or its parents; pass --config FILE or set DRCTL_CONFIG".into(),
            )
        })
    }

    /// Fail when drctl.yml or its compose files are broken.
    pub fn require_valid(&self) -> Result<(), CliError> {
        if self.diags.is_empty() {
            Ok(())
        } else {
            Err(CliError::Invalid(self.diags.clone()))
        }
    }
}

/// Find and read drctl.yml (if any) and its compose files, collecting their problems.
pub fn load(explicit: Option<&Path>) -> Loaded {
    let env = process_env;
    let config_path = find_config(explicit, &env);
    let mut diags = Diagnostics::default();
    let config = match &config_path {
        Some(p) => match load_config(p, &env) {
            Ok(c) => Some(c),
            Err(d) => {
                diags.extend(d);
                None
            }
        },
        None => None,
    };
    let compose = match &config {
        Some(c) if !c.stack.compose_files.is_empty() => match load_compose(&c.compose_files()) {
            Ok(m) => Some(m),
            Err(d) => {
                diags.extend(d);
                None
            }
        },
        _ => None,
    };
    if let Some(c) = &config {
        diags.extend(validate::check_config(c, compose.as_ref()));
    }
    Loaded {
        config_path,
        config,
        compose,
        diags: diags.sorted(),
    }
}
