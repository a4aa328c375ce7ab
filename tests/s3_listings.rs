//! Honest listings against a real S3 server (s3s-fs): the resource's `check` with the
//! primary bucket missing and a replica present still lists the replica's versions, and
//! says on stderr which store it could not list.

mod s3_support;

use lockstep::frontend::demo::create_deployment;
use s3_support::{S3sFs, ACCESS_KEY, REGION};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn check_with_the_primary_bucket_missing_warns_and_lists_the_replica() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("primary").bucket("replica");
    let tmp = tempfile::TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let store = |bucket: &str| {
        json!({"bucket": bucket, "prefix": "cf", "endpoint": server.endpoint(), "region_name": REGION,
               "access_key_id": ACCESS_KEY, "secret_access_key": server.secret})
    };
    let mut primary = store("primary");
    primary["replicas"] = json!([store("replica")]);
    let instances: serde_json::Map<String, serde_json::Value> = src.iter().map(|(id, r)| (id.to_string(), json!(r))).collect();
    let source = json!({"target": {"local": {"name": "cf", "instances": instances}}, "store": primary});
    let cfg = tmp.path().join("cfg.json");
    std::fs::write(&cfg, source.to_string()).unwrap();
    let backup = Command::new(env!("CARGO_BIN_EXE_lockstep")).args(["run", "--config"]).arg(&cfg).arg("backup").output().unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));

    // The primary bucket disappears (deleted, or a typo in a new pipeline).
    std::fs::remove_dir_all(server.object_path("primary", "")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_check"))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(json!({"source": source}).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let versions: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{stdout}");
    assert!(stderr.contains("WARNING") && stderr.contains("s3://primary/cf") && stderr.contains("s3://replica/cf"), "{stderr}");
}
