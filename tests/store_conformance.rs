//! The store conformance suite: every `Store` implementation runs the same cases, the
//! local directory store and the S3 store (against a real `s3s-fs`, which checks request
//! signatures). Round trips of empty and multi-part streams, visibility only on commit,
//! abort and drop leaving nothing (no object, no part file), listing order and prefix
//! semantics, delete, missing keys, and the artifact commit protocol on top.
//!
//! The multi-GiB round trip with a memory bound is in `tests/s3_large.rs` (it measures
//! the process's peak RSS, so it runs in its own test binary).

mod s3_support;

use lockstep::artifact::marker::{CommitMarker, FORMAT_VERSION};
use lockstep::artifact::stored::{self, ArtifactWriter};
use lockstep::artifact::BackupMetadata;
use lockstep::store::local::LocalStore;
use lockstep::store::s3::S3Store;
use lockstep::store::{self, NotFound, Store};
use s3_support::S3sFs;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    store: Box<dyn Store>,
    /// Every file the store's backing directory holds (objects and partial uploads).
    files: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Fixture {
    fn local() -> Fixture {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("store");
        let walk_root = root.clone();
        Fixture { store: Box::new(LocalStore::new(root)), files: Box::new(move || s3_support::walk(&walk_root)), _guard: Box::new(dir) }
    }

    fn s3() -> Option<Fixture> {
        let server = S3sFs::start()?;
        server.bucket("conformance");
        // A prefix, so key mapping under a prefix is exercised too.
        let store = S3Store::new(&server.config("conformance", "team/backups")).unwrap();
        let root = server.root.path().to_path_buf();
        Some(Fixture { store: Box::new(store), files: Box::new(move || s3_support::walk(&root)), _guard: Box::new(server) })
    }
}

const PART: usize = 5 * 1024 * 1024;

async fn put_stream(store: &dyn Store, key: &str, data: &[u8], chunk: usize) -> u64 {
    let mut w = store.create(key).await.unwrap();
    for c in data.chunks(chunk.max(1)) {
        w.write_all(c).await.unwrap();
    }
    w.shutdown().await.unwrap();
    w.commit().await.unwrap()
}

async fn sha_of(store: &dyn Store, key: &str) -> (u64, String) {
    let mut r = store.open(key).await.unwrap();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        sha.update(&buf[..k]);
        n += k as u64;
    }
    (n, hex::encode(sha.finalize()))
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotFound>().is_some()
}

