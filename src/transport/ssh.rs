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

use super::{ExecStatus, Reader, Transport, Writer};
use crate::transport::quote::quote;
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use russh::client::{self, AuthResult, Handle, Msg};
use russh::keys::{self, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Preferred, Sig};
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

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

/// A secret string (a passphrase) that never shows in `Debug` output or messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The passphrase from [`PASSPHRASE_ENV`], if set and not empty.
    pub fn from_env() -> Option<Secret> {
        std::env::var(PASSPHRASE_ENV).ok().filter(|s| !s.is_empty()).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a private key comes from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    Path(PathBuf),
    /// PEM content (OpenSSH, PKCS#1 or PKCS#8).
    Pem(String),
}

impl KeySource {
    fn origin(&self) -> String {
        match self {
            KeySource::Path(p) => format!("private key {}", p.display()),
            KeySource::Pem(_) => "the inline private key".to_string(),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Path(p) => write!(f, "Path({})", p.display()),
            KeySource::Pem(_) => f.write_str("Pem(<redacted>)"),
        }
    }
}

/// A loaded (decrypted) client private key. `Debug` shows its type and fingerprint only.
#[derive(Clone)]
pub struct ClientKey {
    key: Arc<PrivateKey>,
    origin: String,
}

impl ClientKey {
    /// Loads and, with `passphrase`, decrypts a private key: ed25519, ECDSA or RSA, in
    /// OpenSSH, PKCS#1 or PKCS#8 PEM form.
    pub fn load(source: &KeySource, passphrase: Option<&Secret>) -> anyhow::Result<ClientKey> {
        let origin = source.origin();
        let text = match source {
            KeySource::Path(p) => {
                std::fs::read_to_string(p).with_context(|| format!("could not read {origin}"))?
            }
            KeySource::Pem(s) => s.clone(),
        };
        let trimmed = text.trim_start();
        if trimmed.starts_with("ssh-") || trimmed.starts_with("ecdsa-") {
            bail!("{origin} is a public key; give the private key (the file without .pub)");
        }
        let key = match keys::decode_secret_key(&text, passphrase.map(Secret::expose)) {
            Ok(k) => k,
            Err(keys::Error::KeyIsEncrypted) => bail!(
                "{origin} is protected by a passphrase: set {PASSPHRASE_ENV} to it (it is never printed)"
            ),
            Err(e) if passphrase.is_some() => {
                bail!("could not decrypt {origin}: {e} (is the passphrase in {PASSPHRASE_ENV} right?)")
            }
            Err(e) => bail!(
                "could not read {origin}: {e}; expected an OpenSSH, PKCS#1 or PKCS#8 PEM private key"
            ),
        };
        Ok(ClientKey { key: Arc::new(key), origin })
    }

    pub fn from_private_key(key: PrivateKey, origin: impl Into<String>) -> Self {
        ClientKey { key: Arc::new(key), origin: origin.into() }
    }

    /// `SHA256:...` of the public half.
    pub fn fingerprint(&self) -> String {
        self.key.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    fn describe(&self) -> String {
        format!("{} key {} ({})", self.key.algorithm().as_str(), self.fingerprint(), self.origin)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.describe())
    }
}

/// How an instance's host key is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// The host must present exactly this key (as BOSH's `host_public_key`).
    Pinned(PublicKey),
    /// The host must be listed in this OpenSSH `known_hosts` file (plain or hashed names,
    /// `[host]:port` for ports other than 22; no wildcards or markers).
    KnownHosts(PathBuf),
    /// No check at all (`--insecure-skip-host-key-check`).
    Insecure,
}

impl HostKeyPolicy {
    /// Parses a pinned key from an OpenSSH public key line: `ssh-ed25519 AAAA... [comment]`.
    pub fn pinned(line: &str) -> anyhow::Result<HostKeyPolicy> {
        Ok(HostKeyPolicy::Pinned(parse_public_key_line(line)?))
    }

    /// `~/.ssh/known_hosts` of the current user.
    pub fn default_known_hosts() -> PathBuf {
        default_known_hosts_path()
    }
}

