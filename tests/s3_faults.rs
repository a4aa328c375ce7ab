//! S3 failures an operator meets, against real servers: wrong credentials and a missing
//! bucket (refused before anything is locked, with advice, never printing a secret), the
//! server stopping in the middle of an upload (nothing committed, a clear error), and TLS
//! with a custom CA (moto with a certificate from a test CA: trusted with `ca_bundle`,
//! refused without it, accepted with `skip_ssl_verification`).

mod s3_support;
#[path = "support/stall_proxy.rs"]
#[allow(dead_code)]
mod stall_proxy;

use assert_cmd::Command;
use lockstep::artifact::stored;
use lockstep::frontend::demo::create_deployment;
use lockstep::model::InstanceId;
use lockstep::store::s3::S3Store;
use lockstep::store::{self, Store};
use predicates::prelude::*;
use s3_support::{find_bin, missing, Moto, S3sFs};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

fn instance_args(deployed: &[(InstanceId, String)]) -> Vec<String> {
    deployed.iter().flat_map(|(id, root)| ["--instance".to_string(), format!("{id}={root}")]).collect()
}

fn was_locked(deployed: &[(InstanceId, String)]) -> bool {
    // The demo's lock scripts write a timestamp file; unlock removes it. A journal of
    // what ran is in the scripts' stderr, which the CLI logs; a lock that never ran leaves
    // no "pre-backup-lock" line.
    deployed.iter().any(|(_, root)| Path::new(root).join("var/vcap/data").exists())
}

#[test]
fn wrong_credentials_and_missing_bucket_fail_before_locking_without_printing_secrets() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let wrong_secret = "wrong-secret-Zq8xV2pL";

    let out = Command::cargo_bin("lockstep")
        .unwrap()
        .envs(server.env())
        .env("AWS_SECRET_ACCESS_KEY", wrong_secret)
        .args(["--debug", "local", "--name", "cf"])
        .args(instance_args(&src))
        .args(["backup", "--store", &server.url("backups", "p")])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let all = format!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(stderr.contains("S3 refused the credentials"), "the error goes to stderr: {all}");
    assert!(stderr.contains("AWS_SECRET_ACCESS_KEY"), "says what to fix: {all}");
    assert!(!all.contains(wrong_secret) && !all.contains(&server.secret), "a secret was printed: {all}");
    // The log (stdout, as bbr's) names every script it runs: no lock script may appear.
    assert!(stdout.contains("Running metadata"), "the log is on stdout: {all}");
    assert!(!all.contains("pre-backup-lock") && !was_locked(&src), "locked although the store was unusable: {all}");

    // The same secret given as a flag is not printed either (nor by --help's env display).
    let out = Command::cargo_bin("lockstep")
        .unwrap()
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_ACCESS_KEY_ID", s3_support::ACCESS_KEY)
        .args(["list", "--store", &server.url("backups", "p"), "--s3-secret-access-key", wrong_secret])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the credentials") && !stderr.contains(wrong_secret), "{stderr}");
    let help = Command::cargo_bin("lockstep")
        .unwrap()
        .env("AWS_SECRET_ACCESS_KEY", wrong_secret)
        .args(["list", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--s3-secret-access-key") && !help.contains(wrong_secret), "{help}");

    // A bucket that does not exist.
    Command::cargo_bin("lockstep")
        .unwrap()
        .envs(server.env())
        .args(["local", "--name", "cf"])
        .args(instance_args(&src))
        .args(["backup", "--store", &server.url("no-such-bucket", "p")])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("\"no-such-bucket\" does not exist").and(predicate::str::contains("create it")));
    assert!(!was_locked(&src));

    // An endpoint where nothing listens.
    let port = s3_support::free_port();
    let url = format!("s3://bucket/p?endpoint=http://127.0.0.1:{port}&use_path_style=true&max_retries=1&retry_timeout_seconds=2");
    Command::cargo_bin("lockstep")
        .unwrap()
        .envs(server.env())
        .args(["list", "--store", &url])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot reach the S3 endpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_upload_commits_nothing() {
    let Some(mut server) = S3sFs::start() else { return };
    server.bucket("bucket");
    let store = S3Store::new(&server.config("bucket", "p")).unwrap();
    let mut w = store.create("cf_20240101T000000Z/big.tar").await.unwrap();
    let block = s3_support::pattern(1024 * 1024, 1);
    for _ in 0..12 {
        w.write_all(&block).await.unwrap();
    }
    server.stop();
    let start = Instant::now();
    let r = async {
        for _ in 0..30 {
            w.write_all(&block).await?;
        }
        w.shutdown().await
    }
    .await;
    let err = match r {
        Err(e) => e.to_string(),
        Ok(()) => format!("{:#}", w.commit().await.unwrap_err()),
    };
    assert!(err.contains("cannot reach the S3 endpoint"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(60), "gave up after {:?}", start.elapsed());
    server.restart();
    assert!(store.list("").await.unwrap().is_empty(), "something was committed");
    assert!(stored::list(&store).await.unwrap().is_empty());
}

/// A server that stops answering (a stalled network: connections accepted, nothing comes
/// back) fails a request after `request_timeout`, not after the 300 s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_fails_a_request_after_the_request_timeout() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("bucket");
    let proxy = stall_proxy::StallProxy::start(&format!("127.0.0.1:{}", server.port));
    let mut c = server.config("bucket", "p");
    c.endpoint = Some(format!("http://{}", proxy.address()));
    c.request_timeout = Some("2s".into());
    c.max_retries = Some(1);
    c.retry_timeout_seconds = Some(60);
    let store = S3Store::new(&c).unwrap();
    assert!(store.list("").await.unwrap().is_empty());
    proxy.stall();
    let start = Instant::now();
    let err = format!("{:#}", store.list("").await.unwrap_err());
    let took = start.elapsed();
    // Two tries of 2 s each and a short backoff; the default would wait 300 s per try.
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(20), "gave up after {took:?}: {err}");
    assert!(err.contains("took longer than request_timeout (2s) while listing") && err.contains("raise request_timeout"), "{err}");
    proxy.resume();
    assert!(store.list("").await.unwrap().is_empty(), "the store works again once the network is back");
}

