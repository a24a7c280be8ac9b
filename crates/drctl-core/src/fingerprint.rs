//! A volume's tree fingerprint: what a restore must bring back, computed from a tar stream
//! of the volume (the same stream a backup stores), so that backup and verify compute it the
//! same way without touching the host's filesystem.
//!
//! Per entry: path, type, mode, owner, size, link target and the SHA-256 of the content;
//! sorted by path (the order of a directory walk differs between filesystems). Times are
//! left out: they are restored, but a fingerprint that breaks on a touched directory would
//! cry wolf.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFingerprint {
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    /// SHA-256 over the sorted entry lines, hex.
    pub digest: String,
    /// Per entry line hashes are not kept (a volume can hold millions of files); `sample`
    /// holds the first few paths, to name something concrete in a mismatch.
    pub sample: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Read a tar stream to its end and fingerprint the tree it holds.
pub fn tree_fingerprint(reader: impl Read) -> Result<TreeFingerprint, String> {
    let mut archive = tar::Archive::new(reader);
    let mut lines: Vec<(String, [u8; 32])> = Vec::new();
    let mut files = 0u64;
    let mut file_bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive
        .entries()
        .map_err(|e| format!("failed to read the tar stream: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("failed to read a tar entry: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("failed to read a tar entry's path: {e}"))?;
        let path = path
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = entry.header();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0) & 0o7777;
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let link = entry
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut content = Sha256::new();
        let mut size = 0u64;
        if kind.is_file() {
            files += 1;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| format!("failed to read `{path}` in the tar stream: {e}"))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                content.update(&buf[..n]);
            }
            file_bytes += size;
        }
        let line = format!(
            "{path}\0{:?}\0{mode:o}\0{uid}\0{gid}\0{size}\0{link}\0{}",
            kind,
            hex(&content.finalize())
        );
        lines.push((path, Sha256::digest(line.as_bytes()).into()));
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut all = Sha256::new();
    for (_, h) in &lines {
        all.update(h);
    }
    Ok(TreeFingerprint {
        entries: lines.len() as u64,
        files,
        file_bytes,
        digest: hex(&all.finalize()),
        sample: lines.iter().take(5).map(|(p, _)| p.clone()).collect(),
    })
}

impl TreeFingerprint {
    /// What differs, in words; empty when equal.
    pub fn compare(&self, now: &TreeFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.entries != now.entries {
            out.push(format!(
                "{} entries at backup, {} now",
                self.entries, now.entries
            ));
        }
        if self.file_bytes != now.file_bytes {
            out.push(format!(
                "{} file bytes at backup, {} now",
                self.file_bytes, now.file_bytes
            ));
        }
        if self.digest != now.digest && out.is_empty() {
            out.push(
                "same number of entries and bytes, but contents, modes or owners differ".into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8], u32, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data, mode, uid) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_uid(*uid);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn order_does_not_matter_but_content_mode_and_owner_do() {
        let a = tree_fingerprint(&tar_of(&[("x", b"1", 0o644, 0), ("y", b"2", 0o600, 999)])[..])
            .unwrap();
        let b = tree_fingerprint(&tar_of(&[("y", b"2", 0o600, 999), ("x", b"1", 0o644, 0)])[..])
            .unwrap();
        assert_eq!(
            a,
            TreeFingerprint {
                sample: a.sample.clone(),
                ..b.clone()
            }
        );
        assert!(a.compare(&b).is_empty());
        let c = tree_fingerprint(&tar_of(&[("x", b"1", 0o644, 0), ("y", b"3", 0o600, 999)])[..])
            .unwrap();
        assert_eq!(
            a.compare(&c),
            vec!["same number of entries and bytes, but contents, modes or owners differ"]
        );
        let d = tree_fingerprint(&tar_of(&[("x", b"1", 0o644, 0), ("y", b"2", 0o600, 1000)])[..])
            .unwrap();
        assert_ne!(a.digest, d.digest);
        let e = tree_fingerprint(&tar_of(&[("x", b"1", 0o644, 0)])[..]).unwrap();
        assert_eq!(a.compare(&e)[0], "2 entries at backup, 1 now");
    }
}