impl fmt::Debug for HostKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyPolicy::Pinned(k) => write!(f, "Pinned({} {})", k.algorithm().as_str(), fingerprint(k)),
            HostKeyPolicy::KnownHosts(p) => write!(f, "KnownHosts({})", p.display()),
            HostKeyPolicy::Insecure => f.write_str("Insecure"),
        }
    }
}

/// `~/.ssh/known_hosts`, from `$HOME`.
pub fn default_known_hosts_path() -> PathBuf {
    std::env::home_dir().unwrap_or_else(|| PathBuf::from("/root")).join(".ssh").join("known_hosts")
}

/// Parses `ssh-ed25519 AAAA... [comment]` (or the key alone, base64).
pub fn parse_public_key_line(line: &str) -> anyhow::Result<PublicKey> {
    let line = line.trim();
    let usage = "expected an OpenSSH public key line such as \"ssh-ed25519 AAAA...\"";
    if line.is_empty() {
        bail!("empty host public key: {usage}");
    }
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let result = if let Some(b64) = words.next() {
        keys::parse_public_key_base64(b64).map_err(anyhow::Error::from).and_then(|k| {
            if k.algorithm().as_str() == first {
                Ok(k)
            } else {
                Err(anyhow!("the key type {first:?} does not match the key data ({})", k.algorithm().as_str()))
            }
        })
    } else {
        keys::parse_public_key_base64(first).map_err(anyhow::Error::from)
    };
    result.map_err(|e| anyhow!("invalid host public key: {e}; {usage}"))
}

fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}

/// `host[:port]` (`[v6addr]:port` for IPv6), with `default_port` when no port is given.
pub fn parse_address(addr: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let bad = |why: &str| anyhow!("invalid address {addr:?}: {why}; expected HOST or HOST:PORT (e.g. 10.0.0.5:22)");
    let addr_t = addr.trim();
    if addr_t.is_empty() {
        return Err(bad("empty"));
    }
    if addr_t.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
        return Err(bad("it contains a space, '/' or '@'"));
    }
    let (host, port) = if let Some(rest) = addr_t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?)),
        }
    } else if addr_t.matches(':').count() > 1 {
        // A bare IPv6 address without a port.
        (addr_t, None)
    } else {
        match addr_t.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (addr_t, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad(&format!("port {p:?} is not a number from 1 to 65535"))),
        },
    };
    Ok((host.to_string(), port))
}

pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// An SSH jump host. Clones share one connection to it.
#[derive(Clone)]
pub struct GatewayConfig {
    pub username: String,
    pub host: String,
    pub port: u16,
    pub key: ClientKey,
    pub host_key: HostKeyPolicy,
    shared: Arc<Mutex<Option<Arc<Conn>>>>,
}

impl GatewayConfig {
    pub fn new(username: impl Into<String>, host: impl Into<String>, port: u16, key: ClientKey, host_key: HostKeyPolicy) -> Self {
        GatewayConfig {
            username: username.into(),
            host: host.into(),
            port,
            key,
            host_key,
            shared: Arc::new(Mutex::new(None)),
        }
    }

    /// Parses `user@host[:port]` (as `--gateway`), port 22 by default.
    pub fn parse(spec: &str, key: ClientKey, host_key: HostKeyPolicy) -> anyhow::Result<Self> {
        let (user, addr) = spec
            .split_once('@')
            .filter(|(u, a)| !u.is_empty() && !a.is_empty())
            .ok_or_else(|| anyhow!("invalid gateway {spec:?}: expected USER@HOST[:PORT]"))?;
        let (host, port) = parse_address(addr, 22).with_context(|| format!("gateway {spec:?}"))?;
        Ok(GatewayConfig::new(user, host, port, key, host_key))
    }

    pub fn describe(&self) -> String {
        format!("{}@{}", self.username, host_port(&self.host, self.port))
    }

