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
use std::time::{Duration, Instant};
use support::fleet::{Fleet, KeyKind};
use support::owed_jobs;
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

    // ci/image also wrote the same image as an OCI archive, for a push with skopeo.
    let out_dir = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let archive = out_dir.join("lockstep-image.oci.tar");
    let listing = Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success() && names.lines().any(|l| l == "oci-layout") && names.lines().any(|l| l == "index.json"), "{names}");

    // The task image side: the CLI and a shell.
    let (ok, out, _) = podman(&vol, &[tag, "sh", "-c", "lockstep --version && ls /opt/resource"], "");
    assert!(ok && out.contains("lockstep") && out.contains("check") && out.contains("out"), "{out}");
}

/// A Concourse abort of the backup task in the real image, as `podman stop -t 10` gives it:
/// SIGTERM to the task script (the container's first process), SIGKILL 10 s later. Two
/// unlock levels of 6 s each are owed: one after the other they would need 12 s, so the
/// task only ends within the grace period if every unlock starts at once. The instances'
/// calls logs, not the task's report, say what ran; the cleanup task then finds nothing left.
#[test]
fn an_aborted_backup_task_unlocks_every_level_within_the_grace_period() {
    let Some(tag) = image() else { return };
    let Some(fleet) = Fleet::start("image_abort", 2) else { return };
    let [api, db] = [&fleet.vms[0], &fleet.vms[1]];
    owed_jobs::install(api, "api", false, 6);
    owed_jobs::install(db, "db", false, 6);
    let key = std::fs::read_to_string(fleet.key(KeyKind::Ed25519).private).unwrap();
    let instance = |group: &str, vm: &support::fleet::Vm| {
        json!({"group": group, "index": 0, "address": vm.address(), "username": "vcap", "private_key": key, "host_public_key": vm.host_key_line})
    };
    let config = json!({
        "target": {"hosts": {"name": "cf", "instances": [instance("api", api), instance("db", db)]}},
        "store": {"path": "/tmp/build/store"},
    })
    .to_string();
    let tmp = TempDir::new().unwrap();
    let vol = tmp.path().join("build");
    std::fs::create_dir_all(vol.join("store")).unwrap();
    let name = format!("lockstep-abort-{}", std::process::id());
    let task = |script: &str| {
        let mut c = Command::new("podman");
        c.args(["--runtime", "runc", "run", "--rm", "--name", &name, "--network", "host"])
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "-e", "LOCKSTEP_CONFIG"])
            .arg("-v")
            .arg(format!("{}:/tmp/build", vol.display()))
            .args([tag, "sh", &format!("/opt/lockstep/tasks/{script}")])
            .env("LOCKSTEP_CONFIG", &config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };

    let child = task("backup.sh").spawn().unwrap();
    owed_jobs::wait_for("both backup scripts running", Duration::from_secs(120), || {
        owed_jobs::count(api, "api backup start") == 1 && owed_jobs::count(db, "db backup start") == 1
    });
    let signalled = Instant::now();
    let stop = Command::new("podman").args(["--runtime", "runc", "stop", "-t", "10", &name]).output().unwrap();
    let took = signalled.elapsed();
    let o = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(stop.status.success(), "podman stop: {}", String::from_utf8_lossy(&stop.stderr));
    assert!(took < Duration::from_secs(10), "the task was still running after {took:?}: SIGKILL came first\n{log}");
    assert!(log.contains("stop requested: starting all 2 owed post-backup-unlock script(s) now"), "{log}");
    assert!(!log.contains(&key), "the private key was printed");
    for (vm, job) in [(api, "api"), (db, "db")] {
        assert_eq!(owed_jobs::count(vm, &format!("{job} post-backup-unlock end")), 1, "{:?}\n{log}", owed_jobs::calls(vm));
        assert_eq!(owed_jobs::count(vm, &format!("{job} backup end")), 0, "the backup script was not stopped");
        assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists(), "staging left\n{log}");
    }

    // The pipeline's on_abort hook: nothing left by the stopped run, the platform unlocked again.
    let o = task("backup-cleanup.sh").output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{log}");
    assert!(!log.contains("started by a stopped run"), "{log}");
}
