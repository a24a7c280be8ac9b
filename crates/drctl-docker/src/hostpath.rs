//! The host fast path: a volume's files read and written in place, at its mountpoint,
//! instead of through the daemon's archive API.
//!
//! Used when drctl runs as root on the Docker host and the volume is a plain `local` volume
//! (no driver options) whose `Mountpoint` is visible here; see [`host_dir`] for every
//! condition. The tar stream is the one the API path produces, entry for entry, so a
//! snapshot taken one way restores the other way and fingerprints the same:
//!
//! - entries relative to the volume's root: `./`, `./a`, `./dir/` (directories end in
//!   `/`), walked in byte order, parents before children;
//! - POSIX ustar headers, PAX records when a name, link target, owner or size does not fit
//!   (`path`, `linkpath`, `uid`, `gid`, `size`); numeric owners only (no user or group
//!   names: what the API path applies, and what GNU tar then uses too); modes without the
//!   file type bits; whole-second modification times;
//! - hard links (any non-directory with more than one link) as link entries naming the
//!   first path seen, symlinks (dangling or absolute too) as they are, fifos and devices;
//!   sockets are skipped, as the API path skips them;
//! - extended attributes as `SCHILY.xattr.*` records (the API path keeps only
//!   `security.capability`; both extractors apply them).
//!
//! # Sparse files
//! The archive API stores holes as zeros and writes them back as allocated zeros. Here a
//! snapshot finds the holes with `SEEK_DATA` / `SEEK_HOLE` and does not read them (it
//! emits zeros without touching the disk), and records them in a PAX record of its own,
//! `DRCTL.holes=OFF,LEN,OFF,LEN,...`; the data itself is still complete in the stream
//! (holes as zeros, which zstd stores in a few bytes). So the stream stays a plain tar
//! for every reader (the API path, GNU tar, the fingerprint; GNU tar warns that it
//! ignores the record), and a restore through the host path skips writing those ranges
//! (after checking that they are zeros) and sets the file's length, so the holes come
//! back as holes. A GNU tar sparse entry (`S`) is restored with its contents, holes
//! written as zeros. Regions of allocated zeros stay allocated: only recorded holes
//! become holes.
//!
//! # Safety of a restore
//! The volume is emptied in place, then every entry is created relative to a directory
//! opened without following symlinks (`openat` with `O_NOFOLLOW` at every component), so
//! an archive cannot write outside the volume: absolute names and `..` are refused, and a
//! symlink in the archive is never followed by a later entry (one that would go through
//! it is refused). Owners, modes (setuid / setgid after the owner), times and extended
//! attributes are applied; directories' times last. The root entry's owner, mode and
//! time go to the volume's root. The restore ends with `syncfs` on the volume's
//! filesystem: when it reports success the data is on disk (the archive API does not
//! sync).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{DockerClient, DockerError};

/// PAX record listing a regular file's holes: `OFF,LEN,OFF,LEN,...` (decimal bytes).
pub(crate) const HOLES_KEY: &str = "DRCTL.holes";
/// Holes recorded per file at most (later ones travel as zeros and come back allocated).
const MAX_HOLES: usize = 100_000;
/// Chunks of the tar stream handed to the async side (what the consumer reads at once
/// anyway: the repository's pipeline takes 256 KiB chunks).
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the blocking thread and the async side, each way.
const DEPTH: usize = 4;
/// Input chunks of a restore.
const IN_CHUNK: usize = 256 * 1024;
const BLOCK: u64 = 512;

/// Counters of one snapshot or restore.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// Size of the tar stream.
    pub bytes: u64,
    pub entries: u64,
    /// Sum of the regular files' sizes.
    pub file_bytes: u64,
    /// Bytes of recorded holes (not read on snapshot; not written on restore).
    pub hole_bytes: u64,
    /// Files whose size changed while they were read (snapshot of a live volume).
    pub changed: u64,
    /// Extended attributes that could not be read or set (unsupported here).
    pub xattr_skipped: u64,
    /// Staging folders of interrupted restores left out of a snapshot.
    pub staging_skipped: u64,
}

// ---------------------------------------------------------------------------------------
// Whether the host path can be used

