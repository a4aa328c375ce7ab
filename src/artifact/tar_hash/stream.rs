//! The tar hasher as stream adaptors: [`HashingWriter`] on the backup path (instance ->
//! store), [`HashingReader`] on the restore path (store -> instance), and [`hash_tar`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use super::*;

/// [`AsyncWrite`] adaptor: every byte written is checksummed and passed on to
/// `inner` unchanged and in order.
///
/// Bytes are hashed only once `inner` has accepted them, so a short write
/// from `inner` cannot get bytes hashed twice when the caller retries.
/// A parse error fails that `poll_write` (and every later one, without
/// writing further) with an `io::Error` of kind `InvalidData` wrapping the
/// [`TarHashError`]; the bytes of that call have already reached `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: TarHasher,
}

impl<W: AsyncWrite + Unpin> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: TarHasher::new(),
        }
    }

    /// The inner writer and the hasher; call `finish()` on the latter.
    pub fn into_parts(self) -> (W, TarHasher) {
        (self.inner, self.hasher)
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The hasher so far, e.g. for progress via `bytes_seen()`.
    pub fn hasher(&self) -> &TarHasher {
        &self.hasher
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.hasher.failure() {
            return Poll::Ready(Err(e.into_io()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.hasher
            .update(&buf[..n.min(buf.len())])
            .map_err(TarHashError::into_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// [`AsyncRead`] adaptor for the restore path (store -> instance): every byte
/// read through it is checksummed. A parse error fails that `poll_read` (the
/// bytes it read are not delivered) and every later one with an `io::Error`
/// of kind `InvalidData` wrapping the [`TarHashError`].
/// Reaching EOF does not check completeness: call `finish()` on the hasher
/// from [`into_parts`](Self::into_parts).
pub struct HashingReader<R> {
    inner: R,
    hasher: TarHasher,
}

impl<R: AsyncRead + Unpin> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: TarHasher::new(),
        }
    }

    /// Checks the tar's structure as [`new`](Self::new) does, without hashing contents
    /// (see [`TarHasher::structure_only`]).
    pub fn structure_only(inner: R) -> Self {
        HashingReader { inner, hasher: TarHasher::structure_only() }
    }

    /// The inner reader and the hasher; call `finish()` on the latter.
    pub fn into_parts(self) -> (R, TarHasher) {
        (self.inner, self.hasher)
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The hasher so far, e.g. for progress via `bytes_seen()`.
    pub fn hasher(&self) -> &TarHasher {
        &self.hasher
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.hasher.failure() {
            return Poll::Ready(Err(e.into_io()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(e) = this.hasher.update(&buf.filled()[before..]) {
            // Un-fill what this call read: a failed read must not deliver
            // bytes (tokio's `read_to_end` even asserts that it does not).
            buf.set_filled(before);
            return Poll::Ready(Err(e.into_io()));
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads a whole tar stream and returns its checksums.
pub async fn hash_tar<R: AsyncRead + Unpin>(mut reader: R) -> Result<Checksums, TarHashError> {
    let mut hasher = TarHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n])?;
    }
    hasher.finish()
}
