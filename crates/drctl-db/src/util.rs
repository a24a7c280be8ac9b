//! Small helpers: secrets, bounded output buffers, counting and hashing writers.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::DbError;

/// A password or API key. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Read a credential from the environment variable a target names. A variable that is
/// unset or empty is an error that names the variable, never its value.
pub fn secret_from_env(var: &str, what: &str) -> Result<Secret, DbError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret(v)),
        Ok(_) => Err(DbError::Credential {
            what: what.to_string(),
            var: var.to_string(),
            reason: "it is empty; export it with the secret before running drctl".into(),
        }),
        Err(std::env::VarError::NotPresent) => Err(DbError::Credential {
            what: what.to_string(),
            var: var.to_string(),
            reason: "it is not set; export it before running drctl (or remove the target's \
                     `*_env` setting if the server needs no secret)"
                .into(),
        }),
        Err(std::env::VarError::NotUnicode(_)) => Err(DbError::Credential {
            what: what.to_string(),
            var: var.to_string(),
            reason: "it is not valid UTF-8".into(),
        }),
    }
}

/// A writer that keeps the last `cap` bytes written (a tool's stderr, for messages).
pub(crate) struct TailBuf {
    buf: Vec<u8>,
    cap: usize,
}

impl Default for TailBuf {
    fn default() -> Self {
        TailBuf::new(16 << 10)
    }
}

impl TailBuf {
    pub fn new(cap: usize) -> Self {
        TailBuf {
            buf: Vec::new(),
            cap,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The last `n` non-empty lines.
    pub fn tail(&self, n: usize) -> String {
        tail_lines(&self.text(), n)
    }
}

impl AsyncWrite for TailBuf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let cap = self.cap;
        self.buf.extend_from_slice(data);
        if self.buf.len() > cap {
            let cut = self.buf.len() - cap;
            self.buf.drain(..cut);
        }
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A writer that keeps everything up to `cap` bytes and fails beyond (query results that
/// must be complete to mean anything).
pub(crate) struct CappedBuf {
    pub buf: Vec<u8>,
    cap: usize,
}

impl CappedBuf {
    pub fn new(cap: usize) -> Self {
        CappedBuf {
            buf: Vec::new(),
            cap,
        }
    }
}

impl AsyncWrite for CappedBuf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.cap {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the output is larger than {} MiB",
                self.cap >> 20
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Passes writes through, counting bytes and keeping the first `head` bytes (a file's
/// magic).
pub(crate) struct Tap<'a> {
    inner: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub bytes: u64,
    pub head: Vec<u8>,
    head_cap: usize,
}

impl<'a> Tap<'a> {
    pub fn new(inner: &'a mut (dyn AsyncWrite + Unpin + Send), head_cap: usize) -> Self {
        Tap {
            inner,
            bytes: 0,
            head: Vec::new(),
            head_cap,
        }
    }
}

impl AsyncWrite for Tap<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut *this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                let done = &data[..n];
                this.bytes += n as u64;
                if this.head.len() < this.head_cap {
                    let take = (this.head_cap - this.head.len()).min(n);
                    this.head.extend_from_slice(&done[..take]);
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An `AsyncRead` that counts what it yields.
pub(crate) struct CountRead<R> {
    inner: R,
    pub bytes: u64,
}

impl<R> CountRead<R> {
    pub fn new(inner: R) -> Self {
        CountRead { inner, bytes: 0 }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.bytes += (buf.filled().len() - before) as u64;
        r
    }
}

/// The last `n` non-empty lines of a text, trimmed.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Collapse whitespace and cut to `max` characters, for one-line messages.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// A name for temporary things: `<prefix>-<pid>-<nanos><n>`.
pub(crate) fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn missing_env_names_the_variable() {
        let e = secret_from_env("DRCTL_DB_TEST_SURELY_UNSET_VAR", "PostgreSQL password")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`DRCTL_DB_TEST_SURELY_UNSET_VAR`"), "{e}");
        assert!(
            e.starts_with("failed to read the PostgreSQL password"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn buffers() {
        let mut t = TailBuf::new(8);
        t.write_all(b"0123456789abc").await.unwrap();
        assert_eq!(t.text(), "56789abc");
        let mut c = CappedBuf::new(4);
        c.write_all(b"abc").await.unwrap();
        assert!(c.write_all(b"de").await.is_err());
        let mut sink: Vec<u8> = Vec::new();
        let mut tap = Tap::new(&mut sink, 3);
        tap.write_all(b"hello").await.unwrap();
        assert_eq!(tap.bytes, 5);
        assert_eq!(tap.head, b"hel");
        assert_eq!(sink, b"hello");
        assert_eq!(tail_lines("a\n\nb\nc\n", 2), "b\nc");
    }
}
