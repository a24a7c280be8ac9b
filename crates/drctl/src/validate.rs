//! `drctl validate`.

use std::path::{Path, PathBuf};

use drctl_core::source::process_env;
use drctl_core::{load_runbook, resolve_runbook, Diagnostic, Diagnostics, Pos};

use crate::context;
use crate::error::CliError;

/// Runbook files in a folder, sorted.
pub fn runbook_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

pub fn run(config: Option<&Path>, args: &[String], json: bool) -> Result<(), CliError> {
    let loaded = context::load(config);
    let mut diags = loaded.diags.clone();
    let files: Vec<PathBuf> =
        if args.is_empty() {
            match loaded.runbooks_dir() {
                Some(dir) => runbook_files(&dir),
                None if loaded.config_path.is_none() => return Err(CliError::Usage(
                    "nothing to validate: name runbook files, or run where a drctl.yml is found"
                        .into(),
                )),
                None => Vec::new(),
            }
        } else {
            let mut out = Vec::new();
            for a in args {
                match resolve_runbook(a, loaded.runbooks_dir().as_deref()) {
                    Ok(p) => out.push(p),
                    Err(m) => diags.push(Diagnostic::new(Path::new(a), Pos::START, m)),
                }
            }
            out
        };
    let env = process_env;
    let mut ok = 0usize;
    for f in &files {
        match load_runbook(f, &env, loaded.ctx()) {
            Ok(_) => ok += 1,
            Err(d) => diags.extend(d),
        }
    }
    if json {
        let out = serde_json::json!({
            "valid": diags.is_empty(),
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "config": loaded.config_path.as_ref().map(|p| p.display().to_string()),
            "problems": diags.0,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return if diags.is_empty() {
            Ok(())
        } else {
            Err(CliError::Invalid(Diagnostics::default()))
        };
    }
    if !diags.is_empty() {
        return Err(CliError::Invalid(diags));
    }
    let cfg = loaded
        .config_path
        .as_ref()
        .map(|p| format!(" (with {})", p.display()))
        .unwrap_or_default();
    println!(
        "ok: {ok} runbook{} valid{cfg}",
        if ok == 1 { "" } else { "s" }
    );
    Ok(())
}
