//! One command on one channel: stdout streamed with backpressure, stdin fed in chunks,
//! stderr capped, the remote process group found from the wrapper's marker and killed when
//! the command is abandoned.

use super::{Reader, Writer};
use anyhow::{bail, Context};
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use super::*;

pub(super) struct Outcome {
    pub(super) code: Option<i32>,
    pub(super) signal: Option<String>,
    pub(super) stderr: Vec<u8>,
    /// The server closed the channel (nothing left to clean up).
    pub(super) closed: bool,
}

/// Runs one command on an open channel: sends the exec request, feeds stdin, streams
/// stdout, collects stderr and the exit status.
pub(super) async fn run_channel(
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

pub(super) fn sig_name(s: &Sig) -> String {
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
pub(super) struct MarkerScan {
    pub(super) pending: Vec<u8>,
    pub(super) done: bool,
}

impl MarkerScan {
    pub(super) const WINDOW: usize = 64 * 1024;

    /// Returns the stderr bytes that can be passed on now.
    pub(super) fn scan(&mut self, data: &[u8], pgid: &AtomicU32) -> Vec<u8> {
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

    pub(super) fn finish(&mut self) -> Vec<u8> {
        self.done = true;
        std::mem::take(&mut self.pending)
    }
}

/// Keeps the first part of stderr and, past the limit, its last part.
#[derive(Default)]
pub(super) struct CappedBuf {
    pub(super) head: Vec<u8>,
    pub(super) tail: std::collections::VecDeque<u8>,
    pub(super) dropped: u64,
}

impl CappedBuf {
    pub(super) fn push(&mut self, data: &[u8]) {
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

    pub(super) fn into_vec(self) -> Vec<u8> {
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
pub(super) struct Reaper {
    pub(super) read: Option<ChannelReadHalf>,
    pub(super) write: Option<ChannelWriteHalf<Msg>>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    pub(super) conn: Option<Arc<Conn>>,
    pub(super) pgid: Arc<AtomicU32>,
    pub(super) root: bool,
}

impl Reaper {
    pub(super) fn halves(&mut self) -> (&mut ChannelReadHalf, &ChannelWriteHalf<Msg>) {
        match (self.read.as_mut(), self.write.as_ref()) {
            (Some(r), Some(w)) => (r, w),
            // Only taken by `disarm` and `drop`, after the last use.
            _ => unreachable!("channel halves taken before use"),
        }
    }

    pub(super) fn disarm(&mut self) {
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
                // Keep reading the abandoned channel while the kill goes out on a second
                // session: russh hands each channel's messages to a bounded queue, and a
                // full queue (a drain cut off mid-stream) stalls the whole connection, so
                // the kill's own session would never open.
                let stop = async {
                    if pgid > 1
                        && let Some(c) = conn.as_ref()
                    {
                        let _ = tokio::time::timeout(Duration::from_secs(30), kill_group(c, root, pgid)).await;
                    }
                    let _ = write.close().await;
                };
                let discard = async {
                    while let Some(msg) = read.wait().await {
                        if matches!(msg, ChannelMsg::Close) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(stop, discard) }).await;
                drop(permit);
                drop(conn);
            });
        }
    }
}
