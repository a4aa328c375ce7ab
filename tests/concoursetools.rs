//! The resource's check/in/out cycle driven by an independent harness: the Python package
//! `concoursetools` (`tests/python/concoursetools_cycle.py`), against the sshd fleet and
//! s3s-fs.

mod s3_support;
mod support;

use lockstep::frontend::demo::create_deployment;
use s3_support::{missing, S3sFs, ACCESS_KEY, REGION};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::fleet::{Fleet, KeyKind};
use tempfile::TempDir;

#[test]
fn concoursetools_drives_the_full_cycle() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/.venv/bin/python");
    let has_harness = Command::new(&python).args(["-c", "import concoursetools"]).output().is_ok_and(|o| o.status.success());
    if !has_harness {
        missing("the Python package concoursetools in ci/.venv");
        return;
    }
    let Some(fleet) = Fleet::start("concoursetools", 2) else { return };
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let roots = create_deployment(&tmp.path().join("src"), true).unwrap();
    fleet.vms[0].install_tree(Path::new(&roots[0].1));
    fleet.vms[1].install_tree(Path::new(&roots[2].1));
    let key = std::fs::read_to_string(fleet.key(KeyKind::Ed25519).private).unwrap();
    let instances: Vec<_> = [("api", 0), ("db", 1)]
        .iter()
        .map(|(g, i)| {
            let vm = &fleet.vms[*i];
            json!({"group": g, "index": 0, "address": vm.address(), "username": "vcap", "private_key": key, "host_public_key": vm.host_key_line})
        })
        .collect();
    let source = json!({
        "target": {"hosts": {"name": "cf", "instances": instances}},
        "store": {"bucket": "backups", "endpoint": server.endpoint(), "region_name": REGION,
                  "access_key_id": ACCESS_KEY, "secret_access_key": server.secret, "use_path_style": true},
        "retention": {"keep_last": 1, "min_age": "0s"},
    });
    let source_file = tmp.path().join("source.json");
    std::fs::write(&source_file, source.to_string()).unwrap();
    let assets = Path::new(env!("CARGO_BIN_EXE_check")).parent().unwrap();
    let out = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/concoursetools_cycle.py"))
        .arg(assets)
        .arg(&source_file)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the concoursetools cycle failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("concoursetools cycle ok"), "{stdout}");
    assert!(!format!("{stdout}{stderr}").contains(&server.secret));
}
