//! Connecting: TCP (direct, SOCKS5 or through a gateway's `direct-tcpip` channel), the
//! SSH handshake with the host-key check, authentication, each step bounded in time.

use anyhow::{anyhow, bail, Context};
use russh::client::{self, AuthResult};
use russh::keys::{self, HashAlg, PrivateKeyWithHashAlg};
use russh::Preferred;
use std::borrow::Cow;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use super::*;

pub(super) trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

pub(super) struct Hop<'a> {
    pub(super) host: &'a str,
    pub(super) port: u16,
    pub(super) username: &'a str,
    pub(super) key: &'a ClientKey,
    pub(super) host_key: &'a HostKeyPolicy,
}

pub(super) fn connect_timeout_error(t: Duration) -> anyhow::Error {
    anyhow!(
        "no answer within {} (connect timeout): the host may be down, unreachable, firewalled or hung",
        secs(t)
    )
}

pub(super) fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

pub(super) fn channel_error(e: &russh::Error) -> String {
    match e {
        russh::Error::ChannelOpenFailure(f) => f.description().to_string(),
        other => other.to_string(),
    }
}

pub(super) async fn tcp_connect(host: &str, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
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
pub(super) async fn socks5_connect(proxy_host: &str, proxy_port: u16, host: &str, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
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

/// How much of the stream is read at once (see [`handshake`]).
const READ_BUFFER: usize = 256 * 1024;
/// Messages queued per channel (see [`handshake`]).
const CHANNEL_BUFFER: usize = 16;

/// The SSH handshake and authentication over an established stream.
pub(super) async fn handshake(hop: &Hop<'_>, stream: Box<dyn Duplex>, t: &Timeouts, via: Option<Arc<Conn>>) -> anyhow::Result<Conn> {
    let config = Arc::new(client::Config {
        // Messages russh queues for a channel before it stops reading the connection (its
        // default: 100, 3 MiB of a stream). A drain's packets are allocated on one side of
        // that queue and freed on the other; a deep queue swings the heap by megabytes,
        // which glibc hands back to the kernel and then faults in again, page by page (up
        // to 150,000 faults and 0.3 s of CPU per GiB). 16 packets keep the swing small;
        // what else the 2 MiB window lets the server send waits in the socket's buffers
        // (`cargo bench --bench drain`, docs/performance.md).
        channel_buffer_size: CHANNEL_BUFFER,
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
    let cipher = Arc::new(StdMutex::new(None));
    let handler = Client {
        host: hop.host.to_string(),
        port: hop.port,
        policy: hop.host_key.clone(),
        verdict: verdict.clone(),
        cipher: cipher.clone(),
    };
    // russh reads each packet off the stream with two `read_exact` calls (its first block,
    // then the rest): two system calls per 32 KiB packet on a bare socket. Buffered, one
    // read takes whatever the socket holds, up to READ_BUFFER, as OpenSSH's client does (up
    // to 256 KiB): a third of the calls in a drain.
    let stream = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
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
        AuthResult::Success => {
            let cipher = cipher.lock().map(|mut c| c.take()).unwrap_or(None).unwrap_or_default();
            Ok(Conn { handle, cipher, _via: via })
        }
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
pub(super) fn host_key_algorithms(hop: &Hop<'_>) -> Vec<keys::Algorithm> {
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

pub(super) struct Client {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) policy: HostKeyPolicy,
    pub(super) verdict: Arc<StdMutex<Option<String>>>,
    /// The cipher the key exchange settled on (server to client), for [`SshTransport::cipher`].
    pub(super) cipher: Arc<StdMutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn kex_done(&mut self, _secret: Option<&[u8]>, names: &russh::Names, _: &mut client::Session) -> Result<(), Self::Error> {
        if let Ok(mut c) = self.cipher.lock() {
            *c = Some(names.cipher.as_ref().to_string());
        }
        Ok(())
    }

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