    /// The shared gateway connection, connecting if there is none or it dropped.
    async fn connection(&self, timeouts: &Timeouts) -> anyhow::Result<Arc<Conn>> {
        let mut slot = self.shared.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.handle.is_closed()) {
            return Ok(c.clone());
        }
        let hop = Hop {
            host: &self.host,
            port: self.port,
            username: &self.username,
            key: &self.key,
            host_key: &self.host_key,
        };
        let conn = tokio::time::timeout(timeouts.connect, async {
            let tcp = tcp_connect(&self.host, self.port).await?;
            handshake(&hop, Box::new(tcp), timeouts, None).await
        })
        .await
        .map_err(|_| connect_timeout_error(timeouts.connect))
        .and_then(|r| r)
        .with_context(|| format!("could not connect to the gateway {}", self.describe()))?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("gateway", &self.describe())
            .field("key", &self.key)
            .field("host_key", &self.host_key)
            .finish()
    }
}

/// How connections reach instances that are not directly routable.
#[derive(Clone, Debug)]
pub enum Proxy {
    /// Through an SSH jump host (`--gateway`, `BOSH_ALL_PROXY=ssh+socks5://...`).
    Ssh(Box<GatewayConfig>),
    /// Through an existing SOCKS5 proxy (`BOSH_ALL_PROXY=socks5://host:port`), e.g. an
    /// `ssh -D` tunnel. No authentication.
    Socks5 { host: String, port: u16 },
}

impl From<GatewayConfig> for Proxy {
    fn from(g: GatewayConfig) -> Self {
        Proxy::Ssh(Box::new(g))
    }
}

impl Proxy {
    pub fn describe(&self) -> String {
        match self {
            Proxy::Ssh(g) => format!("gateway {}", g.describe()),
            Proxy::Socks5 { host, port } => format!("SOCKS5 proxy {}", host_port(host, *port)),
        }
    }
}

/// A byte stream to `host:port` opened through a [`Proxy`], for what is not SSH (the
/// director's HTTPS API). It keeps the gateway connection it runs over alive.
pub struct ProxyStream {
    stream: Box<dyn Duplex>,
    _via: Option<Arc<Conn>>,
}

impl ProxyStream {
    pub async fn open(proxy: &Proxy, host: &str, port: u16, connect_timeout: Duration) -> anyhow::Result<ProxyStream> {
        let t = Timeouts { connect: connect_timeout, keepalive: Duration::from_secs(60) };
        let target = host_port(host, port);
        match proxy {
            Proxy::Socks5 { host: ph, port: pp } => {
                let s = tokio::time::timeout(t.connect, socks5_connect(ph, *pp, host, port))
                    .await
                    .map_err(|_| connect_timeout_error(t.connect))??;
                Ok(ProxyStream { stream: Box::new(s), _via: None })
            }
            Proxy::Ssh(gw) => {
                let via = gw.connection(&t).await?;
                let ch = tokio::time::timeout(t.connect, via.handle.channel_open_direct_tcpip(host.to_string(), u32::from(port), "127.0.0.1", 0))
                    .await
                    .map_err(|_| connect_timeout_error(t.connect))?
                    .map_err(|e| anyhow!("the gateway {} could not open a tunnel to {target}: {}", gw.describe(), channel_error(&e)))?;
                Ok(ProxyStream { stream: Box::new(ch.into_stream()), _via: Some(via) })
            }
        }
    }

}

