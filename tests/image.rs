//! The real image, built from the project's Dockerfile with podman (ci/image), driven as
//! Concourse drives a resource: `/opt/resource/check|in|out` inside the container, request
//! on stdin, against the sshd fleet and s3s-fs on loopback (`--network host`). The tasks'
//! `lockstep` CLI and scripts are in the image too.

mod s3_support;
mod support;

use lockstep::frontend::demo::create_deployment;
use s3_support::{missing, S3sFs, ACCESS_KEY, REGION};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use support::fleet::{Fleet, KeyKind};
use tempfile::TempDir;

const TAG: &str = "localhost/lockstep:test";

/// Builds the image once per test binary; `None` (skip) when podman is missing and servers
/// are optional.
fn image() -> Option<&'static str> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if Command::new("podman").arg("--version").output().is_err() {
        missing("podman (ci/setup-image installs it)");
        return None;
    }
    let built = BUILT.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new(format!("{root}/ci/image")).arg(TAG).output().map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    });
    if let Err(e) = built {
        panic!("ci/image failed:\n{e}");
    }
    Some(TAG)
}

/// `podman run` with the flags these machines need, a volume, and stdin.
fn podman(volume: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "-i", "--network", "host"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
        .arg("-v")
        .arg(format!("{}:/tmp/build", volume.display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_image_carries_a_working_resource_and_cli() {
    let Some(tag) = image() else { return };
    let Some(fleet) = Fleet::start("image", 1) else { return };
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let roots = create_deployment(&tmp.path().join("src"), true).unwrap();
    fleet.vms[0].install_tree(Path::new(&roots[2].1));
    let vm = &fleet.vms[0];
    let source = json!({
        "target": {"hosts": {"name": "cf", "instances": [{"group": "db", "index": 0, "address": vm.address(), "username": "vcap",
            "private_key": std::fs::read_to_string(fleet.key(KeyKind::Ed25519).private).unwrap(), "host_public_key": vm.host_key_line}]}},
        "store": {"bucket": "backups", "endpoint": server.endpoint(), "region_name": REGION,
                  "access_key_id": ACCESS_KEY, "secret_access_key": server.secret, "use_path_style": true},
    });
    let vol = tmp.path().join("build");
    std::fs::create_dir(&vol).unwrap();

    let (ok, out, err) = podman(&vol, &[tag, "/opt/resource/check"], &json!({"source": source}).to_string());
    assert!(ok, "check in the image failed: {err}");
    assert_eq!(out.trim(), "[]");

    let (ok, out, err) = podman(&vol, &[tag, "/opt/resource/out", "/tmp/build"], &json!({"source": source, "params": {}}).to_string());
    assert!(ok, "out in the image failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON value on stdout");
    let name = v["version"]["artifact"].as_str().unwrap().to_string();
    assert!(err.contains("lock window"), "{err}");

    let (ok, out, err) = podman(&vol, &[tag, "/opt/resource/in", "/tmp/build/got"], &json!({"source": source, "version": {"artifact": name}}).to_string());
    assert!(ok, "in in the image failed: {err}");
    assert!(out.contains(&name));
    assert!(vol.join("got/db-0-postgres.tar").is_file());
    assert!(!format!("{out}{err}").contains(&server.secret));

    // The task image side: the CLI and a shell.
    let (ok, out, _) = podman(&vol, &[tag, "sh", "-c", "lockstep --version && ls /opt/resource"], "");
    assert!(ok && out.contains("lockstep") && out.contains("check") && out.contains("out"), "{out}");
}
