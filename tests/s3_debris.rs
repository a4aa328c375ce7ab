//! Stores never keep debris: when an upload fails for good (a part refused on every retry,
//! a connection dropped on every retry), the multipart upload is aborted and its parts are
//! gone from the server. The server's own state is the judge: s3s-fs keeps each open
//! multipart upload as `.upload-<id>.json` files under its root until it is completed or
//! aborted.

mod s3_support;

use lockstep::store::s3::S3Store;
use lockstep::store::Store;
use s3_support::fault_proxy::{Fault, FaultProxy};
use s3_support::S3sFs;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Files s3s-fs keeps for multipart uploads still open.
fn open_uploads(server: &S3sFs) -> Vec<String> {
    server.files().into_iter().filter(|f| f.contains(".upload")).collect()
}

async fn failing_upload(fault: Fault) {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    // Refuse every part after the first: the upload can never complete.
    let proxy = FaultProxy::start(
        server.port,
        Arc::new(move |method: &str, target: &str| {
            let part = target.split(['?', '&']).find_map(|kv| kv.strip_prefix("partNumber=")).and_then(|n| n.parse::<u32>().ok());
            (method == "PUT" && part.is_some_and(|n| n >= 2)).then_some(fault)
        }),
    );
    let mut config = server.config("backups", "p");
    config.endpoint = Some(proxy.endpoint());
    config.max_retries = Some(1);
    config.retry_timeout_seconds = Some(3);
    let store = S3Store::new(&config).unwrap();
    let mut w = store.create("cf_20261201T000000Z/big.tar").await.unwrap();
    let data = vec![7u8; 5 * 1024 * 1024];
    let mut failed = None;
    for _ in 0..6 {
        if let Err(e) = w.write_all(&data).await {
            failed = Some(e);
            break;
        }
    }
    let failed = match failed {
        Some(e) => e.to_string(),
        None => w.shutdown().await.expect_err("the upload cannot complete").to_string(),
    };
    assert!(failed.contains("uploading a part"), "{failed}");
    assert!(proxy.faults.load(Ordering::SeqCst) > 0, "no fault was injected");
    // What a failed drain does with its writer.
    w.abort().await;
    assert_eq!(open_uploads(&server), Vec::<String>::new(), "the failed upload was not aborted: {:?}", server.files());
    assert!(store.list("").await.unwrap().is_empty(), "nothing is visible");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_refused_on_every_retry_aborts_the_upload() {
    failing_upload(Fault::Status500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_on_every_retry_aborts_the_upload() {
    failing_upload(Fault::Drop).await;
}

/// An object that vanishes while the backup runs (here: deleted on the server the moment
/// the commit begins, as a prune or a lifecycle rule would) is noticed before the commit
/// marker is written: the backup fails and nothing is committed.
#[test]
fn an_object_that_vanished_before_the_commit_is_not_committed() {
    use assert_cmd::Command;
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let root = server.object_path("backups", "");
    let deleted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = deleted.clone();
    let proxy = FaultProxy::start(
        server.port,
        Arc::new(move |method: &str, target: &str| {
            if method == "PUT" && target.split('?').next().unwrap_or_default().ends_with("/metadata") {
                for f in s3_support::walk(&root) {
                    if f.ends_with("db-0-postgres.tar.zst") {
                        std::fs::remove_file(root.join(&f)).unwrap();
                        flag.store(true, Ordering::SeqCst);
                    }
                }
            }
            None
        }),
    );
    let tmp = tempfile::TempDir::new().unwrap();
    let src = lockstep::frontend::demo::create_deployment(&tmp.path().join("src"), true).unwrap();
    let url = format!("s3://backups/p?endpoint={}&region_name=us-east-1&max_retries=1", proxy.endpoint());
    let mut c = Command::cargo_bin("lockstep").unwrap();
    c.envs(server.env()).args(["local", "--name", "cf"]);
    for (id, root) in &src {
        c.arg("--instance").arg(format!("{id}={root}"));
    }
    let out = c.args(["backup", "--store", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(deleted.load(Ordering::SeqCst), "the fault never fired: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to commit") && err.contains("db-0-postgres.tar.zst is missing"), "{err}");
    let Some(mut aws) = server.aws() else { panic!("the AWS CLI is missing: run ci/setup") };
    let ls = aws.args(["s3", "ls", "--recursive", "s3://backups/p/"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(!listing.contains("lockstep.json"), "committed anyway: {listing}");
}
