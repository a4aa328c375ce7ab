//! The `lockstep` binary against a real S3-compatible server (`s3s-fs`): backup with
//! compression and encryption straight into the bucket, list, verify, fetch, restore; what
//! it stored read back with the AWS CLI and restored by hand with `age`, `zstd` and `tar`;
//! damaged objects and wrong keys reported clearly.

mod s3_support;

use assert_cmd::Command;
use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::model::InstanceId;
use predicates::prelude::*;
use s3_support::{find_bin, missing, S3sFs};
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn lockstep(server: &S3sFs) -> Command {
    let mut c = Command::cargo_bin("lockstep").unwrap();
    c.envs(server.env());
    c
}

fn instance_args(deployed: &[(InstanceId, String)]) -> Vec<String> {
    deployed.iter().flat_map(|(id, root)| ["--instance".to_string(), format!("{id}={root}")]).collect()
}

/// An age key pair made by `age-keygen` (the operator's tool); returns (identity file, recipient).
fn age_keygen(dir: &Path, name: &str) -> Option<(PathBuf, String)> {
    let Some(keygen) = find_bin("age-keygen") else {
        missing("age-keygen (apt-get install age)");
        return None;
    };
    let path = dir.join(name);
    let out = std::process::Command::new(keygen).arg("-o").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = fs::read_to_string(&path).unwrap();
    let recipient = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    Some((path, recipient))
}

struct World {
    tmp: TempDir,
    server: S3sFs,
    src: Vec<(InstanceId, String)>,
}

impl World {
    fn new() -> Option<World> {
        let server = S3sFs::start()?;
        server.bucket("backups");
        let tmp = TempDir::new().unwrap();
        let src = create_deployment(&tmp.path().join("src"), true).unwrap();
        // Something worth compressing, and a file big enough for several parts.
        let blob = Path::new(&src[1].1).join("var/vcap/store/blobstore");
        fs::write(blob.join("big.bin"), s3_support::pattern(12 * 1024 * 1024, 5)).unwrap();
        fs::write(blob.join("with space.txt"), "a b").unwrap();
        Some(World { tmp, server, src })
    }

    fn url(&self) -> String {
        self.server.url("backups", "cf-backups")
    }

    fn backup(&self, extra: &[&str]) -> String {
        let out = lockstep(&self.server)
            .args(["local", "--name", "cf"])
            .args(instance_args(&self.src))
            .args(["backup", "--store", &self.url()])
            .args(extra)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stdout}{stderr}");
        // bbr's command tree logs to stdout.
        let name = stdout.lines().find_map(|l| l.split("Backup created of cf: ").nth(1)).expect(&stdout);
        name.split_whitespace().next().unwrap().to_string()
    }

    fn fresh(&self, name: &str) -> Vec<(InstanceId, String)> {
        create_deployment(&self.tmp.path().join(name), false).unwrap()
    }

    fn assert_same_data(&self, dst: &[(InstanceId, String)]) {
        for ((_, a), (_, b)) in self.src.iter().zip(dst) {
            let a = snapshot(&Path::new(a).join("var/vcap/store")).unwrap();
            let b = snapshot(&Path::new(b).join("var/vcap/store")).unwrap();
            assert_eq!(a, b);
        }
    }
}

