//! `Relay`: an `AsyncWrite` that hands what is written to a task of its own, which writes it
//! into the real writer. A stage of a data path behind a relay runs on another runtime
//! worker, in parallel with the stages in front of it.
//!
//! Why: a backup's drain does, per byte, the SSH decryption (russh's connection task), the
//! per-file SHA-256 for bbr's `metadata`, then compression, encryption and the stored
//! object's SHA-256. In one task the hashes alone cost about 1.4 CPU s per GiB, in series
//! with the receive. With a relay after the per-file hash, compression and the stored hash
//! run beside it: on a worker with two cores or more the drain's wall time approaches its
//! slowest stage, not the sum (`cargo bench --bench drain`, docs/performance.md).
//!
//! Bytes travel in chunks of [`CHUNK`] through a queue of [`DEPTH`] chunks, so a relay holds
//! at most (DEPTH + 2) * CHUNK bytes; emptied chunks come back to the writer and are reused.
//! A write error of the inner writer is returned by the next write, flush or shutdown. If
//! the relay is dropped before [`Relay::finish`], its task is aborted and the inner writer
//! dropped unfinished (a store object then removes itself).
//!
//! [`RelayReader`] is the same for reading: a task reads (a plain stored object's GET and
//! its SHA-256, `artifact::stored::open_decoded`) ahead of the reader, which checks the tar
//! (and, for a bbr-made artifact, hashes its files) and feeds the instance. An encoded object needs none: its decoder runs on a
//! thread of its own.

use std::io;
use std::pin::Pin;
use std::future::Future;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tokio_util::task::AbortOnDropHandle;

/// Bytes per hand-off: large enough that the queue costs nothing per byte (a few hand-offs
/// per MiB), small enough to keep both sides busy.
pub const CHUNK: usize = 256 * 1024;
/// Chunks queued between the two sides.
pub const DEPTH: usize = 4;

enum Message {
    Data(Vec<u8>),
    /// Everything was written: shut the inner writer down.
    End,
}

pub struct Relay<W> {
    tx: Option<PollSender<Message>>,
    /// The chunk being filled.
    pending: Vec<u8>,
    /// Emptied chunks, back from the task.
    spares: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Aborted if the relay is dropped unfinished.
    task: Option<AbortOnDropHandle<(W, io::Result<()>)>>,
    /// The task's outcome, once it ended.
    ended: Option<(W, io::Result<()>)>,
    shut: bool,
}

impl<W: AsyncWrite + Unpin + Send + 'static> Relay<W> {
    /// Starts the task that writes into `inner`. Needs a Tokio runtime.
    pub fn spawn(inner: W) -> Relay<W> {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (spare_tx, spares) = mpsc::unbounded_channel();
        let task = AbortOnDropHandle::new(tokio::spawn(drive(inner, rx, spare_tx)));
        Relay { tx: Some(PollSender::new(tx)), pending: Vec::with_capacity(CHUNK), spares, task: Some(task), ended: None, shut: false }
    }

    /// Ends the relay and returns the inner writer with the outcome: `Ok` only if every
    /// byte was written and the inner writer shut down (after a successful `shutdown`), or
    /// the first error. Without a prior `shutdown`, the inner writer is not shut down.
    pub async fn finish(mut self) -> (W, io::Result<()>) {
        // Closing the queue without `End` tells the task to stop without a shutdown.
        self.tx = None;
        std::future::poll_fn(|cx| self.poll_ended(cx)).await;
        let (inner, result) = self.ended.take().expect("the task's outcome");
        let result = match result {
            Ok(()) if !self.shut => Err(io::Error::other("the relay was not shut down")),
            r => r,
        };
        (inner, result)
    }

    /// Polls the task to its end (after the queue closed or failed).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ended.is_none() {
            let task = self.task.as_mut().expect("the relay's task");
            let ended = match ready!(Pin::new(task).poll(cx)) {
                Ok(ended) => ended,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("a relay's task was cancelled: {e}"),
            };
            self.task = None;
            self.ended = Some(ended);
        }
        Poll::Ready(())
    }

    /// The task's error, once it ended with one (or a generic one if it ended early).
    fn task_error(&self) -> io::Error {
        match &self.ended {
            Some((_, Err(e))) => io::Error::new(e.kind(), e.to_string()),
            _ => io::Error::new(io::ErrorKind::BrokenPipe, "the relay's writer ended early"),
        }
    }

    /// Queues `msg`; on a closed queue, waits for the task and returns its error.
    fn poll_send(&mut self, cx: &mut Context<'_>, msg: impl FnOnce(&mut Self) -> Message) -> Poll<io::Result<()>> {
        let Some(tx) = self.tx.as_mut() else {
            // Closed: by a failure of the task (its error again), or by a shutdown.
            return Poll::Ready(Err(match self.ended {
                Some((_, Err(_))) => self.task_error(),
                _ => io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown"),
            }));
        };
        if ready!(tx.poll_reserve(cx)).is_ok() {
            let m = msg(self);
            if self.tx.as_mut().expect("the queue").send_item(m).is_ok() {
                return Poll::Ready(Ok(()));
            }
        }
        self.tx = None;
        ready!(self.poll_ended(cx));
        Poll::Ready(Err(self.task_error()))
    }

    /// Hands the pending chunk over, if it holds anything.
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_send(cx, |r| {
            let next = r.spares.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            Message::Data(std::mem::replace(&mut r.pending, next))
        }))?;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Relay<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() >= CHUNK {
            ready!(this.poll_hand_over(cx))?;
        }
        let n = buf.len().min(CHUNK - this.pending.len());
        this.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    /// Hands over what is pending: the bytes are then the task's, not yet the inner writer's
    /// (only `shutdown` waits for those).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_hand_over(cx)
    }

    /// Hands over what is pending, tells the task to shut the inner writer down, and waits
    /// for it.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.shut {
            ready!(this.poll_hand_over(cx))?;
            ready!(this.poll_send(cx, |_| Message::End))?;
            this.shut = true;
            this.tx = None;
        }
        ready!(this.poll_ended(cx));
        match &this.ended {
            Some((_, Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err(this.task_error())),
        }
    }
}

