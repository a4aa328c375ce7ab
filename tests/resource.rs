//! The Concourse resource driven exactly as Concourse drives it: `/opt/resource/check`,
//! `in DIR` and `out DIR` with the request JSON on stdin, one JSON value on stdout and logs
//! on stderr. Against real components: the sshd fleet (target `hosts`, keys inline) and an
//! S3-compatible server (s3s-fs), with age encryption.

mod s3_support;
mod support;

use lockstep::frontend::demo::{create_deployment, snapshot};
use s3_support::{find_bin, missing, S3sFs, ACCESS_KEY, REGION};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::fleet::{Fleet, KeyKind};
use tempfile::TempDir;

fn bin(kind: &str) -> PathBuf {
    match kind {
        "check" => PathBuf::from(env!("CARGO_BIN_EXE_check")),
        "in" => PathBuf::from(env!("CARGO_BIN_EXE_in")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_out")),
    }
}

/// Runs a resource executable as Concourse does: no inherited AWS variables, build
/// variables for in/out, the request on stdin, the directory as $1.
fn run(kind: &str, dir: Option<&Path>, request: &Value) -> Output {
    let mut cmd = Command::new(bin(kind));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    if kind != "check" {
        cmd.envs([
            ("BUILD_TEAM_NAME", "main"),
            ("BUILD_PIPELINE_NAME", "cf-backup"),
            ("BUILD_JOB_NAME", "backup"),
            ("BUILD_NAME", "42"),
            ("ATC_EXTERNAL_URL", "https://ci.example.com"),
        ]);
    }
    if let Some(d) = dir {
        cmd.arg(d);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Succeeds, and stdout is exactly one JSON value.
fn ok(kind: &str, dir: Option<&Path>, request: &Value) -> (Value, String) {
    let out = run(kind, dir, request);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{kind} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{kind} stdout is not one JSON value ({e}): {stdout:?}"));
    (v, stderr)
}

fn fails(kind: &str, dir: Option<&Path>, request: &Value) -> String {
    let out = run(kind, dir, request);
    assert!(!out.status.success(), "{kind} should have failed");
    assert!(out.stdout.is_empty(), "{kind} printed on stdout while failing: {:?}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn metadata(v: &Value, name: &str) -> String {
    v["metadata"].as_array().unwrap().iter().find(|m| m["name"] == name).map(|m| m["value"].as_str().unwrap().to_string()).unwrap_or_default()
}

fn age_keys(dir: &Path) -> Option<(String, String)> {
    let Some(keygen) = find_bin("age-keygen") else {
        missing("age-keygen (apt-get install age)");
        return None;
    };
    let path = dir.join("age.key");
    assert!(Command::new(keygen).arg("-o").arg(&path).output().unwrap().status.success());
    let text = fs::read_to_string(&path).unwrap();
    let recipient = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    let identity = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap().to_string();
    Some((recipient, identity))
}

#[test]
fn versions_backups_fetches_restores_and_prunes_over_ssh_and_s3() {
    let Some(fleet) = Fleet::start("resource", 3) else { return };
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let Some((recipient, identity)) = age_keys(tmp.path()) else { return };
    let roots = create_deployment(&tmp.path().join("src"), true).unwrap();
    for (vm, (_, root)) in fleet.vms.iter().zip(&roots) {
        vm.install_tree(Path::new(root));
    }
    let private_key = fs::read_to_string(fleet.key(KeyKind::Ed25519).private).unwrap();
    let instances: Vec<Value> = [("api", 0), ("blobstore", 1), ("db", 2)]
        .iter()
        .map(|(g, i)| {
            let vm = &fleet.vms[*i];
            json!({"group": g, "index": 0, "address": vm.address(), "username": "vcap",
                   "private_key": private_key, "host_public_key": vm.host_key_line})
        })
        .collect();
    let source = json!({
        "target": {"hosts": {"name": "cf", "instances": instances}},
        "store": {"bucket": "backups", "prefix": "cf", "endpoint": server.endpoint(), "region_name": REGION,
                  "access_key_id": ACCESS_KEY, "secret_access_key": server.secret, "use_path_style": true},
        "encryption": {"recipients": [recipient], "identity": identity},
        "retention": {"keep_last": 1, "min_age": "0s"},
    });
    let mut all_output = String::new();

    // No artifacts yet: [] (and a missing version key is fine).
    let (v, e) = ok("check", None, &json!({"source": source}));
    assert_eq!(v, json!([]));
    all_output += &e;

    // put: a backup, with what a person wants on the build page.
    let put_dir = tmp.path().join("put");
    fs::create_dir(&put_dir).unwrap();
    let (v1, e) = ok("out", Some(&put_dir), &json!({"source": source, "params": {}}));
    all_output += &e;
    let first = v1["version"]["artifact"].as_str().unwrap().to_string();
    assert!(first.starts_with("cf_"), "{v1}");
    assert_eq!(metadata(&v1, "encrypted"), "true");
    assert_eq!(metadata(&v1, "codec"), "zstd + age");
    assert_eq!(metadata(&v1, "lock-free"), "false");
    assert_eq!(metadata(&v1, "instances and jobs"), "api/0: cloud_controller; blobstore/0: blobstore; db/0: postgres");
    assert!(metadata(&v1, "lock window (API downtime)").ends_with('s'), "{v1}");
    assert!(e.contains("lock window (API downtime)"), "the log shows the timings table: {e}");
    // The Concourse build is recorded in lockstep.json.
    let marker: Value = serde_json::from_slice(&fs::read(server.object_path("backups", &format!("cf/{first}/lockstep.json"))).unwrap()).unwrap();
    assert_eq!(marker["origin"]["BUILD_PIPELINE_NAME"], "cf-backup");
    assert_eq!(marker["origin"]["BUILD_NAME"], "42");

    std::thread::sleep(Duration::from_millis(1100)); // distinct second in the artifact name
    let (v2, e) = ok("out", Some(&put_dir), &json!({"source": source, "params": {"action": "backup"}}));
    all_output += &e;
    let second = v2["version"]["artifact"].as_str().unwrap().to_string();

    // check: oldest first, from the given version on.
    let (v, _) = ok("check", None, &json!({"source": source}));
    assert_eq!(v, json!([{"artifact": second}]));
    let (v, _) = ok("check", None, &json!({"source": source, "version": {"artifact": first}}));
    assert_eq!(v, json!([{"artifact": first}, {"artifact": second}]));

    // get: a plain bbr artifact directory, verified, plus version and lockstep.json.
    let got = tmp.path().join("backups");
    let (g, e) = ok("in", Some(&got), &json!({"source": source, "version": {"artifact": first}, "params": {}}));
    all_output += &e;
    assert_eq!(g["version"]["artifact"], first);
    for f in ["metadata", "lockstep.json", "version", "api-0-cloud_controller.tar", "blobstore-0-blobstore.tar", "db-0-postgres.tar"] {
        assert!(got.join(f).is_file(), "{f} missing from the get");
    }
    let listing = Command::new("tar").arg("-tf").arg(got.join("db-0-postgres.tar")).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("./dump.sql"), "a plain tar bbr reads");
    let light = tmp.path().join("light");
    ok("in", Some(&light), &json!({"source": source, "version": {"artifact": second}, "params": {"skip_download": true}}));
    assert!(light.join("metadata").is_file() && !light.join("db-0-postgres.tar").exists());

    // get verify_only: every stored byte re-hashed, only the records written; a flipped
    // byte in the store fails it, naming the file, and leaves no version behind.
    let checked = tmp.path().join("checked");
    let (_, e) = ok("in", Some(&checked), &json!({"source": source, "version": {"artifact": second}, "params": {"verify_only": true}}));
    assert!(e.contains("every file matches its metadata"), "{e}");
    let mut written: Vec<String> = fs::read_dir(&checked).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    assert_eq!(written, ["lockstep.json", "metadata", "version"]);
    let object = server.files().into_iter().find(|f| f.contains(&second) && f.contains("db-0-postgres")).expect("the db object");
    let object = server.root.path().join(&object);
    let intact = fs::read(&object).unwrap();
    let mut flipped = intact.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    fs::write(&object, &flipped).unwrap();
    let damaged = tmp.path().join("damaged");
    let e = fails("in", Some(&damaged), &json!({"source": source, "version": {"artifact": second}, "params": {"verify_only": true}}));
    assert!(e.contains("db-0-postgres"), "the failure names the damaged file: {e}");
    assert!(!damaged.join("version").exists(), "a failed verification wrote a version");
    fs::write(&object, &intact).unwrap();
    let e = fails("in", Some(&damaged), &json!({"source": source, "version": {"artifact": second}, "params": {"verify_only": true, "skip_download": true}}));
    assert!(e.contains("not both"), "{e}");

    // put restore from the fetched directory, after the platform lost its data.
    let before: Vec<_> = fleet.vms.iter().map(|vm| snapshot(&vm.root.join("var/vcap/store")).unwrap()).collect();
    for vm in &fleet.vms {
        for job in ["cloud_controller", "blobstore", "postgres"] {
            let _ = fs::remove_dir_all(vm.root.join("var/vcap/store").join(job));
        }
    }
    let (r, e) = ok("out", Some(tmp.path()), &json!({"source": source, "params": {"action": "restore", "artifact": "backups"}}));
    all_output += &e;
    assert_eq!(r["version"]["artifact"], first);
    let after: Vec<_> = fleet.vms.iter().map(|vm| snapshot(&vm.root.join("var/vcap/store")).unwrap()).collect();
    assert_eq!(before, after);

    // put prune: keep_last 1 deletes the first; the given version is gone from check.
    let (p, e) = ok("out", Some(&put_dir), &json!({"source": source, "params": {"action": "prune"}}));
    all_output += &e;
    assert_eq!(p["version"]["artifact"], second);
    assert_eq!(metadata(&p, "deleted"), "1");
    let (v, _) = ok("check", None, &json!({"source": source, "version": {"artifact": first}}));
    assert_eq!(v, json!([{"artifact": second}]));
    let e = fails("in", Some(&tmp.path().join("gone")), &json!({"source": source, "version": {"artifact": first}}));
    assert!(e.contains("no longer exists"), "{e}");
    all_output += &e;

    // Wrong credentials: a clear error, nothing on stdout, nothing written to the store.
    let mut wrong = source.clone();
    wrong["store"]["secret_access_key"] = json!("not-the-secret");
    let files_before = server.files();
    let e = fails("out", Some(&put_dir), &json!({"source": wrong, "params": {}}));
    assert!(e.contains("credentials") || e.contains("signature") || e.contains("Access"), "{e}");
    assert!(!e.contains("not-the-secret"), "{e}");
    assert_eq!(server.files(), files_before, "a failed put wrote to the store");
    let e = fails("check", None, &json!({"source": wrong}));
    assert!(!e.contains("not-the-secret"), "{e}");
    all_output += &e;

    // Secrets never reach a log.
    for secret in [server.secret.as_str(), identity.as_str(), "PRIVATE KEY"] {
        assert!(!all_output.contains(secret), "a secret was printed");
    }
}

#[test]
fn bad_requests_fail_clearly_without_output() {
    let dir = TempDir::new().unwrap();
    let e = fails("check", None, &json!({"source": {"store": {"path": "/tmp"}, "targte": {}}}));
    assert!(e.contains("unknown key `targte`") && e.contains("allowed keys: target, store"), "{e}");
    let e = fails("out", Some(dir.path()), &json!({"source": {"store": {"path": "/tmp"}}, "params": {"action": "explode"}}));
    assert!(e.contains("not one of backup, restore, prune"), "{e}");
    let e = fails("in", Some(dir.path()), &json!({"source": {"store": {"path": "/tmp"}}}));
    assert!(e.contains("in needs a version"), "{e}");
    let e = fails("out", Some(dir.path()), &json!({"source": {"store": {"path": "/tmp"}}, "params": {"action": "restore", "artifact": "nothing"}}));
    assert!(e.contains("holds no artifact"), "{e}");
    // Garbage on stdin: an error, never a panic.
    let mut child = Command::new(bin("check")).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&[0xff, 0xfe, b'{']).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    assert!(fails("out", None, &json!({"source": {"store": {"path": "/tmp"}}})).contains("first argument"));
}

#[test]
fn sigterm_during_put_unlocks_and_fails() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("vm");
    let bbr = root.join("var/vcap/jobs/slow/bin/bbr");
    fs::create_dir_all(&bbr).unwrap();
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    let s = state.display();
    for (name, body) in [
        ("pre-backup-lock", format!("touch '{s}/locked'")),
        ("backup", format!("touch '{s}/started'; sleep 60")),
        ("post-backup-unlock", format!("rm -f '{s}/locked'")),
    ] {
        fs::write(bbr.join(name), format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(bbr.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let store = tmp.path().join("store");
    let source = json!({"target": {"local": {"name": "slow", "instances": {"slow/0": root}}}, "store": {"path": store}});
    let mut child = Command::new(bin("out"))
        .arg(tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(json!({"source": source}).to_string().as_bytes()).unwrap();
    let start = Instant::now();
    while !state.join("started").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "the backup never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(!state.join("locked").exists(), "still locked after SIGTERM: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!root.join("var/vcap/store/bbr-backup").exists());
}
