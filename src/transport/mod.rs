//! How commands reach an instance. A transport runs one shell command line with root
//! privileges on the instance, feeding its stdin from a reader and streaming its stdout
//! into a writer, and reports the exit status and stderr. It knows nothing of BBR: the
//! commands are built by [`crate::instance::ShellInstance`].

pub mod local;
pub mod proxy;
pub mod quote;
pub mod ssh;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub type Reader<'a> = &'a mut (dyn AsyncRead + Unpin + Send);
pub type Writer<'a> = &'a mut (dyn AsyncWrite + Unpin + Send);

/// What a finished command left behind besides its stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStatus {
    /// The exit status; `None` when the command ended without one (killed by a signal,
    /// or a connection that dropped).
    pub code: Option<i32>,
    pub stderr: Vec<u8>,
    /// The connection dropped before the exit status arrived: the command may have
    /// finished, failed or still be running on the instance.
    pub lost: bool,
}

impl ExecStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// bbr's error text for a failed command: `<trimmed stderr> - exit code <n>`.
    pub fn describe_failure(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr);
        let stderr = stderr.trim();
        let code = match self.code {
            Some(c) => format!("exit code {c}"),
            None => "no exit status (killed, or the connection dropped)".to_string(),
        };
        if stderr.is_empty() { code } else { format!("{stderr} - {code}") }
    }
}

/// The error of a command stopped because it ran past its time limit (the instance
/// answered; the command did not finish). Unlike a lost connection, trying it again would
/// most likely hang the same way.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

#[async_trait]
pub trait Transport: Send + Sync {
    /// Where commands run, for messages: `local:/tmp/vm1`, `vcap@10.0.0.5:22`.
    fn describe(&self) -> String;

    /// The directory that stands in for `/` on this instance: empty for a real machine,
    /// a directory for the local transport. Paths given to commands are prefixed with it.
    fn root(&self) -> &str;

    /// Run `command` (a complete, already quoted `sh` command line) with root privileges.
    /// stdout is copied into `stdout` as it arrives (backpressure is the writer's);
    /// `stdin`, if given, is copied to the command and then closed.
    /// An `Err` means the command could not be run (the instance could not be reached),
    /// its streams failed, or it ran out of time ([`TimedOut`]); a command that ran and
    /// failed is an `Ok` with a non-zero code.
    async fn exec(
        &self,
        command: &str,
        stdin: Option<Reader<'_>>,
        stdout: Writer<'_>,
    ) -> anyhow::Result<ExecStatus>;
}

/// Runs a command and collects its stdout in memory (for small outputs only).
pub async fn exec_capture(t: &dyn Transport, command: &str) -> anyhow::Result<(ExecStatus, Vec<u8>)> {
    let mut out = Vec::new();
    let status = t.exec(command, None, &mut out).await?;
    Ok((status, out))
}