impl AsyncRead for ProxyStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxyStream {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

/// Parses bbr's `BOSH_ALL_PROXY`:
/// - `ssh+socks5://USER@HOST:PORT?private-key=PATH`: bbr opens an SSH tunnel to the jump
///   host itself; lockstep connects through it directly (`direct-tcpip`), which is the
///   same route without a local SOCKS listener. The key may be passphrase-protected
///   (`passphrase`). The jump host's own key is checked with `host_key`.
/// - `socks5://HOST:PORT`: an existing SOCKS5 tunnel.
pub fn parse_bosh_all_proxy(url: &str, passphrase: Option<&Secret>, host_key: HostKeyPolicy) -> anyhow::Result<Proxy> {
    parse_all_proxy(url, None, passphrase, host_key)
}

/// [`parse_bosh_all_proxy`], where the jump host's key may also be given as `key` (the
/// resource's configuration carries the key itself, not a path); `?private-key=` wins.
pub fn parse_all_proxy(url: &str, key: Option<&KeySource>, passphrase: Option<&Secret>, host_key: HostKeyPolicy) -> anyhow::Result<Proxy> {
    let shown = redact_url(url);
    let usage = "expected ssh+socks5://USER@HOST:PORT?private-key=PATH or socks5://HOST:PORT";
    if let Some(rest) = url.strip_prefix("ssh+socks5://") {
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let mut key_path = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "private-key" if !v.is_empty() => key_path = Some(percent_decode(v)),
                "private-key" => bail!("BOSH_ALL_PROXY {shown}: empty private-key; {usage}"),
                other => bail!("BOSH_ALL_PROXY {shown}: unknown parameter {other:?}; {usage}"),
            }
        }
        let source = match (key_path, key) {
            (Some(path), _) => KeySource::Path(PathBuf::from(path)),
            (None, Some(k)) => k.clone(),
            (None, None) => bail!("BOSH_ALL_PROXY {shown}: missing ?private-key=PATH; {usage}"),
        };
        let key = ClientKey::load(&source, passphrase).with_context(|| format!("BOSH_ALL_PROXY {shown}"))?;
        if !authority.contains('@') {
            bail!("BOSH_ALL_PROXY {shown}: missing the user (USER@HOST:PORT); {usage}");
        }
        GatewayConfig::parse(authority, key, host_key)
            .map(Proxy::from)
            .with_context(|| format!("BOSH_ALL_PROXY {shown}"))
    } else if let Some(rest) = url.strip_prefix("socks5://") {
        let authority = rest.trim_end_matches('/');
        if authority.contains('@') {
            bail!("BOSH_ALL_PROXY {shown}: SOCKS5 authentication is not supported; {usage}");
        }
        let (host, port) = parse_address(authority, 1080).with_context(|| format!("BOSH_ALL_PROXY {shown}"))?;
        Ok(Proxy::Socks5 { host, port })
    } else {
        bail!("BOSH_ALL_PROXY {shown}: unsupported scheme; {usage}")
    }
}

fn redact_url(url: &str) -> String {
    // Only a path is ever in the query, but keep anything password-like out of messages.
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if user.contains(':') => {
                format!("{scheme}://{}:***@{host}", user.split(':').next().unwrap_or_default())
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
                    Err(_) => Err(anyhow!(
                        "timed out after {} on {describe} (script timeout): the command was stopped and its channel closed",
                        secs(limit)
                    )),
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
        ExecStatus { code: o.code, stderr }
    }
}

struct Outcome {
    code: Option<i32>,
    signal: Option<String>,
    stderr: Vec<u8>,
    /// The server closed the channel (nothing left to clean up).
    closed: bool,
}

/// Runs one command on an open channel: sends the exec request, feeds stdin, streams
/// stdout, collects stderr and the exit status.
async fn run_channel(
    read: &mut ChannelReadHalf,
    write: &ChannelWriteHalf<Msg>,
    command: &str,
    stdin: Option<Reader<'_>>,
    stdout: Writer<'_>,
    pgid: &AtomicU32,
) -> anyhow::Result<Outcome> {
    write.exec(true, command).await.context("sending the command")?;
    let feed = async {
        if let Some(src) = stdin {
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                let n = src.read(&mut buf).await.context("reading the command's stdin")?;
                if n == 0 {
                    break;
                }
                // A closed channel means the command exited without reading everything:
                // its exit status tells, as with a broken pipe.
                if write.data_bytes(buf[..n].to_vec()).await.is_err() {
                    return Ok(());
                }
            }
            let _ = write.eof().await;
        } else {
            let _ = write.eof().await;
        }
        Ok::<_, anyhow::Error>(())
    };
    let drain = async {
        let mut out = Outcome { code: None, signal: None, stderr: Vec::new(), closed: false };
        let mut stderr = CappedBuf::default();
        let mut marker = MarkerScan::default();
        let mut exec_answered = false;
        loop {
            match read.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    stdout.write_all(&data).await.context("writing the command's stdout")?;
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    let passed = marker.scan(&data, pgid);
                    stderr.push(&passed);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => out.code = Some(exit_status as i32),
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
                    let mut s = format!("SIG{}", sig_name(&signal_name));
                    if core_dumped {
                        s.push_str(" (core dumped)");
                    }
                    if !error_message.trim().is_empty() {
                        s.push_str(&format!(": {}", error_message.trim()));
                    }
                    out.signal = Some(s);
                }
                Some(ChannelMsg::Success) => exec_answered = true,
                Some(ChannelMsg::Failure) if !exec_answered => {
                    bail!("the instance refused to run the command (exec request failed)")
                }
                Some(ChannelMsg::Close) => {
                    out.closed = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        stdout.flush().await.context("flushing the command's stdout")?;
        stderr.push(&marker.finish());
        out.stderr = stderr.into_vec();
        Ok::<_, anyhow::Error>(out)
    };
    tokio::pin!(feed);
    tokio::pin!(drain);
    let mut feeding = true;
    loop {
        tokio::select! {
            fed = &mut feed, if feeding => {
                feeding = false;
                fed?;
            }
            drained = &mut drain => return drained,
        }
    }
}

