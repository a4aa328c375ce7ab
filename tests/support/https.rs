//! A blocking HTTPS server for the API doubles (BOSH director, Ops Manager): real TLS with
//! a CA and a server certificate for 127.0.0.1 made with `openssl`, one request per
//! connection, answered by the double's handler. Bodies are sent whole or, for large
//! answers (an installation export), streamed with `Transfer-Encoding: chunked`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tempfile::TempDir;

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Status line, headers, body.
pub type Response = (&'static str, Vec<(String, String)>, String);

/// A body written in chunks by `write` (which may fail on purpose, to cut the stream).
pub type Streamed = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

pub enum Answer {
    Whole(Response),
    /// Status, headers, the body's length if announced (`Content-Length`; chunked
    /// without), and its writer.
    Stream(&'static str, Vec<(String, String)>, Option<u64>, Streamed),
}

impl From<Response> for Answer {
    fn from(r: Response) -> Answer {
        Answer::Whole(r)
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

pub fn json(status: &'static str, v: serde_json::Value) -> Response {
    (status, vec![("Content-Type".into(), "application/json".into())], v.to_string())
}

pub fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct Https {
    pub url: String,
    pub ca_path: PathBuf,
    pub ca_pem: String,
    _dir: TempDir,
}

impl Https {
    /// Starts the server; `make` gets its URL and returns the handler.
    pub fn start<H>(prefix: &str, ca_name: &str, make: impl FnOnce(&str) -> Arc<H>) -> Https
    where
        H: Fn(&Request) -> Response + Send + Sync + ?Sized + 'static,
    {
        Https::start_streaming(prefix, ca_name, |url| {
            let h = make(url);
            Arc::new(move |req: &Request| Answer::Whole(h(req))) as Handler
        })
    }

    /// [`Https::start`] with a handler that may stream its answers.
    pub fn start_streaming(prefix: &str, ca_name: &str, make: impl FnOnce(&str) -> Handler) -> Https {
        let dir = TempDir::with_prefix(prefix).unwrap();
        let d = dir.path();
        openssl(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &format!("/CN={ca_name}")], d);
        std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:director.fleet.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
        openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"], d);
        openssl(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"], d);
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_file_iter(d.join("server.pem")).unwrap().map(|c| c.unwrap()).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(d.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let handler = make(&url);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (config, handler) = (config.clone(), handler.clone());
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else { return };
                    let mut stream = rustls::StreamOwned::new(tls, tcp);
                    if let Some(req) = read_request(&mut stream) {
                        let _ = answer(&mut stream, handler(&req));
                        stream.conn.send_close_notify();
                        let _ = stream.flush();
                    }
                });
            }
        });
        let ca_pem = std::fs::read_to_string(d.join("ca.pem")).unwrap();
        Https { url, ca_path: d.join("ca.pem"), ca_pem, _dir: dir }
    }
}

fn answer(stream: &mut dyn Write, a: Answer) -> std::io::Result<()> {
    match a {
        Answer::Whole((status, headers, body)) => {
            let mut resp = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            stream.write_all(resp.as_bytes())?;
            stream.write_all(body.as_bytes())?;
            stream.flush()
        }
        Answer::Stream(status, headers, len, write) => {
            let framing = match len {
                Some(n) => format!("Content-Length: {n}"),
                None => "Transfer-Encoding: chunked".to_string(),
            };
            let mut resp = format!("HTTP/1.1 {status}\r\n{framing}\r\nConnection: close\r\n");
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            stream.write_all(resp.as_bytes())?;
            // A failing writer cuts the stream (short of its length, or without its last
            // chunk): the client sees it end early.
            if len.is_some() {
                write(stream)?;
                return stream.flush();
            }
            let mut chunked = Chunked(stream);
            write(&mut chunked)?;
            chunked.0.write_all(b"0\r\n\r\n")?;
            chunked.0.flush()
        }
    }
}

struct Chunked<W: Write + ?Sized>(W);

impl<W: Write + ?Sized> Write for Chunked<&mut W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.0.write_all(format!("{:x}\r\n", buf.len()).as_bytes())?;
        self.0.write_all(buf)?;
        self.0.write_all(b"\r\n")?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request { method, path, query, headers, body })
}
