//! Stream adaptors that count and sha256 the bytes passing through, and report progress.
//! They let the data path checksum on the fly instead of re-reading what it stored.

use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub type Progress = Box<dyn FnMut(u64) + Send>;

/// Counts and hashes what is written through it.
pub struct MeteredWriter<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
    progress: Option<Progress>,
}

impl<W> MeteredWriter<W> {
    pub fn new(inner: W) -> Self {
        MeteredWriter { inner, sha: Sha256::new(), bytes: 0, progress: None }
    }
    /// Calls `f` with the running byte count after every write.
    pub fn with_progress(mut self, f: Progress) -> Self {
        self.progress = Some(f);
        self
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// The inner writer, the byte count and the lowercase hex sha256.
    pub fn into_parts(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.sha.finalize()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for MeteredWriter<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            // Only what the inner writer accepted counts: the rest will be offered again.
            this.sha.update(&buf[..*n]);
            this.bytes += *n as u64;
            if let Some(p) = this.progress.as_mut() {
                p(this.bytes);
            }
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts and hashes what is read through it.
pub struct MeteredReader<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
    progress: Option<Progress>,
}

impl<R> MeteredReader<R> {
    pub fn new(inner: R) -> Self {
        MeteredReader { inner, sha: Sha256::new(), bytes: 0, progress: None }
    }
    pub fn with_progress(mut self, f: Progress) -> Self {
        self.progress = Some(f);
        self
    }
    pub fn into_parts(self) -> (R, u64, String) {
        (self.inner, self.bytes, hex::encode(self.sha.finalize()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MeteredReader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let new = &buf.filled()[before..];
            this.sha.update(new);
            this.bytes += new.len() as u64;
            if let Some(p) = this.progress.as_mut() {
                p(this.bytes);
            }
        }
        poll
    }
}

/// Reports progress at every `step_percent` of `total` (Concourse logs are not terminals:
/// a line per step, not a redrawn bar).
pub fn percent_steps(total: u64, step_percent: u64, mut report: impl FnMut(u64, u64) + Send + 'static) -> Progress {
    let mut next = step_percent;
    Box::new(move |bytes| {
        if total == 0 {
            return;
        }
        let pct = bytes.saturating_mul(100) / total;
        if pct >= next && next < 100 {
            report(bytes, pct.min(99));
            next = (pct / step_percent + 1) * step_percent;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writer_and_reader_hash_the_same_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let expected = hex::encode(Sha256::digest(&data));
        let mut w = MeteredWriter::new(Vec::new());
        w.write_all(&data).await.unwrap();
        let (out, n, sha) = w.into_parts();
        assert_eq!((out.len() as u64, n, sha.as_str()), (data.len() as u64, data.len() as u64, expected.as_str()));

        let mut r = MeteredReader::new(&data[..]);
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        let (_, n, sha) = r.into_parts();
        assert_eq!((n, sha), (data.len() as u64, expected));
    }

    #[test]
    fn percent_steps_report_each_step_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut p = percent_steps(1000, 25, move |_, pct| s.lock().unwrap().push(pct));
        for b in [100, 250, 260, 520, 999, 1000] {
            p(b);
        }
        assert_eq!(*seen.lock().unwrap(), vec![25, 52, 99]);
    }
}