fn sig_name(s: &Sig) -> String {
    match s {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(c) => c.clone(),
    }
}

/// Finds and removes the wrapper's process-group line near the start of stderr (after
/// anything a login shell printed first).
#[derive(Default)]
struct MarkerScan {
    pending: Vec<u8>,
    done: bool,
}

impl MarkerScan {
    const WINDOW: usize = 64 * 1024;

    /// Returns the stderr bytes that can be passed on now.
    fn scan(&mut self, data: &[u8], pgid: &AtomicU32) -> Vec<u8> {
        if self.done {
            return data.to_vec();
        }
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + nl];
            if let Some(rest) = line.strip_prefix(PGID_MARKER.as_bytes()) {
                if let Some(g) = std::str::from_utf8(rest).ok().and_then(|r| r.trim().parse::<u32>().ok()) {
                    pgid.store(g, Ordering::SeqCst);
                }
                let mut out = self.pending[..start].to_vec();
                out.extend_from_slice(&self.pending[start + nl + 1..]);
                self.pending.clear();
                self.done = true;
                return out;
            }
            start += nl + 1;
        }
        if self.pending.len() > Self::WINDOW {
            self.done = true;
            return std::mem::take(&mut self.pending);
        }
        Vec::new()
    }

    fn finish(&mut self) -> Vec<u8> {
        self.done = true;
        std::mem::take(&mut self.pending)
    }
}

/// Keeps the first part of stderr and, past the limit, its last part.
#[derive(Default)]
struct CappedBuf {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
}

impl CappedBuf {
    fn push(&mut self, data: &[u8]) {
        let half = STDERR_LIMIT / 2;
        let room = half.saturating_sub(self.head.len());
        let (h, rest) = data.split_at(room.min(data.len()));
        self.head.extend_from_slice(h);
        self.tail.extend(rest);
        while self.tail.len() > half {
            self.tail.pop_front();
            self.dropped += 1;
        }
    }

    fn into_vec(self) -> Vec<u8> {
        let mut v = self.head;
        if self.dropped > 0 {
            v.extend_from_slice(format!("\n[... {} bytes of stderr omitted ...]\n", self.dropped).as_bytes());
        }
        v.extend(self.tail);
        v
    }
}

/// Owns a command's channel. Unless disarmed (the server closed the channel), dropping it
/// sends SIGTERM to the command's process group, closes the channel and drains what is
/// still in flight before giving the session slot back, so a timed-out, failed or
/// cancelled command does not keep running nor stall the connection.
struct Reaper {
    read: Option<ChannelReadHalf>,
    write: Option<ChannelWriteHalf<Msg>>,
    permit: Option<OwnedSemaphorePermit>,
    conn: Option<Arc<Conn>>,
    pgid: Arc<AtomicU32>,
    root: bool,
}

