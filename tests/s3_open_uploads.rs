//! Multipart uploads a killed run left open (SIGKILL leaves no chance to abort them; their
//! parts stay billed and fill a small server's disk): `lockstep run prune` and
//! `lockstep run backup-cleanup` find them with ListMultipartUploads and abort them, except
//! a backup in progress's (its lease is live) and another deployment's. Against moto over
//! TLS (the listing trusts the store's ca_bundle); what is left is read with the AWS CLI.

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
