//! A GiB-scale stream through each store with bounded memory: the S3 store (multipart
//! against a real `s3s-fs`) and the local store round-trip `LOCKSTEP_LARGE_MIB` MiB
//! (default 2048) of generated data, and the process's peak RSS must stay far below the
//! stream's size. Alone in its own test binary so the peak RSS is this test's.

mod s3_support;

use lockstep::store::local::LocalStore;
use lockstep::store::s3::S3Store;
use lockstep::store::Store;
use sha2::{Digest, Sha256};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Writes `mib` MiB (each MiB different) and reads it back; returns both sha256s.
async fn round_trip(store: &dyn Store, key: &str, mib: usize) -> (String, String) {
    let mut block = s3_support::pattern(MIB, 11);
    let mut w = store.create(key).await.unwrap();
    let mut sha = Sha256::new();
    for i in 0..mib {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sha.update(&block);
        // Uneven writes, as a tar stream arrives.
        let (a, b) = block.split_at(300_007);
        w.write_all(a).await.unwrap();
        w.write_all(b).await.unwrap();
    }
    w.shutdown().await.unwrap();
    assert_eq!(w.commit().await.unwrap(), (mib * MIB) as u64);
    let written = hex::encode(sha.finalize());

    let mut r = store.open(key).await.unwrap();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0usize;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        sha.update(&buf[..k]);
        n += k;
    }
    assert_eq!(n, mib * MIB);
    (written, hex::encode(sha.finalize()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gib_scale_streams_round_trip_with_bounded_memory() {
    let mib: usize = std::env::var("LOCKSTEP_LARGE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    let Some(server) = s3_support::S3sFs::start() else { return };
    server.bucket("large");
    // The default part size (8 MiB), as production uses.
    let mut config = server.config("large", "p");
    config.part_size_mib = None;
    let s3 = S3Store::new(&config).unwrap();
    let start = Instant::now();
    let (w, r) = round_trip(&s3, "big/stream.tar", mib).await;
    assert_eq!(w, r);
    eprintln!("S3: {mib} MiB round trip in {:.1}s", start.elapsed().as_secs_f64());
    s3.delete("big/stream.tar").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path());
    let start = Instant::now();
    let (w, r) = round_trip(&local, "big/stream.tar", mib).await;
    assert_eq!(w, r);
    eprintln!("local: {mib} MiB round trip in {:.1}s", start.elapsed().as_secs_f64());

    let peak = peak_rss_mib();
    eprintln!("peak RSS: {peak} MiB for a {mib} MiB stream");
    // 8 MiB parts x (4 in flight + 1 filling) is about 40 MiB; the test binary itself
    // takes a few tens.
    assert!(peak < 128, "peak RSS {peak} MiB: the stream is being buffered");
}
