//! Reading files: size limits, empty files, YAML, and `${VAR}` substitution.

use std::collections::BTreeMap;
use std::path::Path;

use crate::diag::{Diagnostic, Diagnostics, Pos};
use crate::yaml::{self, Node, MAX_FILE_BYTES};

/// Looks up environment variables; a function so that parsing stays pure and testable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Read a file's text, refusing what is too large or not UTF-8.
pub fn read_text(path: &Path) -> Result<String, Diagnostic> {
    let at = |m: String| Diagnostic::new(path, Pos::START, m);
    let meta = std::fs::metadata(path).map_err(|e| at(format!("failed to read file: {e}")))?;
    if meta.is_dir() {
        return Err(at("is a folder, not a file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(at(format!(
            "file is {:.1} MiB; drctl reads runbooks and configuration of at most {} KiB",
            meta.len() as f64 / (1024.0 * 1024.0),
            MAX_FILE_BYTES / 1024
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| at(format!("failed to read file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        at(format!(
            "file is not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parse YAML text into a tree; `what` names the document kind in messages.
pub fn parse_yaml(path: &Path, text: &str, what: &str) -> Result<Node, Diagnostics> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Diagnostics(vec![Diagnostic::new(
            path,
            Pos::START,
            format!(
                "text is {} bytes; drctl reads a {what} of at most {} KiB",
                text.len(),
                MAX_FILE_BYTES / 1024
            ),
        )]));
    }
    let mut dups = Vec::new();
    let root = yaml::load(text, &mut dups)
        .map_err(|e| Diagnostics(vec![Diagnostic::new(path, e.pos, e.message)]))?;
    let mut diags = Diagnostics::default();
    for d in dups {
        diags.push(Diagnostic::new(path, d.pos, d.message));
    }
    match root {
        None => {
            diags.push(Diagnostic::new(
                path,
                Pos::START,
                format!("file is empty; a {what} starts with `version: 1`"),
            ));
            Err(diags)
        }
        Some(_) if !diags.is_empty() => Err(diags),
        Some(r) => Ok(r),
    }
}

/// Replace `${NAME}` and `${NAME:-default}` in every scalar value; `$$` is a literal `$`.
/// The environment wins over `vars`.
pub fn substitute(
    path: &Path,
    root: &mut Node,
    vars: &BTreeMap<String, String>,
    env: Env,
) -> Diagnostics {
    let mut errors = Vec::new();
    root.map_scalars(
        &mut |text: &str, pos: Pos| -> Result<Option<String>, Diagnostic> {
            if !text.contains('$') {
                return Ok(None);
            }
            expand(text, vars, env)
                .map(Some)
                .map_err(|m| Diagnostic::new(path, pos, m))
        },
        &mut errors,
    );
    Diagnostics(errors)
}

fn expand(text: &str, vars: &BTreeMap<String, String>, env: Env) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}').ok_or_else(|| {
                format!("unclosed `${{` in `{text}`; write `${{NAME}}`, or `$$` for a literal `$`")
            })?;
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "bad variable name `{name}` in `{text}`; names are letters, digits and `_`"
                ));
            }
            let value = env(name)
                .or_else(|| vars.get(name).cloned())
                .or_else(|| default.map(str::to_string))
                .ok_or_else(|| {
                    format!("`${{{name}}}` is not set; export {name}=..., or give it a default under `vars:` or as `${{{name}:-default}}`")
                })?;
            out.push_str(&value);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_vars() {
        let vars = BTreeMap::from([("A".to_string(), "va".to_string())]);
        let env = |n: &str| (n == "B").then(|| "eb".to_string());
        assert_eq!(expand("x${A}y${B}z", &vars, &env).unwrap(), "xvayebz");
        assert_eq!(expand("${C:-dc}", &vars, &env).unwrap(), "dc");
        assert_eq!(expand("$$5 and $x", &vars, &env).unwrap(), "$5 and $x");
        assert!(expand("${C}", &vars, &env).unwrap_err().contains("not set"));
        assert!(expand("${A", &vars, &env).unwrap_err().contains("unclosed"));
    }
}
