//! Renaming the entries of a tar stream on the fly, everything else passed through byte
//! for byte (ownership, modes, times, xattr records, sparse maps, file data).
//!
//! Why not a tar crate: re-encoding entries through a builder loses what it does not
//! model (PAX xattr records, GNU sparse maps); here only names change. Handled: ustar
//! name + prefix, PAX `path` / `linkpath` records, GNU long names (`L` / `K`), hard link
//! targets (renamed like names; symlink targets are content and left alone), old GNU
//! sparse extension blocks. A name that no longer fits its header gets a PAX record.

use bytes::Bytes;

const BLOCK: usize = 512;
/// Extension entries (PAX records, GNU long names) are held in memory: cap them.
const MAX_EXT: u64 = 16 << 20;

pub(crate) type MapFn = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

type Header = Box<[u8; BLOCK]>;
/// PAX records, in order: (key, value).
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

enum State {
    Header,
    ExtData {
        kind: u8,
        header: Box<[u8; BLOCK]>,
        size: u64,
        remaining: u64,
        data: Vec<u8>,
    },
    Data {
        remaining: u64,
        /// Read and dropped (an entry left out).
        drop: bool,
    },
    /// Old GNU sparse extension blocks, then `then` bytes of data.
    SparseExt {
        then: u64,
        drop: bool,
    },
    /// After the end-of-archive block: passed through as is.
    Trailer,
}

pub(crate) struct TarRenamer {
    map: MapFn,
    /// Leave out entries whose renamed path is, or is inside, a staging folder of an
    /// interrupted restore (snapshots only: see [`is_staging_name`]).
    skip_staging: bool,
    /// Entries left out that way.
    pub skipped: u64,
    state: State,
    block: Vec<u8>,
    pending_pax: Option<(Header, PaxRecords)>,
    pending_long_name: Option<(Header, Vec<u8>)>,
    pending_long_link: Option<(Header, Vec<u8>)>,
    /// Entries seen (files, directories, links, ...).
    pub entries: u64,
    /// Sum of the sizes of regular files' data.
    pub file_bytes: u64,
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s = cstr(field);
    let s: Vec<u8> = s
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // base-256 (GNU, for sizes of 8 GiB and more)
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        Some(v)
    } else {
        parse_octal(field)
    }
}

fn checksum(h: &[u8; BLOCK]) -> (u64, i64) {
    let mut u: u64 = 0;
    let mut s: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        u += b as u64;
        s += (b as i8) as i64;
    }
    (u, s)
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let (sum, _) = checksum(h);
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn is_posix_ustar(h: &[u8; BLOCK]) -> bool {
    &h[257..263] == b"ustar\0"
}

fn ustar_name(h: &[u8; BLOCK]) -> Vec<u8> {
    let name = cstr(&h[0..100]);
    if is_posix_ustar(h) {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            let mut v = prefix.to_vec();
            v.push(b'/');
            v.extend_from_slice(name);
            return v;
        }
    }
    name.to_vec()
}

/// Put a name in the ustar fields; false when it does not fit (a PAX record is needed).
fn set_ustar_name(h: &mut [u8; BLOCK], name: &[u8]) -> bool {
    let posix = is_posix_ustar(h);
    if name.len() <= 100 {
        set_field(&mut h[0..100], name);
        if posix {
            h[345..500].fill(0);
        }
        return true;
    }
    if posix {
        // Split at a '/' so that prefix <= 155 and name <= 100, name not empty.
        for i in (1..name.len().min(156)).rev() {
            if name[i] == b'/' {
                let rest = &name[i + 1..];
                if rest.len() > 100 {
                    break;
                }
                if !rest.is_empty() {
                    set_field(&mut h[0..100], rest);
                    set_field(&mut h[345..500], &name[..i]);
                    return true;
                }
            }
        }
    }
    set_field(&mut h[0..100], name);
    if posix {
        h[345..500].fill(0);
    }
    false
}

