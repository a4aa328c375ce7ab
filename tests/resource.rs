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

/// `opsman:` in the source: the versions are platform records. Against the Ops Manager
/// double, the director double, the sshd fleet (tests/support/platform.rs) and s3s-fs, read
/// back with the AWS CLI.
mod platform {
    use super::*;
    use support::opsman::{OpsMan, Spec};
    use support::platform::{platform, Platform, CF, ISO};

    fn opsman_source(p: &Platform, server: &S3sFs, recipient: &str, identity: &str) -> Value {
        json!({
            "opsman": {"target": p.om.url, "username": p.spec.user.0, "password": p.spec.user.1, "ca_cert": p.om.ca_pem,
                       "products": ["cf", "p-isolation-segment"], "director_ssh": p.fleet.vms[0].address(),
                       "director_url": p.director.url, "host_public_key": p.fleet.vms[0].host_key_line},
            "store": {"bucket": "backups", "prefix": "platform", "endpoint": server.endpoint(), "region_name": REGION,
                      "access_key_id": ACCESS_KEY, "secret_access_key": server.secret, "use_path_style": true},
            "encryption": {"recipients": [recipient], "identity": identity},
            "retention": {"keep_last": 1, "min_age": "0s"},
        })
    }

    fn aws(server: &S3sFs, args: &[&str]) -> Vec<u8> {
        let out = server.aws().expect("the AWS CLI").args(args).output().unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn sha256_hex(data: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(data))
    }

    #[test]
    fn a_platform_backup_is_a_version_put_checked_got_and_pruned_with_its_members() {
        let Some(server) = S3sFs::start() else { return };
        server.bucket("backups");
        let Some(p) = platform("resource_platform") else { return };
        if server.aws().is_none() {
            return;
        }
        let Some((recipient, identity)) = age_keys(p.tmp.path()) else { return };
        let source = opsman_source(&p, &server, &recipient, &identity);
        let mut logs = String::new();

        let (v, e) = ok("check", None, &json!({"source": source}));
        assert_eq!(v, json!([]));
        logs += &e;

        // put: one platform backup, the record as the version, each member in the metadata.
        let put_dir = p.tmp.path().join("put");
        fs::create_dir(&put_dir).unwrap();
        let (put, e) = ok("out", Some(&put_dir), &json!({"source": source, "params": {}}));
        logs += &e;
        let name = put["version"]["artifact"].as_str().unwrap().to_string();
        assert!(name.starts_with("platform_"), "{put}");
        assert_eq!(metadata(&put, "members"), "4", "{put}");
        assert!(metadata(&put, "Ops Manager export").starts_with("opsman_"), "{put}");
        assert!(metadata(&put, "director").starts_with("10.0.0.6_"), "{put}");
        assert!(metadata(&put, "product cf").starts_with(&format!("{CF}_")), "{put}");
        assert!(metadata(&put, "product p-isolation-segment").starts_with(&format!("{ISO}_")), "{put}");
        assert_eq!(metadata(&put, "codec"), "zstd + age");
        assert!(e.contains(&format!("Platform record {name} committed: 4 members")), "{e}");
        assert!(p.director.live_users().is_empty(), "{:?}", p.director.live_users());

        // Read back with the AWS CLI: the record names four members, each committed with
        // the lockstep.json it names; the build that took it is recorded.
        let record: Value = serde_json::from_slice(&aws(&server, &["s3", "cp", &format!("s3://backups/platform/{name}/platform.json"), "-"])).unwrap();
        let members = record["members"].as_array().unwrap().clone();
        let roles: Vec<&str> = members.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["opsman-export", "director", "product", "product"]);
        for m in &members {
            let a = m["artifact"].as_str().unwrap();
            assert_eq!(metadata(&put, &m["product"].as_str().map(|p| format!("product {p}")).unwrap_or_default()).is_empty(), m["product"].is_null());
            let marker = aws(&server, &["s3", "cp", &format!("s3://backups/platform/{a}/lockstep.json"), "-"]);
            assert_eq!(sha256_hex(&marker), m["marker_sha256"].as_str().unwrap(), "{a}");
        }
        assert_eq!(record["origin"]["BUILD_PIPELINE_NAME"], "cf-backup");

