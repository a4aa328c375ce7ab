//! The local transport: an instance is a directory standing in for `/`, and commands run
//! on this machine with `sh -c` as the current user. Used by the demo and the tests; the
//! scripts see the same contract as on a VM, with paths under the directory.

use super::{ExecStatus, Reader, Transport, Writer};
use anyhow::Context;
use async_trait::async_trait;
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Kills a process group when dropped before the command finished (a cancelled future).
/// Once the command has finished it is disarmed: daemons a script started on purpose
/// (an unlock script restarting a service) must live on.
struct GroupKiller(u32);

impl GroupKiller {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        // SAFETY: killpg with a pid we spawned as a group leader; a stale group id only
        // yields ESRCH.
        unsafe {
            libc::killpg(self.0 as libc::pid_t, libc::SIGKILL);
        }
    }
}

pub struct LocalTransport {
    root: String,
}

impl LocalTransport {
    /// `root` must be an absolute path without a trailing slash.
    pub fn new(root: impl Into<String>) -> Self {
        let mut root: String = root.into();
        while root.len() > 1 && root.ends_with('/') {
            root.pop();
        }
        LocalTransport { root }
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn describe(&self) -> String {
        format!("local:{}", self.root)
    }

    fn root(&self) -> &str {
        &self.root
    }

    async fn exec(&self, command: &str, stdin: Option<Reader<'_>>, stdout: Writer<'_>) -> anyhow::Result<ExecStatus> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches lockstep only (which then
            // decides what to stop), and the whole group can be killed on cancellation.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start sh on {}", self.describe()))?;
        // Dropping this future (a stop request) must not leave the script's children
        // running: kill the whole group, not just `sh`.
        let group = child.id().map(GroupKiller);

        let mut child_out = child.stdout.take().expect("piped");
        let mut child_err = child.stderr.take().expect("piped");
        let child_in = child.stdin.take();

        let feed = async {
            if let (Some(src), Some(mut dst)) = (stdin, child_in) {
                // A command that exits without reading all of stdin closes the pipe; that is
                // its business (its exit status tells), not a transport failure.
                match tokio::io::copy(src, &mut dst).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    Err(e) => return Err(anyhow::Error::from(e).context("feeding stdin")),
                }
                let _ = dst.shutdown().await;
            }
            Ok(())
        };
        // The drain owns the pipe: if the writer fails, dropping it ends the command with
        // EPIPE instead of leaving it blocked on a full pipe (and this exec waiting on its
        // stderr forever).
        let drain = async move {
            tokio::io::copy(&mut child_out, stdout).await.context("streaming stdout")?;
            stdout.flush().await.context("flushing stdout")?;
            Ok::<_, anyhow::Error>(())
        };
        let errs = async {
            let mut buf = Vec::new();
            child_err.read_to_end(&mut buf).await.map(|_| buf)
        };
        let (fed, drained, stderr) = tokio::join!(feed, drain, errs);
        if let Err(e) = drained {
            // The writer failed (e.g. the store): stop the command rather than let it block.
            let _ = child.kill().await;
            return Err(e);
        }
        fed?;
        let status = child.wait().await.context("waiting for sh")?;
        if let Some(g) = group {
            g.disarm();
        }
        Ok(ExecStatus { code: status.code(), stderr: stderr.unwrap_or_default(), lost: false })
    }
}
