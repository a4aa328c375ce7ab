//! Reading an object from S3 as consecutive byte ranges, several in flight.
//!
//! Why not one GET: one GET carries the object at what one connection carries. AWS's own
//! guidance for S3 is byte-range GETs in parallel; here `s3s-fs` serves one GET at about
//! 90 MiB/s where the AWS CLI's parallel ranges read 150 MiB/s. A restore streams each job's
//! object from one `open`, so one connection was its ceiling. And a GET is one request, so
//! the request timeout (300 s by default) ended any read longer than that: about 26 GiB at
//! 90 MiB/s, far short of a 1 TB blobstore.
//!
//! So an object is read in ranges of the store's part size (8 MiB by default: one request
//! carries at most one part, as when writing), up to [`READ_AHEAD`] of them in flight, each
//! fetched on a task of its own (it progresses while the consumer works) and handed on in
//! order. Every byte is requested once.
//!
//! Memory: a fetched range holds one of the store's [`READS_IN_FLIGHT`] permits until the
//! consumer has taken its last byte, so reads buffer at most `part x READS_IN_FLIGHT` per
//! store however many objects are open. Each object takes its permits in its own order, so
//! its next range holds one before any later range does: a reader never waits on ranges
//! that wait on it.
//!
//! Every range after the first asks `If-Match` the first answer's ETag: an object replaced
//! while it is read fails the read rather than splicing two objects together.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::ops::Range;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

/// Ranges in flight (fetching or fetched, not yet consumed) per object.
pub const READ_AHEAD: usize = 4;
/// Ranges in flight per store, across every object being read.
pub const READS_IN_FLIGHT: usize = 8;
/// A fetched range is handed on in slices of this size; its permit goes with the last.
const SLICE: usize = 256 * 1024;

/// A range's bytes, and the permit they hold until consumed.
type Fetched = (Bytes, OwnedSemaphorePermit);

/// What reads an object in ranges.
pub struct RangedReads {
    pub store: Arc<dyn ObjectStore>,
    pub permits: Arc<Semaphore>,
    /// Bytes per range.
    pub part: u64,
    pub ahead: usize,
}

impl RangedReads {
    /// Opens `path`: the first range is requested now, so a missing object fails here; the
    /// rest are requested as the stream is read.
    pub async fn open(&self, path: &Path) -> object_store::Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let permit = acquire(&self.permits).await;
        let first = match self.store.get_opts(path, ranged(0..self.part, None)).await {
            Ok(r) => r,
            // An empty object has no byte 0 (S3 answers 416 to any range), and a server
            // may ignore ranges: read those whole, in one GET.
            Err(e) if range_unusable(&e) => return Ok(self.store.get(path).await?.into_stream()),
            Err(e) => return Err(e),
        };
        let size = first.meta.size;
        let etag = first.meta.e_tag.clone();
        let expected = first.range.clone();
        let head = AbortOnDropHandle::new(tokio::spawn(async move { Ok((checked(first.bytes().await?, &expected)?, permit)) }));

        let (store, permits, path) = (self.store.clone(), self.permits.clone(), path.clone());
        let rest = stream::iter(ranges_after(self.part, size)).then(move |range| {
            let (store, permits, path, etag) = (store.clone(), permits.clone(), path.clone(), etag.clone());
            // Taken here, in the object's order, before the fetch is started.
            async move {
                let permit = acquire(&permits).await;
                AbortOnDropHandle::new(tokio::spawn(async move {
                    let got = store.get_opts(&path, ranged(range.clone(), etag)).await?.bytes().await?;
                    Ok((checked(got, &range)?, permit))
                }))
            }
        });
        let fetched = stream::once(async move { head }).chain(rest).buffered(self.ahead).map(|joined| match joined {
            Ok(result) => result,
            Err(e) => Err(object_store::Error::JoinError { source: e }),
        });
        Ok(fetched.map_ok(slices).try_flatten().boxed())
    }
}

async fn acquire(permits: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    permits.clone().acquire_owned().await.expect("the read permits are never closed")
}

fn ranged(range: Range<u64>, if_match: Option<String>) -> GetOptions {
    GetOptions { range: Some(GetRange::Bounded(range)), if_match, ..Default::default() }
}

/// The ranges after the first part of an object of `size` bytes.
fn ranges_after(part: u64, size: u64) -> impl Iterator<Item = Range<u64>> + Send + 'static {
    (1..size.div_ceil(part)).map(move |i| i * part..((i + 1) * part).min(size))
}

/// A range's body must be exactly the range: a short one would shift every later byte.
fn checked(got: Bytes, range: &Range<u64>) -> object_store::Result<Bytes> {
    let want = range.end - range.start;
    if got.len() as u64 != want {
        return Err(object_store::Error::Generic {
            store: "S3",
            source: format!("the server sent {} bytes for bytes {}-{} ({want} asked)", got.len(), range.start, range.end - 1).into(),
        });
    }
    Ok(got)
}

/// A first range the server cannot serve as one: 416 (an empty object) or a whole answer.
fn range_unusable(e: &object_store::Error) -> bool {
    let text = format!("{e}");
    ["416", "Range Not Satisfiable", "InvalidRange", "non-partial response"].iter().any(|k| text.contains(k))
}

/// A fetched range as slices, its permit released with the last one.
fn slices((bytes, permit): Fetched) -> BoxStream<'static, object_store::Result<Bytes>> {
    stream::unfold((bytes, Some(permit)), |(mut rest, mut permit)| async move {
        if rest.is_empty() {
            return None;
        }
        let slice = rest.split_to(rest.len().min(SLICE));
        if rest.is_empty() {
            permit = None;
        }
        Some((Ok(slice), (rest, permit)))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object_once() {
        let r: Vec<_> = ranges_after(8, 30).collect();
        assert_eq!(r, vec![8..16, 16..24, 24..30]);
        assert_eq!(ranges_after(8, 8).count(), 0);
        assert_eq!(ranges_after(8, 9).collect::<Vec<_>>(), vec![8..9]);
        assert_eq!(ranges_after(8, 0).count(), 0);
    }

    #[test]
    fn a_short_range_is_an_error() {
        assert!(checked(Bytes::from_static(b"abc"), &(0..3)).is_ok());
        let e = checked(Bytes::from_static(b"ab"), &(8..11)).unwrap_err().to_string();
        assert!(e.contains("2 bytes for bytes 8-10 (3 asked)"), "{e}");
    }

    #[tokio::test]
    async fn slices_hold_the_permit_until_the_last() {
        let permits = Arc::new(Semaphore::new(1));
        let permit = permits.clone().acquire_owned().await.unwrap();
        let mut s = slices((Bytes::from(vec![7u8; SLICE + 10]), permit));
        assert_eq!(s.next().await.unwrap().unwrap().len(), SLICE);
        assert_eq!(permits.available_permits(), 0, "released before the last slice");
        assert_eq!(s.next().await.unwrap().unwrap().len(), 10);
        assert_eq!(permits.available_permits(), 1);
        assert!(s.next().await.is_none());
    }
}