/// The volume's directory on this host, or why the host path cannot be used for it:
/// the daemon must be reached over a local unix socket, drctl must run as root (to read
/// every file and to restore owners), the volume must use the `local` driver without
/// driver options (with options it is a bind or network mount that exists only while a
/// container uses it), its `Mountpoint` must be a directory visible here (not the case
/// when drctl runs in a container without the daemon's data root, or the daemon runs in
/// a VM), and the daemon must not remap user namespaces (the owners on disk would be
/// shifted from those the API path records).
pub(crate) async fn host_dir(client: &DockerClient, volume: &str) -> Result<PathBuf, String> {
    let host = client.host();
    if !host.starts_with("unix://") {
        return Err(format!(
            "the daemon is reached at {host}, not through a local unix socket"
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("drctl is not running as root".into());
    }
    let v = client
        .inner()
        .inspect_volume(volume)
        .await
        .map_err(|e| format!("cannot inspect the volume: {e}"))?;
    if v.driver != "local" {
        return Err(format!("the volume uses driver `{}`", v.driver));
    }
    if !v.options.is_empty() {
        return Err("the volume has driver options (a bind or network mount)".into());
    }
    let mp = PathBuf::from(&v.mountpoint);
    if !mp.is_absolute() {
        return Err(format!(
            "the daemon gives no usable mountpoint ({:?})",
            v.mountpoint
        ));
    }
    match std::fs::symlink_metadata(&mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory here", mp.display())),
        Err(e) => {
            return Err(format!(
                "its mountpoint {} is not visible here ({e}); drctl runs in a container or on another machine than the daemon",
                mp.display()
            ))
        }
    }
    let info = client
        .inner()
        .info()
        .await
        .map_err(|e| format!("cannot read the daemon's info: {e}"))?;
    if info
        .security_options
        .unwrap_or_default()
        .iter()
        .any(|o| o.contains("name=userns"))
    {
        return Err("the daemon remaps user namespaces (owners on disk are shifted)".into());
    }
    if let Some(root) = info.docker_root_dir.filter(|r| !r.is_empty()) {
        if !mp.starts_with(&root) {
            return Err(format!(
                "its mountpoint {} is outside the daemon's data root {root}",
                mp.display()
            ));
        }
    }
    Ok(mp)
}

// ---------------------------------------------------------------------------------------
// Snapshot

/// Stream the tree at `root` as a tar into `out` (flushed, not shut down).
pub(crate) async fn snapshot(
    root: PathBuf,
    volume: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<Counts, DockerError> {
    let action = format!("snapshot volume `{volume}` at {}", root.display());
    let (tx, mut rx) = mpsc::channel::<Bytes>(DEPTH);
    let walker = tokio::task::spawn_blocking(move || {
        let mut tar = TarOut::new(tx);
        let mut counts = Counts::default();
        write_tree(&root, &mut tar, &mut counts)?;
        tar.finish()?;
        counts.bytes = tar.bytes;
        Ok::<_, io::Error>(counts)
    });
    let mut write_err = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = out.write_all(&chunk).await {
            write_err = Some(e);
            break;
        }
    }
    drop(rx);
    let walked = walker.await;
    if let Some(e) = write_err {
        return Err(DockerError::Io {
            action: format!("write the snapshot of volume `{volume}`"),
            source: e,
        });
    }
    let counts = walked
        .map_err(|e| DockerError::failed(&action, format!("the snapshot thread ended: {e}")))?
        .map_err(|e| DockerError::failed(&action, e.to_string()))?;
    out.flush().await.map_err(|e| DockerError::Io {
        action: format!("write the snapshot of volume `{volume}`"),
        source: e,
    })?;
    if counts.changed > 0 {
        tracing::warn!(
            volume,
            files = counts.changed,
            "files changed size while they were read; stop the volume's users for a consistent snapshot"
        );
    }
    Ok(counts)
}

/// The tar stream being written, in chunks sent to the async side.
struct TarOut {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    bytes: u64,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's reader went away")
}

impl TarOut {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        TarOut {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            bytes: 0,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK));
        self.tx.blocking_send(full.freeze()).map_err(|_| closed())
    }

    fn room(&mut self) -> io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(CHUNK - self.buf.len())
    }

    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let n = self.room()?.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        self.bytes += n;
        while n > 0 {
            let k = (self.room()? as u64).min(n) as usize;
            self.buf.resize(self.buf.len() + k, 0);
            n -= k as u64;
        }
        Ok(())
    }

    /// Read `len` bytes of `f` at `off` straight into the stream; returns how many were
    /// there (fewer when the file shrank).
    fn read_from(&mut self, f: &File, mut off: u64, len: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while done < len {
            let room = self.room()?;
            let want = (room as u64).min(len - done) as usize;
            let start = self.buf.len();
            self.buf.resize(start + want, 0);
            let n = loop {
                match f.read_at(&mut self.buf[start..start + want], off) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(start + n);
            self.bytes += n as u64;
            if n == 0 {
                break;
            }
            done += n as u64;
            off += n as u64;
        }
        Ok(done)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = size % BLOCK;
        if rem != 0 {
            self.zeros(BLOCK - rem)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.zeros(2 * BLOCK)?;
        self.send()
    }
}

/// What a header says about one entry.
struct Meta {
    name: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    link: Vec<u8>,
    dev: Option<(u32, u32)>,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn from_stat(name: Vec<u8>, kind: u8, st: &libc::stat) -> Meta {
        Meta {
            name,
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid as u64,
            gid: st.st_gid as u64,
            size: 0,
            mtime: st.st_mtime,
            link: Vec::new(),
            dev: None,
            pax: Vec::new(),
        }
    }
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = body + 1;
    while n != body + n.to_string().len() {
        n = body + n.to_string().len();
    }
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Put a name in the ustar name / prefix fields; false when a PAX record is needed.
fn ustar_name(h: &mut [u8; 512], name: &[u8]) -> bool {
    if name.len() <= 100 {
        h[..name.len()].copy_from_slice(name);
        return true;
    }
    // prefix (<= 155) '/' name (<= 100, not empty)
    for i in (1..name.len().min(156)).rev() {
        if name[i] == b'/' {
            let rest = &name[i + 1..];
            if rest.len() > 100 {
                break;
            }
            if !rest.is_empty() {
                h[..rest.len()].copy_from_slice(rest);
                h[345..345 + i].copy_from_slice(&name[..i]);
                return true;
            }
        }
    }
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    false
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn base_header(kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h
}

impl TarOut {
    fn header(&mut self, m: &Meta) -> io::Result<()> {
        let mut h = base_header(m.kind);
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if !ustar_name(&mut h, &m.name) {
            pax.push((b"path".to_vec(), m.name.clone()));
        }
        octal(&mut h[100..108], m.mode as u64);
        if !octal(&mut h[108..116], m.uid) {
            pax.push((b"uid".to_vec(), m.uid.to_string().into_bytes()));
        }
        if !octal(&mut h[116..124], m.gid) {
            pax.push((b"gid".to_vec(), m.gid.to_string().into_bytes()));
        }
        if !octal(&mut h[124..136], m.size) {
            // base-256 in the header for readers without PAX, and the PAX record.
            let f = &mut h[124..136];
            f.fill(0);
            let be = m.size.to_be_bytes();
            f[4..].copy_from_slice(&be);
            f[0] = 0x80;
            pax.push((b"size".to_vec(), m.size.to_string().into_bytes()));
        }
        octal(&mut h[136..148], m.mtime.max(0) as u64);
        if m.link.len() <= 100 {
            h[157..157 + m.link.len()].copy_from_slice(&m.link);
        } else {
            h[157..257].copy_from_slice(&m.link[..100]);
            pax.push((b"linkpath".to_vec(), m.link.clone()));
        }
        if let Some((major, minor)) = m.dev {
            octal(&mut h[329..337], major as u64);
            octal(&mut h[337..345], minor as u64);
        }
        pax.extend(m.pax.iter().cloned());
        checksum(&mut h);
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut data, k, v);
            }
            let mut ph = base_header(b'x');
            ph[..14].copy_from_slice(b"././@PaxHeader");
            octal(&mut ph[100..108], 0o644);
            octal(&mut ph[108..116], 0);
            octal(&mut ph[116..124], 0);
            octal(&mut ph[124..136], data.len() as u64);
            octal(&mut ph[136..148], m.mtime.max(0) as u64);
            checksum(&mut ph);
            self.put(&ph)?;
            self.put(&data)?;
            self.pad(data.len() as u64)?;
        }
        self.put(&h)
    }
}

// --- thin, safe wrappers over the *at system calls

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is a valid C string; the returned fd is owned by the caller.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn open_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    open_dir(libc::AT_FDCWD, &cstring(root.as_os_str().as_bytes())?)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed `stat` is a valid value; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn lstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::readlinkat(
                dir,
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// The names in a directory (not `.` / `..`), sorted by their bytes.
fn list_dir(fd: RawFd) -> io::Result<Vec<Vec<u8>>> {
    // fdopendir takes ownership of the descriptor it is given: hand it a duplicate.
    let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is a valid directory descriptor we own.
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // readdir signals errors only through errno.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dir` is a valid DIR*; the entry is copied before the next call.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let errno = io::Error::last_os_error();
            break match errno.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(errno),
            };
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: closes `dup` too.
    unsafe { libc::closedir(dir) };
    result?;
    names.sort();
    Ok(names)
}

