//! The SSH transport: commands run on a real machine over one SSH connection per instance.
//!
//! - **One connection, many channels.** The connection is opened on the first command and
//!   reused for every later one (bbr opened one per command, and proxies reset them). At
//!   most [`SshConfig::max_sessions`] commands run at once on it (8, below OpenSSH's default
//!   `MaxSessions` of 10); more wait their turn. If the connection dropped while idle, the next
//!   command reconnects once before it starts.
//! - **Root through sudo.** A non-root user runs every command as
//!   `sudo -n sh -c '<wrapper>'` (a stemcell's user has passwordless sudo); root runs
//!   `sh -c '<wrapper>'`. The wrapper prints its process group on stderr (removed before
//!   the caller sees stderr) and then becomes `sh -c '<command>'`; everything is quoted
//!   with [`crate::transport::quote::quote`].
//! - **Host keys are verified** against a pinned key or a `known_hosts` file; an unknown or
//!   changed key is refused with the fingerprint and the commands that would trust it.
//!   Only [`HostKeyPolicy::Insecure`] skips the check, and it says so in
//!   [`SshTransport::warning`].
//! - **Streams with backpressure.** stdout is written to the caller's writer as each packet
//!   arrives; while the writer is busy the channel is not read, and once its buffer (100
//!   packets of at most 32 KiB) is full russh stops reading the connection, so TCP
//!   backpressure blocks the instance's command (and, for that while, the other channels of
//!   the same connection). stdin is read in 128 KiB chunks and sent as the peer's window
//!   allows. Memory per command is bounded (a few MiB) whatever the size of the stream.
//! - **Timeouts.** Connecting (TCP, handshake, authentication) and opening a channel are
//!   bounded by [`SshConfig::connect_timeout`]; each command optionally by
//!   [`SshConfig::script_timeout`]. Keepalives every [`SshConfig::keepalive_interval`]
//!   close a connection whose peer stopped answering. A command that times out, whose
//!   writer fails, or whose future is dropped is stopped: its process group gets `SIGTERM`
//!   (sent with `kill` over a second channel, since sshd will not deliver signals to root's
//!   or sudo's processes) and its channel is closed.
//! - **Jump hosts.** [`Proxy::Ssh`] tunnels the connection through a gateway's
//!   `direct-tcpip` channel (one gateway connection shared by every instance that uses the
//!   same [`GatewayConfig`]); [`Proxy::Socks5`] goes through an existing SOCKS5 tunnel.
//!   [`parse_bosh_all_proxy`] reads bbr's `BOSH_ALL_PROXY` forms.

mod channel;
mod connect;
mod gateway;
mod keyring;
#[cfg(test)]
mod tests;

pub use gateway::{host_port, parse_address, parse_all_proxy, parse_bosh_all_proxy, GatewayConfig, Proxy, ProxyStream};
pub use keyring::{default_known_hosts_path, parse_public_key_line, verify_host_key, ClientKey, HostKeyPolicy, KeySource, Secret};
use channel::*;
use connect::*;

use super::{ExecStatus, Reader, TimedOut, Transport, Writer};
use crate::transport::quote::quote;
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use russh::client::{Handle, Msg};
use russh::ChannelMsg;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};

/// The environment variable holding the passphrase of protected private keys.
pub const PASSPHRASE_ENV: &str = "LOCKSTEP_SSH_KEY_PASSPHRASE";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Below OpenSSH's default `MaxSessions` (10), which counts a channel until sshd has reaped it.
pub const DEFAULT_MAX_SESSIONS: usize = 8;
/// stderr kept per command; past this only the last part is kept.
const STDERR_LIMIT: usize = 1 << 20;
/// stdin is read and sent in chunks of this size.
const STDIN_CHUNK: usize = 128 * 1024;

/// Everything needed to reach one instance.
#[derive(Clone, Debug)]
pub struct SshConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub key: ClientKey,
    pub host_key: HostKeyPolicy,
    /// TCP connect, SSH handshake and authentication together; also opening a channel.
    pub connect_timeout: Duration,
    /// Each command (including artifact transfers) must finish within this, if set.
    pub script_timeout: Option<Duration>,
    pub keepalive_interval: Duration,
    /// Commands run at once on the connection; more wait (keep it below the server's
    /// `MaxSessions`).
    pub max_sessions: usize,
    pub proxy: Option<Proxy>,
}

