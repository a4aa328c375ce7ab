//! A restore from S3 reads each stored object once: the bytes are verified as they stream
//! into the instances' staging directories, not in a whole read beforehand. Counted by a
//! proxy in front of a real S3 server (s3s-fs) that sees every request; a corrupt object is
//! still refused (nothing locked, nothing left staged), which the instances' own files show.
//! An object larger than a part is read in ranges: one that keeps failing fails the restore
//! the same way.

mod s3_support;

use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::model::InstanceId;
use s3_support::fault_proxy::{Fault, FaultProxy, Request};
use s3_support::{S3sFs, REGION};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

type Gets = Arc<Mutex<BTreeMap<String, usize>>>;

/// A proxy that counts the GETs of each object under `bucket/`.
fn counting_proxy(server: &S3sFs) -> (FaultProxy, Gets) {
    let gets: Gets = Arc::default();
    let seen = gets.clone();
    let proxy = FaultProxy::start(
        server.port,
        Arc::new(move |method: &str, path: &str| {
            if method == "GET" && !path.contains('?') {
                *seen.lock().unwrap().entry(path.to_string()).or_default() += 1;
            }
            None
        }),
    );
    (proxy, gets)
}

fn lockstep(server: &S3sFs, proxy: &FaultProxy, deployed: &[(InstanceId, String)], args: &[&str]) -> Output {
    // 5 MiB parts (S3's least): an object above that is read in ranges.
    let url = format!("s3://backups/cf?endpoint={}&use_path_style=true&region_name={REGION}&max_retries=2&part_size_mib=5", proxy.endpoint());
    let mut c = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    c.envs(server.env()).args(["local", "--name", "cf"]);
    for (id, root) in deployed {
        c.arg("--instance").arg(format!("{id}={root}"));
    }
    c.args(args).args(["--store", &url]).output().unwrap()
}

fn artifact_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().find_map(|l| l.split("Backup created of cf: ").nth(1)).unwrap().split_whitespace().next().unwrap().to_string()
}

fn data(deployed: &[(InstanceId, String)]) -> Vec<Vec<(String, String)>> {
    deployed.iter().map(|(_, root)| snapshot(&Path::new(root).join("var/vcap/store")).unwrap()).collect()
}

#[test]
fn a_restore_reads_each_stored_object_once() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let (proxy, gets) = counting_proxy(&server);
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let name = artifact_of(&lockstep(&server, &proxy, &src, &["backup", "--compression", "zstd"]));

    let dst = create_deployment(&tmp.path().join("dst"), false).unwrap();
    gets.lock().unwrap().clear();
    let out = lockstep(&server, &proxy, &dst, &["restore", "--artifact", &name]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(data(&dst), data(&src));
    let gets = gets.lock().unwrap().clone();
    let tars: BTreeMap<&String, &usize> = gets.iter().filter(|(k, _)| k.contains(".tar")).collect();
    assert_eq!(tars.len(), 3, "every job's object was read: {gets:?}");
    for (key, n) in tars {
        assert_eq!(*n, 1, "{key} was read {n} times: {gets:?}");
    }
}

#[test]
fn a_corrupt_object_found_while_streaming_locks_nothing_and_leaves_nothing() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let (proxy, _) = counting_proxy(&server);
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let name = artifact_of(&lockstep(&server, &proxy, &src, &["backup", "--compression", "none"]));
    // Flip a byte of the database dump inside its stored tar (same size: the listing
    // check cannot see it, only the stream's hashes can).
    let obj = server.object_path("backups", &format!("cf/{name}/db-0-postgres.tar"));
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[1024] ^= 0x55;
    std::fs::write(&obj, bytes).unwrap();

    let stderr = restore_fails_untouched(&server, &proxy, tmp.path(), &name);
    assert!(stderr.contains("Backup is corrupted") && stderr.contains("db-0-postgres.tar (postgres): ./dump.sql has sha256"), "{stderr}");
}

#[test]
fn a_range_that_keeps_failing_fails_the_restore_before_any_lock() {
    const PART: u64 = 5 * 1024 * 1024;
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    // 12 MiB in the blobstore: its (uncompressed) object spans three ranges.
    let blobs = src.iter().find(|(id, _)| id.group == "blobstore").unwrap();
    std::fs::write(Path::new(&blobs.1).join("var/vcap/store/blobstore/big.bin"), s3_support::pattern(12 << 20, 5)).unwrap();
    let (plain, _) = counting_proxy(&server);
    let name = artifact_of(&lockstep(&server, &plain, &src, &["backup", "--compression", "none"]));

    // Every GET of the blobstore's second range fails (a 500 each time, retried, then
    // given up): the restore must fail with the read, before any lock.
    let failing = FaultProxy::start_seeing(
        server.port,
        Arc::new(|r: &Request| {
            let second = r.range.as_deref().is_some_and(|x| x.starts_with(&format!("bytes={PART}-")));
            (r.method == "GET" && r.target.contains("blobstore") && second).then_some(Fault::Status500)
        }),
        None,
    );
    let stderr = restore_fails_untouched(&server, &failing, tmp.path(), &name);
    assert!(stderr.contains("reading") && stderr.contains("blobstore-0-blobstore.tar"), "{stderr}");
    assert!(failing.faults.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the range was not retried");
    let first_range = Some(format!("bytes=0-{}", PART - 1));
    let ranged = failing.seen.requests.lock().unwrap().iter().any(|r| r.range == first_range && r.target.contains("blobstore-0-blobstore.tar"));
    assert!(ranged, "not read in ranges");
}

/// Restores artifact `name` into a fresh deployment under `base/dst`, which must fail
/// (exit 1) before its lock: no lock or restore script ran (the log), nothing is staged or
/// locked on any instance, and their data is what it was. Returns the restore's stderr.
fn restore_fails_untouched(server: &S3sFs, proxy: &FaultProxy, base: &Path, name: &str) -> String {
    let dst = create_deployment(&base.join("dst"), false).unwrap();
    let before = data(&dst);
    let out = lockstep(server, proxy, &dst, &["restore", "--artifact", name]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("pre-restore-lock") && !stdout.contains("Running restore"), "a lock or restore script ran:\n{stdout}");
    for (id, root) in &dst {
        assert!(!Path::new(root).join("var/vcap/store/bbr-backup").exists(), "staging left on {id}");
        let locked: Vec<_> = walk(&Path::new(root).join("var/vcap/data")).into_iter().filter(|p| p.ends_with("locked")).collect();
        assert!(locked.is_empty(), "{id} locked: {locked:?}");
    }
    assert_eq!(data(&dst), before, "nothing was restored");
    stderr
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
