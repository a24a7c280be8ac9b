//! Exec with streamed stdin / stdout / stderr and exit codes.

use std::io::Read;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Instant;

use drctl_docker::ExecOptions;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::common::{name, Cleanup, BASE_IMAGE, IDLE};
use crate::lab;

/// Counts what goes through to the inner writer.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.n += n as u64;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A `sha256sum` process to stream into (the sha2 crate is slow in debug builds).
fn hasher() -> tokio::process::Child {
    tokio::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum")
}

async fn digest(mut child: tokio::process::Child) -> String {
    drop(child.stdin.take());
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_100_mib_through_cat_byte_for_byte() {
    let client = lab!("exec");
    let cl = Cleanup::default();
    let c = name("exec-cat");
    cl.run(&c, &[], BASE_IMAGE, &["sh", "-c", IDLE]);
    const LEN: usize = 100 << 20;
    let mut data = vec![0u8; LEN];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let mut want = hasher();
    want.stdin.as_mut().unwrap().write_all(&data).await.unwrap();
    let want = digest(want).await;

    let mut got = hasher();
    let mut out = Counting {
        inner: got.stdin.take().unwrap(),
        n: 0,
    };
    let mut err = Counting {
        inner: tokio::io::sink(),
        n: 0,
    };
    let t = Instant::now();
    let code = client
        .exec(
            &c,
            &["cat"],
            &ExecOptions::default(),
            Some(&mut data.as_slice()),
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "100 MiB through `cat` and back in {secs:.2} s ({:.0} MiB/s)",
        100.0 / secs
    );
    assert_eq!(code, 0);
    assert_eq!(out.n, LEN as u64);
    assert_eq!(err.n, 0);
    drop(out);
    assert_eq!(digest(got).await, want, "SHA-256 of what came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_returns_exit_code_and_stderr() {
    let client = lab!("exec");
    let cl = Cleanup::default();
    let c = name("exec-codes");
    cl.run(&c, &[], BASE_IMAGE, &["sh", "-c", IDLE]);

    let o = client
        .exec_output(
            &c,
            &["sh", "-c", "echo out; echo oops >&2; exit 3"],
            &ExecOptions::default(),
            4096,
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, 3);
    assert_eq!(o.stdout, b"out\n");
    assert_eq!(o.stderr, b"oops\n");
    assert_eq!(o.tail(5), "oops");

    let opts = ExecOptions {
        user: Some("1000:1000".into()),
        workdir: Some("/tmp".into()),
        env: vec!["FOO=bar".into()],
    };
    let o = client
        .exec_output(&c, &["sh", "-c", "echo $FOO $(pwd) $(id -u)"], &opts, 4096)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bar /tmp 1000\n");

    // A command that exits without reading its input does not hang the caller.
    let input = vec![0u8; 50 << 20];
    let (mut out, mut err) = (tokio::io::sink(), tokio::io::sink());
    let code = client
        .exec(
            &c,
            &["sh", "-c", "exit 7"],
            &ExecOptions::default(),
            Some(&mut input.as_slice()),
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
    assert_eq!(code, 7);

    let e = client
        .exec_output(&name("no-such"), &["true"], &ExecOptions::default(), 10)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains(&name("no-such")), "{e}");
}

/// Half-close over TCP too (bollard's TCP transport is not the unix one): the lab daemon
/// listens on its socket only, so a local TCP-to-socket relay stands in front of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_half_close_over_tcp() {
    let client = lab!("exec");
    let Some(sock) = client.host().strip_prefix("unix://").map(str::to_string) else {
        eprintln!("exec over tcp: the daemon is not on a unix socket; nothing to relay");
        return;
    };
    let cl = Cleanup::default();
    let c = name("exec-tcp");
    cl.run(&c, &[], BASE_IMAGE, &["sh", "-c", IDLE]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let relay = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&sock).await {
                    // Propagates a half-close each way: a FIN on TCP becomes shutdown(WR).
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    let over_tcp =
        drctl_docker::DockerClient::connect_to(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let input = vec![1u8; 10 << 20];
    let mut out = Vec::new();
    let mut err = tokio::io::sink();
    let code = over_tcp
        .exec(
            &c,
            &["wc", "-c"],
            &ExecOptions::default(),
            Some(&mut input.as_slice()),
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
    relay.abort();
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        (10u64 << 20).to_string()
    );
}