impl SshConfig {
    /// A config with the defaults: 30 s connect timeout, no script timeout, keepalives
    /// every 30 s, 10 sessions, no proxy.
    pub fn new(host: impl Into<String>, port: u16, username: impl Into<String>, key: ClientKey, host_key: HostKeyPolicy) -> Self {
        SshConfig {
            host: host.into(),
            port,
            username: username.into(),
            key,
            host_key,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            script_timeout: None,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            max_sessions: DEFAULT_MAX_SESSIONS,
            proxy: None,
        }
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    keepalive: Duration,
}

/// One SSH connection (and the gateway connection it is tunnelled through, kept alive).
struct Conn {
    handle: Handle<Client>,
    /// The negotiated cipher, e.g. `aes256-gcm@openssh.com`.
    cipher: String,
    _via: Option<Arc<Conn>>,
}

/// [`Transport`] over SSH. See the module documentation.
pub struct SshTransport {
    cfg: SshConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    sessions: Arc<Semaphore>,
    warning: Option<String>,
}

impl SshTransport {
    pub fn new(cfg: SshConfig) -> Self {
        let warning = match cfg.host_key {
            HostKeyPolicy::Insecure => Some(format!(
                "host key verification is disabled for {} (--insecure-skip-host-key-check): \
                 the connection could be intercepted",
                host_port(&cfg.host, cfg.port)
            )),
            _ => None,
        };
        let sessions = Arc::new(Semaphore::new(cfg.max_sessions.max(1)));
        SshTransport { cfg, conn: Mutex::new(None), sessions, warning }
    }

    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    /// A warning the caller should log (host key verification disabled), if any.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Connects now (normally the first command does). Errors are the ones a command
    /// would get: unreachable, host key refused, authentication failed.
    pub async fn connect(&self) -> anyhow::Result<()> {
        self.connection().await.map(drop)
    }

    /// The cipher negotiated on the current connection (`aes256-gcm@openssh.com`, say),
    /// connecting first if needed. The benchmarks use it to give OpenSSH the same one.
    pub async fn cipher(&self) -> anyhow::Result<String> {
        Ok(self.connection().await?.0.cipher.clone())
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts { connect: self.cfg.connect_timeout, keepalive: self.cfg.keepalive_interval }
    }

    /// The current connection, or a new one; `true` when it is new.
    async fn connection(&self) -> anyhow::Result<(Arc<Conn>, bool)> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.handle.is_closed()) {
            return Ok((c.clone(), false));
        }
        *slot = None;
        let conn = Arc::new(self.dial().await.with_context(|| self.connect_context())?);
        *slot = Some(conn.clone());
        Ok((conn, true))
    }

    fn connect_context(&self) -> String {
        match &self.cfg.proxy {
            None => format!("could not connect to {}", self.describe()),
            Some(p) => format!("could not connect to {} through the {}", self.describe(), p.describe()),
        }
    }

    async fn dial(&self) -> anyhow::Result<Conn> {
        let t = self.timeouts();
        let hop = Hop {
            host: &self.cfg.host,
            port: self.cfg.port,
            username: &self.cfg.username,
            key: &self.cfg.key,
            host_key: &self.cfg.host_key,
        };
        match &self.cfg.proxy {
            None => tokio::time::timeout(t.connect, async {
                let tcp = tcp_connect(&self.cfg.host, self.cfg.port).await?;
                handshake(&hop, Box::new(tcp), &t, None).await
            })
            .await
            .map_err(|_| connect_timeout_error(t.connect))?,
            Some(Proxy::Socks5 { host, port }) => tokio::time::timeout(t.connect, async {
                let stream = socks5_connect(host, *port, &self.cfg.host, self.cfg.port).await?;
                handshake(&hop, Box::new(stream), &t, None).await
            })
            .await
            .map_err(|_| connect_timeout_error(t.connect))?,
            Some(Proxy::Ssh(gw)) => {
                let via = gw.connection(&t).await?;
                tokio::time::timeout(t.connect, async {
                    let ch = via
                        .handle
                        .channel_open_direct_tcpip(self.cfg.host.clone(), u32::from(self.cfg.port), "127.0.0.1", 0)
                        .await
                        .map_err(|e| {
                            anyhow!(
                                "the gateway {} could not open a tunnel to {}: {}",
                                gw.describe(),
                                host_port(&self.cfg.host, self.cfg.port),
                                channel_error(&e)
                            )
                        })?;
                    handshake(&hop, Box::new(ch.into_stream()), &t, Some(via.clone())).await
                })
                .await
                .map_err(|_| connect_timeout_error(t.connect))?
            }
        }
    }

    async fn forget(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }

    /// Opens a session channel, reconnecting once if the reused connection turns out dead.
    async fn open_channel(&self) -> anyhow::Result<(russh::Channel<Msg>, Arc<Conn>)> {
        let mut retried = false;
        let mut refusals = 0u32;
        loop {
            let (conn, fresh) = self.connection().await?;
            let opened = tokio::time::timeout(self.cfg.connect_timeout, conn.handle.channel_open_session()).await;
            match opened {
                Ok(Ok(ch)) => return Ok((ch, conn)),
                // sshd frees a session slot a moment after the channel closed, so at its
                // MaxSessions limit a new channel can be refused briefly: try again.
                Ok(Err(russh::Error::ChannelOpenFailure(
                    russh::ChannelOpenFailure::ConnectFailed
                    | russh::ChannelOpenFailure::AdministrativelyProhibited
                    | russh::ChannelOpenFailure::ResourceShortage,
                ))) if refusals < 40 => {
                    refusals += 1;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(refusals.min(20)))).await;
                }
                Ok(Err(e)) => {
                    let gone = conn.handle.is_closed()
                        || matches!(e, russh::Error::SendError | russh::Error::Disconnect | russh::Error::HUP);
                    if gone {
                        self.forget(&conn).await;
                        if !fresh && !retried {
                            retried = true;
                            continue;
                        }
                    }
                    bail!("could not open a session on {}: {}", self.describe(), channel_error(&e));
                }
                Err(_) => {
                    self.forget(&conn).await;
                    bail!(
                        "opening a session on {} timed out after {}: the instance stopped answering",
                        self.describe(),
                        secs(self.cfg.connect_timeout)
                    );
                }
            }
        }
    }

    /// `sudo -n sh -c '<inner>'` (or `sh -c '<inner>'` as root), where the inner shell
    /// first reports its process group on stderr (so a command that must be stopped can be
    /// killed with its children: sshd will not signal root's or sudo's processes) and then
    /// becomes `sh -c '<command>'`.
    fn wrap(&self, command: &str) -> String {
        let inner = format!(
            "read -r _ _ _ _ g _ < /proc/$$/stat 2>/dev/null && printf '{PGID_MARKER}%s\\n' \"$g\" >&2; exec sh -c {}",
            quote(command)
        );
        if self.is_root() {
            format!("sh -c {}", quote(&inner))
        } else {
            format!("sudo -n sh -c {}", quote(&inner))
        }
    }

    fn is_root(&self) -> bool {
        self.cfg.username == "root"
    }
}

