//! drctl core: the runbook and configuration model, parsing, validation and planning.
//!
//! Everything here is pure and synchronous: files are read, nothing is changed, and the
//! Docker daemon, the repository and the databases are reached only by the adapter crates.

pub mod compose;
pub mod config;
pub mod cron;
pub mod diag;
pub mod duration;
pub mod exec;
pub mod fingerprint;
pub mod plan;
pub mod runbook;
pub mod schema;
pub mod source;
mod tagged;
pub mod validate;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, Diagnostics, Pos};
pub use runbook::Runbook;

use source::Env;

/// Parse a runbook's text: YAML, `${VAR}` substitution, the model. No cross-checks.
pub fn parse_runbook(path: &Path, text: &str, env: Env) -> Result<Runbook, Diagnostics> {
    match parse_partial(path, text, env) {
        (Some(rb), d) if d.is_empty() => Ok(rb),
        (_, d) => Err(d.sorted()),
    }
}

/// The runbook as far as it parses, and the problems found on the way.
fn parse_partial(path: &Path, text: &str, env: Env) -> (Option<Runbook>, Diagnostics) {
    let mut root = match source::parse_yaml(path, text, "runbook") {
        Ok(r) => r,
        Err(d) => return (None, d),
    };
    // `vars:` are read before substitution so that they can serve as defaults.
    let vars = root
        .get("vars")
        .and_then(|v| yaml::from_node::<std::collections::BTreeMap<String, String>>(v).ok())
        .unwrap_or_default();
    let mut diags = source::substitute(path, &mut root, &vars, env);
    let (rb, d) = runbook::read_runbook(path, &root);
    diags.extend(d);
    (rb, diags)
}

/// Read, parse and check a runbook file against what is known of the stack. All problems
/// are returned at once: whole-runbook checks run on what parsed even when some steps did not.
pub fn load_runbook(
    path: &Path,
    env: Env,
    ctx: validate::Context<'_>,
) -> Result<Runbook, Diagnostics> {
    let text = source::read_text(path).map_err(|d| Diagnostics(vec![d]))?;
    let (rb, mut diags) = parse_partial(path, &text, env);
    if let Some(rb) = &rb {
        diags.extend(validate::check_runbook(rb, ctx));
    }
    match rb {
        Some(rb) if diags.is_empty() => Ok(rb),
        _ => Err(diags.sorted()),
    }
}

/// Find a runbook by path, or by name in the runbooks folder (`NAME`, `NAME.yml`, `NAME.yaml`).
pub fn resolve_runbook(arg: &str, runbooks_dir: Option<&Path>) -> Result<PathBuf, String> {
    let p = PathBuf::from(arg);
    if p.is_file() {
        return Ok(p);
    }
    if let Some(dir) = runbooks_dir {
        for cand in [
            dir.join(arg),
            dir.join(format!("{arg}.yml")),
            dir.join(format!("{arg}.yaml")),
        ] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_suffix(".yml")
                            .or_else(|| n.strip_suffix(".yaml"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let hint = match diag::did_you_mean(arg, refs.iter().copied()) {
            Some(s) => format!("; did you mean `{s}`?"),
            None if !names.is_empty() => format!("; available: {}", names.join(", ")),
            None => String::new(),
        };
        return Err(format!(
            "no runbook `{arg}`: not a file, and not in {}{hint}",
            dir.display()
        ));
    }
    Err(format!(
        "no runbook `{arg}`: not a file, and no drctl.yml names a runbooks folder"
    ))
}
