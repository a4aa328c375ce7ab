//! Addresses and the ways to reach an instance: a gateway (jump host) or a SOCKS5 tunnel,
//! and bbr's `BOSH_ALL_PROXY` forms. Secrets in proxy URLs never reach a message.

use anyhow::{anyhow, bail, Context};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use super::*;

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
    pub(super) shared: Arc<Mutex<Option<Arc<Conn>>>>,
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
    pub(super) async fn connection(&self, timeouts: &Timeouts) -> anyhow::Result<Arc<Conn>> {
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
    pub(super) stream: Box<dyn Duplex>,
    pub(super) _via: Option<Arc<Conn>>,
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

pub(super) fn redact_url(url: &str) -> String {
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

pub(super) fn percent_decode(s: &str) -> String {
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