async fn eventually_empty(f: &Fixture, what: &str) {
    let start = Instant::now();
    loop {
        let files = (f.files)();
        let listed = f.store.list("").await.unwrap();
        if files.is_empty() && listed.is_empty() {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("{what}: left behind files {files:?}, listed {listed:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the cases ----

async fn empty_object_round_trips(f: &Fixture) {
    assert_eq!(put_stream(f.store.as_ref(), "a/empty", b"", 1).await, 0);
    assert_eq!(store::read_all(f.store.as_ref(), "a/empty").await.unwrap(), b"");
    let listed = f.store.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].key.as_str(), listed[0].size), ("a/empty", 0));
}

async fn multi_part_stream_round_trips(f: &Fixture) {
    // Three parts and a bit, written in odd-sized chunks.
    let data = s3_support::pattern(3 * PART + 12_345, 7);
    let want = hex::encode(Sha256::digest(&data));
    assert_eq!(put_stream(f.store.as_ref(), "big/object.tar", &data, 1_000_003).await, data.len() as u64);
    assert_eq!(sha_of(f.store.as_ref(), "big/object.tar").await, (data.len() as u64, want));
    // Exactly one part, and a small object: the boundaries.
    let one = s3_support::pattern(PART, 8);
    put_stream(f.store.as_ref(), "big/one-part", &one, PART).await;
    assert_eq!(store::read_all(f.store.as_ref(), "big/one-part").await.unwrap(), one);
    put_stream(f.store.as_ref(), "big/small", b"hello", 2).await;
    assert_eq!(store::read_all(f.store.as_ref(), "big/small").await.unwrap(), b"hello");
}

async fn not_visible_until_committed(f: &Fixture) {
    let data = s3_support::pattern(PART + 100, 3);
    let mut w = f.store.create("obj/pending").await.unwrap();
    w.write_all(&data).await.unwrap();
    w.shutdown().await.unwrap();
    assert!(f.store.list("").await.unwrap().is_empty(), "visible before commit");
    assert!(is_not_found(&f.store.open("obj/pending").await.err().unwrap()));
    assert_eq!(w.commit().await.unwrap(), data.len() as u64);
    assert_eq!(f.store.list("obj/").await.unwrap().len(), 1);
    assert_eq!(store::read_all(f.store.as_ref(), "obj/pending").await.unwrap(), data);
}

async fn abort_leaves_nothing(f: &Fixture) {
    // Small (never sent) and multi-part (parts uploaded, then aborted).
    for size in [10, 2 * PART + 1] {
        let mut w = f.store.create("obj/aborted").await.unwrap();
        w.write_all(&s3_support::pattern(size, 1)).await.unwrap();
        w.abort().await;
        assert!(is_not_found(&f.store.open("obj/aborted").await.err().unwrap()));
        eventually_empty(f, "abort").await;
    }
    // Aborted after shutdown (every part uploaded; the checksum test failed, say).
    let mut w = f.store.create("obj/aborted").await.unwrap();
    w.write_all(&s3_support::pattern(2 * PART + 1, 1)).await.unwrap();
    w.shutdown().await.unwrap();
    w.abort().await;
    eventually_empty(f, "abort after shutdown").await;
}

async fn drop_leaves_nothing(f: &Fixture) {
    let mut w = f.store.create("obj/dropped").await.unwrap();
    w.write_all(&s3_support::pattern(2 * PART + 1, 2)).await.unwrap();
    drop(w);
    eventually_empty(f, "drop").await;
}

async fn listing_is_sorted_and_prefixes_are_plain_string_prefixes(f: &Fixture) {
    for k in ["b/2", "a/10", "a/2", "a/1", "ab/x", "a/sub/deep", "c_20240101T000000Z/lockstep.json"] {
        put_stream(f.store.as_ref(), k, k.as_bytes(), 3).await;
    }
    let keys = |v: Vec<lockstep::store::ObjectInfo>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
    assert_eq!(
        keys(f.store.list("").await.unwrap()),
        vec!["a/1", "a/10", "a/2", "a/sub/deep", "ab/x", "b/2", "c_20240101T000000Z/lockstep.json"]
    );
    assert_eq!(keys(f.store.list("a/").await.unwrap()), vec!["a/1", "a/10", "a/2", "a/sub/deep"]);
    assert_eq!(keys(f.store.list("a").await.unwrap()), vec!["a/1", "a/10", "a/2", "a/sub/deep", "ab/x"]);
    assert_eq!(keys(f.store.list("a/1").await.unwrap()), vec!["a/1", "a/10"]);
    assert!(f.store.list("zzz/").await.unwrap().is_empty());
    let sizes: BTreeMap<String, u64> = f.store.list("").await.unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    assert_eq!(sizes["a/sub/deep"], 10);
}

async fn delete_is_idempotent_and_overwrite_replaces(f: &Fixture) {
    put_stream(f.store.as_ref(), "d/x", b"v1", 2).await;
    put_stream(f.store.as_ref(), "d/x", b"version 2", 4).await;
    assert_eq!(store::read_all(f.store.as_ref(), "d/x").await.unwrap(), b"version 2");
    f.store.delete("d/x").await.unwrap();
    assert!(is_not_found(&f.store.open("d/x").await.err().unwrap()));
    f.store.delete("d/x").await.unwrap();
    f.store.delete("never/was").await.unwrap();
    assert!(f.store.list("").await.unwrap().is_empty());
}

async fn missing_and_invalid_keys_are_clear_errors(f: &Fixture) {
    let e = f.store.open("no/such").await.err().unwrap();
    assert!(is_not_found(&e), "{e:#}");
    assert!(e.to_string().contains("no/such"), "{e}");
    for bad in ["../x", "/abs", "a//b", "", "a/./b"] {
        assert!(f.store.create(bad).await.is_err(), "{bad:?} accepted");
        assert!(f.store.open(bad).await.is_err(), "{bad:?} accepted");
    }
    f.store.preflight().await.unwrap();
}

async fn artifacts_exist_only_once_committed(f: &Fixture) {
    let store = f.store.as_ref();
    let name = "cf_20240102T030405Z";
    let w = ArtifactWriter::new(store, name);
    let mut obj = w.create("web-0-nginx.tar").await.unwrap();
    obj.write_all(b"not really a tar").await.unwrap();
    obj.shutdown().await.unwrap();
    obj.commit().await.unwrap();
    // Objects without the marker: not an artifact.
    assert!(stored::list(store).await.unwrap().is_empty());
    assert!(stored::open(store, name, false).await.is_err());
    let marker = CommitMarker {
        format_version: FORMAT_VERSION,
        started_at: "2024-01-02T03:04:05Z".into(),
        finished_at: "2024-01-02T03:05:05Z".into(),
        ..CommitMarker::new("cf", name)
    };
    w.commit(&BackupMetadata::default(), marker).await.unwrap();
    assert_eq!(stored::list(store).await.unwrap(), vec![name.to_string()]);
    // A second, uncommitted artifact stays invisible; discard removes it all.
    let w2 = ArtifactWriter::new(store, "cf_20240103T000000Z");
    w2.put("x.tar", b"x").await.unwrap();
    assert_eq!(stored::list(store).await.unwrap(), vec![name.to_string()]);
    w2.discard().await.unwrap();
    assert!(store.list("cf_20240103T000000Z/").await.unwrap().is_empty());
}

/// A conditional create refuses a key that exists and keeps its bytes.
async fn put_if_absent_refuses_an_existing_key(f: &Fixture) {
    let store = f.store.as_ref();
    assert!(store.put_if_absent("leases/cf.json", b"first").await.unwrap());
    assert!(!store.put_if_absent("leases/cf.json", b"late").await.unwrap());
    assert_eq!(store::read_all(store, "leases/cf.json").await.unwrap(), b"first");
    assert_eq!(store.list("leases/").await.unwrap().len(), 1, "no temporary file is listed");
    store.delete("leases/cf.json").await.unwrap();
    assert!(store.put_if_absent("leases/cf.json", b"again").await.unwrap());
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = super::Fixture::local();
                    super::$case(&f).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(f) = super::Fixture::s3() else { return };
                    super::$case(&f).await;
                }
            )*
        }
    };
}