        // check lists it; get verifies every member and writes the record and each
        // member's records.
        let (v, _) = ok("check", None, &json!({"source": source}));
        assert_eq!(v, json!([{"artifact": name}]));
        let got = p.tmp.path().join("got");
        let (g, e) = ok("in", Some(&got), &json!({"source": source, "version": {"artifact": name}}));
        logs += &e;
        assert_eq!(g["version"]["artifact"], name.as_str());
        assert!(e.contains(&format!("Verified platform backup {name}: every file of its 4 members")), "{e}");
        let written: Value = serde_json::from_slice(&fs::read(got.join("platform.json")).unwrap()).unwrap();
        assert_eq!(written, record);
        assert_eq!(fs::read_to_string(got.join("version")).unwrap().trim(), name);
        for m in &members {
            let dir = got.join(m["artifact"].as_str().unwrap());
            for f in ["metadata", "lockstep.json", "version"] {
                assert!(dir.join(f).is_file(), "{f} missing from {}", dir.display());
            }
            assert_eq!(sha256_hex(&fs::read(dir.join("lockstep.json")).unwrap()), m["marker_sha256"].as_str().unwrap());
        }

        // The tasks' `lockstep run` reads the same source as LOCKSTEP_CONFIG: list shows the
        // record, verify (without an artifact) verifies the newest platform version.
        let lockstep = |action: &str| {
            let out = Command::new(env!("CARGO_BIN_EXE_lockstep")).args(["run", action]).env("LOCKSTEP_CONFIG", source.to_string()).output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
        };
        let (code, list) = lockstep("list");
        assert_eq!(code, Some(0), "{list}");
        assert!(list.contains("PLATFORM BACKUPS") && list.contains(&format!("{name}  ")) && list.contains("complete"), "{list}");
        let (code, out) = lockstep("verify");
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains(&format!("Verified platform backup {name}: every file of its 4 members")), "{out}");
        logs += &list;
        logs += &out;

        // A member's directory is what a get with skip_download writes: a resource whose
        // target is that member (here the director VM, as a host) restores it from there,
        // streamed from the store.
        let director = members[1]["artifact"].as_str().unwrap();
        let key = fs::read_to_string(p.fleet.key(support::fleet::KeyKind::RsaPem).private).unwrap();
        let mut member_source = source.clone();
        member_source.as_object_mut().unwrap().remove("opsman");
        member_source["target"] = json!({"hosts": {"name": "10.0.0.6", "instances": [{"group": "bosh", "index": 0,
            "address": p.fleet.vms[0].address(), "username": "bbr", "private_key": key, "host_public_key": p.fleet.vms[0].host_key_line}]}});
        let data = p.fleet.vms[0].host_path("/var/vcap/store/director/data");
        fs::remove_file(&data).unwrap();
        let (r, e) = ok("out", Some(p.tmp.path()), &json!({"source": member_source, "params": {"action": "restore", "artifact": format!("got/{director}")}}));
        logs += &e;
        assert_eq!(r["version"]["artifact"], director, "{r}");
        assert!(e.contains("streamed (the get fetched only its records)"), "{e}");
        assert_eq!(fs::read_to_string(&data).unwrap(), "director database\n");

        // A flipped byte in a member: get fails naming it, and writes no version.
        let cf = members[2]["artifact"].as_str().unwrap().to_string();
        let object = server.files().into_iter().find(|f| f.contains(&cf) && f.ends_with(".age")).expect("cf's object");
        let object = server.root.path().join(object);
        let intact = fs::read(&object).unwrap();
        let mut flipped = intact.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        fs::write(&object, &flipped).unwrap();
        let damaged = p.tmp.path().join("damaged");
        let e = fails("in", Some(&damaged), &json!({"source": source, "version": {"artifact": name}}));
        assert!(e.contains("incomplete or damaged: 1 of its 4 members") && e.contains(&cf), "{e}");
        assert!(!damaged.join("version").exists() && !damaged.join("platform.json").exists());
        fs::write(&object, &intact).unwrap();

        // A member without its commit marker: the record is no version, and says why.
        let marker_key = format!("platform/{cf}/lockstep.json");
        let marker = server.object_path("backups", &marker_key);
        let kept = fs::read(&marker).unwrap();
        aws(&server, &["s3", "rm", &format!("s3://backups/{marker_key}")]);
        let out = run("check", None, &json!({"source": source}));
        assert!(out.status.success());
        assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!([]));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(&format!("platform backup {name} is incomplete, so it is no version: {cf} NOT COMMITTED")), "{e}");
        let e = fails("in", Some(&damaged), &json!({"source": source, "version": {"artifact": name}, "params": {"skip_download": true}}));
        assert!(e.contains(&format!("{cf} (product {CF}): NOT COMMITTED")), "{e}");
        fs::write(&marker, &kept).unwrap();
        let (v, _) = ok("check", None, &json!({"source": source}));
        assert_eq!(v, json!([{"artifact": name}]));

        // A member that fails: no version, nothing on stdout, the log names the member.
        p.director.fail_vms_task_of(ISO);
        std::thread::sleep(Duration::from_millis(1100));
        let e = fails("out", Some(&put_dir), &json!({"source": source, "params": {}}));
        assert!(e.contains(&format!("platform member 4/4 product p-isolation-segment (deployment {ISO}) failed")), "{e}");
        assert!(e.contains("No platform record was written") && e.contains("no version is emitted"), "{e}");
        logs += &e;
        let (v, _) = ok("check", None, &json!({"source": source, "version": {"artifact": name}}));
        assert_eq!(v, json!([{"artifact": name}]), "a failed put made a version");

        // prune: newer copies of every member (the rules alone would delete the members)
        // and an older record; the newest record keeps its members, the older one goes.
        for m in &members {
            let a = m["artifact"].as_str().unwrap();
            let newer = format!("{}_29990101T000000Z", a.rsplit_once('_').unwrap().0);
            aws(&server, &["s3", "cp", "--recursive", "--quiet", &format!("s3://backups/platform/{a}/"), &format!("s3://backups/platform/{newer}/")]);
        }
        let old = "platform_20200101T000000Z";
        let mut old_record = record.clone();
        old_record["platform"] = old.into();
        fs::write(p.tmp.path().join("old.json"), serde_json::to_vec(&old_record).unwrap()).unwrap();
        aws(&server, &["s3", "cp", "--quiet", p.tmp.path().join("old.json").to_str().unwrap(), &format!("s3://backups/platform/{old}/platform.json")]);
        let (v, _) = ok("check", None, &json!({"source": source, "version": {"artifact": old}}));
        assert_eq!(v, json!([{"artifact": old}, {"artifact": name}]));
        let (pruned, e) = ok("out", Some(&put_dir), &json!({"source": source, "params": {"action": "prune"}}));
        logs += &e;
        assert_eq!(pruned["version"]["artifact"], name.as_str(), "{pruned}");
        let listing = String::from_utf8(aws(&server, &["s3", "ls", "--recursive", "s3://backups/platform/"])).unwrap();
        assert!(!listing.contains(old), "the older record was not pruned:\n{listing}");
        for m in &members {
            let a = m["artifact"].as_str().unwrap();
            assert!(listing.contains(&format!("{a}/lockstep.json")), "{a} was pruned:\n{e}\n{listing}");
        }
        let (_, e) = ok("in", Some(&p.tmp.path().join("after")), &json!({"source": source, "version": {"artifact": name}}));
        assert!(e.contains("every file of its 4 members"), "{e}");

        // `lockstep run backup` with the source as LOCKSTEP_CONFIG takes the same platform
        // backup; the isolation segment still fails, named, and no record is written.
        std::thread::sleep(Duration::from_millis(1100));
        let (code, out) = lockstep("backup");
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&format!("platform member 4/4 product p-isolation-segment (deployment {ISO}) failed")), "{out}");
        assert!(out.contains("no platform record was written"), "{out}");
        logs += &out;
        let (v, _) = ok("check", None, &json!({"source": source}));
        assert_eq!(v, json!([{"artifact": name}]));

        // restore is not a platform action.
        let e = fails("out", Some(&put_dir), &json!({"source": source, "params": {"action": "restore", "artifact": "got"}}));
        assert!(e.contains("restored member by member"), "{e}");

        for secret in [p.spec.user.1.as_str(), "bbr-client-secret", "PRIVATE KEY", identity.as_str(), server.secret.as_str()] {
            assert!(!logs.contains(secret), "{secret} was printed");
        }
    }

    #[test]
    fn a_put_while_ops_manager_applies_changes_fails_writing_nothing() {
        let Some(server) = S3sFs::start() else { return };
        server.bucket("backups");
        let mut spec = Spec::platform("-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----\n");
        spec.installations.insert(0, (9, "running".into(), "bob".into()));
        let om = OpsMan::start(spec.clone());
        let source = json!({
            "opsman": {"target": om.url, "client_id": spec.client.0, "client_secret": spec.client.1, "ca_cert": om.ca_pem},
            "store": {"bucket": "backups", "prefix": "platform", "endpoint": server.endpoint(), "region_name": REGION,
                      "access_key_id": ACCESS_KEY, "secret_access_key": server.secret, "use_path_style": true},
        });
        let dir = TempDir::new().unwrap();
        let e = fails("out", Some(dir.path()), &json!({"source": source}));
        assert!(e.contains("is applying changes (installation 9, started by bob") && e.contains("Wait until it finishes"), "{e}");
        assert!(!e.contains(&spec.client.1), "{e}");
        assert!(server.files().is_empty(), "{:?}", server.files());
        let calls = om.calls();
        assert!(calls.iter().any(|c| c == "GET /api/v0/installations"), "{calls:?}");
        assert!(!calls.iter().any(|c| c.contains("installation_asset_collection") || c.contains("credentials")), "{calls:?}");
        // The tasks' `lockstep run backup` with the same configuration: refused alike.
        let out = Command::new(env!("CARGO_BIN_EXE_lockstep")).args(["run", "backup"]).env("LOCKSTEP_CONFIG", source.to_string()).output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(e.contains("is applying changes (installation 9"), "{e}");
        assert!(server.files().is_empty(), "{:?}", server.files());
        // Wrong credentials: the login fails, saying what to check, never the secret.
        let mut wrong = source.clone();
        wrong["opsman"]["client_secret"] = json!("not-the-client-secret");
        let e = fails("out", Some(dir.path()), &json!({"source": wrong}));
        assert!(e.contains("logging in to Ops Manager") && e.contains("OM_CLIENT_SECRET"), "{e}");
        assert!(!e.contains("not-the-client-secret"), "{e}");
        assert!(server.files().is_empty());
    }

    #[test]
    fn bad_opsman_sources_fail_clearly() {
        let dir = TempDir::new().unwrap();
        let login = json!({"target": "https://127.0.0.1:1", "username": "admin", "password": "hunter2-pass"});
        let with = |k: &str, v: Value| {
            let mut o = login.clone();
            o[k] = v;
            json!({"source": {"store": {"path": "/tmp"}, "opsman": o}})
        };
        for (kind, req, want) in [
            ("check", with("skip_ssl_verification", json!(true)), "opsman: unknown key `skip_ssl_verification`; allowed keys: target, username, password"),
            ("out", json!({"source": {"store": {"path": "/tmp"}, "opsman": {"target": "https://opsman", "username": "admin"}}}), "opsman: `username` needs `password`"),
            ("in", with("products", json!("all,cf")), "opsman.products: give `all` alone"),
            ("out", json!({"source": {"store": {"path": "/tmp"}, "opsman": {"target": "https://opsman"}}}), "opsman: missing credentials"),
            (
                "check",
                json!({"source": {"store": {"path": "/tmp"}, "opsman": login, "target": {"local": {"name": "x", "instances": {}}}}}),
                "give `target` (one deployment) or `opsman`",
            ),
        ] {
            let e = fails(kind, (kind != "check").then_some(dir.path()), &req);
            assert!(e.contains(want), "{kind} {req}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // An ordinary version given to a platform source.
        let e = fails("in", Some(dir.path()), &json!({"source": {"store": {"path": dir.path()}, "opsman": login}, "version": {"artifact": "cf_20260101T000000Z"}}));
        assert!(e.contains("is not a platform backup (platform_<time>)"), "{e}");
    }
}
