//! Objects larger than `max_parts x part_size`: with the part-count ceiling lowered (as an
//! S3-compatible server with a low limit has it, and as S3's 10,000 parts are for a 1 TB
//! blobstore at 16 MiB parts), the part size grows so the object still uploads, reads back
//! whole, and the server's own ETag (`<md5>-<parts>`) shows it never used more parts than
//! allowed. An object that cannot fit at all is refused before its first byte.

mod s3_support;

use lockstep::store::s3::S3Store;
use lockstep::store::Store;
use s3_support::{pattern, S3sFs};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The number of parts in the server's ETag for `key`, read with the AWS CLI.
fn parts_of(server: &S3sFs, bucket: &str, key: &str) -> u64 {
    let Some(mut aws) = server.aws() else { panic!("the AWS CLI is missing: run ci/setup") };
    let out = aws.args(["s3api", "head-object", "--bucket", bucket, "--key", key]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let etag = v["ETag"].as_str().unwrap().trim_matches('"').to_string();
    etag.rsplit_once('-').map_or(1, |(_, n)| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_larger_than_max_parts_times_part_size_uploads_and_verifies() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let mut config = server.config("backups", "p");
    config.part_size_mib = Some(5);
    config.max_parts = Some(4);
    let store = S3Store::new(&config).unwrap();
    let data = pattern(40 * 1024 * 1024, 9); // 40 MiB > 4 x 5 MiB
    for (key, hint) in [("a/unsized.bin", None), ("a/sized.bin", Some(data.len() as u64))] {
        let mut w = store.create_sized(key, hint).await.unwrap();
        for chunk in data.chunks(1024 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        assert_eq!(w.commit().await.unwrap(), data.len() as u64);
        let mut back = Vec::new();
        store.open(key).await.unwrap().read_to_end(&mut back).await.unwrap();
        assert_eq!(Sha256::digest(&back), Sha256::digest(&data), "{key} reads back different");
        let parts = parts_of(&server, "backups", &format!("p/{key}"));
        assert!(parts <= 4, "{key} used {parts} parts, more than max_parts");
    }
    // Too big for any upload: refused at once, nothing started on the server.
    let e = store.create_sized("a/huge.bin", Some(6 * 1024 * 1024 * 1024 * 1024)).await.err().expect("refused");
    let e = format!("{e:#}");
    assert!(e.contains("cannot be one S3 object"), "{e}");
    assert!(!server.files().iter().any(|f| f.contains(".upload")), "{:?}", server.files());
}
