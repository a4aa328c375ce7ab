//! A blocking HTTPS server for the API doubles (BOSH director, Ops Manager): real TLS with
//! a CA and a server certificate for 127.0.0.1 made with `openssl`, one request per
//! connection, answered by the double's handler. Bodies are sent whole or, for large
//! answers (an installation export), streamed with `Transfer-Encoding: chunked`. A
//! `multipart/form-data` request body (an installation import) is read as it arrives, its
//! file parts hashed rather than held.

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
    /// The body; empty for `multipart/form-data`, which is read as it streams into
    /// `form` instead (a file part of gigabytes is hashed, never held).
    pub body: Vec<u8>,
    pub form: Option<Form>,
    /// Its body was announced longer than the server takes, and left unread.
    pub too_large: bool,
}

/// A `multipart/form-data` body, as a server that spools its file parts sees it.
#[derive(Debug, Default, Clone)]
pub struct Form {
    /// Fields without a file name: (name, value).
    pub fields: Vec<(String, String)>,
    pub files: Vec<FilePart>,
    /// The body ended before its `Content-Length` (the client stopped sending), or its
    /// closing boundary never came.
    pub cut: bool,
}

#[derive(Debug, Clone)]
pub struct FilePart {
    pub field: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// The first bytes (a zip starts with `PK\x03\x04`).
    pub head: Vec<u8>,
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
    /// Bodies announced longer than this are answered from their head alone, as nginx's
    /// `client_max_body_size` does (the request's `too_large`), before any body byte is read.
    pub max_body: Arc<std::sync::atomic::AtomicU64>,
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
        let max_body = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let limit = max_body.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (config, handler) = (config.clone(), handler.clone());
                let limit = limit.load(std::sync::atomic::Ordering::Relaxed);
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else { return };
                    let mut stream = rustls::StreamOwned::new(tls, tcp);
                    if let Some(req) = read_request_limited(&mut stream, limit) {
                        let _ = answer(&mut stream, handler(&req));
                        if req.too_large {
                            // nginx's lingering close: the unread body is read and dropped for
                            // a while, so the client gets the answer rather than a reset.
                            let _ = stream.sock.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                            let _ = std::io::copy(&mut stream, &mut std::io::sink());
                        }
                        stream.conn.send_close_notify();
                        let _ = stream.flush();
                    }
                });
            }
        });
        let ca_pem = std::fs::read_to_string(d.join("ca.pem")).unwrap();
        Https { url, ca_path: d.join("ca.pem"), ca_pem, max_body, _dir: dir }
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
    read_request_limited(stream, u64::MAX)
}

/// [`read_request`]; a body announced longer than `max_body` is left unread (`too_large`).
pub fn read_request_limited(stream: &mut impl Read, max_body: u64) -> Option<Request> {
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
    let too_large = len as u64 > max_body;
    let boundary = headers
        .get("content-type")
        .filter(|t| t.starts_with("multipart/form-data"))
        .and_then(|t| t.split(';').find_map(|p| p.trim().strip_prefix("boundary=")).map(|b| b.trim_matches('"').to_string()));
    let (body, form) = match boundary {
        _ if too_large => (Vec::new(), None),
        Some(b) => (Vec::new(), Some(read_form(&mut r.take(len as u64), len as u64, &b))),
        None => {
            let mut body = vec![0; len];
            r.read_exact(&mut body).ok()?;
            (body, None)
        }
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request { method, path, query, headers, body, form, too_large })
}

/// Reads a multipart body of `len` bytes as it arrives: fields kept, file parts hashed.
fn read_form(r: &mut impl Read, len: u64, boundary: &str) -> Form {
    use sha2::{Digest, Sha256};
    let mut form = Form::default();
    let delim = format!("\r\n--{boundary}").into_bytes();
    // The body starts with the first boundary line (the preamble's CRLF is not there).
    let mut buf: Vec<u8> = b"\r\n".to_vec();
    let mut src = Feed { r, chunk: vec![0u8; 256 * 1024], got: 0, eof: false };
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    // Up to the first delimiter.
    loop {
        if let Some(at) = find(&buf, &delim) {
            buf.drain(..at + delim.len());
            break;
        }
        if !src.more(&mut buf) {
            form.cut = true;
            return form;
        }
    }
    loop {
        // After a delimiter: "--" ends the body, CRLF starts a part.
        while buf.len() < 2 && src.more(&mut buf) {}
        if buf.starts_with(b"--") {
            form.cut = src.got < len;
            return form;
        }
        let headers_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at;
            }
            if !src.more(&mut buf) {
                form.cut = true;
                return form;
            }
        };
        let head = String::from_utf8_lossy(&buf[..headers_end]).into_owned();
        buf.drain(..headers_end + 4);
        let disposition = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:")).unwrap_or_default().to_string();
        let param = |key: &str| {
            let k = format!("{key}=\"");
            disposition.find(&k).map(|at| {
                let rest = &disposition[at + k.len()..];
                let mut v = String::new();
                let mut chars = rest.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => v.extend(chars.next()),
                        '"' => break,
                        c => v.push(c),
                    }
                }
                v
            })
        };
        let (field, filename) = (param("name").unwrap_or_default(), param("filename"));
        let (mut hasher, mut size, mut value, mut first) = (Sha256::new(), 0u64, Vec::new(), Vec::new());
        let mut take = |bytes: &[u8]| {
            if first.len() < 8 {
                first.extend_from_slice(&bytes[..bytes.len().min(8 - first.len())]);
            }
            size += bytes.len() as u64;
            if filename.is_some() {
                hasher.update(bytes);
            } else {
                value.extend_from_slice(bytes);
            }
        };
        loop {
            if let Some(at) = find(&buf, &delim) {
                take(&buf[..at]);
                buf.drain(..at + delim.len());
                break;
            }
            // Keep what could be the start of a delimiter.
            let keep = delim.len().min(buf.len());
            let upto = buf.len() - keep;
            take(&buf[..upto]);
            buf.drain(..upto);
            if !src.more(&mut buf) {
                form.cut = true;
                return form;
            }
        }
        match filename {
            Some(filename) => form.files.push(FilePart { field, filename, size, sha256: hex(&hasher.finalize()), head: first }),
            None => form.fields.push((field, String::from_utf8_lossy(&value).into_owned())),
        }
    }
}

/// The body's bytes as they come, counted.
struct Feed<'a, R: Read> {
    r: &'a mut R,
    chunk: Vec<u8>,
    got: u64,
    eof: bool,
}

impl<R: Read> Feed<'_, R> {
    /// Reads more into `buf`; false at the end of the body.
    fn more(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.eof {
            return false;
        }
        match self.r.read(&mut self.chunk) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.got += n as u64;
                buf.extend_from_slice(&self.chunk[..n]);
                true
            }
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
