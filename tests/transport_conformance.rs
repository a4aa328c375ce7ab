//! One suite of checks that every [`Transport`] must pass, run against the local transport
//! and the SSH transport (as root, and as the non-root `vcap` through `sudo`) on a real
//! sshd from the test fleet (`tests/support/fleet.rs`).

mod support;

use lockstep::transport::quote::join;
use lockstep::transport::local::LocalTransport;
use lockstep::transport::{exec_capture, Transport};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use support::fleet::Fleet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A transport under test, with a data directory both the test (on this machine) and the
/// commands (on the instance) can reach.
struct Subject {
    t: Box<dyn Transport>,
    /// The directory as commands see it.
    data: String,
    /// The same directory as this process sees it.
    host_data: PathBuf,
    _keep: Box<dyn std::any::Any + Send>,
}

fn local() -> Option<Subject> {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().to_string_lossy().into_owned();
    let host_data = dir.path().join("var/vcap/data");
    std::fs::create_dir_all(&host_data).unwrap();
    Some(Subject {
        t: Box::new(LocalTransport::new(root.clone())),
        data: format!("{root}/var/vcap/data"),
        host_data,
        _keep: Box::new(dir),
    })
}

fn ssh_as(user: &str, test: &str) -> Option<Subject> {
    let fleet = Fleet::start(test, 1)?;
    let t = fleet.transport(0, user);
    let host_data = fleet.vms[0].host_path("/var/vcap/data");
    Some(Subject { t: Box::new(t), data: "/var/vcap/data".into(), host_data, _keep: Box::new(fleet) })
}

fn ssh_root() -> Option<Subject> {
    ssh_as("root", "transport_conformance::ssh_root")
}

fn ssh_sudo() -> Option<Subject> {
    ssh_as("vcap", "transport_conformance::ssh_sudo")
}

/// Hashes what is written, keeping nothing.
#[derive(Default)]
struct HashWriter {
    hasher: Sha256,
    bytes: u64,
}

impl HashWriter {
    fn hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl AsyncWrite for HashWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Fails every write once `limit` bytes have been accepted.
struct FailingWriter {
    limit: u64,
    seen: u64,
}

impl AsyncWrite for FailingWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.seen >= self.limit {
            return Poll::Ready(Err(std::io::Error::other("the store is full")));
        }
        self.seen += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `len` pseudo-random bytes (xorshift), generated as they are read; optionally fails
/// after `fail_after` bytes.
struct RandReader {
    state: u64,
    remaining: u64,
    fail_after: Option<u64>,
    sent: u64,
}

impl RandReader {
    fn new(seed: u64, len: u64) -> Self {
        RandReader { state: seed | 1, remaining: len, fail_after: None, sent: 0 }
    }
    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
    fn bytes(seed: u64, len: u64) -> Vec<u8> {
        let mut r = RandReader::new(seed, len);
        let mut v = Vec::with_capacity(len as usize);
        while r.remaining > 0 {
            let x = r.next().to_le_bytes();
            let n = (r.remaining as usize).min(8);
            v.extend_from_slice(&x[..n]);
            r.remaining -= n as u64;
        }
        v
    }
}

impl AsyncRead for RandReader {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(f) = self.fail_after
            && self.sent >= f
        {
            return Poll::Ready(Err(std::io::Error::other("the artifact store went away")));
        }
        let want = buf.remaining().min(self.remaining as usize) / 8 * 8;
        let want = if want == 0 { buf.remaining().min(self.remaining as usize) } else { want };
        let mut filled = 0;
        while filled < want {
            let x = self.next().to_le_bytes();
            let n = (want - filled).min(8);
            buf.put_slice(&x[..n]);
            filled += n;
        }
        self.remaining -= want as u64;
        self.sent += want as u64;
        Poll::Ready(Ok(()))
    }
}

async fn run(s: &Subject, cmd: &str) -> (Option<i32>, String, String) {
    let (st, out) = exec_capture(s.t.as_ref(), cmd).await.unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    (st.code, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&st.stderr).into_owned())
}

mod checks {
    use super::*;

