//! The store's lease on a backup in progress, against a real S3 server (s3s-fs, which
//! honours `If-None-Match: *`), checked with the AWS CLI: `prune --grace 0s` during a
//! backup leaves the backup's objects alone, a second backup of the same deployment into
//! the store is refused naming the first, the lease is gone once the backup ends, and a
//! stale lease (its run gone) protects nothing and is taken over with a warning.

mod s3_support;

use assert_cmd::Command;
use s3_support::S3sFs;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BUCKET: &str = "backups";
const PREFIX: &str = "p";
const LEASE: &str = "p/.lockstep/leases/cf.json";

/// An instance directory whose backup script waits for `<root>/release` (when `hold`).
fn instance(root: &Path, hold: bool) -> String {
    let bbr = root.join("var/vcap/jobs/store/bin/bbr");
    fs::create_dir_all(&bbr).unwrap();
    fs::create_dir_all(root.join("var/vcap/store")).unwrap();
    // It also ends once the test's directory is gone, so a killed run leaves no script behind.
    let wait = if hold {
        format!("while [ ! -e '{r}/release' ] && [ -d '{r}' ]; do sleep 0.1; done\n", r = root.display())
    } else {
        String::new()
    };
    let body = format!("#!/bin/sh\necho data > \"$BBR_ARTIFACT_DIRECTORY/data\"\n{wait}");
    fs::write(bbr.join("backup"), body).unwrap();
    fs::set_permissions(bbr.join("backup"), fs::Permissions::from_mode(0o755)).unwrap();
    format!("store/0={}", root.display())
}

fn lockstep(server: &S3sFs) -> Command {
    let mut c = Command::cargo_bin("lockstep").unwrap();
    c.envs(server.env());
    c
}

fn spawn_backup(server: &S3sFs, inst: &str, cwd: &Path) -> Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("lockstep"))
        .current_dir(cwd)
        .envs(server.env())
        .args(["local", "--name", "cf", "--instance", inst, "backup", "--store", &server.url(BUCKET, PREFIX)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The AWS CLI's answer, or `None` when the command failed.
fn aws(server: &S3sFs, args: &[&str]) -> Option<String> {
    let out = server.aws()?.args(args).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exists(server: &S3sFs, key: &str) -> bool {
    aws(server, &["s3api", "head-object", "--bucket", BUCKET, "--key", key]).is_some()
}

fn read_lease(server: &S3sFs) -> Option<serde_json::Value> {
    let text = aws(server, &["s3", "cp", &format!("s3://{BUCKET}/{LEASE}"), "-"])?;
    Some(serde_json::from_str(&text).unwrap())
}

fn wait_lease(server: &S3sFs) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(v) = read_lease(server) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the backup never took its lease");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn prune(server: &S3sFs) -> (i32, String) {
    let o = lockstep(server)
        .args(["prune", "--store", &server.url(BUCKET, PREFIX), "--keep-last", "1", "--grace", "0s", "--min-age", "0s"])
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn finish(child: Child) -> (i32, String) {
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn prune_leaves_a_backup_in_progress_alone_and_a_second_backup_of_it_is_refused() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket(BUCKET);
    if server.aws().is_none() {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let held: PathBuf = tmp.path().join("vm");
    let backup = spawn_backup(&server, &instance(&held, true), tmp.path());
    let lease = wait_lease(&server);
    let artifact = lease["artifact"].as_str().unwrap().to_string();
    assert!(artifact.starts_with("cf_"), "{lease}");
    // What a drained job would have written by now, put there with an independent client.
    let drained = format!("{PREFIX}/{artifact}/store-0-store.tar");
    fs::write(tmp.path().join("drained"), b"a drained tar").unwrap();
    aws(&server, &["s3", "cp", tmp.path().join("drained").to_str().unwrap(), &format!("s3://{BUCKET}/{drained}")]).unwrap();

    let (code, log) = prune(&server);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("a backup in progress holds its lease") && log.contains(&artifact), "{log}");
    assert!(exists(&server, &drained), "prune deleted an object of a backup in progress:\n{log}");
    assert!(exists(&server, LEASE));

    // The same deployment from other instances into the same store: refused by the lease.
    let other = instance(&tmp.path().join("other"), false);
    let o = lockstep(&server)
        .current_dir(tmp.path())
        .args(["local", "--name", "cf", "--instance", &other, "backup", "--store", &server.url(BUCKET, PREFIX)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another backup of cf into s3://backups/p") && err.contains("is in progress"), "{err}");
    assert!(err.contains(&format!("writing {artifact}")) && err.contains("last heartbeat"), "{err}");
    assert_eq!(read_lease(&server).unwrap()["run"], lease["run"], "the refused run took the lease");
    assert!(!tmp.path().join("other/var/vcap/store/bbr-backup").exists(), "the refused run claimed its instance");

    aws(&server, &["s3", "rm", &format!("s3://{BUCKET}/{drained}")]).unwrap();
    fs::write(held.join("release"), "").unwrap();
    let (code, log) = finish(backup);
    assert_eq!(code, 0, "{log}");
    assert!(!exists(&server, LEASE), "the lease outlived its backup");
    let o = lockstep(&server).args(["verify", "--store", &server.url(BUCKET, PREFIX), &artifact]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_stale_lease_protects_nothing_and_is_taken_over() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket(BUCKET);
    if server.aws().is_none() {
        return;
    }
    let tmp = TempDir::new().unwrap();
    // A run that died an hour ago: its lease and a leftover object.
    let old = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dead = serde_json::json!({
        "deployment": "cf", "artifact": "cf_20200101T000000Z", "run": "deadbeef", "host": "gone", "pid": 1,
        "started": old, "heartbeat": old,
    });
    fs::write(tmp.path().join("lease"), dead.to_string()).unwrap();
    fs::write(tmp.path().join("leftover"), b"half a tar").unwrap();
    aws(&server, &["s3", "cp", tmp.path().join("lease").to_str().unwrap(), &format!("s3://{BUCKET}/{LEASE}")]).unwrap();
    let leftover = format!("{PREFIX}/cf_20200101T000000Z/store-0-store.tar");
    aws(&server, &["s3", "cp", tmp.path().join("leftover").to_str().unwrap(), &format!("s3://{BUCKET}/{leftover}")]).unwrap();

    let (code, log) = prune(&server);
    assert_eq!(code, 0, "{log}");
    assert!(!exists(&server, &leftover), "a stale lease kept a leftover:\n{log}");

    let (code, log) = finish(spawn_backup(&server, &instance(&tmp.path().join("vm"), false), tmp.path()));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("WARNING: taking over the stale lease") && log.contains("run deadbeef from gone"), "{log}");
    assert!(!exists(&server, LEASE), "the lease outlived its backup");
}