impl Reaper {
    fn halves(&mut self) -> (&mut ChannelReadHalf, &ChannelWriteHalf<Msg>) {
        match (self.read.as_mut(), self.write.as_ref()) {
            (Some(r), Some(w)) => (r, w),
            // Only taken by `disarm` and `drop`, after the last use.
            _ => unreachable!("channel halves taken before use"),
        }
    }

    fn disarm(&mut self) {
        self.read = None;
        self.write = None;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let (Some(write), Some(mut read)) = (self.write.take(), self.read.take()) else {
            return;
        };
        let permit = self.permit.take();
        let conn = self.conn.take();
        let pgid = self.pgid.load(Ordering::SeqCst);
        let root = self.root;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if pgid > 1
                    && let Some(c) = conn.as_ref()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(30), kill_group(c, root, pgid)).await;
                }
                let _ = write.close().await;
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while let Some(msg) = read.wait().await {
                        if matches!(msg, ChannelMsg::Close) {
                            break;
                        }
                    }
                })
                .await;
                drop(permit);
                drop(conn);
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connecting

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

struct Hop<'a> {
    host: &'a str,
    port: u16,
    username: &'a str,
    key: &'a ClientKey,
    host_key: &'a HostKeyPolicy,
}

fn connect_timeout_error(t: Duration) -> anyhow::Error {
    anyhow!(
        "no answer within {} (connect timeout): the host may be down, unreachable, firewalled or hung",
        secs(t)
    )
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

fn channel_error(e: &russh::Error) -> String {
    match e {
        russh::Error::ChannelOpenFailure(f) => f.description().to_string(),
        other => other.to_string(),
    }
}

async fn tcp_connect(host: &str, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ": nothing listens on that port (is sshd running?)",
            _ => "",
        };
        anyhow!("TCP connection to {} failed: {e}{hint}", host_port(host, port))
    })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// SOCKS5 CONNECT without authentication (RFC 1928).
async fn socks5_connect(proxy_host: &str, proxy_port: u16, host: &str, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    let proxy = host_port(proxy_host, proxy_port);
    let mut s = tcp_connect(proxy_host, proxy_port).await.with_context(|| format!("SOCKS5 proxy {proxy}"))?;
    let fail = |why: String| anyhow!("SOCKS5 proxy {proxy}: {why}");
    s.write_all(&[5, 1, 0]).await.map_err(|e| fail(e.to_string()))?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello).await.map_err(|e| fail(format!("no greeting: {e}")))?;
    if hello != [5, 0] {
        return Err(fail("it requires authentication, which lockstep does not support".into()));
    }
    let mut req = vec![5, 1, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Ok(std::net::IpAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            let name = host.as_bytes();
            if name.len() > 255 {
                return Err(fail(format!("host name {host:?} is too long")));
            }
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name);
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.map_err(|e| fail(e.to_string()))?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.map_err(|e| fail(format!("no reply: {e}")))?;
    if head[1] != 0 {
        let why = match head[1] {
            1 => "general failure",
            2 => "connection not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        };
        return Err(fail(format!("could not connect to {}: {why}", host_port(host, port))));
    }
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(|e| fail(e.to_string()))?;
            usize::from(len[0]) + 2
        }
        other => return Err(fail(format!("unexpected address type {other} in its reply"))),
    };
    let mut rest = vec![0u8; skip];
    s.read_exact(&mut rest).await.map_err(|e| fail(e.to_string()))?;
    Ok(s)
}