    pub async fn exit_codes(s: Subject) {
        for code in [0, 1, 42] {
            let (c, _, _) = run(&s, &format!("exit {code}")).await;
            assert_eq!(c, Some(code), "exit {code} on {}", s.t.describe());
        }
        // Killed by a signal: no exit status.
        let (c, _, _) = run(&s, "kill -KILL $$").await;
        assert_eq!(c, None, "a command killed by a signal has no exit code");
    }

    pub async fn stderr_and_stdout_apart(s: Subject) {
        let (c, out, err) = run(&s, "echo to-stdout; echo to-stderr >&2; echo more >&2; exit 3").await;
        assert_eq!(c, Some(3));
        assert_eq!(out, "to-stdout\n");
        assert_eq!(err, "to-stderr\nmore\n");
    }

    pub async fn binary_stdout_byte_exact(s: Subject) {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 1000 + 17).chain(RandReader::bytes(7, 100_003)).collect();
        std::fs::write(s.host_data.join("binary"), &bytes).unwrap();
        let (st, out) = exec_capture(s.t.as_ref(), &format!("cat {}/binary", s.data)).await.unwrap();
        assert!(st.success(), "{}", st.describe_failure());
        assert!(out == bytes, "stdout differs from the file ({} vs {} bytes)", out.len(), bytes.len());
    }

    pub async fn large_stream_byte_exact(s: Subject) {
        const SIZE: u64 = 200 << 20;
        let path = s.host_data.join("big");
        let mut expected = Sha256::new();
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut r = RandReader::new(42, 0);
            let mut chunk = vec![0u8; 1 << 20];
            for _ in 0..(SIZE >> 20) {
                for w in chunk.chunks_mut(8) {
                    w.copy_from_slice(&r.next().to_le_bytes());
                }
                expected.update(&chunk);
                f.write_all(&chunk).unwrap();
            }
            f.flush().unwrap();
        }
        let mut w = HashWriter::default();
        let st = s.t.exec(&format!("head -c {SIZE} {}/big", s.data), None, &mut w).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(st.success(), "{}", st.describe_failure());
        assert_eq!(w.bytes, SIZE);
        assert_eq!(w.hex(), hex::encode(expected.finalize()));
    }

    pub async fn stdin_byte_exact(s: Subject) {
        const SIZE: u64 = 48 << 20;
        let expected = hex::encode(Sha256::digest(RandReader::bytes(9, SIZE)));
        let mut input = RandReader::new(9, SIZE);
        let mut out = Vec::new();
        let st = s.t.exec("sha256sum", Some(&mut input), &mut out).await.unwrap();
        assert!(st.success(), "{}", st.describe_failure());
        assert_eq!(String::from_utf8_lossy(&out).split_whitespace().next().unwrap(), expected);

        // Small binary input lands in a file byte for byte; empty input is empty.
        let bytes: Vec<u8> = (0..=255u8).rev().cycle().take(70_001).collect();
        let mut input: &[u8] = &bytes;
        let st = s.t.exec(&format!("cat > {}/from-stdin", s.data), Some(&mut input), &mut Vec::new()).await.unwrap();
        assert!(st.success(), "{}", st.describe_failure());
        assert!(std::fs::read(s.host_data.join("from-stdin")).unwrap() == bytes);
        let mut empty: &[u8] = &[];
        let mut out = Vec::new();
        let st = s.t.exec("wc -c", Some(&mut empty), &mut out).await.unwrap();
        assert!(st.success());
        assert_eq!(String::from_utf8_lossy(&out).trim(), "0");
    }

    pub async fn stdin_not_read_does_not_hang(s: Subject) {
        let mut input = RandReader::new(3, 256 << 20);
        let r = tokio::time::timeout(Duration::from_secs(60), s.t.exec("exit 5", Some(&mut input), &mut Vec::new())).await;
        let st = r.expect("a command that ignores its stdin must not hang the transport").unwrap();
        assert_eq!(st.code, Some(5));
    }

    pub async fn failing_stdin_reader_is_an_error(s: Subject) {
        let mut input = RandReader::new(3, 64 << 20);
        input.fail_after = Some(1 << 20);
        let r = tokio::time::timeout(Duration::from_secs(60), s.t.exec("cat > /dev/null", Some(&mut input), &mut Vec::new()))
            .await
            .expect("a failing reader must not hang");
        let e = r.expect_err("a failing stdin reader is an error");
        assert!(format!("{e:#}").contains("the artifact store went away"), "{e:#}");
        let (c, out, _) = run(&s, "echo still-usable").await;
        assert_eq!((c, out.as_str()), (Some(0), "still-usable\n"));
    }

    pub async fn hostile_arguments_arrive_verbatim(s: Subject) {
        let args: Vec<String> = [
            "plain",
            "with space",
            "it's",
            "\"double\"",
            "$(touch /tmp/lockstep-pwned)",
            "`id`",
            "a;b && c || d",
            "new\nline",
            "tab\there",
            "back\\slash",
            "*",
            "~",
            "$HOME",
            "-n",
            "",
            "ünïcödé",
            "'; rm -rf / #",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let _ = std::fs::remove_file("/tmp/lockstep-pwned");
        let cmd = format!("printf '%s\\0' {}", join(&args));
        let (c, out, err) = run(&s, &cmd).await;
        assert_eq!(c, Some(0), "{err}");
        let got: Vec<&str> = out.split('\0').collect();
        let mut want: Vec<&str> = args.iter().map(String::as_str).collect();
        want.push("");
        assert_eq!(got, want);
        assert!(!std::path::Path::new("/tmp/lockstep-pwned").exists(), "a command substitution ran");
    }

    pub async fn command_not_found_is_127(s: Subject) {
        let (c, _, err) = run(&s, "no-such-command-lockstep-xyz --flag").await;
        assert_eq!(c, Some(127));
        assert!(err.contains("not found"), "{err}");
    }

    pub async fn failing_writer_does_not_hang(s: Subject) {
        // A tag only this run's command carries; pgrep's own shell must not match it.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let tag = format!("lockstep-endless-{}-{nanos}", std::process::id());
        let pattern = format!("{}[{}]", &tag[..tag.len() - 1], &tag[tag.len() - 1..]);
        let mut w = FailingWriter { limit: 4 << 20, seen: 0 };
        let r = tokio::time::timeout(Duration::from_secs(60), s.t.exec(&format!("yes {tag}"), None, &mut w))
            .await
            .expect("a failing writer must not hang the command");
        let e = r.expect_err("a failing writer is an error");
        assert!(format!("{e:#}").contains("the store is full"), "{e:#}");
        // The transport is still usable, and the endless command did not survive.
        for _ in 0..3 {
            let (c, out, _) = run(&s, "echo ok").await;
            assert_eq!((c, out.as_str()), (Some(0), "ok\n"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, out, _) = run(&s, &format!("pgrep -f '{pattern}' | wc -l")).await;
            if out.trim() == "0" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "`yes` still runs after its reader failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn many_commands_in_parallel(s: Subject) {
        let runs = (0..24).map(|i| {
            let s = &s;
            async move {
                let cmd = format!("sleep 0.1; printf 'cmd %s' {i}; echo err{i} >&2; exit {}", i % 3);
                let (st, out) = exec_capture(s.t.as_ref(), &cmd).await.unwrap();
                assert_eq!(String::from_utf8_lossy(&out), format!("cmd {i}"));
                assert_eq!(String::from_utf8_lossy(&st.stderr), format!("err{i}\n"));
                assert_eq!(st.code, Some(i % 3));
            }
        });
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(runs)).await.expect("parallel commands hung");
    }
}

/// One test module per backend, one test per check.
macro_rules! conformance_for {
    ($backend:ident: $($check:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some(s) = super::$backend() {
                        super::checks::$check(s).await;
                    }
                }
            )*
        }
    };
}

/// The suite: every check, for one backend.
macro_rules! conformance {
    ($backend:ident) => {
        conformance_for!($backend:
            exit_codes,
            stderr_and_stdout_apart,
            binary_stdout_byte_exact,
            large_stream_byte_exact,
            stdin_byte_exact,
            stdin_not_read_does_not_hang,
            failing_stdin_reader_is_an_error,
            hostile_arguments_arrive_verbatim,
            command_not_found_is_127,
            failing_writer_does_not_hang,
            many_commands_in_parallel
        );
    };
}

conformance!(local);
conformance!(ssh_root);
conformance!(ssh_sudo);