/// The task: writes every chunk into `inner`, returns emptied chunks, and on `End` shuts
/// `inner` down. Stops at the first error, or when the queue closes without `End`.
async fn drive<W: AsyncWrite + Unpin>(mut inner: W, mut rx: mpsc::Receiver<Message>, spares: mpsc::UnboundedSender<Vec<u8>>) -> (W, io::Result<()>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Message::Data(mut chunk) => {
                if let Err(e) = inner.write_all(&chunk).await {
                    return (inner, Err(e));
                }
                chunk.clear();
                let _ = spares.send(chunk);
            }
            Message::End => {
                let shut = inner.shutdown().await;
                return (inner, shut);
            }
        }
    }
    (inner, Ok(()))
}

/// An `AsyncRead` whose bytes a task of its own reads from the inner reader, up to
/// [`DEPTH`] chunks of [`CHUNK`] ahead. The inner reader's error is returned in order, after
/// the bytes read before it. Dropping it aborts the task (and drops the inner reader).
pub struct RelayReader {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    /// The chunk being read from.
    current: bytes::Bytes,
    /// Aborted when the reader is dropped.
    _task: AbortOnDropHandle<()>,
}

impl RelayReader {
    /// Starts the task that reads `inner`. Needs a Tokio runtime.
    pub fn spawn<R: tokio::io::AsyncRead + Unpin + Send + 'static>(mut inner: R) -> RelayReader {
        let (tx, rx) = mpsc::channel(DEPTH);
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            let failed = relay_chunks(&mut inner, &tx).await;
            // The inner reader goes before the queue closes: what its drop records (a stored
            // object's size and sha256: artifact::stored::open_decoded) is there by the time
            // the reader sees the end.
            drop(inner);
            if let Some(e) = failed {
                let _ = tx.send(Err(e)).await;
            }
        }));
        RelayReader { rx, current: bytes::Bytes::new(), _task: task }
    }
}

/// Sends `inner`'s bytes in chunks of [`CHUNK`] until its end, its error (returned, after
/// the bytes read before it were sent) or a reader that went away.
async fn relay_chunks<R: tokio::io::AsyncRead + Unpin>(inner: &mut R, tx: &mpsc::Sender<io::Result<bytes::Bytes>>) -> Option<io::Error> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut chunk = bytes::BytesMut::with_capacity(CHUNK);
        // Fill the chunk (or reach the end): fewer, larger hand-offs.
        let read = async {
            while chunk.len() < CHUNK {
                if inner.read_buf(&mut chunk).await? == 0 {
                    break;
                }
            }
            io::Result::Ok(())
        }
        .await;
        let end = chunk.len() < CHUNK;
        if !chunk.is_empty() && tx.send(Ok(chunk.freeze())).await.is_err() {
            return None;
        }
        match read {
            Err(e) => return Some(e),
            Ok(()) if end => return None,
            Ok(()) => {}
        }
    }
}