/// The line the command wrapper prints on stderr before the command starts; removed from
/// the stderr callers see.
const PGID_MARKER: &str = "lockstep-pgid:";

/// Sends SIGTERM to a command's process group (the command, its children, and sudo) over a
/// channel of its own.
async fn kill_group(conn: &Conn, root: bool, pgid: u32) {
    let cmd = if root {
        format!("kill -s TERM -- -{pgid}")
    } else {
        format!("sudo -n kill -s TERM -- -{pgid}")
    };
    let Ok(mut ch) = conn.handle.channel_open_session().await else { return };
    if ch.exec(false, cmd).await.is_err() {
        return;
    }
    while let Some(msg) = ch.wait().await {
        if matches!(msg, ChannelMsg::Close) {
            break;
        }
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn describe(&self) -> String {
        format!("{}@{}", self.cfg.username, host_port(&self.cfg.host, self.cfg.port))
    }

    fn root(&self) -> &str {
        ""
    }

    async fn exec(&self, command: &str, stdin: Option<Reader<'_>>, stdout: Writer<'_>) -> anyhow::Result<ExecStatus> {
        let permit = self.sessions.clone().acquire_owned().await.context("the transport was shut down")?;
        let (channel, conn) = self.open_channel().await?;
        let (read, write) = channel.split();
        let pgid = Arc::new(AtomicU32::new(0));
        let mut reaper = Reaper {
            read: Some(read),
            write: Some(write),
            permit: Some(permit),
            conn: Some(conn),
            pgid: pgid.clone(),
            root: self.is_root(),
        };
        let wrapped = self.wrap(command);
        let describe = self.describe();
        let result = {
            let (read, write) = reaper.halves();
            let run = run_channel(read, write, &wrapped, stdin, stdout, &pgid);
            match self.cfg.script_timeout {
                None => run.await,
                Some(limit) => match tokio::time::timeout(limit, run).await {
                    Ok(r) => r,
                    Err(_) => Err(TimedOut(format!(
                        "timed out after {} on {describe} (script timeout): the command was stopped and its channel closed",
                        secs(limit)
                    ))
                    .into()),
                },
            }
        };
        let outcome = result?;
        if outcome.closed {
            reaper.disarm();
        }
        Ok(self.status(outcome))
    }
}

impl SshTransport {
    fn status(&self, o: Outcome) -> ExecStatus {
        let mut stderr = o.stderr;
        let push_line = |stderr: &mut Vec<u8>, line: &str| {
            if !stderr.is_empty() && !stderr.ends_with(b"\n") {
                stderr.push(b'\n');
            }
            stderr.extend_from_slice(line.as_bytes());
        };
        if o.code.is_none() {
            match &o.signal {
                Some(sig) => push_line(&mut stderr, &format!("killed by signal {sig}")),
                None => push_line(
                    &mut stderr,
                    &format!(
                        "Did the network just fail? It looks like my ssh session to {} ended suddenly \
                         without getting an exit status from the remote VM.",
                        self.describe()
                    ),
                ),
            }
        }
        if o.code == Some(1) && self.cfg.username != "root" {
            let text = String::from_utf8_lossy(&stderr);
            if text.contains("sudo: a password is required") || text.contains("sudo: a terminal is required") {
                let hint = format!(
                    "(lockstep: user {} needs passwordless sudo on {}, as on a BOSH stemcell)",
                    self.cfg.username, self.cfg.host
                );
                push_line(&mut stderr, &hint);
            }
        }
        let lost = o.code.is_none() && o.signal.is_none();
        ExecStatus { code: o.code, stderr, lost }
    }
}