fn parse_pax(data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let bad = || "malformed PAX extended header".to_string();
        let sp = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len > rest.len() || len < sp + 3 || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let kv = &rest[sp + 1..len - 1];
        let eq = kv.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

fn serialize_pax(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut n = body + 1;
        while n != body + n.to_string().len() {
            n = body + n.to_string().len();
        }
        out.extend_from_slice(format!("{n} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn new_pax_header() -> Box<[u8; BLOCK]> {
    let mut h = Box::new([0u8; BLOCK]);
    set_field(&mut h[0..100], b"././@PaxHeader");
    set_field(&mut h[100..108], b"0000644");
    set_field(&mut h[108..116], b"0000000");
    set_field(&mut h[116..124], b"0000000");
    set_field(&mut h[136..148], b"00000000000");
    h[156] = b'x';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h
}

/// An extension entry (header + data) with new data.
fn ext_entry(header: &[u8; BLOCK], data: &[u8], out: &mut Vec<Bytes>) {
    let mut h = Box::new(*header);
    set_field(
        &mut h[124..136],
        format!("{:011o}", data.len() as u64).as_bytes(),
    );
    set_checksum(&mut h);
    let mut buf = Vec::with_capacity(BLOCK + padded(data.len() as u64) as usize);
    buf.extend_from_slice(&h[..]);
    buf.extend_from_slice(data);
    buf.resize(BLOCK + padded(data.len() as u64) as usize, 0);
    out.push(Bytes::from(buf));
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl TarRenamer {
    pub fn new(map: MapFn) -> Self {
        TarRenamer {
            map,
            skip_staging: false,
            skipped: 0,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            pending_pax: None,
            pending_long_name: None,
            pending_long_link: None,
            entries: 0,
            file_bytes: 0,
        }
    }

    /// Leave out staging folders of interrupted restores (and what is in them).
    pub fn skipping_staging(mut self) -> Self {
        self.skip_staging = true;
        self
    }

    /// Feed a chunk; what can be emitted so far is appended to `out`.
    pub fn push(&mut self, mut input: Bytes, out: &mut Vec<Bytes>) -> Result<(), String> {
        while !input.is_empty() {
            match &mut self.state {
                State::Trailer => {
                    out.push(std::mem::take(&mut input));
                }
                State::Data { remaining, drop } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    let piece = input.split_to(n);
                    if !*drop {
                        out.push(piece);
                    }
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                }
                State::ExtData {
                    remaining, data, ..
                } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    data.extend_from_slice(&input.split_to(n));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.finish_ext()?;
                    }
                }
                State::Header | State::SparseExt { .. } => {
                    let n = (BLOCK - self.block.len()).min(input.len());
                    self.block.extend_from_slice(&input.split_to(n));
                    if self.block.len() == BLOCK {
                        let mut h = Box::new([0u8; BLOCK]);
                        h.copy_from_slice(&self.block);
                        self.block.clear();
                        self.on_block(h, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The input ended: it must have ended between entries.
    pub fn finish(&self) -> Result<(), String> {
        match &self.state {
            State::Trailer => Ok(()),
            State::Header
                if self.block.is_empty()
                    && self.pending_pax.is_none()
                    && self.pending_long_name.is_none() =>
            {
                Ok(())
            }
            _ => Err("the archive is truncated (it ends inside an entry)".into()),
        }
    }

    fn on_block(&mut self, mut h: Box<[u8; BLOCK]>, out: &mut Vec<Bytes>) -> Result<(), String> {
        if let State::SparseExt { then, drop } = self.state {
            let more = h[504] != 0;
            if !drop {
                out.push(Bytes::copy_from_slice(&h[..]));
            }
            if !more {
                self.state = if then > 0 {
                    State::Data {
                        remaining: then,
                        drop,
                    }
                } else {
                    State::Header
                };
            }
            return Ok(());
        }
        if h.iter().all(|&b| b == 0) {
            if self.pending_pax.is_some() || self.pending_long_name.is_some() {
                return Err("the archive ends right after an extended header".into());
            }
            out.push(Bytes::copy_from_slice(&h[..]));
            self.state = State::Trailer;
            return Ok(());
        }
        let stored = parse_octal(&h[148..156]);
        let (u, s) = checksum(&h);
        if stored != Some(u) && stored.map(|v| v as i64) != Some(s) {
            return Err(format!(
                "not a tar archive (bad header checksum after {} entries)",
                self.entries
            ));
        }
        let typeflag = h[156];
        let size = parse_size(&h[124..136]).ok_or("not a tar archive (bad size field)")?;
        match typeflag {
            b'x' | b'L' | b'K' => {
                if size > MAX_EXT {
                    return Err(format!("extended header of {size} bytes is too large"));
                }
                self.state = State::ExtData {
                    kind: typeflag,
                    header: h,
                    size,
                    remaining: padded(size),
                    data: Vec::with_capacity(size as usize),
                };
                if size == 0 {
                    self.finish_ext()?;
                }
                return Ok(());
            }
            b'g' => {
                out.push(Bytes::copy_from_slice(&h[..]));
                self.set_data_state(padded(size));
                return Ok(());
            }
            _ => {}
        }
        let header_only = matches!(typeflag, b'1'..=b'6');
        if self.skip_staging && is_staging_path(&(self.map)(&self.entry_name(&h))?) {
            // Its extended headers go with it.
            self.pending_pax = None;
            self.pending_long_name = None;
            self.pending_long_link = None;
            self.skipped += 1;
            let data = if header_only { 0 } else { padded(size) };
            self.state = if typeflag == b'S' && h[482] != 0 {
                State::SparseExt {
                    then: data,
                    drop: true,
                }
            } else if data > 0 {
                State::Data {
                    remaining: data,
                    drop: true,
                }
            } else {
                State::Header
            };
            return Ok(());
        }
        self.rename_entry(&mut h, out)?;
        self.entries += 1;
        if matches!(typeflag, b'0' | 0 | b'7' | b'S') {
            self.file_bytes += size;
        }
        out.push(Bytes::copy_from_slice(&h[..]));
        let data = if header_only { 0 } else { padded(size) };
        if typeflag == b'S' && h[482] != 0 {
            self.state = State::SparseExt {
                then: data,
                drop: false,
            };
        } else {
            self.set_data_state(data);
        }
        Ok(())
    }

    fn set_data_state(&mut self, n: u64) {
        self.state = if n > 0 {
            State::Data {
                remaining: n,
                drop: false,
            }
        } else {
            State::Header
        };
    }

    fn finish_ext(&mut self) -> Result<(), String> {
        let State::ExtData {
            kind,
            header,
            size,
            mut data,
            ..
        } = std::mem::replace(&mut self.state, State::Header)
        else {
            unreachable!()
        };
        data.truncate(size as usize);
        match kind {
            b'x' => {
                let recs = parse_pax(&data)?;
                match &mut self.pending_pax {
                    // Two PAX headers in a row: the later records win, keep both.
                    Some((_, old)) => old.extend(recs),
                    None => self.pending_pax = Some((header, recs)),
                }
            }
            b'L' => self.pending_long_name = Some((header, cstr(&data).to_vec())),
            _ => self.pending_long_link = Some((header, cstr(&data).to_vec())),
        }
        Ok(())
    }

    /// The entry's full name, as `rename_entry` reads it (PAX, then GNU long name, then
    /// the ustar fields).
    fn entry_name(&self, h: &[u8; BLOCK]) -> Vec<u8> {
        self.pending_pax
            .as_ref()
            .and_then(|(_, r)| r.iter().rev().find(|(k, _)| k == b"path"))
            .map(|(_, v)| v.clone())
            .or_else(|| self.pending_long_name.as_ref().map(|(_, n)| n.clone()))
            .unwrap_or_else(|| ustar_name(h))
    }

    fn rename_entry(&mut self, h: &mut [u8; BLOCK], out: &mut Vec<Bytes>) -> Result<(), String> {
        let hardlink = h[156] == b'1';
        let mut pax = self.pending_pax.take();
        let long_name = self.pending_long_name.take();
        let long_link = self.pending_long_link.take();
        let pax_get = |pax: &Option<(Header, PaxRecords)>, key: &[u8]| {
            pax.as_ref()
                .and_then(|(_, r)| r.iter().rev().find(|(k, _)| k == key))
                .map(|(_, v)| v.clone())
        };
        let mut extra: PaxRecords = Vec::new();

        // The name.
        let cur = pax_get(&pax, b"path")
            .or_else(|| long_name.as_ref().map(|(_, n)| n.clone()))
            .unwrap_or_else(|| ustar_name(h));
        let new = (self.map)(&cur)?;
        let mut new_long_name = None;
        if let Some((_, recs)) = pax
            .as_mut()
            .filter(|(_, r)| r.iter().any(|(k, _)| k == b"path"))
        {
            for (k, v) in recs.iter_mut() {
                if k == b"path" {
                    *v = new.clone();
                }
            }
            set_ustar_name(h, &new);
        } else if let Some((lh, _)) = &long_name {
            new_long_name = Some((lh.clone(), new.clone()));
            set_ustar_name(h, &new);
        } else if !set_ustar_name(h, &new) {
            extra.push((b"path".to_vec(), new.clone()));
        }

        // GNU sparse 1.0 in PAX keeps the real name in a record of its own.
        if let Some(cur) = pax_get(&pax, b"GNU.sparse.name") {
            let new = (self.map)(&cur)?;
            if let Some((_, recs)) = pax.as_mut() {
                for (k, v) in recs.iter_mut() {
                    if k == b"GNU.sparse.name" {
                        *v = new.clone();
                    }
                }
            }
        }

        // A hard link's target is a name in the archive: renamed the same way.
        let mut new_long_link = long_link.clone();
        if hardlink {
            let cur = pax_get(&pax, b"linkpath")
                .or_else(|| long_link.as_ref().map(|(_, n)| n.clone()))
                .unwrap_or_else(|| cstr(&h[157..257]).to_vec());
            let new = (self.map)(&cur)?;
            if let Some((_, recs)) = pax
                .as_mut()
                .filter(|(_, r)| r.iter().any(|(k, _)| k == b"linkpath"))
            {
                for (k, v) in recs.iter_mut() {
                    if k == b"linkpath" {
                        *v = new.clone();
                    }
                }
                set_field(&mut h[157..257], &new);
            } else if let Some((kh, _)) = &long_link {
                new_long_link = Some((kh.clone(), new.clone()));
                set_field(&mut h[157..257], &new);
            } else if new.len() <= 100 {
                set_field(&mut h[157..257], &new);
            } else {
                set_field(&mut h[157..257], &new);
                extra.push((b"linkpath".to_vec(), new));
            }
        }

        if !extra.is_empty() && pax.is_none() {
            pax = Some((new_pax_header(), Vec::new()));
        }
        if let Some((ph, mut recs)) = pax {
            recs.extend(extra);
            ext_entry(&ph, &serialize_pax(&recs), out);
        }
        if let Some((lh, name)) = new_long_name {
            let mut d = name;
            d.push(0);
            ext_entry(&lh, &d, out);
        }
        if let Some((kh, name)) = new_long_link {
            let mut d = name;
            d.push(0);
            ext_entry(&kh, &d, out);
        }
        set_checksum(h);
        Ok(())
    }
}

/// The name of a staging folder a restore writes beside a volume's old contents
/// (`.drctl-staging-<pid>-<time>`).
pub(crate) fn is_staging_name(name: &[u8]) -> bool {
    name.starts_with(b".drctl-staging-")
}

/// A path relative to a volume's root (`./a/b` or `a/b`) that is, or is inside, a staging
/// folder at the root.
fn is_staging_path(path: &[u8]) -> bool {
    let mut p = path;
    while let Some(r) = p.strip_prefix(b"./") {
        p = r;
    }
    is_staging_name(p.split(|&b| b == b'/').next().unwrap_or_default())
}

/// Whether a first block can start a tar archive (a valid header, or the end marker of an
/// empty archive): checked before a restore touches anything.
pub(crate) fn check_first_block(b: &[u8]) -> Result<(), String> {
    if b.len() < BLOCK {
        return Err(format!(
            "not a tar archive ({} bytes, shorter than one tar header)",
            b.len()
        ));
    }
    let mut h = [0u8; BLOCK];
    h.copy_from_slice(&b[..BLOCK]);
    if h.iter().all(|&x| x == 0) {
        return Ok(());
    }
    let stored = parse_octal(&h[148..156]);
    let (u, s) = checksum(&h);
    if stored == Some(u) || stored.map(|v| v as i64) == Some(s) {
        Ok(())
    } else {
        Err("not a tar archive (its first header's checksum is wrong)".into())
    }
}

/// Names of an archive of a directory made relative to it: `./x` stays, `BASE/x` (what a
/// daemon gives for a path without the trailing `/.`) becomes `./x`.
pub(crate) fn relative_to_root(base: &str) -> MapFn {
    let base = base.as_bytes().to_vec();
    Box::new(move |name: &[u8]| {
        if name == b"." || name == b"./" {
            return Ok(b"./".to_vec());
        }
        if name.starts_with(b"./") {
            return Ok(name.to_vec());
        }
        if let Some(rest) = name.strip_prefix(base.as_slice()) {
            if rest.is_empty() || rest == b"/" {
                return Ok(b"./".to_vec());
            }
            if rest.starts_with(b"/") {
                let mut v = b".".to_vec();
                v.extend_from_slice(rest);
                return Ok(v);
            }
        }
        Err(format!(
            "unexpected entry `{}` in the daemon's archive (expected `./...`)",
            lossy(name)
        ))
    })
}

/// Names relative to a volume's root (`./x`, `x`) put under `dir/` for extraction at `/`.
/// Absolute names and `..` are refused: an archive must not reach outside the volume.
pub(crate) fn under_dir(dir: &str) -> MapFn {
    let dir = dir.trim_matches('/').as_bytes().to_vec();
    Box::new(move |name: &[u8]| {
        let mut rest = name;
        while let Some(r) = rest.strip_prefix(b"./") {
            rest = r;
        }
        if rest.starts_with(b"/") {
            return Err(format!(
                "archive entry `{}` is an absolute path; a volume archive holds paths relative to the volume's root",
                lossy(name)
            ));
        }
        if rest.split(|&b| b == b'/').any(|c| c == b"..") {
            return Err(format!(
                "archive entry `{}` reaches outside the volume (`..`)",
                lossy(name)
            ));
        }
        let mut v = dir.clone();
        v.push(b'/');
        if rest != b"." {
            v.extend_from_slice(rest);
        }
        Ok(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run_all(r: &mut TarRenamer, data: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for c in data.chunks(chunk) {
            let mut o = Vec::new();
            r.push(Bytes::copy_from_slice(c), &mut o)?;
            for b in o {
                out.extend_from_slice(&b);
            }
        }
        r.finish()?;
        Ok(out)
    }

    /// (mode, owner, size, name, what follows the name) of each entry, as GNU tar lists it.
    fn list(tar: &[u8]) -> Vec<(String, String, String, String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.tar");
        std::fs::write(&f, tar).unwrap();
        let o = Command::new("tar")
            .args(["-tvf"])
            .arg(&f)
            .args(["--numeric-owner"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                // mode owner size date time name [-> target | link to target]
                let f: Vec<&str> = l.split_whitespace().collect();
                let rest = f[6..].join(" ");
                (
                    f[0].to_string(),
                    f[1].to_string(),
                    f[2].to_string(),
                    f[5].to_string(),
                    rest,
                )
            })
            .collect()
    }

    /// A tree with long names, a hard link (long target too), a symlink, a sparse file.
    fn make_tar(format: &str) -> Option<Vec<u8>> {
        // Long enough that the renamed paths no longer fit a ustar header.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        let long = "d".repeat(90);
        let deep = root.join(&long).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f".repeat(80)), b"hello").unwrap();
        std::fs::hard_link(deep.join("f".repeat(80)), root.join("hard")).unwrap();
        std::fs::write(root.join("short"), b"x").unwrap();
        std::fs::hard_link(root.join("short"), deep.join("g".repeat(80))).unwrap();
        std::os::unix::fs::symlink("../x/y", root.join("sym")).unwrap();
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        f.set_len(10 << 20).unwrap();
        gnu_tar(format, &root)
    }

    /// `root` archived by GNU tar in `format` (with sparse files), if GNU tar is here.
    fn gnu_tar(format: &str, root: &std::path::Path) -> Option<Vec<u8>> {
        let out = root.with_extension("tar");
        let st = Command::new("tar")
            .arg(format!("--format={format}"))
            .args(["--sparse", "-C"])
            .arg(root)
            .arg("-cf")
            .arg(&out)
            .arg(".")
            .status()
            .ok()?;
        st.success().then(|| std::fs::read(out).unwrap())
    }

    #[test]
    fn renames_every_format_and_keeps_the_rest() {
        // (GNU tar's "ustar" cannot hold these names or a sparse file.)
        for format in ["gnu", "pax"] {
            let tar = make_tar(format).expect("GNU tar");
            let before = list(&tar);
            let mut r = TarRenamer::new(under_dir("/drctl-volume"));
            let moved = run_all(&mut r, &tar, 7777).unwrap();
            let after = list(&moved);
            assert_eq!(before.len(), after.len(), "{format}");
            for (b, a) in before.iter().zip(&after) {
                let moved = |n: &str| n.replacen("./", "drctl-volume/", 1);
                let mut want = b.clone();
                want.3 = moved(&b.3);
                if let Some(t) = b.4.strip_prefix("link to ") {
                    want.4 = format!("link to {}", moved(t));
                }
                assert_eq!(&want, a, "{format}");
            }
            // And back: the original names again, byte for byte where nothing had to grow.
            let mut back = TarRenamer::new(relative_to_root("drctl-volume"));
            let again = run_all(&mut back, &moved, 512).unwrap();
            assert_eq!(list(&again), before, "{format}");
            assert!(r.entries >= 7);
        }
    }

    #[test]
    fn snapshots_leave_out_staging_folders_of_interrupted_restores() {
        for format in ["gnu", "pax"] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("vol");
            let stage = root.join(".drctl-staging-1-dead");
            let deep = stage.join("d".repeat(120));
            std::fs::create_dir_all(&deep).unwrap();
            std::fs::write(deep.join("f".repeat(90)), b"half written").unwrap();
            std::fs::hard_link(deep.join("f".repeat(90)), stage.join("hard")).unwrap();
            std::fs::File::create(stage.join("sparse"))
                .unwrap()
                .set_len(8 << 20)
                .unwrap();
            std::fs::write(root.join("keep"), b"data").unwrap();
            std::fs::write(root.join(".drctl-stagingnot"), b"not ours").unwrap();
            let Some(tar) = gnu_tar(format, &root) else {
                eprintln!("no GNU tar: not checked");
                return;
            };
            // As the daemon streams it (under the mount's name), and back.
            let mut up = TarRenamer::new(under_dir("/data"));
            let streamed = run_all(&mut up, &tar, 4096).unwrap();
            let mut r = TarRenamer::new(relative_to_root("data")).skipping_staging();
            let snap = run_all(&mut r, &streamed, 1000).unwrap();
            let want: Vec<_> = list(&tar)
                .into_iter()
                .filter(|e| !e.3.starts_with("./.drctl-staging-1-dead"))
                .collect();
            assert_eq!(list(&snap), want, "{format}");
            assert_eq!(r.skipped, 5, "{format}: the folder, its folder, 3 files");
            assert_eq!(r.entries as usize, want.len(), "{format}");
        }
    }

    #[test]
    fn refuses_escapes_and_garbage() {
        let m = under_dir("v");
        assert_eq!(m(b"./").unwrap(), b"v/");
        assert_eq!(m(b".").unwrap(), b"v/");
        assert_eq!(m(b"./a/b").unwrap(), b"v/a/b");
        assert_eq!(m(b"a").unwrap(), b"v/a");
        assert!(m(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert!(m(b"./a/../../x").unwrap_err().contains("outside"));
        let r = relative_to_root("data");
        assert_eq!(r(b"data/").unwrap(), b"./");
        assert_eq!(r(b"data/x").unwrap(), b"./x");
        assert_eq!(r(b"./x").unwrap(), b"./x");
        assert!(r(b"other/x").is_err());
        let mut t = TarRenamer::new(under_dir("v"));
        let mut o = Vec::new();
        let err = t.push(Bytes::from(vec![b'a'; 1024]), &mut o).unwrap_err();
        assert!(err.contains("not a tar archive"), "{err}");
    }

    #[test]
    fn pax_records_round_trip() {
        let recs = vec![
            (b"path".to_vec(), vec![b'a'; 95]),
            (b"mtime".to_vec(), b"1.5".to_vec()),
        ];
        let s = serialize_pax(&recs);
        assert_eq!(parse_pax(&s).unwrap(), recs);
        // the length prefix counts itself: "100 path=aaa...\n" style boundaries
        assert!(s.starts_with(b"105 path="));
    }
}