/// Extended attributes: through the descriptor when there is one, else by path (no
/// following).
enum XattrOf<'a> {
    Fd(RawFd),
    Path(&'a CStr),
}

fn list_xattrs(of: &XattrOf<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = |buf: &mut [u8]| -> isize {
        let (p, n) = (buf.as_mut_ptr() as *mut libc::c_char, buf.len());
        // SAFETY: valid buffer; a zero length asks for the size.
        unsafe {
            match of {
                XattrOf::Fd(fd) => libc::flistxattr(*fd, p, n),
                XattrOf::Path(path) => libc::llistxattr(path.as_ptr(), p, n),
            }
        }
    };
    let get = |name: &CStr, buf: &mut [u8]| -> isize {
        let (p, n) = (buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        // SAFETY: as above.
        unsafe {
            match of {
                XattrOf::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), p, n),
                XattrOf::Path(path) => libc::lgetxattr(path.as_ptr(), name.as_ptr(), p, n),
            }
        }
    };
    let n = list(&mut []);
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; n as usize + 256];
    let n = list(&mut names);
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c = cstring(name)?;
        let size = get(&c, &mut []);
        if size < 0 {
            continue; // removed meanwhile
        }
        let mut v = vec![0u8; size as usize + 64];
        let size = get(&c, &mut v);
        if size < 0 {
            continue;
        }
        v.truncate(size as usize);
        out.push((name.to_vec(), v));
    }
    Ok(out)
}

fn set_xattr(of: &XattrOf<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cstring(name)?;
    let (p, n) = (value.as_ptr() as *const libc::c_void, value.len());
    // SAFETY: valid C string and buffer.
    cvt(unsafe {
        match of {
            XattrOf::Fd(fd) => libc::fsetxattr(*fd, c.as_ptr(), p, n, 0),
            XattrOf::Path(path) => libc::lsetxattr(path.as_ptr(), c.as_ptr(), p, n, 0),
        }
    })
    .map(|_| ())
}

/// `/proc/self/fd/DIR/NAME`: a path for the l*xattr calls that resolves the directory
/// through its descriptor (never through a path someone could swap) and does not follow
/// NAME.
fn fd_path(dir: RawFd, name: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    cstring(&p)
}

fn xattr_records(of: &XattrOf<'_>, counts: &mut Counts, pax: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    match list_xattrs(of) {
        Ok(list) => {
            for (k, v) in list {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(&k);
                pax.push((key, v));
            }
        }
        Err(e) => {
            tracing::debug!("cannot read extended attributes: {e}");
            counts.xattr_skipped += 1;
        }
    }
}

/// The data segments of a file, from SEEK_DATA / SEEK_HOLE, clipped to `size`.
fn data_segments(fd: RawFd, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut segs = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole from `pos` to the end
                Some(libc::EINVAL) | Some(libc::ENOTSUP) => return Ok(vec![(0, size)]),
                _ => return Err(e),
            }
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        segs.push((data, end));
        pos = end;
    }
    Ok(segs)
}

fn open_file_for_read(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    match openat(dir, name, flags | libc::O_NOATIME, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => openat(dir, name, flags, 0),
        other => other,
    }
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// Write one regular file (header and data) into the stream.
fn write_file(
    tar: &mut TarOut,
    dir: RawFd,
    name: &[u8],
    mut meta: Meta,
    counts: &mut Counts,
) -> io::Result<bool> {
    let cname = cstring(name)?;
    let fd = match open_file_for_read(dir, &cname) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false), // gone
        Err(e) => return Err(with_path(e, "open", &meta.name)),
    };
    let st = fstat(fd.as_raw_fd())?;
    if file_type(&st) != libc::S_IFREG {
        return Ok(false); // replaced meanwhile by something else: skipped like a vanished file
    }
    let size = st.st_size as u64;
    meta.size = size;
    meta.mode = st.st_mode & 0o7777;
    meta.uid = st.st_uid as u64;
    meta.gid = st.st_gid as u64;
    meta.mtime = st.st_mtime;
    // Holes only when fewer blocks are allocated than the size needs.
    let maybe_sparse = (st.st_blocks as u64) * 512 < size;
    let segs = if maybe_sparse {
        data_segments(fd.as_raw_fd(), size)?
    } else {
        vec![(0, size)]
    };
    let mut holes = Vec::new();
    let mut pos = 0;
    for &(s, e) in &segs {
        if s > pos {
            holes.push((pos, s - pos));
        }
        pos = e;
    }
    if pos < size {
        holes.push((pos, size - pos));
    }
    let recorded = &holes[..holes.len().min(MAX_HOLES)];
    if !recorded.is_empty() {
        let v = recorded
            .iter()
            .flat_map(|(o, l)| [o.to_string(), l.to_string()])
            .collect::<Vec<_>>()
            .join(",");
        meta.pax
            .push((HOLES_KEY.as_bytes().to_vec(), v.into_bytes()));
    }
    let xfd = XattrOf::Fd(fd.as_raw_fd());
    xattr_records(&xfd, counts, &mut meta.pax);
    tar.header(&meta)?;
    if !maybe_sparse && size > (1 << 20) {
        // SAFETY: advice only.
        unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }
    let file = File::from(fd);
    let mut pos = 0u64;
    let mut short = false;
    for &(s, e) in &segs {
        if s > pos {
            tar.zeros(s - pos)?;
            counts.hole_bytes += s - pos;
        }
        let got = if short {
            0
        } else {
            tar.read_from(&file, s, e - s)
                .map_err(|err| with_path(err, "read", &meta.name))?
        };
        if got < e - s {
            // The file shrank while being read: keep the header's size (GNU tar does the
            // same) and say so.
            short = true;
            tar.zeros(e - s - got)?;
        }
        pos = e;
    }
    if pos < size {
        tar.zeros(size - pos)?;
        counts.hole_bytes += size - pos;
    }
    if short
        || fstat(file.as_raw_fd())
            .map(|s| s.st_size as u64 != size)
            .unwrap_or(false)
    {
        counts.changed += 1;
    }
    tar.pad(size)?;
    counts.file_bytes += size;
    Ok(true)
}

fn with_path(e: io::Error, what: &str, name: &[u8]) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{what} `{}`: {e}", String::from_utf8_lossy(name)),
    )
}