impl tokio::io::AsyncRead for RelayReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.current.is_empty() {
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => this.current = chunk,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // The task ended: the inner reader's end (or a panic, which has no bytes
                // to give: the tar or checksum check downstream fails on a short stream).
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(this.current.len());
        buf.put_slice(&this.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what it is given; fails after `fail_after` bytes if set.
    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        shut: Arc<Mutex<bool>>,
        fail_after: Option<usize>,
    }

    impl AsyncWrite for Sink {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let mut got = self.got.lock().unwrap();
            if let Some(limit) = self.fail_after
                && got.len() + buf.len() > limit
            {
                return Poll::Ready(Err(io::Error::other("disk full")));
            }
            got.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            *self.shut.lock().unwrap() = true;
            Poll::Ready(Ok(()))
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_byte_arrives_in_order_and_the_inner_writer_is_shut_down() {
        let sink = Sink::default();
        let mut relay = Relay::spawn(sink.clone());
        let want = data(3 * CHUNK + 12345);
        // Odd write sizes cross the chunk boundaries.
        for piece in want.chunks(7777) {
            relay.write_all(piece).await.unwrap();
        }
        relay.shutdown().await.unwrap();
        let (_, result) = relay.finish().await;
        result.unwrap();
        assert_eq!(*sink.got.lock().unwrap(), want);
        assert!(*sink.shut.lock().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inner_error_reaches_the_writer_and_finish() {
        let sink = Sink { fail_after: Some(CHUNK + 10), ..Default::default() };
        let mut relay = Relay::spawn(sink.clone());
        let mut failed = None;
        for piece in data(20 * CHUNK).chunks(4096) {
            if let Err(e) = relay.write_all(piece).await {
                failed = Some(e);
                break;
            }
        }
        let failed = match failed {
            Some(e) => e,
            None => relay.shutdown().await.expect_err("the inner writer failed"),
        };
        assert!(failed.to_string().contains("disk full"), "{failed}");
        let again = relay.shutdown().await.expect_err("a failed relay cannot be shut down cleanly");
        assert!(again.to_string().contains("disk full"), "the task's error again, not {again}");
        let (_, result) = relay.finish().await;
        assert!(result.unwrap_err().to_string().contains("disk full"));
        assert!(!*sink.shut.lock().unwrap(), "a failed writer is not shut down");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relayed_reader_gives_every_byte_then_the_inner_error_in_order() {
        use tokio::io::AsyncReadExt;
        let want = data(3 * CHUNK + 999);
        let mut all = Vec::new();
        RelayReader::spawn(std::io::Cursor::new(want.clone())).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, want);

        let failing = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(want[..CHUNK + 5].to_vec()), Failing);
        let mut r = RelayReader::spawn(failing);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.to_string(), "store went away");
        assert_eq!(got, want[..CHUNK + 5], "the bytes before the error, all of them");
    }

    /// Records its own drop.
    struct Recording(std::io::Cursor<Vec<u8>>, Arc<std::sync::atomic::AtomicBool>);
    impl tokio::io::AsyncRead for Recording {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl Drop for Recording {
        fn drop(&mut self) {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inner_reader_is_dropped_before_the_end_is_seen() {
        use tokio::io::AsyncReadExt;
        for _ in 0..50 {
            let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut r = RelayReader::spawn(Recording(std::io::Cursor::new(data(CHUNK + 17)), dropped.clone()));
            let mut all = Vec::new();
            r.read_to_end(&mut all).await.unwrap();
            assert_eq!(all.len(), CHUNK + 17);
            assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the end was seen before the inner reader's drop");
        }
    }

    struct Failing;
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::other("store went away")))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finishing_without_shutdown_leaves_the_inner_writer_unfinished() {
        let sink = Sink::default();
        let mut relay = Relay::spawn(sink.clone());
        relay.write_all(&data(CHUNK * 2)).await.unwrap();
        let (_, result) = relay.finish().await;
        assert!(result.is_err(), "no shutdown: not a complete write");
        assert!(!*sink.shut.lock().unwrap());
    }
}
