//! The run journal: an append-only JSON-lines file of events, fsynced after every line, so
//! that a controller killed at any point leaves a record `drctl resume` can continue from.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::events::Event;

/// A run's folder under the state folder: `runs/<id>/` with `journal.jsonl`, the runbook
/// as it was when the run started (`runbook.yml`) and, at the end, `report.json`.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(state_dir: &Path, id: &str) -> Self {
        RunDir {
            id: id.to_string(),
            path: state_dir.join("runs").join(id),
        }
    }
    pub fn journal(&self) -> PathBuf {
        self.path.join("journal.jsonl")
    }
    pub fn runbook(&self) -> PathBuf {
        self.path.join("runbook.yml")
    }
    pub fn meta(&self) -> PathBuf {
        self.path.join("run.json")
    }
    pub fn report(&self) -> PathBuf {
        self.path.join("report.json")
    }
    pub fn exists(&self) -> bool {
        self.journal().is_file()
    }
}

/// Runs in a state folder, newest first.
pub fn list_runs(state_dir: &Path) -> Vec<RunDir> {
    let mut ids: Vec<String> = std::fs::read_dir(state_dir.join("runs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.reverse();
    ids.iter()
        .map(|id| RunDir::new(state_dir, id))
        .filter(RunDir::exists)
        .collect()
}

pub struct Journal {
    file: Mutex<File>,
    path: PathBuf,
}

impl Journal {
    /// Create (or reopen for a resume) a journal; the folder is created and synced.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // The new file's name must survive a crash too.
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event and fsync it.
    pub fn append(&self, e: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().expect("journal lock");
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Read a journal. A torn last line (the controller killed mid-write) is ignored; any
    /// other bad line is an error naming the line.
    pub fn read(path: &Path) -> Result<Vec<Event>, String> {
        let f = File::open(path)
            .map_err(|e| format!("failed to read journal {}: {e}", path.display()))?;
        let lines: Vec<String> = BufReader::new(f)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("failed to read journal {}: {e}", path.display()))?;
        let mut out = Vec::new();
        let n = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(line) {
                Ok(e) => out.push(e),
                Err(_) if i + 1 == n => break,
                Err(e) => {
                    return Err(format!(
                        "journal {} line {} is damaged ({e}); the run cannot be resumed from it",
                        path.display(),
                        i + 1
                    ))
                }
            }
        }
        Ok(out)
    }
}