struct Frame {
    fd: OwnedFd,
    /// `./a/b/`
    prefix: Vec<u8>,
    names: std::vec::IntoIter<Vec<u8>>,
}

/// Walk the tree at `root` (never following a symlink) and write every entry.
fn write_tree(root: &Path, tar: &mut TarOut, counts: &mut Counts) -> io::Result<()> {
    let rootfd = open_root(root)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", root.display())))?;
    let st = fstat(rootfd.as_raw_fd())?;
    let mut meta = Meta::from_stat(b"./".to_vec(), b'5', &st);
    xattr_records(&XattrOf::Fd(rootfd.as_raw_fd()), counts, &mut meta.pax);
    tar.header(&meta)?;
    counts.entries += 1;
    let mut names = list_dir(rootfd.as_raw_fd())?;
    // A restore killed mid-stream left its staging folder: not the volume's data.
    names.retain(|n| {
        let stale = crate::tarstream::is_staging_name(n);
        if stale {
            counts.staging_skipped += 1;
        }
        !stale
    });
    let mut stack = vec![Frame {
        fd: rootfd,
        prefix: b"./".to_vec(),
        names: names.into_iter(),
    }];
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.next() else {
            stack.pop();
            continue;
        };
        let dir = top.fd.as_raw_fd();
        let mut path = top.prefix.clone();
        path.extend_from_slice(&name);
        let cname = cstring(&name)?;
        let st = match lstatat(dir, &cname) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // gone meanwhile
            Err(e) => return Err(with_path(e, "stat", &path)),
        };
        let ft = file_type(&st);
        // A later name of an inode already written is a link entry naming the first.
        let mut link_key = None;
        if ft != libc::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = links.get(&key) {
                let mut m = Meta::from_stat(path, b'1', &st);
                m.link = first.clone();
                tar.header(&m)?;
                counts.entries += 1;
                continue;
            }
            link_key = Some(key);
        }
        let entries_before = counts.entries;
        let first_path = path.clone();
        match ft {
            libc::S_IFDIR => {
                let fd = match open_dir(dir, &cname) {
                    Ok(fd) => fd,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(with_path(e, "open", &path)),
                };
                let st = fstat(fd.as_raw_fd())?;
                let mut dpath = path;
                dpath.push(b'/');
                let mut m = Meta::from_stat(dpath.clone(), b'5', &st);
                xattr_records(&XattrOf::Fd(fd.as_raw_fd()), counts, &mut m.pax);
                tar.header(&m)?;
                counts.entries += 1;
                let names = list_dir(fd.as_raw_fd()).map_err(|e| with_path(e, "list", &dpath))?;
                stack.push(Frame {
                    fd,
                    prefix: dpath,
                    names: names.into_iter(),
                });
            }
            libc::S_IFREG => {
                let m = Meta::from_stat(path, b'0', &st);
                if write_file(tar, dir, &name, m, counts)? {
                    counts.entries += 1;
                }
            }
            libc::S_IFLNK => {
                let target = match readlinkat(dir, &cname) {
                    Ok(t) => t,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(with_path(e, "read link", &path)),
                };
                let mut m = Meta::from_stat(path, b'2', &st);
                m.link = target;
                tar.header(&m)?;
                counts.entries += 1;
            }
            libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
                let kind = match ft {
                    libc::S_IFIFO => b'6',
                    libc::S_IFCHR => b'3',
                    _ => b'4',
                };
                let mut m = Meta::from_stat(path, kind, &st);
                if kind != b'6' {
                    m.dev = Some((libc::major(st.st_rdev), libc::minor(st.st_rdev)));
                }
                let p = fd_path(dir, &name)?;
                xattr_records(&XattrOf::Path(&p), counts, &mut m.pax);
                tar.header(&m)?;
                counts.entries += 1;
            }
            _ => {
                tracing::debug!(path = %String::from_utf8_lossy(&path), "socket skipped");
            }
        }
        // Only once it is in the stream (a file that vanished meanwhile is not).
        if let Some(key) = link_key.filter(|_| counts.entries > entries_before) {
            links.insert(key, first_path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Restore

/// Reads what the async side sends, starting with the block already read.
struct ChanReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Empty the directory at `root` and extract the archive into it. `first` is the archive's
/// first block, already read (and checked) by the caller.
pub(crate) async fn restore(
    root: PathBuf,
    volume: &str,
    staging: Option<String>,
    first: Bytes,
    input: &mut (dyn AsyncRead + Unpin + Send),
) -> Result<Counts, DockerError> {
    let staged = staging.is_some();
    let action = format!("restore volume `{volume}` at {}", root.display());
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH * 4);
    let mut bytes = first.len() as u64;
    let reader = ChanReader { rx, cur: first };
    let extractor = tokio::task::spawn_blocking(move || extract(&root, staging.as_deref(), reader));
    let mut input_error: Option<String> = None;
    loop {
        let mut buf = BytesMut::with_capacity(IN_CHUNK);
        match input.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                if tx.send(Ok(buf.freeze())).await.is_err() {
                    break; // the extraction stopped; its result says why
                }
            }
            Err(e) => {
                input_error = Some(format!("reading the archive failed: {e}"));
                let _ = tx.send(Err(e)).await;
                break;
            }
        }
    }
    drop(tx);
    let partial = if staged {
        "the volume's contents were left as they were"
    } else {
        "the volume may hold part of the archive; run the restore again"
    };
    let result = extractor.await.map_err(|e| {
        DockerError::failed(&action, format!("the restore thread ended: {e}; {partial}"))
    })?;
    if let Some(e) = input_error {
        return Err(DockerError::failed(&action, format!("{e}; {partial}")));
    }
    let mut counts = result.map_err(|e| {
        if e.get_ref().is_some_and(|i| i.is::<SwapFailed>()) {
            // Its message says what is where.
            return DockerError::failed(&action, e.to_string());
        }
        let msg = if e.kind() == io::ErrorKind::UnexpectedEof {
            "the archive is truncated (it ends inside an entry)".to_string()
        } else {
            e.to_string()
        };
        DockerError::failed(&action, format!("{msg}; {partial}"))
    })?;
    counts.bytes = bytes;
    if counts.xattr_skipped > 0 {
        tracing::warn!(
            volume,
            count = counts.xattr_skipped,
            "extended attributes this filesystem does not take were skipped"
        );
    }
    Ok(counts)
}