conformance!(
    empty_object_round_trips,
    multi_part_stream_round_trips,
    not_visible_until_committed,
    abort_leaves_nothing,
    drop_leaves_nothing,
    listing_is_sorted_and_prefixes_are_plain_string_prefixes,
    delete_is_idempotent_and_overwrite_replaces,
    missing_and_invalid_keys_are_clear_errors,
    artifacts_exist_only_once_committed,
    put_if_absent_refuses_an_existing_key,
);

/// Of many writers racing to create one key, exactly one succeeds and its bytes stay. The
/// local store only: s3s-fs, the S3 server here, checks `If-None-Match` and then writes,
/// so racers all win there (8 of 8, measured); AWS S3 and MinIO decide it atomically.
/// Each writer is its own thread with its own store value, released at once by a barrier,
/// as two lockstep processes would be.
#[test]
fn local_put_if_absent_has_exactly_one_winner() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("store");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (root, barrier) = (root.clone(), barrier.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let data = format!("writer {i}");
                barrier.wait();
                let won = rt.block_on(LocalStore::new(root).put_if_absent("leases/cf.json", data.as_bytes())).unwrap();
                (data, won)
            })
        })
        .collect();
    let tries: Vec<(String, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<&String> = tries.iter().filter(|(_, won)| *won).map(|(d, _)| d).collect();
    assert_eq!(winners.len(), 1, "{tries:?}");
    assert_eq!(std::fs::read(root.join("leases/cf.json")).unwrap(), winners[0].as_bytes());
    assert_eq!(s3_support::walk(&root).len(), 1, "no temporary file left");
}
