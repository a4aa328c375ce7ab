//! A fault-injecting HTTP proxy in front of a real S3 server: it forwards each request as
//! is (one upstream connection per request, so every request is seen) and answers with a
//! fault instead when the request matches a rule. The client under test is pointed at the
//! proxy's endpoint; the server behind it keeps the true state, which the tests inspect.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// What to do with a request that matches.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer `500 InternalError` (S3's retryable error) without forwarding.
    Status500,
    /// Close the connection without an answer (a connection dropped mid-request).
    Drop,
}

pub type Rule = Arc<dyn Fn(&str, &str) -> Option<Fault> + Send + Sync>;
/// A rule that also sees the request's `Range` header.
pub type RangeRule = Arc<dyn Fn(&Request) -> Option<Fault> + Send + Sync>;

/// A request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// The `Range` header's value, if any.
    pub range: Option<String>,
}

/// What the proxy records and how it forwards.
#[derive(Clone, Default)]
pub struct Seen {
    /// Every request, in arrival order.
    pub requests: Arc<std::sync::Mutex<Vec<Request>>>,
    /// The most requests being forwarded at one time.
    pub max_concurrent: Arc<AtomicUsize>,
    concurrent: Arc<AtomicUsize>,
    /// Response bodies are sent at most this fast (bytes per second per request), if set.
    throttle: Option<u64>,
}

pub struct FaultProxy {
    pub port: u16,
    /// Requests that got a fault.
    pub faults: Arc<AtomicUsize>,
    /// Requests forwarded to the server.
    pub forwarded: Arc<AtomicUsize>,
    pub seen: Seen,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// `rule(method, path_and_query)` decides per request.
    pub fn start(upstream_port: u16, rule: Rule) -> FaultProxy {
        Self::start_seeing(upstream_port, Arc::new(move |r: &Request| rule(&r.method, &r.target)), None)
    }

    /// `rule(request)` decides per request; response bodies are sent at most `throttle`
    /// bytes per second per request, if given.
    pub fn start_seeing(upstream_port: u16, rule: RangeRule, throttle: Option<u64>) -> FaultProxy {
        let seen = Seen { throttle, ..Seen::default() };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (faults, forwarded, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (f, fw, st) = (faults.clone(), forwarded.clone(), stop.clone());
        let seen_here = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (rule, f, fw, seen) = (rule.clone(), f.clone(), fw.clone(), seen.clone());
                thread::spawn(move || {
                    let _ = serve(conn, upstream_port, &rule, &f, &fw, &seen);
                });
            }
        });
        FaultProxy { port, faults, forwarded, seen: seen_here, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

/// The head of a message (through the blank line) and its body length, if known.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(Vec<u8>, Option<usize>, bool)>> {
    let mut head = Vec::new();
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
        if let Some(v) = text.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
        if text.starts_with("transfer-encoding:") && text.contains("chunked") {
            chunked = true;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            return Ok(Some((head, length, chunked)));
        }
    }
}

/// Reads a chunked body whole, framing included.
fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = Vec::new();
        r.read_until(b'\n', &mut size_line)?;
        out.extend_from_slice(&size_line);
        let size = usize::from_str_radix(String::from_utf8_lossy(&size_line).trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk)?;
        out.extend_from_slice(&chunk);
        if size == 0 {
            return Ok(out);
        }
    }
}

fn serve(client: TcpStream, upstream_port: u16, rule: &RangeRule, faults: &AtomicUsize, forwarded: &AtomicUsize, seen: &Seen) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let Some((head, length, chunked)) = read_head(&mut reader)? else { return Ok(()) };
        let mut body = vec![0; length.unwrap_or(0)];
        reader.read_exact(&mut body)?;
        if chunked {
            body = read_chunked(&mut reader)?;
        }
        let request_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let range = String::from_utf8_lossy(&head)
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("range")).map(|(_, v)| v.trim().to_string()));
        let request = Request { method: method.to_string(), target: target.to_string(), range };
        seen.requests.lock().unwrap().push(request.clone());
        match rule(&request) {
            Some(Fault::Status500) => {
                faults.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>";
                write!(client, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
                continue;
            }
            Some(Fault::Drop) => {
                faults.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            None => {}
        }
        forwarded.fetch_add(1, Ordering::SeqCst);
        let now = seen.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_concurrent.fetch_max(now, Ordering::SeqCst);
        let result = forward(&mut client, upstream_port, method, &head, &body, seen.throttle);
        seen.concurrent.fetch_sub(1, Ordering::SeqCst);
        if !result? {
            return Ok(());
        }
    }
}

/// Sends one request upstream and its answer back to the client; false when the server
/// closed without answering (the client's connection is closed too).
fn forward(client: &mut TcpStream, upstream_port: u16, method: &str, head: &[u8], body: &[u8], throttle: Option<u64>) -> std::io::Result<bool> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
    up.write_all(head)?;
    up.write_all(body)?;
    let mut up_reader = BufReader::new(up);
    let Some((rhead, rlength, rchunked)) = read_head(&mut up_reader)? else { return Ok(false) };
    let status_has_no_body = method == "HEAD" || rhead.starts_with(b"HTTP/1.1 204") || rhead.starts_with(b"HTTP/1.1 304");
    let rbody = if status_has_no_body {
        Vec::new()
    } else if rchunked {
        read_chunked(&mut up_reader)?
    } else if let Some(n) = rlength {
        let mut b = vec![0; n];
        up_reader.read_exact(&mut b)?;
        b
    } else {
        let mut b = Vec::new();
        up_reader.read_to_end(&mut b)?;
        b
    };
    client.write_all(&rhead)?;
    match throttle {
        None => client.write_all(&rbody)?,
        Some(rate) => {
            // 64 KiB at a time, each after the time the rate allows for what was sent.
            let start = std::time::Instant::now();
            let mut sent = 0u64;
            for chunk in rbody.chunks(64 * 1024) {
                client.write_all(chunk)?;
                sent += chunk.len() as u64;
                let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
    }
    Ok(true)
}
