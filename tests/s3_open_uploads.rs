//! Multipart uploads a killed run left open (SIGKILL leaves no chance to abort them; their
//! parts stay billed and fill a small server's disk): `lockstep run prune` and
//! `lockstep run backup-cleanup` find them with ListMultipartUploads and abort them, except
//! a backup in progress's (its lease is live) and another deployment's. Against moto over
//! TLS (the listing trusts the store's ca_bundle); what is left is read with the AWS CLI.
//! And s3-resource's `aws_role_arn`, against moto's STS.

mod s3_support;

use lockstep::artifact::lease::{self, Lease};
use lockstep::frontend::demo::create_deployment;
use lockstep::store::s3::S3Store;
use s3_support::{find_bin, missing, Moto};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

struct Aws {
    bin: PathBuf,
    endpoint: String,
    ca: PathBuf,
}

impl Aws {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .args(["--endpoint-url", &self.endpoint, "--ca-bundle"])
            .arg(&self.ca)
            .args(args)
            .envs([("AWS_ACCESS_KEY_ID", "moto-key"), ("AWS_SECRET_ACCESS_KEY", "moto-secret"), ("AWS_DEFAULT_REGION", s3_support::REGION)])
            .output()
            .unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts an upload and sends one part, as a run killed mid-drain leaves it.
    fn open_upload(&self, key: &str, part: &Path) {
        let v: Value = serde_json::from_str(&self.run(&["s3api", "create-multipart-upload", "--bucket", "backups", "--key", key])).unwrap();
        let id = v["UploadId"].as_str().unwrap();
        self.run(&["s3api", "upload-part", "--bucket", "backups", "--key", key, "--part-number", "1", "--upload-id", id, "--body", part.to_str().unwrap()]);
    }

    /// Keys of the bucket's open uploads, sorted.
    fn open_keys(&self) -> Vec<String> {
        let text = self.run(&["s3api", "list-multipart-uploads", "--bucket", "backups"]);
        let v: Value = if text.trim().is_empty() { json!({}) } else { serde_json::from_str(&text).unwrap() };
        let mut keys: Vec<String> = v["Uploads"].as_array().map(|a| a.iter().map(|u| u["Key"].as_str().unwrap().to_string()).collect()).unwrap_or_default();
        keys.sort();
        keys
    }
}

fn lockstep_run(config: &Path, action: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep")).arg("run").arg("--config").arg(config).arg(action).env_clear().output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_backup_cleanup_abort_the_uploads_killed_runs_left_open() {
    let Some(moto) = Moto::start_tls() else { return };
    let Some(bin) = find_bin("aws") else { return missing("aws (ci/.venv)") };
    let aws = Aws { bin, endpoint: moto.endpoint(), ca: moto.ca_pem() };
    aws.run(&["s3", "mb", "s3://backups"]);
    let tmp = TempDir::new().unwrap();
    let part = tmp.path().join("part");
    std::fs::write(&part, s3_support::pattern(5 * 1024 * 1024, 1)).unwrap();

    // A backup in progress holds a live lease on its artifact: its upload is not debris.
    let mut store_config = moto.config("backups", "cf");
    store_config.ca_bundle = Some(moto.ca_pem().to_string_lossy().into_owned());
    let store = S3Store::new(&store_config).unwrap();
    let now = lease::stamp(chrono::Utc::now());
    let live = Lease {
        deployment: "cf".into(),
        artifact: "cf_20261202T000000Z".into(),
        run: "r1".into(),
        host: "worker".into(),
        pid: 1,
        started: now.clone(),
        heartbeat: now,
        location: None,
    };
    lease::acquire(&store, &live, |_| {}).await.unwrap();

    let killed = "cf/cf_20261201T000000Z/db-0-postgres.tar";
    let in_progress = "cf/cf_20261202T000000Z/db-0-postgres.tar";
    let other = "cf/other_20261201T000000Z/db-0-postgres.tar";
    for key in [killed, in_progress, other] {
        aws.open_upload(key, &part);
    }
    assert_eq!(aws.open_keys(), [killed, in_progress, other]);

    let deployed = create_deployment(&tmp.path().join("dep"), true).unwrap();
    let instances: serde_json::Map<String, Value> = deployed.iter().map(|(id, root)| (id.to_string(), json!(root))).collect();
    let mut source = json!({
        "target": {"local": {"name": "cf", "instances": instances}},
        "store": serde_json::to_value(&store_config).unwrap(),
        "retention": {"keep_last": 1},
    });
    // Only the keys a configuration may hold.
    source["store"].as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let config = tmp.path().join("cf.json");
    std::fs::write(&config, source.to_string()).unwrap();

    let (ok, out) = lockstep_run(&config, "prune");
    assert!(ok, "{out}");
    assert!(out.contains("aborted 1 open upload(s)"), "{out}");
    assert_eq!(aws.open_keys(), [in_progress, other], "{out}");

    // The backup in progress is gone (its lease released); a killed run left another upload.
    lease::release(&store, &live).await.unwrap();
    aws.open_upload(killed, &part);
    let (ok, out) = lockstep_run(&config, "backup-cleanup");
    assert!(ok, "{out}");
    assert!(out.contains("Aborted 2 multipart upload(s) a stopped backup left open"), "{out}");
    assert_eq!(aws.open_keys(), [other], "only another deployment's upload stays: {out}");
    assert!(!out.contains("moto-secret"), "{out}");
}