#[test]
fn backup_loses_the_server_during_the_drain_and_commits_nothing() {
    let Some(mut server) = S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    // Enough data that the drain is still running when the server goes.
    let blob = Path::new(&src[1].1).join("var/vcap/store/blobstore");
    for i in 0..6 {
        std::fs::write(blob.join(format!("big{i}.bin")), s3_support::pattern(40 * 1024 * 1024, i)).unwrap();
    }
    let url = server.url("backups", "p");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lockstep"))
        .envs(server.env())
        .args(["local", "--name", "cf"])
        .args(instance_args(&src))
        // Little compression work, so the transfer itself takes the time.
        .args(["backup", "--store", &url, "--compression", "zstd:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log is on stdout (as bbr's), the errors on stderr.
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let go = line.contains("Copying backup") && line.contains("blobstore");
        log.push(line);
        if go {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    server.stop();
    log.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    log.push(errors.join().unwrap());
    let log = log.join("\n");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("Failed to drain the artifact of job blobstore on blobstore/0"), "{log}");
    assert!(log.contains("cannot reach the S3 endpoint"), "{log}");
    assert!(log.contains("kept on the instances"), "{log}");
    // The instance's copy is kept until the cause is known, as for any drain failure.
    assert!(Path::new(&src[1].1).join("var/vcap/store/bbr-backup/blobstore").exists());

    server.restart();
    Command::cargo_bin("lockstep")
        .unwrap()
        .envs(server.env())
        .args(["list", "--store", &url])
        .assert()
        .success()
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("No committed backup artifacts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_bundle() {
    let Some(moto) = Moto::start_tls() else { return };
    let Some(aws) = find_bin("aws") else { return missing("aws") };
    let out = std::process::Command::new(aws)
        .args(["--endpoint-url", &moto.endpoint(), "--ca-bundle"])
        .arg(moto.ca_pem())
        .args(["s3", "mb", "s3://tls-bucket"])
        .envs([("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_DEFAULT_REGION", "us-east-1")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Trusted through the bundle, given as a path (CLI) or as PEM text (s3-resource).
    let mut config = moto.config("tls-bucket", "p");
    config.ca_bundle = Some(moto.ca_pem().to_string_lossy().into_owned());
    let store = S3Store::new(&config).unwrap();
    store.preflight().await.unwrap();
    let data = s3_support::pattern(11 * 1024 * 1024, 4);
    let mut w = store.create("a/multi").await.unwrap();
    w.write_all(&data).await.unwrap();
    w.shutdown().await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(store::read_all(&store, "a/multi").await.unwrap(), data);
    config.ca_bundle = Some(std::fs::read_to_string(moto.ca_pem()).unwrap());
    S3Store::new(&config).unwrap().preflight().await.unwrap();

    // Not trusted without it: the error says what to do.
    config.ca_bundle = None;
    let e = format!("{:#}", S3Store::new(&config).unwrap().preflight().await.unwrap_err());
    assert!(e.contains("is not trusted") && e.contains("ca_bundle"), "{e}");
    // skip_ssl_verification, for testing.
    config.skip_ssl_verification = true;
    let insecure = S3Store::new(&config).unwrap();
    assert_eq!(store::read_all(&insecure, "a/multi").await.unwrap().len(), data.len());

    // The CLI takes the bundle in the URL.
    let url = format!("s3://tls-bucket/p?endpoint={}&use_path_style=true&ca_bundle={}", moto.endpoint(), moto.ca_pem().display());
    let out = Command::cargo_bin("lockstep").unwrap().env("AWS_ACCESS_KEY_ID", "k").env("AWS_SECRET_ACCESS_KEY", "s").args(["list", "--store", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
