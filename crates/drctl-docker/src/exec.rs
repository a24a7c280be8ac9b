//! Exec inside a container with stdin, stdout and stderr streamed, and the exit code.
//!
//! Nothing is buffered beyond one frame: a `pg_dump` of any size flows from the container
//! to the caller's writer as it is produced, and stdin (a `pg_restore` input) flows in as
//! the caller's reader yields it, ending with a half-close so the command sees EOF.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{DockerClient, DockerError};

/// How to run the command; the defaults are the container's own (user, working directory).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// `NAME=value` entries added to the container's environment.
    pub env: Vec<String>,
}

/// A finished command with its (small) output, from [`DockerClient::exec_output`].
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// The last lines of stderr (or stdout when stderr is empty), for messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        crate::tail_lines(String::from_utf8_lossy(text).trim_end(), lines)
    }
}

/// Why feeding stdin stopped early.
enum InputEnd {
    /// The caller's reader failed: the command got a truncated input.
    Read(std::io::Error),
    /// The container side closed (the command exited without reading everything).
    Closed(std::io::Error),
}

impl DockerClient {
    /// Run `cmd` in a running container. stdin (when given) is copied in and then
    /// half-closed; stdout and stderr are written to the writers as they arrive. Returns the
    /// command's exit code: a non-zero code is the caller's to judge, not an error here.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[&str],
        opts: &ExecOptions,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        stdout: &mut (dyn AsyncWrite + Unpin + Send),
        stderr: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<i64, DockerError> {
        let what = format!("run `{}` in container `{container}`", cmd.join(" "));
        let config = CreateExecOptions::<String> {
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            user: opts.user.clone(),
            working_dir: opts.workdir.clone(),
            env: (!opts.env.is_empty()).then(|| opts.env.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(container, config)
            .await
            .map_err(self.api_err(what.clone()))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(self.api_err(what.clone()))?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Err(DockerError::failed(
                what,
                "the daemon did not attach the exec",
            ));
        };

        let feed = async {
            let Some(reader) = stdin else {
                drop(input);
                return Ok(());
            };
            let mut input = input;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).await.map_err(InputEnd::Read)?;
                if n == 0 {
                    break;
                }
                input.write_all(&buf[..n]).await.map_err(InputEnd::Closed)?;
            }
            // Half-close: the command reads EOF while its output keeps flowing back.
            input.shutdown().await.map_err(InputEnd::Closed)?;
            Ok::<(), InputEnd>(())
        };
        let pump = async {
            while let Some(frame) = output.next().await {
                match frame.map_err(self.api_err(format!("read the output of {what}")))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        stdout.write_all(&message).await
                    }
                    LogOutput::StdErr { message } => stderr.write_all(&message).await,
                    LogOutput::StdIn { .. } => Ok(()),
                }
                .map_err(|e| DockerError::Io {
                    action: format!("write the output of {what}"),
                    source: e,
                })?;
            }
            stdout
                .flush()
                .await
                .and(stderr.flush().await)
                .map_err(|e| DockerError::Io {
                    action: format!("write the output of {what}"),
                    source: e,
                })
        };

        // The output ending means the command is done; a feed still blocked then (the
        // command exited without reading all of its input) is abandoned.
        tokio::pin!(feed, pump);
        let mut fed: Option<Result<(), InputEnd>> = None;
        let pumped = loop {
            tokio::select! {
                r = &mut feed, if fed.is_none() => fed = Some(r),
                r = &mut pump => break r,
            }
        };
        pumped?;
        match fed {
            Some(Err(InputEnd::Read(e))) => {
                return Err(DockerError::Io {
                    action: format!("read the input for {what}"),
                    source: e,
                })
            }
            Some(Err(InputEnd::Closed(e))) => {
                tracing::debug!("{what}: the command closed its input early: {e}")
            }
            None => tracing::debug!("{what}: the command exited before reading all input"),
            Some(Ok(())) => {}
        }
        self.exec_exit_code(&created.id, &what).await
    }

    async fn exec_exit_code(&self, id: &str, what: &str) -> Result<i64, DockerError> {
        // The stream can end a moment before the daemon records the exit.
        for _ in 0..100 {
            let i = self
                .docker
                .inspect_exec(id)
                .await
                .map_err(self.api_err(format!("read the exit code of {what}")))?;
            if i.running != Some(true) {
                return i
                    .exit_code
                    .ok_or_else(|| DockerError::failed(what, "the daemon reported no exit code"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(DockerError::failed(
            what,
            "the command's output ended but it is still running",
        ))
    }

    /// Run a short command and collect its output (each stream capped at `cap` bytes, the
    /// end kept). For probes and small queries; use [`DockerClient::exec`] for data.
    pub async fn exec_output(
        &self,
        container: &str,
        cmd: &[&str],
        opts: &ExecOptions,
        cap: usize,
    ) -> Result<ExecOutput, DockerError> {
        let mut out = TailBuf::new(cap);
        let mut err = TailBuf::new(cap);
        let code = self
            .exec(container, cmd, opts, None, &mut out, &mut err)
            .await?;
        Ok(ExecOutput {
            exit_code: code,
            stdout: out.buf,
            stderr: err.buf,
        })
    }
}

/// A writer that keeps the last `cap` bytes.
struct TailBuf {
    buf: Vec<u8>,
    cap: usize,
}

impl TailBuf {
    fn new(cap: usize) -> Self {
        TailBuf {
            buf: Vec::new(),
            cap,
        }
    }
}

impl AsyncWrite for TailBuf {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let cap = self.cap;
        self.buf.extend_from_slice(data);
        if self.buf.len() > cap {
            let cut = self.buf.len() - cap;
            self.buf.drain(..cut);
        }
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