#[test]
fn encrypted_zstd_backup_lists_verifies_fetches_and_restores() {
    let Some(w) = World::new() else { return };
    let Some((key, recipient)) = age_keygen(w.tmp.path(), "key.txt") else { return };
    let name = w.backup(&["--encrypt-to", &recipient]);

    // Stored as .tar.zst.age, with plain metadata and the marker.
    let keys: Vec<String> = s3_support::walk(&w.server.root.path().join("backups/cf-backups").join(&name));
    assert!(keys.contains(&"blobstore-0-blobstore.tar.zst.age".to_string()), "{keys:?}");
    assert!(keys.contains(&"metadata".to_string()) && keys.contains(&"lockstep.json".to_string()), "{keys:?}");
    let big = fs::metadata(w.server.object_path("backups", &format!("cf-backups/{name}/blobstore-0-blobstore.tar.zst.age"))).unwrap().len();
    assert!(big < 6 * 1024 * 1024, "12 MiB of text compressed to {big} bytes");
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(w.server.object_path("backups", &format!("cf-backups/{name}/lockstep.json"))).unwrap()).unwrap();
    assert_eq!(marker["compression"], "zstd");
    assert_eq!(marker["encrypted"], true);
    assert_eq!(marker["encryption"]["recipients"][0], recipient.as_str());

    lockstep(&w.server)
        .args(["list", "--store", &w.url()])
        .assert()
        .success()
        .stdout(predicate::str::contains(&name).and(predicate::str::contains("zstd+age")));

    // verify needs the identity, and says so.
    lockstep(&w.server)
        .args(["verify", &name, "--store", &w.url()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("encrypted").and(predicate::str::contains("--identity")).and(predicate::str::contains(&recipient)));
    lockstep(&w.server).args(["verify", &name, "--store", &w.url(), "--identity"]).arg(&key).assert().success();
    let Some((wrong, _)) = age_keygen(w.tmp.path(), "wrong.txt") else { return };
    lockstep(&w.server)
        .args(["verify", &name, "--store", &w.url(), "-i"])
        .arg(&wrong)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("wrong age identity").and(predicate::str::contains("blobstore")));

    // Restore straight from the store.
    let dst = w.fresh("dst");
    lockstep(&w.server)
        .args(["local", "--name", "cf"])
        .args(instance_args(&dst))
        .args(["restore", "--store", &w.url(), "--artifact", &name, "--identity"])
        .arg(&key)
        .assert()
        .success()
        .stdout(predicate::str::contains("Restored"));
    w.assert_same_data(&dst);

    // Fetch: a plain bbr artifact directory, which restore -a (and bbr) reads.
    let fetched = w.tmp.path().join("fetched");
    lockstep(&w.server)
        .args(["fetch", &name, "--store", &w.url(), "-a"])
        .arg(&fetched)
        .args(["-i"])
        .arg(&key)
        .assert()
        .success();
    let dir = fetched.join(&name);
    assert!(dir.join("blobstore-0-blobstore.tar").is_file());
    assert!(!dir.join("blobstore-0-blobstore.tar.zst.age").exists());
    let out = std::process::Command::new("tar").arg("-tf").arg(dir.join("blobstore-0-blobstore.tar")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "./with space.txt"));
    let m: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("lockstep.json")).unwrap()).unwrap();
    assert_eq!((m["compression"].as_str(), m["encrypted"].as_bool()), (Some("none"), Some(false)));
    Command::cargo_bin("lockstep").unwrap().args(["verify", "-a"]).arg(&dir).assert().success();
    let dst2 = w.fresh("dst2");
    Command::cargo_bin("lockstep")
        .unwrap()
        .args(["local", "--name", "cf"])
        .args(instance_args(&dst2))
        .args(["restore", "-a"])
        .arg(&dir)
        .assert()
        .success();
    w.assert_same_data(&dst2);
    // Fetching again into the same place is refused rather than mixing two copies.
    lockstep(&w.server)
        .args(["fetch", &name, "--store", &w.url(), "-a"])
        .arg(&fetched)
        .args(["-i"])
        .arg(&key)
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists"));
}

#[test]
fn what_lockstep_stored_restores_by_hand_with_aws_age_zstd_and_tar() {
    let Some(w) = World::new() else { return };
    let Some((key, recipient)) = age_keygen(w.tmp.path(), "key.txt") else { return };
    let name = w.backup(&["--encrypt-to", &recipient]);
    let Some(mut aws) = w.server.aws() else { return };
    let Some(age) = find_bin("age") else { return missing("age") };
    let Some(zstd) = find_bin("zstd") else { return missing("zstd") };

    // Independent client: list and download with the AWS CLI.
    let out = aws.args(["s3", "ls", "--recursive", &format!("s3://backups/cf-backups/{name}/")]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing.contains("blobstore-0-blobstore.tar.zst.age") && listing.contains("lockstep.json"), "{listing}");
    let dl = w.tmp.path().join("download");
    let out = w.server.aws().unwrap().args(["s3", "cp", "--recursive", &format!("s3://backups/cf-backups/{name}/")]).arg(&dl).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The manual restore of the docs: age -d | zstd -d | tar -x.
    for (file, job) in [("blobstore-0-blobstore.tar.zst.age", "blobstore"), ("db-0-postgres.tar.zst.age", "postgres")] {
        let out_dir = w.tmp.path().join("by-hand").join(job);
        fs::create_dir_all(&out_dir).unwrap();
        let script = format!(
            "set -eo pipefail; {age} -d -i {key} {src} | {zstd} -d -q | tar -x -C {out}",
            age = age.display(),
            key = key.display(),
            src = dl.join(file).display(),
            zstd = zstd.display(),
            out = out_dir.display()
        );
        let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        let root = if job == "blobstore" { &w.src[1].1 } else { &w.src[2].1 };
        assert_eq!(snapshot(&out_dir).unwrap(), snapshot(&Path::new(root).join("var/vcap/store").join(job)).unwrap());
    }
    // metadata stays plain bbr YAML with the uncompressed files' sha256.
    let metadata = fs::read_to_string(dl.join("metadata")).unwrap();
    let sha = std::process::Command::new("sha256sum").arg(Path::new(&w.src[1].1).join("var/vcap/store/blobstore/big.bin")).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap().to_string();
    assert!(metadata.contains(&format!("./big.bin: {sha}")), "{metadata}");
}