/// The SSH handshake and authentication over an established stream.
async fn handshake(hop: &Hop<'_>, stream: Box<dyn Duplex>, t: &Timeouts, via: Option<Arc<Conn>>) -> anyhow::Result<Conn> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(t.keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred: Preferred {
            key: Cow::Owned(host_key_algorithms(hop)),
            // AES-GCM first: with AES-NI it is the fastest here (see dependencies.md).
            cipher: Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_192_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            ..Preferred::default()
        },
        ..client::Config::default()
    });
    let verdict = Arc::new(StdMutex::new(None));
    let handler = Client {
        host: hop.host.to_string(),
        port: hop.port,
        policy: hop.host_key.clone(),
        verdict: verdict.clone(),
    };
    let connected = client::connect_stream(config, stream, handler).await;
    let rejection = verdict.lock().map(|mut v| v.take()).unwrap_or(None);
    let mut handle = match (connected, rejection) {
        (_, Some(why)) => bail!("{why}"),
        (Ok(h), None) => h,
        (Err(e), None) => bail!("SSH handshake with {} failed: {e}", host_port(hop.host, hop.port)),
    };
    let key = hop.key;
    let hash = if key.key.algorithm().is_rsa() {
        match handle.best_supported_rsa_hash().await {
            Ok(Some(Some(h))) => Some(h),
            Ok(Some(None)) => None,
            _ => Some(HashAlg::Sha256),
        }
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(hop.username, PrivateKeyWithHashAlg::new(key.key.clone(), hash))
        .await
        .with_context(|| format!("authenticating as {} on {}", hop.username, host_port(hop.host, hop.port)))?;
    match auth {
        AuthResult::Success => Ok(Conn { handle, _via: via }),
        AuthResult::Failure { .. } => bail!(
            "authentication failed: {}@{} did not accept the {}. Check that its public key is in \
             the authorized_keys of user {} on that host",
            hop.username,
            host_port(hop.host, hop.port),
            key.describe(),
            hop.username
        ),
    }
}

