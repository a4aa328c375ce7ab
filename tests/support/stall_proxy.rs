//! A TCP forwarder that can stall: in front of a real sshd it stands for the network between
//! lockstep and an instance. While stalled nothing moves in either direction and new
//! connections are accepted but not forwarded, as a network that drops every packet looks
//! to both ends (the bytes wait in the kernel buffers; no reset, no close). Resumed, the
//! connections that are still open carry on and new ones reach the server.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub struct StallProxy {
    pub port: u16,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl StallProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`ip:port`).
    pub fn start(upstream: &str) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (st, sp, ac, up) = (stalled.clone(), stop.clone(), accepted.clone(), upstream.to_string());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                ac.fetch_add(1, Ordering::SeqCst);
                let (st, sp, up) = (st.clone(), sp.clone(), up.clone());
                thread::spawn(move || forward(client, &up, &st, &sp));
            }
        });
        StallProxy { port, stalled, stop, accepted }
    }

    /// `127.0.0.1:port`, for an inventory's `address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

fn wait_while_stalled(stalled: &AtomicBool, stop: &AtomicBool) -> bool {
    while stalled.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    !stop.load(Ordering::SeqCst)
}

fn forward(client: TcpStream, upstream: &str, stalled: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    // A connection made during a stall is held, not forwarded, until the stall ends.
    if !wait_while_stalled(stalled, stop) {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let pairs = [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)];
    let handles: Vec<_> = pairs
        .into_iter()
        .map(|(from, to)| {
            let (stalled, stop) = (stalled.clone(), stop.clone());
            thread::spawn(move || pump(from, to, &stalled, &stop))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// Copies `from` into `to` in small reads, checking for a stall before each one, so a
/// stall holds the bytes in the kernel instead of passing them on.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if !wait_while_stalled(stalled, stop) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Bytes read just as the stall began are held until it ends.
                if !wait_while_stalled(stalled, stop) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