/// A path of the archive made relative to the volume's root: its components (empty for
/// the root itself). Absolute names and `..` are refused.
fn components(name: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let refuse = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("archive entry `{}` {why}", String::from_utf8_lossy(name)),
        )
    };
    if name.starts_with(b"/") {
        return Err(refuse(
            "is an absolute path; a volume archive holds paths relative to the volume's root",
        ));
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refuse("reaches outside the volume (`..`)")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn show(c: &[Vec<u8>]) -> String {
    if c.is_empty() {
        return "./".into();
    }
    String::from_utf8_lossy(&c.join(&b'/')).into_owned()
}

/// Directories opened along the current path, so that entries of one directory do not
/// reopen it; every component is opened with `O_NOFOLLOW`.
struct Dirs {
    root: OwnedFd,
    /// (component, descriptor) from the root down.
    open: Vec<(Vec<u8>, OwnedFd)>,
}

impl Dirs {
    /// The directory holding `comps` (all but the last component), created (0755, owned by
    /// root, as GNU tar does) when missing and `create` is set.
    fn parent(&mut self, comps: &[Vec<u8>], create: bool) -> io::Result<RawFd> {
        let want = &comps[..comps.len() - 1];
        let keep = self
            .open
            .iter()
            .zip(want)
            .take_while(|((a, _), b)| a == *b)
            .count();
        self.open.truncate(keep);
        for c in &want[keep..] {
            let at = self
                .open
                .last()
                .map(|(_, fd)| fd.as_raw_fd())
                .unwrap_or(self.root.as_raw_fd());
            let cname = cstring(c)?;
            let fd = match open_dir(at, &cname) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    // SAFETY: valid C string.
                    match cvt(unsafe { libc::mkdirat(at, cname.as_ptr(), 0o755) }) {
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    open_dir(at, &cname)?
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                    return Err(invalid(format!(
                        "archive entry `{}` would be written through `{}`, which is not a directory (a symlink?); refused",
                        show(comps),
                        show(&want[..=self.open.len()])
                    )));
                }
                Err(e) => return Err(e),
            };
            self.open.push((c.clone(), fd));
        }
        Ok(self
            .open
            .last()
            .map(|(_, fd)| fd.as_raw_fd())
            .unwrap_or(self.root.as_raw_fd()))
    }

    /// Forget open directories at or below `comps` (it is being replaced).
    fn forget(&mut self, comps: &[Vec<u8>]) {
        if self.open.len() >= comps.len() && self.open.iter().zip(comps).all(|((a, _), b)| a == b) {
            self.open.truncate(comps.len() - 1);
        }
    }
}

/// Remove what is at `name` in `dir` (a directory with its contents).
fn remove_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    let st = match lstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if file_type(&st) == libc::S_IFDIR {
        let fd = open_dir(dir, name)?;
        for child in list_dir(fd.as_raw_fd())? {
            remove_at(fd.as_raw_fd(), &cstring(&child)?)?;
        }
        drop(fd);
        // SAFETY: valid C string.
        cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })?;
    }
    Ok(())
}

fn timespec(secs: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// Parse a PAX time (`1577934245` or `1577934245.123456789`).
fn pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: i64 = digits.parse().ok()?;
    Some(if sec < 0 && nsec > 0 {
        (sec - 1, 1_000_000_000 - nsec)
    } else {
        (sec, nsec)
    })
}

fn parse_holes(v: &[u8], size: u64) -> io::Result<Vec<(u64, u64)>> {
    let bad = || invalid(format!("malformed {HOLES_KEY} record"));
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    let nums: Vec<u64> = s
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<u64>().map_err(|_| bad()))
        .collect::<io::Result<_>>()?;
    if !nums.len().is_multiple_of(2) {
        return Err(bad());
    }
    let mut holes: Vec<(u64, u64)> = nums
        .chunks(2)
        .map(|c| (c[0], c[0].saturating_add(c[1])))
        .collect();
    holes.sort();
    let mut end = 0;
    for &(s, e) in &holes {
        if s < end || e > size || e < s {
            return Err(bad());
        }
        end = e;
    }
    Ok(holes)
}

/// A directory (by its components) and the time to give it once its contents are in.
type DirTime = (Vec<Vec<u8>>, (i64, i64));

/// Entry metadata the extractor applies.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    holes: Vec<(u64, u64)>,
}

fn apply_fd(fd: RawFd, a: &Attrs, counts: &mut Counts, times: bool) -> io::Result<()> {
    // Owner first: chown clears setuid / setgid, so the mode comes after.
    cvt(unsafe { libc::fchown(fd, a.uid, a.gid) })?;
    cvt(unsafe { libc::fchmod(fd, a.mode as libc::mode_t) })?;
    for (k, v) in &a.xattrs {
        if let Err(e) = set_xattr(&XattrOf::Fd(fd), k, v) {
            tracing::debug!(
                "cannot set extended attribute {}: {e}",
                String::from_utf8_lossy(k)
            );
            counts.xattr_skipped += 1;
        }
    }
    if times {
        let ts = [
            timespec(a.mtime.0, a.mtime.1),
            timespec(a.mtime.0, a.mtime.1),
        ];
        cvt(unsafe { libc::futimens(fd, ts.as_ptr()) })?;
    }
    Ok(())
}