/// Host key algorithms, those we can verify first (as OpenSSH orders them from
/// known_hosts), so a host with several keys presents the one we know.
fn host_key_algorithms(hop: &Hop<'_>) -> Vec<keys::Algorithm> {
    use keys::Algorithm;
    let known: Vec<Algorithm> = match hop.host_key {
        HostKeyPolicy::Pinned(k) => vec![k.algorithm()],
        HostKeyPolicy::KnownHosts(path) => keys::known_hosts::known_host_keys_path(hop.host, hop.port, path)
            .map(|v| v.into_iter().map(|(_, k)| k.algorithm()).collect())
            .unwrap_or_default(),
        HostKeyPolicy::Insecure => vec![],
    };
    let mut out: Vec<Algorithm> = Vec::new();
    for a in known {
        let expanded = if matches!(a, Algorithm::Rsa { .. }) {
            vec![
                Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
                Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
            ]
        } else {
            vec![a]
        };
        for a in expanded {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    for a in Preferred::DEFAULT.key.iter() {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

struct Client {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    verdict: Arc<StdMutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        match verify_host_key(&self.policy, &self.host, self.port, &key.public_key()) {
            Ok(()) => Ok(true),
            Err(why) => {
                if let Ok(mut v) = self.verdict.lock() {
                    *v = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// Checks an offered host key; the error says what to do about it.
pub fn verify_host_key(policy: &HostKeyPolicy, host: &str, port: u16, offered: &PublicKey) -> Result<(), String> {
    let alg = offered.algorithm();
    let alg = alg.as_str();
    let fp = fingerprint(offered);
    let addr = host_port(host, port);
    let keyscan = format!("ssh-keyscan -p {port} {host}");
    match policy {
        HostKeyPolicy::Insecure => Ok(()),
        HostKeyPolicy::Pinned(pinned) => {
            if pinned.key_data() == offered.key_data() {
                Ok(())
            } else {
                Err(format!(
                    "host key verification failed for {addr}: it offered the {alg} key {fp}, which is not \
                     the pinned host public key ({} {}). Refusing to connect. If the instance was recreated, \
                     check the new key's fingerprint (`{keyscan} | ssh-keygen -lf -`) and update \
                     host_public_key (--host-public-key)",
                    pinned.algorithm().as_str(),
                    fingerprint(pinned)
                ))
            }
        }
        HostKeyPolicy::KnownHosts(path) => {
            let file = path.display();
            match keys::check_known_hosts_path(host, port, offered, path) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    let missing = if Path::new(path).exists() { "" } else { " (the file does not exist)" };
                    Err(format!(
                        "host key verification failed for {addr}: its {alg} key {fp} is not in {file}{missing}. \
                         Refusing to connect. To trust it, check that fingerprint and add the key with \
                         `{keyscan} >> {file}`, or pin it with host_public_key (--host-public-key); \
                         only --insecure-skip-host-key-check skips this check"
                    ))
                }
                Err(keys::Error::KeyChanged { line }) => Err(format!(
                    "host key verification failed for {addr}: the HOST KEY HAS CHANGED. It offered the {alg} \
                     key {fp}, but {file} line {line} holds a different {alg} key for it. Someone may be \
                     intercepting the connection, or the instance was recreated. Refusing to connect. If you \
                     know it was recreated, remove the old entry with `ssh-keygen -R '{known}' -f {file}` and \
                     add the new one with `{keyscan} >> {file}`",
                    known = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") }
                )),
                Err(e) => Err(format!(
                    "host key verification failed for {addr}: could not read the known_hosts file {file}: {e}"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("10.0.0.5", 22).unwrap(), ("10.0.0.5".into(), 22));
        assert_eq!(parse_address("10.0.0.5:2222", 22).unwrap(), ("10.0.0.5".into(), 2222));
        assert_eq!(parse_address("director.example.com:22", 22).unwrap(), ("director.example.com".into(), 22));
        assert_eq!(parse_address("[::1]:2200", 22).unwrap(), ("::1".into(), 2200));
        assert_eq!(parse_address("::1", 22).unwrap(), ("::1".into(), 22));
        for bad in ["", ":22", "h:0", "h:70000", "h:x", "a b", "u@h", "[::1", "[::1]x", "h/1"] {
            let err = parse_address(bad, 22).unwrap_err().to_string();
            assert!(err.contains("expected HOST or HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn public_key_lines() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ some comment";
        let k = parse_public_key_line(line).unwrap();
        assert_eq!(k.algorithm().as_str(), "ssh-ed25519");
        assert!(parse_public_key_line("AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ").is_ok());
        assert!(parse_public_key_line("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ").is_err());
        assert!(parse_public_key_line("ssh-ed25519 !!!").is_err());
        assert!(parse_public_key_line("").is_err());
    }

    #[test]
    fn bosh_all_proxy_forms() {
        let p = parse_bosh_all_proxy("socks5://localhost:1080", None, HostKeyPolicy::Insecure).unwrap();
        assert!(matches!(p, Proxy::Socks5 { ref host, port: 1080 } if host == "localhost"));
        let e = parse_bosh_all_proxy("http://x:1", None, HostKeyPolicy::Insecure).unwrap_err();
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
        let e = parse_bosh_all_proxy("ssh+socks5://jb@10.0.0.1:22", None, HostKeyPolicy::Insecure).unwrap_err();
        assert!(e.to_string().contains("private-key"), "{e}");
        let e = parse_bosh_all_proxy("ssh+socks5://jb@10.0.0.1:22?private-key=/nonexistent/key", None, HostKeyPolicy::Insecure)
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/key"), "{e:#}");
        let e = parse_bosh_all_proxy("ssh+socks5://jb@10.0.0.1:22?foo=1", None, HostKeyPolicy::Insecure).unwrap_err();
        assert!(e.to_string().contains("unknown parameter \"foo\""), "{e}");
        let e = parse_bosh_all_proxy("socks5://u:pw@h:1", None, HostKeyPolicy::Insecure).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/tmp/a%20b"), "/tmp/a b");
        assert_eq!(percent_decode("/tmp/%zz%"), "/tmp/%zz%");
    }

    #[test]
    fn stderr_is_capped_keeping_both_ends() {
        let mut b = CappedBuf::default();
        b.push(b"first line\n");
        for _ in 0..300 {
            b.push(&[b'x'; 8192]);
        }
        b.push(b"\nlast line\n");
        let v = b.into_vec();
        assert!(v.len() < STDERR_LIMIT + 100);
        assert!(v.starts_with(b"first line\n"));
        assert!(v.ends_with(b"last line\n"));
        assert!(String::from_utf8_lossy(&v).contains("bytes of stderr omitted"));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", KeySource::Pem("-----BEGIN".into())), "Pem(<redacted>)");
    }
}
