//! Reading an S3 object in parallel byte ranges (`src/store/s3_read.rs`), against real
//! servers behind a proxy that sees (and can fault, or slow) every request:
//! - every byte is requested once, several ranges are in flight, the bytes come back whole;
//! - a read longer than the request timeout completes (one GET could not: shown too);
//! - a dropped range is retried and the read is still whole; a range that keeps failing
//!   fails the read, never ends it early;
//! - an object replaced while it is read fails the read (moto checks `If-Match`).

mod s3_support;

use lockstep::store::s3::S3Store;
use lockstep::store::{self, Store};
use s3_support::fault_proxy::{Fault, FaultProxy, Request};
use s3_support::{find_bin, missing, Moto, S3sFs};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

const MIB: usize = 1024 * 1024;
/// `part_size_mib` of the stores below (the smallest S3 allows): the ranges read.
const PART: usize = 5 * MIB;

/// A store on `server`'s bucket `backups`, through `proxy`.
fn store_via(server: &S3sFs, proxy: &FaultProxy, edit: impl FnOnce(&mut lockstep::store::url::S3Config)) -> S3Store {
    let mut config = server.config("backups", "p");
    config.endpoint = Some(proxy.endpoint());
    edit(&mut config);
    S3Store::new(&config).unwrap()
}

/// The `bytes=A-B` ranges of the GETs of `key`, sorted.
fn ranges_read(proxy: &FaultProxy, key: &str) -> Vec<(u64, u64)> {
    let requests = proxy.seen.requests.lock().unwrap().clone();
    let mut out: Vec<(u64, u64)> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.target.ends_with(key))
        .map(|r| range_of(r).unwrap_or_else(|| panic!("a GET without a range: {r:?}")))
        .collect();
    out.sort();
    out
}

