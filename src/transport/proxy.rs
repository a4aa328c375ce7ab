//! `BOSH_ALL_PROXY` for the director's HTTPS API.
//!
//! bosh-cli sends its director and UAA calls through `BOSH_ALL_PROXY` as well as its SSH
//! connections: a director behind a jumpbox is only reachable that way. Our SSH transport
//! already opens streams through either form (`ssh+socks5://` gateway, `socks5://`
//! tunnel); the HTTP client (reqwest) knows HTTP proxies. This joins the two: a proxy on a
//! loopback port that answers `CONNECT host:port` by opening a [`ProxyStream`] and copying
//! bytes both ways. TLS still runs end to end between reqwest and the director, so the
//! CA check is unchanged.
//!
//! Only this process may use it: every `CONNECT` must carry a random token, generated
//! per run, in `Proxy-Authorization`. The listener stops when the last handle is dropped.

use crate::transport::ssh::{Proxy, ProxyStream};
use anyhow::{anyhow, Context};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest `CONNECT` request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// A running loopback CONNECT proxy.
pub struct ConnectProxy {
    /// `http://127.0.0.1:PORT`, for `reqwest::Proxy::all`.
    pub url: String,
    /// The exact `Proxy-Authorization` value every request must carry.
    pub authorization: String,
    /// Why the last tunnel could not be opened, to explain a failed request.
    last_error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    pub async fn start(proxy: Proxy, connect_timeout: Duration) -> anyhow::Result<ConnectProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("starting the loopback proxy for BOSH_ALL_PROXY")?;
        let url = format!("http://{}", listener.local_addr()?);
        let authorization = format!("Bearer {}", hex::encode(random_bytes()?));
        let last_error = Arc::new(Mutex::new(None));
        let (auth, errors) = (authorization.clone(), last_error.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (proxy, auth, errors) = (proxy.clone(), auth.clone(), errors.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(client, &proxy, &auth, connect_timeout, &errors).await {
                        *errors.lock().unwrap() = Some(format!("{e:#}"));
                    }
                });
            }
        });
        Ok(ConnectProxy { url, authorization, last_error, task })
    }

    /// Why the last tunnel failed, if one did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }
}

/// 24 bytes from the kernel's CSPRNG (`getrandom(2)`: no `/dev` needed in the image).
fn random_bytes() -> anyhow::Result<[u8; 24]> {
    let mut buf = [0u8; 24];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(anyhow!("getrandom failed: {}", std::io::Error::last_os_error()));
    }
    Ok(buf)
}

/// One client connection: a `CONNECT` head, then bytes both ways. Why a tunnel could not
/// be opened goes into `errors` before the client hears of it, so the failed request can
/// be explained.
async fn serve(
    mut client: TcpStream,
    proxy: &Proxy,
    authorization: &str,
    connect_timeout: Duration,
    errors: &Mutex<Option<String>>,
) -> anyhow::Result<()> {
    let head = read_head(&mut client).await?;
    let (target, authorized) = parse_connect(&head, authorization)?;
    if !authorized {
        client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await?;
        return Ok(());
    }
    let (host, port) = split_target(&target)?;
    let mut upstream = match ProxyStream::open(proxy, &host, port, connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            let e = e.context(format!("reaching {target} through the {}", proxy.describe()));
            *errors.lock().unwrap() = Some(format!("{e:#}"));
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").await;
            return Err(e);
        }
    };
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    // Either side closing ends the tunnel; the error of a reset connection is not news.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

/// Reads up to the blank line that ends the request head. reqwest waits for our answer
/// before it sends anything else, so nothing past the head is read.
async fn read_head(client: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(anyhow!("proxy request head longer than {MAX_HEAD} bytes"));
        }
        if client.read(&mut byte).await? == 0 {
            return Err(anyhow!("proxy client closed before the end of its request"));
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).map_err(|_| anyhow!("proxy request head is not UTF-8"))
}

/// `CONNECT host:port HTTP/1.1` and whether the head carries `authorization`.
fn parse_connect(head: &str, authorization: &str) -> anyhow::Result<(String, bool)> {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some("CONNECT"), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(anyhow!("not a CONNECT request: {first:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(anyhow!("not a CONNECT request: {first:?}"));
    }
    let authorized = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("proxy-authorization") && v.trim() == authorization)
    });
    Ok((target.to_string(), authorized))
}

/// `host:port` or `[v6]:port`.
fn split_target(target: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = target.rsplit_once(':').ok_or_else(|| anyhow!("CONNECT target {target:?} has no port"))?;
    let port = port.parse().map_err(|_| anyhow!("CONNECT target {target:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(anyhow!("CONNECT target {target:?} has no host"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_heads() {
        let ok = "CONNECT d.example:25555 HTTP/1.1\r\nHost: d.example:25555\r\nProxy-Authorization: Bearer abc\r\n\r\n";
        assert_eq!(parse_connect(ok, "Bearer abc").unwrap(), ("d.example:25555".to_string(), true));
        assert_eq!(parse_connect(ok, "Bearer other").unwrap().1, false);
        let none = "CONNECT 10.0.0.6:25555 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!parse_connect(none, "Bearer abc").unwrap().1);
        for bad in ["GET / HTTP/1.1\r\n\r\n", "CONNECT x:1\r\n\r\n", "CONNECT x:1 SPDY/3\r\n\r\n", ""] {
            assert!(parse_connect(bad, "Bearer abc").is_err(), "{bad:?}");
        }
        assert_eq!(split_target("[fd00::1]:443").unwrap(), ("fd00::1".to_string(), 443));
        assert_eq!(split_target("10.0.0.6:25555").unwrap(), ("10.0.0.6".to_string(), 25555));
        for bad in ["x", "x:http", ":443"] {
            assert!(split_target(bad).is_err(), "{bad:?}");
        }
    }

    /// The whole path through a real SOCKS5 proxy is tested with the fleet in
    /// tests/bosh_deployment.rs; here, that a request without the token is refused and
    /// one to a closed port gets 502 and an explanation.
    #[tokio::test]
    async fn refuses_strangers_and_explains_failures() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        // A SOCKS5 "proxy" on a closed port: every tunnel fails.
        let p = ConnectProxy::start(Proxy::Socks5 { host: "127.0.0.1".into(), port: closed_port }, Duration::from_secs(5)).await.unwrap();
        let addr = p.url.trim_start_matches("http://").to_string();
        let ask = |head: String| {
            let addr = addr.clone();
            async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(head.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        let stranger = ask("CONNECT 127.0.0.1:1 HTTP/1.1\r\nProxy-Authorization: Bearer guess\r\n\r\n".into()).await;
        assert!(stranger.starts_with("HTTP/1.1 407"), "{stranger}");
        let ours = ask(format!("CONNECT 127.0.0.1:1 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n", p.authorization)).await;
        assert!(ours.starts_with("HTTP/1.1 502"), "{ours}");
        let why = p.last_error().unwrap();
        assert!(why.contains("SOCKS5 proxy 127.0.0.1") && why.contains("reaching 127.0.0.1:1"), "{why}");
    }
}
