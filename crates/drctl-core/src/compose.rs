//! What drctl needs from compose files: service names, their dependencies and volumes.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::diag::{Diagnostic, Diagnostics, Pos};
use crate::source;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComposeService {
    pub name: String,
    pub depends_on: Vec<String>,
    /// Named volumes the service mounts (compose keys, not full names).
    pub volumes: Vec<String>,
    /// Compose profiles; a service with any is started only when one is enabled.
    pub profiles: Vec<String>,
    pub file: PathBuf,
    pub pos: Pos,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ComposeModel {
    pub files: Vec<PathBuf>,
    pub services: Vec<ComposeService>,
    /// Named volumes declared at the top level (compose keys).
    pub volumes: Vec<String>,
}

impl ComposeModel {
    pub fn service(&self, name: &str) -> Option<&ComposeService> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn service_names(&self) -> Vec<&str> {
        self.services.iter().map(|s| s.name.as_str()).collect()
    }
    /// Services that mount a volume (by compose key).
    pub fn users_of_volume(&self, volume: &str) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| s.volumes.iter().any(|v| v == volume))
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// Read compose files; later files add to and override earlier ones, as compose does.
pub fn load_compose(files: &[PathBuf]) -> Result<ComposeModel, Diagnostics> {
    let mut model = ComposeModel::default();
    let mut diags = Diagnostics::default();
    for file in files {
        match load_one(file) {
            Ok(m) => {
                for s in m.services {
                    if let Some(existing) = model.services.iter_mut().find(|e| e.name == s.name) {
                        existing.depends_on.extend(s.depends_on);
                        existing.volumes.extend(s.volumes);
                    } else {
                        model.services.push(s);
                    }
                }
                model.volumes.extend(m.volumes);
                model.files.push(file.clone());
            }
            Err(d) => diags.extend(d),
        }
    }
    if diags.is_empty() {
        Ok(model)
    } else {
        Err(diags)
    }
}

fn load_one(file: &Path) -> Result<ComposeModel, Diagnostics> {
    let text = source::read_text(file).map_err(|d| Diagnostics(vec![d]))?;
    let root = source::parse_yaml(file, &text, "compose file").map_err(|d| {
        // A compose file has no `version: 1`; keep the YAML errors only.
        Diagnostics(
            d.0.into_iter()
                .map(|mut x| {
                    if x.message.starts_with("file is empty") {
                        x.message = "compose file is empty".into();
                    }
                    x
                })
                .collect(),
        )
    })?;
    let mut model = ComposeModel {
        files: vec![file.to_path_buf()],
        ..Default::default()
    };
    let Some(services) = root.get("services").and_then(|s| s.as_map()) else {
        return Err(Diagnostics(vec![Diagnostic::new(
            file,
            root.pos,
            "compose file has no `services:` mapping",
        )]));
    };
    for (k, v) in services {
        let name = k.as_str().unwrap_or_default().to_string();
        let depends_on = match v.get("depends_on") {
            Some(d) => match (d.as_seq(), d.as_map()) {
                (Some(seq), _) => seq
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
                (_, Some(map)) => map
                    .iter()
                    .filter_map(|(k, _)| k.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        let volumes = v
            .get("volumes")
            .and_then(|n| n.as_seq())
            .unwrap_or_default()
            .iter()
            .filter_map(|n| match n.as_str() {
                // short syntax `name:/path[:mode]`; a host path starts with / or .
                Some(s) => s
                    .split(':')
                    .next()
                    .filter(|src| {
                        s.contains(':')
                            && !src.starts_with('/')
                            && !src.starts_with('.')
                            && !src.starts_with('~')
                    })
                    .map(str::to_string),
                None => n
                    .get("source")
                    .filter(|_| {
                        n.get("type").and_then(|t| t.as_str()).unwrap_or("volume") == "volume"
                    })
                    .and_then(|s| s.as_str())
                    .map(str::to_string),
            })
            .collect();
        let profiles = v
            .get("profiles")
            .and_then(|p| p.as_seq())
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        model.services.push(ComposeService {
            name,
            depends_on,
            volumes,
            profiles,
            file: file.to_path_buf(),
            pos: k.pos,
        });
    }
    if let Some(vols) = root.get("volumes").and_then(|v| v.as_map()) {
        model.volumes = vols
            .iter()
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect();
    }
    Ok(model)
}

/// Order services so that each comes after what it depends on (compose's start order).
/// Dependencies outside `wanted` are ignored; a cycle keeps the written order.
pub fn start_order<'a>(model: &'a ComposeModel, wanted: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    fn visit<'a>(
        m: &'a ComposeModel,
        s: &'a str,
        wanted: &[&'a str],
        out: &mut Vec<&'a str>,
        seen: &mut Vec<&'a str>,
    ) {
        if out.contains(&s) || seen.contains(&s) {
            return;
        }
        seen.push(s);
        if let Some(svc) = m.service(s) {
            for d in &svc.depends_on {
                if wanted.contains(&d.as_str()) {
                    visit(m, d, wanted, out, seen);
                }
            }
        }
        out.push(s);
    }
    let mut seen = Vec::new();
    for s in wanted {
        visit(model, s, wanted, &mut out, &mut seen);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yml");
        std::fs::write(
            &f,
            "services:\n  app:\n    depends_on: [db]\n    volumes: ['data:/d', './x:/x']\n  db:\n    volumes:\n      - type: volume\n        source: pg\n        target: /var\nvolumes:\n  data: {}\n  pg: {}\n",
        )
        .unwrap();
        let m = load_compose(&[f]).unwrap();
        assert_eq!(m.service_names(), vec!["app", "db"]);
        assert_eq!(m.service("app").unwrap().volumes, vec!["data"]);
        assert_eq!(m.service("db").unwrap().volumes, vec!["pg"]);
        assert_eq!(start_order(&m, &["app", "db"]), vec!["db", "app"]);
    }
}