#[test]
fn damaged_objects_are_named_with_their_job() {
    let Some(w) = World::new() else { return };
    // gzip this time, unencrypted.
    let name = w.backup(&["--compression", "gzip"]);
    let obj = w.server.object_path("backups", &format!("cf-backups/{name}/blobstore-0-blobstore.tar.gz"));
    assert!(obj.is_file());
    lockstep(&w.server).args(["verify", &name, "--store", &w.url()]).assert().success();

    // A flipped bit.
    let original = fs::read(&obj).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    fs::write(&obj, &flipped).unwrap();
    lockstep(&w.server)
        .args(["verify", &name, "--store", &w.url()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("blobstore-0-blobstore.tar.gz (blobstore)").and(predicate::str::contains("Backup is corrupted")));

    // Truncated.
    fs::write(&obj, &original[..original.len() - 1000]).unwrap();
    lockstep(&w.server)
        .args(["verify", &name, "--store", &w.url()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("blobstore-0-blobstore.tar.gz (blobstore)"));
    // Restore refuses before touching an instance.
    let dst = w.fresh("dst");
    lockstep(&w.server)
        .args(["local", "--name", "cf"])
        .args(instance_args(&dst))
        .args(["restore", "--store", &w.url(), "--artifact", &name])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("blobstore-0-blobstore.tar.gz"));
    assert!(!Path::new(&dst[1].1).join("var/vcap/store/bbr-backup").exists());
    // The other jobs' files were fine and are not blamed.
    let out = lockstep(&w.server).args(["verify", &name, "--store", &w.url()]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("db-0-postgres"));
}

#[test]
fn artifact_path_stays_plain_bbr_and_file_store_defaults_to_zstd() {
    let Some(w) = World::new() else { return };
    let plain = w.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    lockstep(&w.server).args(["local", "--name", "cf"]).args(instance_args(&w.src)).args(["backup", "-a"]).arg(&plain).assert().success();
    let dir = fs::read_dir(&plain).unwrap().next().unwrap().unwrap().path();
    assert!(dir.join("blobstore-0-blobstore.tar").is_file());
    let m: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("lockstep.json")).unwrap()).unwrap();
    assert_eq!((m["format_version"].as_u64(), m["compression"].as_str()), (Some(1), Some("none")));

    let filestore = w.tmp.path().join("filestore");
    lockstep(&w.server)
        .args(["local", "--name", "cf"])
        .args(instance_args(&w.src))
        .args(["backup", "--store", &format!("file://{}", filestore.display())])
        .assert()
        .success();
    let dir = fs::read_dir(&filestore).unwrap().next().unwrap().unwrap().path();
    assert!(dir.join("blobstore-0-blobstore.tar.zst").is_file());
    Command::cargo_bin("lockstep").unwrap().args(["verify", "-a"]).arg(&dir).assert().success();
}

/// A secret on the command line shows in `ps`: it still works, with a warning that says
/// what to do instead; from a file it works without one. A wrong file content is refused
/// without being shown.
#[test]
fn the_secret_key_from_a_file_and_a_warning_for_one_on_the_command_line() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("bkt");
    let tmp = TempDir::new().unwrap();
    let url = server.url("bkt", "p");
    let bare = || {
        let mut c = Command::cargo_bin("lockstep").unwrap();
        c.env_remove("AWS_SECRET_ACCESS_KEY").env_remove("AWS_ACCESS_KEY_ID");
        c.args(["list", "--store", &url, "--s3-access-key-id", s3_support::ACCESS_KEY]);
        c
    };
    let o = bare().args(["--s3-secret-access-key", &server.secret]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: --s3-secret-access-key on the command line shows in process listings"), "{err}");
    assert!(err.contains("--s3-secret-access-key-file") && !err.contains(&server.secret), "{err}");

    let file = tmp.path().join("secret");
    fs::write(&file, format!("{}\n", server.secret)).unwrap();
    let o = bare().arg("--s3-secret-access-key-file").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");

    fs::write(&file, format!("{} and more words\n", server.secret)).unwrap();
    let o = bare().arg("--s3-secret-access-key-file").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("expected the secret access key alone on one line") && !err.contains(&server.secret), "{err}");
}