fn apply_at(dir: RawFd, name: &CStr, a: &Attrs, symlink: bool) -> io::Result<()> {
    cvt(unsafe { libc::fchownat(dir, name.as_ptr(), a.uid, a.gid, libc::AT_SYMLINK_NOFOLLOW) })?;
    if !symlink {
        cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), a.mode as libc::mode_t, 0) })?;
    }
    let ts = [
        timespec(a.mtime.0, a.mtime.1),
        timespec(a.mtime.0, a.mtime.1),
    ];
    cvt(unsafe { libc::utimensat(dir, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

/// Write an entry's data into `file`, skipping recorded holes that hold zeros.
fn write_data(
    file: &File,
    data: &mut dyn Read,
    size: u64,
    holes: &[(u64, u64)],
    buf: &mut [u8],
    counts: &mut Counts,
) -> io::Result<()> {
    let mut pos = 0u64;
    let mut hi = 0usize;
    while pos < size {
        let want = (buf.len() as u64).min(size - pos) as usize;
        let n = match data.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated entry",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        let mut at = pos;
        while !chunk.is_empty() {
            while hi < holes.len() && holes[hi].1 <= at {
                hi += 1;
            }
            // The next piece: inside a hole up to its end, or data up to the next hole.
            let (in_hole, end) = match holes.get(hi) {
                Some(&(s, e)) if s <= at => (true, e),
                Some(&(s, _)) => (false, s),
                None => (false, u64::MAX),
            };
            let k = ((end - at).min(chunk.len() as u64)) as usize;
            let piece = &chunk[..k];
            if in_hole && piece.iter().all(|&b| b == 0) {
                counts.hole_bytes += k as u64;
            } else {
                file.write_all_at(piece, at)?;
            }
            chunk = &chunk[k..];
            at += k as u64;
        }
        pos += n as u64;
    }
    // Trailing holes: the length makes them.
    file.set_len(size)?;
    Ok(())
}

/// Write the archive at `root`. With `staging`, into that new folder under `root`, and only
/// once the whole archive arrived (and the reader verified it) are the old contents
/// removed and the new ones renamed into place; on failure the folder is removed and the
/// old contents are untouched. Without it, `root` is emptied first.
fn extract(root: &Path, staging: Option<&str>, reader: ChanReader) -> io::Result<Counts> {
    let t0 = Instant::now();
    let rootfd = open_root(root)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", root.display())))?;
    let Some(staging) = staging else {
        empty_dir(rootfd.as_raw_fd(), None)?;
        let (counts, _) = extract_into(rootfd, reader, t0)?;
        return Ok(counts);
    };
    let sname = cstring(staging.as_bytes())?;
    cvt(unsafe { libc::mkdirat(rootfd.as_raw_fd(), sname.as_ptr(), 0o700) })
        .map_err(|e| with_path(e, "create the staging folder", staging.as_bytes()))?;
    let written =
        open_dir(rootfd.as_raw_fd(), &sname).and_then(|sfd| extract_into(sfd, reader, t0));
    let (counts, root_attrs) = match written {
        Ok(w) => w,
        Err(e) => {
            if let Err(r) = remove_at(rootfd.as_raw_fd(), &sname) {
                tracing::warn!("cannot remove the staging folder {staging}: {r}");
            }
            return Err(e);
        }
    };
    // The swap: old contents out (stale staging folders of killed runs too), new ones in.
    // From here on the old contents may be gone: the error says where the new ones are.
    swap_in(rootfd.as_raw_fd(), staging, &sname, root_attrs).map_err(|e| {
        io::Error::new(
            e.kind(),
            SwapFailed(format!(
                "{e}; the restored contents are in the folder `{staging}` inside the volume and the old ones may be partly removed; run the restore again"
            )),
        )
    })?;
    tracing::debug!(
        total_s = t0.elapsed().as_secs_f64(),
        "host-path staged restore swapped in"
    );
    Ok(counts)
}

/// An error after the old contents began to go (see [`extract`]).
#[derive(Debug)]
struct SwapFailed(String);

impl std::fmt::Display for SwapFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SwapFailed {}

fn swap_in(r: RawFd, staging: &str, sname: &CStr, root_attrs: Option<Attrs>) -> io::Result<()> {
    empty_dir(r, Some(staging.as_bytes()))?;
    let sfd = open_dir(r, sname)?;
    for name in list_dir(sfd.as_raw_fd())? {
        let c = cstring(&name)?;
        cvt(unsafe { libc::renameat(sfd.as_raw_fd(), c.as_ptr(), r, c.as_ptr()) })
            .map_err(|e| with_path(e, "move into place", &name))?;
    }
    drop(sfd);
    cvt(unsafe { libc::unlinkat(r, sname.as_ptr(), libc::AT_REMOVEDIR) })
        .map_err(|e| with_path(e, "remove the staging folder", staging.as_bytes()))?;
    if let Some(a) = root_attrs {
        let mut ignored = Counts::default();
        apply_fd(r, &a, &mut ignored, true)?;
    }
    cvt(unsafe { libc::syncfs(r) })?;
    Ok(())
}

/// Remove everything in a directory but `keep`, and check it worked.
fn empty_dir(dir: RawFd, keep: Option<&[u8]>) -> io::Result<()> {
    for name in list_dir(dir)? {
        if Some(name.as_slice()) == keep {
            continue;
        }
        remove_at(dir, &cstring(&name)?).map_err(|e| with_path(e, "remove", &name))?;
    }
    let left = list_dir(dir)?;
    if left.iter().any(|n| Some(n.as_slice()) != keep) {
        return Err(io::Error::other(
            "the volume is not empty after emptying it",
        ));
    }
    Ok(())
}

/// Extract into the (empty) directory `rootfd`; returns the counts and the attributes the
/// archive gives the root, if it has a root entry.
fn extract_into(
    rootfd: OwnedFd,
    mut reader: ChanReader,
    t0: Instant,
) -> io::Result<(Counts, Option<Attrs>)> {
    let mut counts = Counts::default();
    let mut root_attrs = None;
    let emptied = t0.elapsed();
    let mut dirs = Dirs {
        root: rootfd,
        open: Vec::new(),
    };
    let mut dir_times: Vec<DirTime> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    {
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries()? {
            let mut e = entry?;
            let kind = e.header().entry_type();
            if kind.is_pax_global_extensions()
                || kind.is_gnu_longname()
                || kind.is_gnu_longlink()
                || kind.is_pax_local_extensions()
            {
                continue;
            }
            let path = e.path_bytes().into_owned();
            let comps = components(&path)?;
            let h = e.header();
            let mut a = Attrs {
                uid: h.uid()? as u32,
                gid: h.gid()? as u32,
                mode: h.mode()? & 0o7777,
                mtime: (h.mtime()? as i64, 0),
                xattrs: Vec::new(),
                holes: Vec::new(),
            };
            let size = e.size();
            let dev = (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            );
            let link = e.link_name_bytes().map(|l| l.into_owned());
            let mut holes_raw = None;
            if let Some(pax) = e.pax_extensions()? {
                for rec in pax {
                    let rec = rec?;
                    let k = rec.key_bytes();
                    if k == b"mtime" {
                        if let Some(t) = pax_time(rec.value_bytes()) {
                            a.mtime = t;
                        }
                    } else if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                        a.xattrs.push((x.to_vec(), rec.value_bytes().to_vec()));
                    } else if k == HOLES_KEY.as_bytes() {
                        holes_raw = Some(rec.value_bytes().to_vec());
                    }
                }
            }
            use tar::EntryType as T;
            if comps.is_empty() {
                // The volume's root: owner, mode, attributes now, time at the end.
                if kind != T::Directory {
                    return Err(invalid(format!(
                        "archive entry `{}` names the volume's root but is not a directory",
                        String::from_utf8_lossy(&path)
                    )));
                }
                apply_fd(dirs.root.as_raw_fd(), &a, &mut counts, false)?;
                dir_times.push((Vec::new(), a.mtime));
                root_attrs = Some(a);
                counts.entries += 1;
                continue;
            }
            let parent = dirs.parent(&comps, true)?;
            let name = cstring(comps.last().expect("not empty"))?;
            let here = show(&comps);
            let ctx = |e: io::Error, what: &str| {
                io::Error::new(e.kind(), format!("{what} `{here}`: {e}"))
            };
            // Something already there (a duplicate entry): a directory stays for a
            // directory, anything else is replaced.
            match lstatat(parent, &name) {
                Ok(st) if file_type(&st) == libc::S_IFDIR && kind == T::Directory => {}
                Ok(_) => {
                    dirs.forget(&comps);
                    let parent = dirs.parent(&comps, true)?;
                    remove_at(parent, &name).map_err(|e| ctx(e, "replace"))?;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(ctx(e, "stat")),
            }
            let parent = dirs.parent(&comps, true)?;
            match kind {
                T::Directory => {
                    match cvt(unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) }) {
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(ctx(e, "create directory")),
                    }
                    let fd = open_dir(parent, &name).map_err(|e| ctx(e, "open directory"))?;
                    apply_fd(fd.as_raw_fd(), &a, &mut counts, false)
                        .map_err(|e| ctx(e, "set owner and mode of"))?;
                    dir_times.push((comps, a.mtime));
                }
                T::Regular | T::Continuous | T::GNUSparse => {
                    if let Some(raw) = &holes_raw {
                        a.holes = parse_holes(raw, size)?;
                    }
                    let fd = openat(
                        parent,
                        &name,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                    )
                    .map_err(|e| ctx(e, "create"))?;
                    let file = File::from(fd);
                    write_data(&file, &mut e, size, &a.holes, &mut buf, &mut counts).map_err(
                        |err| {
                            if err.kind() == io::ErrorKind::UnexpectedEof {
                                err
                            } else {
                                ctx(err, "write")
                            }
                        },
                    )?;
                    apply_fd(file.as_raw_fd(), &a, &mut counts, true)
                        .map_err(|e| ctx(e, "set owner and mode of"))?;
                    counts.file_bytes += size;
                }
                T::Symlink => {
                    let target = cstring(link.as_deref().unwrap_or_default())?;
                    cvt(unsafe { libc::symlinkat(target.as_ptr(), parent, name.as_ptr()) })
                        .map_err(|e| ctx(e, "create symlink"))?;
                    apply_at(parent, &name, &a, true).map_err(|e| ctx(e, "set owner of"))?;
                }
                T::Link => {
                    let target = link.unwrap_or_default();
                    let tcomps = components(&target)?;
                    if tcomps.is_empty() {
                        return Err(invalid(format!(
                            "hard link `{here}` points at the volume's root"
                        )));
                    }
                    let tname = cstring(tcomps.last().expect("not empty"))?;
                    // The target's directory, opened without following symlinks; then back
                    // to the entry's own.
                    let tparent_fd = {
                        let tp = dirs
                            .parent(&tcomps, false)
                            .map_err(|e| ctx(e, "find the target of hard link"))?;
                        cvt(unsafe { libc::fcntl(tp, libc::F_DUPFD_CLOEXEC, 0) })?
                    };
                    // SAFETY: a fresh duplicate we own.
                    let tparent = unsafe { OwnedFd::from_raw_fd(tparent_fd) };
                    let parent = dirs.parent(&comps, true)?;
                    cvt(unsafe {
                        libc::linkat(
                            tparent.as_raw_fd(),
                            tname.as_ptr(),
                            parent,
                            name.as_ptr(),
                            0,
                        )
                    })
                    .map_err(|e| ctx(e, &format!("create hard link to `{}` as", show(&tcomps))))?;
                }
                T::Fifo | T::Char | T::Block => {
                    let (ty, rdev) = match kind {
                        T::Fifo => (libc::S_IFIFO, 0),
                        T::Char => (libc::S_IFCHR, libc::makedev(dev.0, dev.1)),
                        _ => (libc::S_IFBLK, libc::makedev(dev.0, dev.1)),
                    };
                    cvt(unsafe { libc::mknodat(parent, name.as_ptr(), ty | 0o600, rdev) })
                        .map_err(|e| ctx(e, "create node"))?;
                    apply_at(parent, &name, &a, false)
                        .map_err(|e| ctx(e, "set owner and mode of"))?;
                    if !a.xattrs.is_empty() {
                        let p = fd_path(parent, comps.last().expect("not empty"))?;
                        for (k, v) in &a.xattrs {
                            if set_xattr(&XattrOf::Path(&p), k, v).is_err() {
                                counts.xattr_skipped += 1;
                            }
                        }
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "archive entry `{here}` has a type drctl does not restore ({other:?})"
                    )));
                }
            }
            counts.entries += 1;
        }
    }
    // What follows the end-of-archive marker is read too: the caller's reader verifies
    // the stored object only when read to its end.
    io::copy(&mut reader, &mut io::sink())?;
    // Directory times last (deepest first), once nothing more is written inside them.
    for (comps, t) in dir_times.iter().rev() {
        let ts = [timespec(t.0, t.1), timespec(t.0, t.1)];
        if comps.is_empty() {
            cvt(unsafe { libc::futimens(dirs.root.as_raw_fd(), ts.as_ptr()) })?;
            continue;
        }
        let parent = dirs.parent(comps, false)?;
        let name = cstring(comps.last().expect("not empty"))?;
        cvt(unsafe {
            libc::utimensat(
                parent,
                name.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
    }
    let t_sync = Instant::now();
    // SAFETY: a valid descriptor.
    cvt(unsafe { libc::syncfs(dirs.root.as_raw_fd()) })?;
    tracing::debug!(
        emptied_s = emptied.as_secs_f64(),
        sync_s = t_sync.elapsed().as_secs_f64(),
        total_s = t0.elapsed().as_secs_f64(),
        "host-path restore timings"
    );
    Ok((counts, root_attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_snapshot(root: &Path) -> (Vec<u8>, Counts) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            let c = snapshot(root.to_path_buf(), "t", &mut out).await.unwrap();
            (out, c)
        })
    }

    const STAGING: &str = ".drctl-staging-test";

    /// A staged restore (the default), unless `in_place`.
    fn run_restore(root: &Path, tar: &[u8]) -> Result<Counts, DockerError> {
        restore_with(root, tar, Some(STAGING.to_string()))
    }

    fn restore_with(
        root: &Path,
        tar: &[u8],
        staging: Option<String>,
    ) -> Result<Counts, DockerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = Bytes::copy_from_slice(&tar[..512.min(tar.len())]);
            let mut rest = &tar[first.len()..];
            restore(root.to_path_buf(), "t", staging, first, &mut rest).await
        })
    }

    fn gnu_list(tar: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.tar");
        std::fs::write(&f, tar).unwrap();
        let o = std::process::Command::new("tar")
            .args(["--numeric-owner", "--warning=no-unknown-keyword", "-tvf"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    #[test]
    fn names_and_escapes() {
        assert_eq!(components(b"./").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            components(b"./a/b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"./a/../../x").is_err());
        assert_eq!(pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(
            parse_holes(b"0,10,20,5", 30).unwrap(),
            vec![(0, 10), (20, 25)]
        );
        assert!(parse_holes(b"0,10,5,5", 30).is_err());
        assert!(parse_holes(b"0,40", 30).is_err());
    }

    #[test]
    fn tree_round_trip_on_a_local_dir() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::create_dir_all(src.join("empty")).unwrap();
        std::fs::write(src.join("a/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("a/f"), src.join("hard")).unwrap();
        std::os::unix::fs::symlink("../nowhere", src.join("a/b/dangling")).unwrap();
        let long = "n".repeat(150);
        std::fs::create_dir_all(src.join(&long)).unwrap();
        std::fs::write(src.join(&long).join("x".repeat(120)), b"deep").unwrap();
        let f = File::create(src.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        drop(f);
        // The staging folder of an interrupted restore is not the volume's data.
        std::fs::create_dir_all(src.join(".drctl-staging-9-dead/x")).unwrap();
        std::fs::write(src.join(".drctl-staging-9-dead/x/half"), b"half").unwrap();
        let (tar, c) = run_snapshot(&src);
        assert_eq!(c.bytes as usize, tar.len());
        assert_eq!(c.staging_skipped, 1);
        let listing = gnu_list(&tar);
        assert!(!listing.contains("drctl-staging"), "{listing}");
        std::fs::remove_dir_all(src.join(".drctl-staging-9-dead")).unwrap();
        assert!(
            listing.lines().next().unwrap().ends_with(" ./"),
            "{listing}"
        );
        assert!(
            listing.contains("./hard link to ./a/f") || listing.contains("./a/f link to ./hard"),
            "{listing}"
        );
        assert!(
            listing.contains("./a/b/dangling -> ../nowhere"),
            "{listing}"
        );
        assert!(listing.contains("./empty/"), "{listing}");
        // The fingerprint parser (tar-rs) sees the same tree.
        let mut ar = tar::Archive::new(&tar[..]);
        let n = ar.entries().unwrap().count();
        assert_eq!(n as u64, c.entries);

        let dst = dir.path().join("dst");
        std::fs::create_dir_all(dst.join("junk/inner")).unwrap();
        std::fs::write(dst.join(".hidden"), b"x").unwrap();
        // A stale staging folder of a killed run goes too.
        std::fs::create_dir_all(dst.join(".drctl-staging-1-dead/x")).unwrap();
        let r = run_restore(&dst, &tar).unwrap();
        assert_eq!(r.entries, c.entries);
        assert_eq!(r.file_bytes, c.file_bytes);
        assert!(!dst.join("junk").exists() && !dst.join(".hidden").exists());
        assert!(!dst.join(STAGING).exists() && !dst.join(".drctl-staging-1-dead").exists());
        // The root takes the archive's mode.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
            std::fs::metadata(&src).unwrap().permissions().mode() & 0o7777
        );
        assert_eq!(std::fs::read(dst.join("a/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(dst.join("a/b/dangling")).unwrap(),
            Path::new("../nowhere")
        );
        use std::os::unix::fs::MetadataExt;
        let m1 = std::fs::metadata(dst.join("a/f")).unwrap();
        let m2 = std::fs::metadata(dst.join("hard")).unwrap();
        assert_eq!(m1.ino(), m2.ino());
        let sp = std::fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sp.len(), 64 << 20);
        assert!(
            sp.blocks() * 512 < 1 << 20,
            "holes came back as holes: {} blocks",
            sp.blocks()
        );
        let mut mid = [0u8; 6];
        File::open(dst.join("sparse"))
            .unwrap()
            .read_exact_at(&mut mid, 32 << 20)
            .unwrap();
        assert_eq!(&mid, b"middle");
        // Again from its own snapshot: the same stream.
        let (again, _) = run_snapshot(&dst);
        assert_eq!(gnu_list(&again).lines().count(), listing.lines().count());
        // In place: emptied first, the same result.
        std::fs::write(dst.join("junk"), b"x").unwrap();
        restore_with(&dst, &tar, None).unwrap();
        assert!(!dst.join("junk").exists());
        assert_eq!(std::fs::read(dst.join("a/f")).unwrap(), b"hello");
    }

    fn tar_with(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let mut h = base_header(*kind);
            h[..name.len()].copy_from_slice(name.as_bytes());
            octal(&mut h[100..108], 0o644);
            octal(&mut h[108..116], 0);
            octal(&mut h[116..124], 0);
            octal(&mut h[124..136], data.len() as u64);
            octal(&mut h[136..148], 0);
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            checksum(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        // Every refusal below leaves the old contents and no staging folder.
        std::fs::write(dst.join("old"), b"kept").unwrap();
        let untouched = || {
            assert_eq!(std::fs::read(dst.join("old")).unwrap(), b"kept");
            assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 1);
        };
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // Through a symlink the archive itself made.
        let t = tar_with(&[
            ("./", b'5', b"", ""),
            ("./esc", b'2', b"", outside.to_str().unwrap()),
            ("./esc/pwned", b'0', b"x", ""),
        ]);
        let e = run_restore(&dst, &t).unwrap_err().to_string();
        assert!(e.contains("not a directory (a symlink?)"), "{e}");
        assert!(!outside.join("pwned").exists());
        untouched();
        // `..` and absolute names.
        let t = tar_with(&[("./", b'5', b"", ""), ("../x", b'0', b"x", "")]);
        let e = run_restore(&dst, &t).unwrap_err().to_string();
        assert!(e.contains("outside the volume"), "{e}");
        let t = tar_with(&[
            ("./", b'5', b"", ""),
            ("./h", b'1', b"", "../../etc/passwd"),
        ]);
        let e = run_restore(&dst, &t).unwrap_err().to_string();
        assert!(e.contains("outside the volume"), "{e}");
        // A hard link through a symlinked directory.
        let t = tar_with(&[
            ("./", b'5', b"", ""),
            ("./esc", b'2', b"", outside.to_str().unwrap()),
            ("./h", b'1', b"", "./esc/target"),
        ]);
        std::fs::write(outside.join("target"), b"secret").unwrap();
        let e = run_restore(&dst, &t).unwrap_err().to_string();
        assert!(e.contains("not a directory (a symlink?)"), "{e}");
        // Truncated inside an entry.
        let t = tar_with(&[("./", b'5', b"", ""), ("./f", b'0', &[7u8; 4000], "")]);
        let e = run_restore(&dst, &t[..2048]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(e.contains("left as they were"), "{e}");
        untouched();
    }
}
