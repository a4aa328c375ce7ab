//! End-to-end tests of the `lockstep` binary over the local transport: what an operator
//! types, what they see, what lands on disk, and what a signal does.

use assert_cmd::Command;
use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::model::InstanceId;
use predicates::prelude::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn lockstep() -> Command {
    Command::cargo_bin("lockstep").unwrap()
}

fn instance_args(deployed: &[(InstanceId, String)]) -> Vec<String> {
    deployed.iter().flat_map(|(id, root)| ["--instance".to_string(), format!("{id}={root}")]).collect()
}

/// The only artifact directory in `store`.
fn only_artifact(store: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(store).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// Adds every awkward kind of file to the blobstore's data.
fn add_awkward_files(root: &str) {
    let data = Path::new(root).join("var/vcap/store/blobstore");
    fs::create_dir_all(data.join("deep/er/still empty")).unwrap();
    fs::write(data.join("with space.txt"), "a b").unwrap();
    fs::write(data.join("tab\tand\nnewline"), "x").unwrap();
    fs::write(data.join("quote's \"and\" $(dollar)"), "y").unwrap();
    fs::write(data.join("empty"), "").unwrap();
    fs::write(data.join("secret"), "s3cr3t").unwrap();
    fs::set_permissions(data.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(data.join("private dir")).unwrap();
    fs::set_permissions(data.join("private dir"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", data.join("absolute link")).unwrap();
    std::os::unix::fs::symlink("missing-target", data.join("dangling")).unwrap();
    fs::hard_link(data.join("with space.txt"), data.join("hard link")).unwrap();
    let long = "x".repeat(120);
    fs::create_dir_all(data.join(&long)).unwrap();
    fs::write(data.join(&long).join(&long), "long path").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(data.join("big.bin"), big).unwrap();
}

#[test]
fn help_explains_every_command() {
    lockstep().arg("--help").assert().success().stdout(
        predicate::str::contains("BBR-compatible")
            .and(predicate::str::contains("director"))
            .and(predicate::str::contains("deployment"))
            .and(predicate::str::contains("demo"))
            .and(predicate::str::contains("16 cleanup failed")),
    );
    for sub in ["pre-backup-check", "backup", "restore", "backup-cleanup", "restore-cleanup"] {
        lockstep()
            .args(["local", "--instance", "a/0=/tmp", sub, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::is_empty().not());
    }
    lockstep()
        .args(["local", "--instance", "a/0=/tmp", "backup", "--help"])
        .assert()
        .stdout(predicate::str::contains("--artifact-path").and(predicate::str::contains("--unsafe-lock-free")));
}

#[test]
fn backup_then_restore_round_trips_awkward_files_byte_for_byte() {
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    add_awkward_files(&src[1].1);
    let dst = create_deployment(&tmp.path().join("dst"), false).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();

    lockstep()
        .args(["local", "--name", "cf"])
        .args(instance_args(&src))
        .args(["backup", "--artifact-path"])
        .arg(&store)
        .assert()
        .success()
        .stdout(predicate::str::contains("Backup created of cf").and(predicate::str::contains("lock window (API downtime)")));
    let artifact = only_artifact(&store);
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    assert!(regex_like_artifact_name(&name), "{name}");
    let artifact_mode = fs::metadata(&artifact).unwrap().permissions().mode() & 0o777;
    assert_eq!(artifact_mode, 0o700, "artifacts hold secrets");

    lockstep().args(["list", "-a"]).arg(&store).assert().success().stdout(predicate::str::contains(&name));
    lockstep().args(["verify", "-a"]).arg(&artifact).assert().success();

    lockstep()
        .args(["local", "--name", "cf"])
        .args(instance_args(&dst))
        .args(["restore", "-a"])
        .arg(&artifact)
        .assert()
        .success()
        .stdout(predicate::str::contains("Restored"));
    for ((_, a), (_, b)) in src.iter().zip(&dst) {
        let a = snapshot(&Path::new(a).join("var/vcap/store")).unwrap();
        let b = snapshot(&Path::new(b).join("var/vcap/store")).unwrap();
        assert_eq!(a, b);
    }
    // The tar inside is a plain tar with ./ names that `tar` itself extracts (bbr's format).
    let out = std::process::Command::new("tar").arg("-tf").arg(artifact.join("blobstore-0-blobstore.tar")).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.lines().any(|l| l == "./with space.txt"), "{listing}");
}

fn regex_like_artifact_name(name: &str) -> bool {
    let Some(stamp) = name.strip_prefix("cf_") else { return false };
    stamp.len() == 16 && stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z')
}

#[test]
fn verify_names_the_file_that_differs() {
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    lockstep().args(["local"]).args(instance_args(&src)).args(["backup", "-a"]).arg(&store).assert().success();
    let artifact = only_artifact(&store);
    let tar = artifact.join("db-0-postgres.tar");
    let mut bytes = fs::read(&tar).unwrap();
    bytes[1100] ^= 1; // inside dump.sql's content (after ./ and its header)
    fs::write(&tar, bytes).unwrap();
    lockstep()
        .args(["verify", "-a"])
        .arg(&artifact)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("db-0-postgres.tar (postgres): ./dump.sql has sha256"));
}

#[test]
fn exit_codes_and_cleanup_advice_match_bbr() {
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let unlock = Path::new(&src[0].1).join("var/vcap/jobs/cloud_controller/bin/bbr/post-backup-unlock");
    fs::write(&unlock, "#!/bin/sh\necho 'cc did not come back' >&2\nexit 1\n").unwrap();
    lockstep()
        .args(["local", "--name", "cf"])
        .args(instance_args(&src))
        .args(["backup", "-a"])
        .arg(&store)
        .assert()
        .code(8)
        .stderr(
            predicate::str::contains("1 error occurred:")
                .and(predicate::str::contains("post-backup-unlock for job cloud_controller on api/0: cc did not come back - exit code 1"))
                .and(predicate::str::contains(format!(
                    "It is recommended that you run `lockstep local --name cf {} backup-cleanup`",
                    instance_args(&src).join(" ")
                ))),
        );

    let lock = Path::new(&src[2].1).join("var/vcap/jobs/postgres/bin/bbr/pre-backup-lock");
    fs::write(&lock, "#!/bin/sh\nexit 2\n").unwrap();
    lockstep().args(["local"]).args(instance_args(&src)).args(["backup", "-a"]).arg(&store).assert().code(12);
}

#[test]
fn bad_input_gets_a_clear_error() {
    lockstep()
        .args(["local", "--instance", "no-equals-sign", "pre-backup-check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("expected GROUP/INDEX=DIR"));
    lockstep()
        .args(["local", "--instance", "a/0=/definitely/not/here", "pre-backup-check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("/definitely/not/here is not a directory"));
    lockstep().args(["local", "--instance", "a/0=/tmp", "restore"]).assert().failure().stderr(predicate::str::contains("--artifact-path"));
    lockstep()
        .args(["local", "--instance", "a/0=/tmp", "restore", "-a", "/no/such/artifact"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Could not open backup"));
    lockstep()
        .args(["local", "--instance", "a/0=/tmp", "backup", "-a", "/no/such/dir"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a directory"));
}

#[test]
fn restores_an_artifact_written_by_bbr() {
    // A hand-made bbr artifact: a plain `tar -c .` and bbr's metadata with a local time
    // zone and no lockstep.json. postgres was `backup_one_restore_all`: its data is in the
    // custom artifact, which wins over the instance's own (empty in bbr, stale here).
    let tmp = TempDir::new().unwrap();
    let dst = create_deployment(&tmp.path().join("dst"), false).unwrap();
    let artifact = tmp.path().join("cf_20240102T030405Z");
    fs::create_dir(&artifact).unwrap();
    let mut meta = String::from("instances:\n");
    for (id, job) in dst.iter().map(|(id, _)| id).zip(["cloud_controller", "blobstore", "postgres"]) {
        let data = tmp.path().join(format!("data-{job}"));
        fs::create_dir_all(data.join("sub")).unwrap();
        fs::write(data.join("sub/file one"), format!("{job} data")).unwrap();
        let tar = artifact.join(format!("{}-{}-{job}.tar", id.group, id.index));
        assert!(std::process::Command::new("tar").arg("-C").arg(&data).args(["-cf"]).arg(&tar).arg(".").status().unwrap().success());
        use sha2::Digest;
        let sum = hex::encode(sha2::Sha256::digest(format!("{job} data")));
        meta.push_str(&format!(
            "- name: {}\n  index: \"{}\"\n  artifacts:\n  - name: {job}\n    checksums:\n      ./sub/file one: {sum}\n",
            id.group, id.index
        ));
    }
    let custom = tmp.path().join("data-custom");
    fs::create_dir_all(custom.join("sub")).unwrap();
    fs::write(custom.join("sub/file one"), "postgres data from the bootstrap").unwrap();
    let tar = artifact.join("postgres-postgres-release-backup-one-restore-all.tar");
    assert!(std::process::Command::new("tar").arg("-C").arg(&custom).args(["-cf"]).arg(&tar).arg(".").status().unwrap().success());
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest("postgres data from the bootstrap"));
    meta.push_str(&format!(
        "custom_artifacts:\n- name: postgres-postgres-release-backup-one-restore-all\n  checksums:\n    ./sub/file one: {sum}\n"
    ));
    meta.push_str("backup_activity:\n  start_time: 2024/01/02 03:04:05 PST\n  finish_time: 2024/01/02 03:05:00 PST\n");
    fs::write(artifact.join("metadata"), meta).unwrap();

    lockstep()
        .args(["local", "--name", "cf"])
        .args(instance_args(&dst))
        .args(["restore", "-a"])
        .arg(&artifact)
        .assert()
        .success()
        .stdout(predicate::str::contains("no lockstep.json: treating it as an artifact made by bbr"));
    let restored = fs::read_to_string(Path::new(&dst[2].1).join("var/vcap/store/postgres/sub/file one")).unwrap();
    assert_eq!(restored, "postgres data from the bootstrap");
    let restored = fs::read_to_string(Path::new(&dst[1].1).join("var/vcap/store/blobstore/sub/file one")).unwrap();
    assert_eq!(restored, "blobstore data");
}

/// One instance whose backup script blocks until killed, to stop lockstep mid-backup.
fn slow_deployment(root: &Path) -> String {
    let bbr = root.join("var/vcap/jobs/slow/bin/bbr");
    fs::create_dir_all(&bbr).unwrap();
    let state = root.join("state");
    fs::create_dir_all(&state).unwrap();
    let s = state.display();
    for (name, body) in [
        ("pre-backup-lock", format!("touch '{s}/locked'")),
        ("backup", format!("touch '{s}/backup-started'\nsleep 60\necho data > \"$BBR_ARTIFACT_DIRECTORY/x\"")),
        ("post-backup-unlock", format!("rm -f '{s}/locked'\necho \"$BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL\" > '{s}/unlocked'")),
    ] {
        fs::write(bbr.join(name), format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(bbr.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    root.to_string_lossy().into_owned()
}

fn wait_for(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < timeout, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_slow_backup(tmp: &TempDir) -> (std::process::Child, PathBuf, PathBuf) {
    let root = tmp.path().join("vm");
    let dir = slow_deployment(&root);
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lockstep"))
        .args(["local", "--name", "slow", "--instance", &format!("slow/0={dir}"), "backup", "-a"])
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&root.join("state/backup-started"), Duration::from_secs(30));
    (child, root, store)
}

#[test]
fn sigterm_mid_backup_unlocks_cleans_up_and_exits_nonzero() {
    let tmp = TempDir::new().unwrap();
    let (child, root, store) = start_slow_backup(&tmp);
    assert!(root.join("state/locked").exists());
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    // As bbr: the log on stdout, the run's error on stderr.
    assert!(stdout.contains("Stop requested"), "{stdout}");
    assert!(stderr.contains("cancelled") || stderr.contains("stopped"), "{stderr}");
    assert!(!root.join("state/locked").exists(), "still locked after SIGTERM: {stderr}");
    assert_eq!(fs::read_to_string(root.join("state/unlocked")).unwrap().trim(), "false");
    assert!(!root.join("var/vcap/store/bbr-backup").exists(), "staging left behind");
    assert!(fs::read_dir(&store).unwrap().next().is_none(), "nothing may be left in the store");
}

#[test]
fn a_second_signal_exits_at_once() {
    let tmp = TempDir::new().unwrap();
    // The unlock script hangs, so the first signal's cleanup cannot finish by itself.
    let (child, root, _) = start_slow_backup(&tmp);
    fs::write(root.join("var/vcap/jobs/slow/bin/bbr/post-backup-unlock"), "#!/bin/sh\nsleep 60\n").unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Second signal: exiting now"));
}

#[test]
fn demo_runs_end_to_end() {
    let tmp = TempDir::new().unwrap();
    lockstep()
        .args(["demo", "--dir"])
        .arg(tmp.path().join("demo"))
        .assert()
        .success()
        .stderr(predicate::str::contains("restored data matches").and(predicate::str::contains("Demo complete")));
}

/// Without --dir, the demo works in a temporary directory of its own and removes it; the
/// path it names on stderr is gone afterwards. TMPDIR points at a directory of the test's.
#[test]
fn demo_without_a_dir_leaves_nothing_behind() {
    let tmp = TempDir::new().unwrap();
    let out = lockstep().env("TMPDIR", tmp.path()).arg("demo").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err.lines().find(|l| l.contains("Removed the demo directory")).unwrap_or_else(|| panic!("{err}"));
    let dir = line.split("Removed the demo directory ").nth(1).unwrap().trim();
    assert!(dir.starts_with(tmp.path().to_str().unwrap()), "{dir}");
    assert!(!Path::new(dir).exists(), "{dir} is still there");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "the demo left files in TMPDIR");
}

/// `list` lists every artifact: a damaged one (malformed lockstep.json) is named with the
/// reason on stderr, after the good ones are listed, and makes the exit code 1; a store
/// directory that does not exist is an error, not an empty store; names from the store
/// cannot forge lines.
#[test]
fn list_shows_every_artifact_and_flags_the_damaged_ones() {
    let tmp = TempDir::new().unwrap();
    let src = create_deployment(&tmp.path().join("src"), true).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    lockstep().args(["local", "--name", "cf"]).args(instance_args(&src)).args(["backup", "-a"]).arg(&store).assert().success();
    let good = only_artifact(&store);
    let copy = |to: &str| {
        let status = std::process::Command::new("cp").arg("-a").arg(&good).arg(store.join(to)).status().unwrap();
        assert!(status.success());
    };
    copy("cf_20200101T000000Z");
    fs::write(store.join("cf_20200101T000000Z/lockstep.json"), "{\"format_version\": 1, truncated").unwrap();
    copy("evil\nBackup created of cf_20200102T000000Z");

    let out = lockstep().args(["list", "-a"]).arg(&store).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let good_name = good.file_name().unwrap().to_string_lossy();
    assert!(stdout.contains(&*good_name), "the good artifact is still listed: {stdout}");
    assert!(stderr.contains("error: cf_20200101T000000Z is damaged"), "{stderr}");
    assert!(stdout.contains("evil\\nBackup created of cf_20200102T000000Z"), "escaped: {stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("Backup created")), "a name forged a line: {stdout}");

    let missing = tmp.path().join("no-such-store");
    lockstep()
        .args(["list", "-a"])
        .arg(&missing)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not exist"));
    lockstep()
        .args(["list", "--store", &format!("file://{}", missing.display())])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not exist"));
}