/// A server without ListMultipartUploads (s3s-fs answers 501): prune still succeeds, and
/// says that killed runs' uploads cannot be found there and what to do instead.
#[test]
fn a_server_that_cannot_list_open_uploads_gets_a_warning_not_a_failed_prune() {
    let Some(server) = s3_support::S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let mut store = serde_json::to_value(server.config("backups", "cf")).unwrap();
    store.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let config = tmp.path().join("cf.json");
    let source = json!({"target": {"local": {"name": "cf", "instances": {}}}, "store": store, "retention": {"keep_last": 1}});
    std::fs::write(&config, source.to_string()).unwrap();
    let (ok, out) = lockstep_run(&config, "prune");
    assert!(ok, "{out}");
    assert!(out.contains("warning: s3://backups/cf at ") && out.contains("this S3 server does not list open multipart uploads") && out.contains("lifecycle rule"), "{out}");
}

/// s3-resource's `aws_role_arn`: the store assumes the role once with STS (moto's, at the
/// store's endpoint, seen through a counting proxy) and works with its credentials; an STS
/// that refuses makes the store fail with the role named, not silently use the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_is_assumed_once_and_its_credentials_used() {
    use lockstep::store::Store;
    use s3_support::fault_proxy::{Fault, FaultProxy};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    let Some(moto) = Moto::start() else { return };
    let assumed = Arc::new(AtomicUsize::new(0));
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, r) = (assumed.clone(), refuse.clone());
    let proxy = FaultProxy::start(
        moto.port,
        Arc::new(move |_method: &str, target: &str| {
            if !target.contains("Action=AssumeRole") {
                return None;
            }
            a.fetch_add(1, Ordering::SeqCst);
            r.load(Ordering::SeqCst).then_some(Fault::Status500)
        }),
    );
    let mut c = moto.config("roles", "p");
    c.endpoint = Some(proxy.endpoint());
    c.aws_role_arn = Some("arn:aws:iam::123456789012:role/backups".into());
    let store = S3Store::new(&c).unwrap();
    // The bucket, made with the AWS CLI.
    let Some(aws) = find_bin("aws") else { return missing("aws (ci/.venv)") };
    let mk = Command::new(aws)
        .args(["--endpoint-url", &moto.endpoint(), "s3", "mb", "s3://roles"])
        .envs([("AWS_ACCESS_KEY_ID", "moto-key"), ("AWS_SECRET_ACCESS_KEY", "moto-secret"), ("AWS_DEFAULT_REGION", s3_support::REGION)])
        .output()
        .unwrap();
    assert!(mk.status.success(), "{}", String::from_utf8_lossy(&mk.stderr));

    let mut w = store.create("cf_20261201T000000Z/a.tar").await.unwrap();
    w.write_all(b"through the role").await.unwrap();
    w.shutdown().await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(lockstep::store::read_all(&store, "cf_20261201T000000Z/a.tar").await.unwrap(), b"through the role");
    assert_eq!(store.list("").await.unwrap().len(), 1);
    assert_eq!(store.abort_open_uploads("cf_", &|_| false).await.unwrap(), 0);
    assert_eq!(assumed.load(Ordering::SeqCst), 1, "assumed once, then reused until it nears expiry");

    refuse.store(true, Ordering::SeqCst);
    let e = format!("{:#}", S3Store::new(&c).unwrap().list("").await.unwrap_err());
    assert!(e.contains("assuming the role arn:aws:iam::123456789012:role/backups") && e.contains("STS refused"), "{e}");
    assert!(!e.contains("moto-secret"), "{e}");
    // Without keys to sign AssumeRole with, the store says what it needs.
    c.access_key_id = None;
    c.secret_access_key = None;
    c.enable_aws_creds_provider = true;
    let e = format!("{:#}", S3Store::new(&c).err().unwrap());
    assert!(e.contains("aws_role_arn needs access_key_id and secret_access_key"), "{e}");
}