async fn read(store: &dyn Store, key: &str) -> std::io::Result<Vec<u8>> {
    let mut r = store.open(key).await.map_err(std::io::Error::other)?;
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// A request's `Range: bytes=A-B`, as (A, B).
fn range_of(r: &Request) -> Option<(u64, u64)> {
    let (a, b) = r.range.as_deref()?.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn range_start(r: &Request) -> Option<u64> {
    range_of(r).map(|(a, _)| a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_is_read_in_parallel_ranges_each_byte_once() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let data = s3_support::pattern(4 * PART + 12_345, 11);
    let direct = S3Store::new(&server.config("backups", "p")).unwrap();
    store::write_all(&direct, "big.tar", &data).await.unwrap();

    // 40 MiB/s per request: a range takes an eighth of a second, so ranges in flight
    // together are seen together.
    let proxy = FaultProxy::start_seeing(server.port, Arc::new(|_: &Request| None), Some(40 * MIB as u64));
    let store = store_via(&server, &proxy, |_| {});
    let got = read(&store, "big.tar").await.unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data), "the bytes read differ from those written");

    // Each byte requested once: the ranges tile the object, one part each.
    let ranges = ranges_read(&proxy, "big.tar");
    assert_eq!(ranges.len(), 5, "{ranges:?}");
    let mut next = 0;
    for (a, b) in &ranges {
        assert_eq!(*a, next, "a gap or an overlap at {a}: {ranges:?}");
        assert!(b - a < PART as u64, "a range above a part: {ranges:?}");
        next = b + 1;
    }
    assert_eq!(next, data.len() as u64, "{ranges:?}");
    let most = proxy.seen.max_concurrent.load(Ordering::SeqCst);
    assert!(most >= 2, "the ranges were read one at a time ({most} at most in flight)");

    // A small object and an empty one: one GET each.
    store::write_all(&direct, "small", b"hello").await.unwrap();
    store::write_all(&direct, "empty", b"").await.unwrap();
    assert_eq!(read(&store, "small").await.unwrap(), b"hello");
    assert_eq!(read(&store, "empty").await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_longer_than_the_request_timeout_completes() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let data = s3_support::pattern(12 * PART, 12);
    store::write_all(&S3Store::new(&server.config("backups", "p")).unwrap(), "slow.tar", &data).await.unwrap();
    // 20 MiB/s per request: a 5 MiB range takes a quarter of a second, the whole 60 MiB
    // object three seconds, against a request timeout of two. As with the defaults (300 s
    // for a request, 180 s to retry), a request past the timeout cannot be retried.
    let proxy = FaultProxy::start_seeing(server.port, Arc::new(|_: &Request| None), Some(20 * MIB as u64));
    let slow = |parts_mib: u64| {
        store_via(&server, &proxy, move |c| {
            c.request_timeout = Some("2s".into());
            c.retry_timeout_seconds = Some(1);
            c.part_size_mib = Some(parts_mib);
        })
    };
    let got = read(&slow(5), "slow.tar").await.unwrap();
    assert!(got == data, "the bytes read differ from those written");

    // One request for the whole object (parts larger than it): the timeout ends it.
    let err = read(&slow(100), "slow.tar").await.unwrap_err().to_string();
    assert!(err.contains("took longer than request_timeout (2s) while reading slow.tar") && err.contains("timed out"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_range_is_retried_and_a_failing_one_fails_the_read() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let data = s3_support::pattern(3 * PART + 7, 13);
    store::write_all(&S3Store::new(&server.config("backups", "p")).unwrap(), "x.tar", &data).await.unwrap();

    // The second range's connection is dropped once: retried, and the read is whole.
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let proxy = FaultProxy::start_seeing(
        server.port,
        Arc::new(move |r: &Request| (range_start(r) == Some(PART as u64) && d.fetch_add(1, Ordering::SeqCst) == 0).then_some(Fault::Drop)),
        None,
    );
    let got = read(&store_via(&server, &proxy, |_| {}), "x.tar").await.unwrap();
    assert_eq!(proxy.faults.load(Ordering::SeqCst), 1);
    assert!(got == data, "a retried range changed the bytes");

    // The third range fails every time: the read fails (after the retries), and what it
    // returned before failing is short of the object, never taken for the whole.
    let proxy = FaultProxy::start_seeing(
        server.port,
        Arc::new(|r: &Request| (range_start(r) == Some(2 * PART as u64)).then_some(Fault::Status500)),
        None,
    );
    let store = store_via(&server, &proxy, |_| {});
    let mut r = store.open("x.tar").await.unwrap();
    let mut got = Vec::new();
    let err = r.read_to_end(&mut got).await.unwrap_err().to_string();
    assert!(got.len() <= 2 * PART, "read {} bytes past the failed range", got.len());
    assert!(err.contains("reading x.tar"), "{err}");
    assert!(proxy.faults.load(Ordering::SeqCst) >= 2, "the failing range was not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_replaced_while_read_fails_the_read() {
    let Some(moto) = Moto::start() else { return };
    let mut config = moto.config("replaced", "p");
    config.part_size_mib = Some(5);
    let store = S3Store::new(&config).unwrap();
    let Some(aws) = find_bin("aws") else { return missing("aws (ci/.venv)") };
    let mk = std::process::Command::new(aws)
        .args(["--endpoint-url", &moto.endpoint(), "s3", "mb", "s3://replaced"])
        .envs([("AWS_ACCESS_KEY_ID", "moto-key"), ("AWS_SECRET_ACCESS_KEY", "moto-secret"), ("AWS_DEFAULT_REGION", s3_support::REGION)])
        .output()
        .unwrap();
    assert!(mk.status.success(), "{}", String::from_utf8_lossy(&mk.stderr));
    let first = s3_support::pattern(3 * PART, 14);
    store::write_all(&store, "obj.tar", &first).await.unwrap();

    // Opened: the first range is read with the first object's ETag. Then the object is
    // replaced, and the rest is asked `If-Match` that ETag.
    let mut r = store.open("obj.tar").await.unwrap();
    store::write_all(&store, "obj.tar", &s3_support::pattern(3 * PART, 15)).await.unwrap();
    let mut got = Vec::new();
    let err = r.read_to_end(&mut got).await.unwrap_err().to_string();
    assert!(err.contains("obj.tar was replaced in the bucket while it was read"), "{err}");
    assert!(got.len() <= PART && got[..] == first[..got.len()], "read {} bytes, or bytes of the new object", got.len());
}
