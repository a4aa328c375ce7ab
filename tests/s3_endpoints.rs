//! An S3-compatible server on an IP address (the usual on-premises MinIO) without
//! `use_path_style`, given every way an endpoint can be given: `AWS_ENDPOINT_URL`, the store
//! URL, a configuration's `store`, and a replica. Each backup must land in the bucket (read
//! back with the AWS CLI, an independent client) and never end in a panic.

mod s3_support;

use assert_cmd::Command;
use lockstep::frontend::demo::create_deployment;
use lockstep::model::InstanceId;
use s3_support::S3sFs;
use tempfile::TempDir;

fn instance_args(deployed: &[(InstanceId, String)]) -> Vec<String> {
    deployed.iter().flat_map(|(id, root)| ["--instance".to_string(), format!("{id}={root}")]).collect()
}

/// Keys under `bucket/prefix` as the AWS CLI lists them.
fn listed(server: &S3sFs, bucket: &str, prefix: &str) -> Vec<String> {
    let Some(mut aws) = server.aws() else { panic!("the AWS CLI is missing: run ci/setup") };
    let out = aws.args(["s3", "ls", "--recursive", &format!("s3://{bucket}/{prefix}/")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().last().map(str::to_string)).collect()
}

fn assert_committed(server: &S3sFs, bucket: &str, prefix: &str, how: &str) {
    let keys = listed(server, bucket, prefix);
    assert!(keys.iter().any(|k| k.ends_with("/lockstep.json")), "{how}: nothing committed in {bucket}/{prefix}: {keys:?}");
}

fn run(cmd: &mut Command, how: &str) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{how}: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{how} panicked: {err}");
}

#[test]
fn an_ip_endpoint_without_use_path_style_works_however_it_is_given() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups").bucket("drcopies");
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let endpoint = server.endpoint(); // http://127.0.0.1:PORT
    let base = || {
        let mut c = Command::cargo_bin("lockstep").unwrap();
        c.envs(server.env()).env_remove("AWS_ENDPOINT_URL").env_remove("AWS_ENDPOINT_URL_S3");
        c.args(["local", "--name", "cf"]).args(instance_args(&src));
        c
    };

    // 1. AWS_ENDPOINT_URL, and a store URL with no endpoint.
    run(base().env("AWS_ENDPOINT_URL", &endpoint).args(["backup", "--store", "s3://backups/env"]), "AWS_ENDPOINT_URL");
    assert_committed(&server, "backups", "env", "AWS_ENDPOINT_URL");

    // 2. endpoint= in the store URL, no use_path_style.
    let url = format!("s3://backups/url?endpoint={endpoint}&region_name=us-east-1");
    run(base().args(["backup", "--store", &url]), "store URL");
    assert_committed(&server, "backups", "url", "store URL");

    // 3. and 4. A configuration's store and its replica, as the resource's source: and the
    // tasks' LOCKSTEP_CONFIG give them.
    let (key, secret) = (server.env()[0].1.clone(), server.env()[1].1.clone());
    let store = |bucket: &str, prefix: &str| {
        serde_json::json!({"bucket": bucket, "prefix": prefix, "endpoint": endpoint, "region_name": "us-east-1",
                           "access_key_id": key, "secret_access_key": secret})
    };
    let mut primary = store("backups", "config");
    primary["replicas"] = serde_json::json!([store("drcopies", "replica")]);
    let instances: serde_json::Map<String, serde_json::Value> =
        src.iter().map(|(id, root)| (id.to_string(), serde_json::Value::String(root.clone()))).collect();
    let config = serde_json::json!({"target": {"local": {"name": "cf", "instances": instances}}, "store": primary});
    let file = tmp.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let mut c = Command::cargo_bin("lockstep").unwrap();
    c.env_remove("AWS_ENDPOINT_URL").args(["run", "--config"]).arg(&file).arg("backup");
    run(&mut c, "source.store with a replica");
    assert_committed(&server, "backups", "config", "source.store");
    assert_committed(&server, "drcopies", "replica", "the replica");
}
