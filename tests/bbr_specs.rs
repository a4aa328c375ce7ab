//! bbr's own integration specs, ported: cloudfoundry/bosh-backup-and-restore
//! `integration/deployment/backup_test.go` and `restore_test.go`, each test named after its
//! spec's Context and It, so the two can be read side by side. Only the specs that depend on
//! the script contract alone are here (the rest need bbr's mock director: see
//! tests/bosh_deployment.rs). They drive the `lockstep local` command over instance
//! directories with real scripts that leave marker files, as bbr's specs do on their
//! containers, and assert the exit code, the error text on stderr and what was left behind.
//!
//! Where lockstep deliberately differs from bbr the test says so.

use assert_cmd::Command;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const DEPLOYMENT: &str = "my-new-deployment";

/// One instance: a directory standing in for its `/`.
struct Instance {
    id: &'static str,
    root: PathBuf,
}

impl Instance {
    fn new(base: &Path, id: &'static str) -> Instance {
        let root = base.join(id.replace('/', "-"));
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::create_dir_all(root.join("var/vcap/store")).unwrap();
        Instance { id, root }
    }

    /// `/var/vcap/jobs/<job>/bin/bbr/<name>`, run by `sh`.
    fn script(&self, job: &str, name: &str, body: &str) {
        let dir = self.root.join(format!("var/vcap/jobs/{job}/bin/bbr"));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A path on the instance, for scripts (they see the host's file system).
    fn at(&self, p: &str) -> String {
        self.root.join(p.trim_start_matches('/')).display().to_string()
    }

    fn exists(&self, p: &str) -> bool {
        Path::new(&self.at(p)).exists()
    }

    fn arg(&self) -> String {
        format!("{}={}", self.id, self.root.display())
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn lockstep(cwd: &Path, instances: &[&Instance], args: &[&str]) -> Out {
    let mut c = Command::cargo_bin("lockstep").unwrap();
    c.current_dir(cwd).args(["--debug", "local", "--name", DEPLOYMENT]);
    for i in instances {
        c.arg("--instance").arg(i.arg());
    }
    let o = c.args(args).output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The artifact directories (`<deployment>_<time>`) in `dir`.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with(&format!("{DEPLOYMENT}_")))
        .collect();
    v.sort();
    v
}

/// bbr's default backup script: a marker and two files.
fn default_backup(i: &Instance) {
    i.script(
        "redis",
        "backup",
        &format!(
            "touch '{}'\necho backupcontent1 > \"$BBR_ARTIFACT_DIRECTORY/backupdump1\"\necho backupcontent2 > \"$BBR_ARTIFACT_DIRECTORY/backupdump2\"",
            i.at("/tmp/backup-script-was-run")
        ),
    );
}

fn restore_script(i: &Instance) {
    i.script(
        "redis",
        "restore",
        &format!(
            "mkdir -p '{store}'\ncp -r \"$BBR_ARTIFACT_DIRECTORY\"* '{store}/'\ntouch '{marker}'",
            store = i.at("/var/vcap/store/redis-server"),
            marker = i.at("/tmp/restore-script-was-run")
        ),
    );
}

/// A backup of `instances` taken with their current scripts, as bbr's restore fixtures are.
fn taken(tmp: &Path, instances: &[&Instance]) -> PathBuf {
    let out = lockstep(tmp, instances, &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    artifacts(tmp).pop().unwrap()
}

// --- backup_test.go ---------------------------------------------------------------------

#[test]
fn backup_we_dont_ask_for_the_manifest_successfully_backs_up_the_deployment() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let dirs = artifacts(tmp.path());
    assert_eq!(dirs.len(), 1);
    let name = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    let stamp = name.strip_prefix(&format!("{DEPLOYMENT}_")).unwrap();
    assert!(stamp.len() == 16 && stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z'), "{name}");
    assert!(dirs[0].join("redis-dedicated-node-0-redis.tar").is_file());
    let meta = fs::read_to_string(dirs[0].join("metadata")).unwrap();
    assert!(meta.contains("name: redis-dedicated-node") && meta.contains("./backupdump1") && meta.contains("./backupdump2"), "{meta}");
    assert!(!meta.contains("custom_artifacts:\n-"), "{meta}");
    assert!(i.exists("/tmp/backup-script-was-run"));
    assert!(!i.exists("/var/vcap/store/bbr-backup"), "the remote artifact is removed");
}

#[test]
fn backup_artifact_path_is_an_existing_directory_should_succeed_and_put_the_artifact_into_the_artifact_path() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    let dest = tmp.path().join("artifacts");
    fs::create_dir(&dest).unwrap();
    let out = lockstep(tmp.path(), &[&i], &["backup", "--artifact-path", dest.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    let dirs = artifacts(&dest);
    assert!(dirs[0].join("redis-dedicated-node-0-redis.tar").is_file() && dirs[0].join("metadata").is_file());
}

#[test]
fn backup_artifact_path_does_not_exist_should_fail_with_an_artifact_directory_does_not_exist_error() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    let out = lockstep(tmp.path(), &[&i], &["backup", "--artifact-path", "/not/a/valid/path"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("/not/a/valid/path"), "{}", out.stderr);
    assert!(!i.exists("/tmp/backup-script-was-run"), "nothing runs when the artifact path is wrong");
}

#[test]
fn backup_an_addon_with_bbr_scripts_is_installed_takes_a_backup_successfully() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("an_addon_job", "backup", "echo hi");
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(artifacts(tmp.path())[0].join("redis-dedicated-node-0-redis.tar").is_file());
}

#[test]
fn backup_a_job_present_named_mysql_backup_ignores_the_mysql_backup_job_scripts() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("mysql-backup", "metadata", &format!("touch '{}'\necho '---'", i.at("/tmp/mysql-metadata-ran")));
    i.script("mysql-backup", "backup", &format!("touch '{}'", i.at("/tmp/mysql-backup-ran")));
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(i.exists("/tmp/backup-script-was-run"));
    assert!(!i.exists("/tmp/mysql-backup-ran") && !i.exists("/tmp/mysql-metadata-ran"));
    assert!(!out.all().contains("discontinued"), "{}", out.all());
}

#[test]
fn backup_metadata_script_which_uses_bbr_version_calls_the_metadata_script_and_passes_the_environment_variable() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "metadata", &format!("echo \"$BBR_VERSION\" > '{}'\necho '---'", i.at("/tmp/bbr-version")));
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let v = fs::read_to_string(i.at("/tmp/bbr-version")).unwrap();
    assert!(!v.trim().is_empty(), "BBR_VERSION was empty");
}

#[test]
fn backup_pre_backup_lock_is_present_but_unsafe_lock_free_does_not_run_the_lock_or_unlock() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "pre-backup-lock", &format!("touch '{}'", i.at("/tmp/pre-backup-lock-ran")));
    i.script("redis", "post-backup-unlock", &format!("touch '{}'", i.at("/tmp/post-backup-unlock-ran")));
    let out = lockstep(tmp.path(), &[&i], &["backup", "--unsafe-lock-free"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!i.exists("/tmp/pre-backup-lock-ran") && !i.exists("/tmp/post-backup-unlock-ran"));
    assert!(i.exists("/tmp/backup-script-was-run"));
}

#[test]
fn backup_when_the_pre_backup_lock_script_fails_logs_the_failure_and_unlocks_the_system() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "pre-backup-lock", &format!("touch '{}'\necho ultra-bar\necho ultra-baz >&2\nexit 1", i.at("/tmp/pre-backup-lock-ran")));
    i.script("redis", "post-backup-unlock", &format!("touch '{}'", i.at("/tmp/post-backup-unlock-ran")));
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 4, "{}", out.all());
    assert!(out.stderr.contains("Error attempting to run pre-backup-lock for job redis on redis-dedicated-node/0"), "{}", out.stderr);
    assert!(out.stderr.contains("ultra-baz"), "{}", out.stderr);
    assert!(i.exists("/tmp/pre-backup-lock-ran") && i.exists("/tmp/post-backup-unlock-ran"));
    assert!(!i.exists("/tmp/backup-script-was-run"));
    assert!(!out.stderr.contains("It is recommended that you run"), "bbr prints no cleanup advice here: {}", out.stderr);
}

#[test]
fn backup_deployment_has_a_post_backup_unlock_script_passes_the_result_of_the_backup() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "post-backup-unlock", &format!("echo \"$BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL\" > '{}'", i.at("/tmp/unlock-saw")));
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(fs::read_to_string(i.at("/tmp/unlock-saw")).unwrap().trim(), "true");
}

#[test]
fn backup_when_the_post_backup_unlock_script_fails_exits_and_prints_the_error() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "post-backup-unlock", "echo ultra-baz >&2\nexit 1");
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 8, "{}", out.all());
    assert!(out.stderr.contains("Error attempting to run post-backup-unlock for job redis on redis-dedicated-node/0"), "{}", out.stderr);
    assert!(out.stderr.contains("ultra-baz") && out.stderr.contains("backup-cleanup"), "{}", out.stderr);
}

#[test]
fn backup_when_there_are_multiple_plausible_backup_scripts_successfully_backs_up_the_deployment() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis-broker", "backup", "echo broker > \"$BBR_ARTIFACT_DIRECTORY/broker\"");
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let dir = &artifacts(tmp.path())[0];
    assert!(dir.join("redis-dedicated-node-0-redis.tar").is_file() && dir.join("redis-dedicated-node-0-redis-broker.tar").is_file());
    let meta = fs::read_to_string(dir.join("metadata")).unwrap();
    assert!(meta.contains("./broker") && meta.contains("./backupdump1"), "{meta}");
    assert!(!i.exists("/var/vcap/store/bbr-backup"));
}

#[test]
fn backup_when_a_deployment_cant_be_backed_up_exits_and_displays_a_message() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    fs::create_dir_all(i.root.join("var/vcap/jobs/redis/bin")).unwrap();
    fs::write(i.root.join("var/vcap/jobs/redis/bin/ctl"), "#!/bin/sh\n").unwrap();
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains(&format!("Deployment '{DEPLOYMENT}' has no backup scripts")), "{}", out.stderr);
    assert!(artifacts(tmp.path()).is_empty(), "no backup directory is created");
    assert!(!out.stderr.contains("It is recommended that you run"), "{}", out.stderr);
}

#[test]
fn backup_when_the_instance_backup_script_fails_errors_and_exits_gracefully() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    i.script("redis", "backup", "echo ultra-baz >&2\nexit 1");
    i.script("redis", "post-backup-unlock", &format!("echo \"$BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL\" > '{}'", i.at("/tmp/unlock-saw")));
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("Error attempting to run backup for job redis on redis-dedicated-node/0"), "{}", out.stderr);
    assert_eq!(fs::read_to_string(i.at("/tmp/unlock-saw")).unwrap().trim(), "false");
    assert!(artifacts(tmp.path()).is_empty(), "lockstep leaves no artifact of a failed backup (bbr leaves a partial one)");
}

#[test]
fn backup_when_running_the_metadata_script_does_not_give_valid_yml_exits_with_an_error() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "metadata", &format!("touch '{}'\necho 'not valid yaml: ['", i.at("/tmp/metadata-ran")));
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(i.exists("/tmp/metadata-ran"));
    assert!(!i.exists("/tmp/backup-script-was-run"));
}

#[test]
fn backup_when_the_job_is_disabled_should_exit_say_no_bbr_jobs_found() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "metadata", "echo '---\nskip_bbr_scripts: true'");
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("disabled job redis on instance redis-dedicated-node/0"), "{}", out.all());
    assert!(out.stderr.contains("has no backup scripts"), "{}", out.stderr);
}

#[test]
fn backup_two_instances_one_backupable_backs_up_deployment_successfully() {
    let tmp = TempDir::new().unwrap();
    let a = Instance::new(tmp.path(), "redis-dedicated-node/0");
    let b = Instance::new(tmp.path(), "redis-broker/0");
    default_backup(&a);
    b.script("redis", "metadata", "echo '---'");
    let out = lockstep(tmp.path(), &[&a, &b], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let dir = &artifacts(tmp.path())[0];
    assert!(dir.join("redis-dedicated-node-0-redis.tar").is_file());
    assert!(!dir.join("redis-broker-0-redis.tar").exists());
}

#[test]
fn backup_two_instances_but_one_is_disabled_only_backs_up_the_enabled_instance() {
    let tmp = TempDir::new().unwrap();
    let a = Instance::new(tmp.path(), "redis-dedicated-node/0");
    let b = Instance::new(tmp.path(), "redis-broker/0");
    default_backup(&a);
    default_backup(&b);
    b.script("redis", "metadata", "echo '---\nskip_bbr_scripts: true'");
    let out = lockstep(tmp.path(), &[&a, &b], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("disabled job redis on instance redis-broker/0"), "{}", out.all());
    assert!(a.exists("/tmp/backup-script-was-run") && !b.exists("/tmp/backup-script-was-run"));
}

#[test]
fn backup_two_instances_backup_artifact_directory_already_exists_on_one_of_them_fails_without_destroying_existing_artifact() {
    let tmp = TempDir::new().unwrap();
    let a = Instance::new(tmp.path(), "redis-dedicated-node/0");
    let b = Instance::new(tmp.path(), "redis-broker/0");
    default_backup(&a);
    default_backup(&b);
    fs::create_dir_all(b.at("/var/vcap/store/bbr-backup/kept")).unwrap();
    let out = lockstep(tmp.path(), &[&a, &b], &["backup"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("Directory /var/vcap/store/bbr-backup already exists on instance redis-broker/0"), "{}", out.stderr);
    assert!(out.stderr.contains("It is recommended that you run"), "{}", out.stderr);
    assert!(b.exists("/var/vcap/store/bbr-backup/kept"), "the existing directory is not destroyed");
}

// --- restore_test.go --------------------------------------------------------------------

#[test]
fn restore_when_artifact_is_not_present_fails_and_prints_an_error() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    restore_script(&i);
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", "i-am-not-here"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("i-am-not-here"), "{}", out.stderr);
    assert!(!i.exists("/tmp/restore-script-was-run"));
}

#[test]
fn restore_when_the_backup_is_corrupted_fails_and_prints_an_error() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    let dir = taken(tmp.path(), &[&i]);
    let meta = fs::read_to_string(dir.join("metadata")).unwrap();
    let bad = meta.replacen(": ", ": this-is-not-a-checksum-", 0);
    let sums: Vec<&str> = meta.lines().filter(|l| l.contains("./backupdump1")).collect();
    let (k, _) = sums[0].split_once(": ").unwrap();
    let bad = bad.replace(sums[0], &format!("{k}: this-is-not-a-checksum-this-is-only-a-tribute"));
    fs::write(dir.join("metadata"), bad).unwrap();
    fs::remove_file(dir.join("lockstep.json")).unwrap(); // as bbr's fixture: metadata only
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("Backup is corrupted"), "{}", out.stderr);
    assert!(!i.exists("/tmp/restore-script-was-run") && !i.exists("/var/vcap/store/bbr-backup"));
}

#[test]
fn restore_single_instance_and_the_restore_script_works_runs_the_restore_script_successfully_and_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    i.script("redis", "pre-restore-lock", &format!("touch '{}'", i.at("/tmp/pre-restore-lock-script-was-run")));
    i.script("redis", "post-restore-unlock", &format!("touch '{}'", i.at("/tmp/post-restore-unlock-script-was-run")));
    let dir = taken(tmp.path(), &[&i]);
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(fs::read_to_string(i.at("/var/vcap/store/redis-server/backupdump1")).unwrap(), "backupcontent1\n");
    for m in ["/tmp/restore-script-was-run", "/tmp/pre-restore-lock-script-was-run", "/tmp/post-restore-unlock-script-was-run"] {
        assert!(i.exists(m), "{m}");
    }
    assert!(!i.exists("/var/vcap/store/bbr-backup"), "the remote artifact is removed");
}

#[test]
fn restore_single_instance_and_pre_restore_lock_script_fails_exits_cleanly() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    let dir = taken(tmp.path(), &[&i]);
    i.script("redis", "pre-restore-lock", "echo 'dear lord' >&2\nexit 1");
    i.script("redis", "post-restore-unlock", &format!("touch '{}'", i.at("/tmp/post-restore-unlock-script-was-run")));
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "bbr: a failing pre-restore-lock is a plain error: {}", out.all());
    assert!(!i.exists("/tmp/restore-script-was-run"));
    assert!(i.exists("/tmp/post-restore-unlock-script-was-run"));
}

#[test]
fn restore_single_instance_when_restore_fails_fails_and_returns_the_failure() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    let dir = taken(tmp.path(), &[&i]);
    i.script("redis", "restore", "echo 'dear lord' >&2\nexit 1");
    i.script("redis", "post-restore-unlock", &format!("touch '{}'", i.at("/tmp/post-restore-unlock-script-was-run")));
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("dear lord"), "{}", out.stderr);
    assert!(i.exists("/tmp/post-restore-unlock-script-was-run"));
}

#[test]
fn restore_single_instance_when_the_backup_artifact_already_exists_fails_returns_an_error_and_does_not_delete_the_artifact() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    let dir = taken(tmp.path(), &[&i]);
    fs::create_dir_all(i.at("/var/vcap/store/bbr-backup/kept")).unwrap();
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("Directory /var/vcap/store/bbr-backup already exists on instance redis-dedicated-node/0"), "{}", out.stderr);
    assert!(i.exists("/var/vcap/store/bbr-backup/kept"));
    assert!(!i.exists("/tmp/restore-script-was-run"));
}

#[test]
fn restore_single_instance_when_the_job_is_disabled_reports_that_no_restore_scripts_were_found() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    let dir = taken(tmp.path(), &[&i]);
    i.script("redis", "metadata", "echo '---\nskip_bbr_scripts: true'");
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("has no restore scripts"), "{}", out.stderr);
}

#[test]
fn restore_multiple_instances_runs_the_restore_script_and_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let a = Instance::new(tmp.path(), "redis-dedicated-node/0");
    let b = Instance::new(tmp.path(), "redis-server/0");
    for i in [&a, &b] {
        default_backup(i);
        restore_script(i);
    }
    let dir = taken(tmp.path(), &[&a, &b]);
    let out = lockstep(tmp.path(), &[&a, &b], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    for i in [&a, &b] {
        assert!(i.exists("/tmp/restore-script-was-run") && i.exists("/var/vcap/store/redis-server/backupdump2"));
        assert!(!i.exists("/var/vcap/store/bbr-backup"));
    }
}

#[test]
fn restore_multiple_instances_and_one_of_the_jobs_is_disabled_does_not_restore_the_disable_job() {
    let tmp = TempDir::new().unwrap();
    let a = Instance::new(tmp.path(), "redis-dedicated-node/0");
    let b = Instance::new(tmp.path(), "redis-server/0");
    for i in [&a, &b] {
        default_backup(i);
        restore_script(i);
    }
    let dir = taken(tmp.path(), &[&a, &b]);
    b.script("redis", "metadata", "echo '---\nskip_bbr_scripts: true'");
    let out = lockstep(tmp.path(), &[&a, &b], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("disabled job redis on instance redis-server/0"), "{}", out.all());
    assert!(a.exists("/var/vcap/store/redis-server/backupdump1") && a.exists("/tmp/restore-script-was-run"));
    assert!(!b.exists("/var/vcap/store/redis-server/backupdump1") && !b.exists("/tmp/restore-script-was-run"));
    assert!(out.all().contains("redis-server-0-redis.tar will not be restored"), "lockstep names the artifact left: {}", out.all());
}

#[test]
fn restore_when_deployment_has_named_artifacts_and_the_job_name_is_not_special_fails() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    let dir = taken(tmp.path(), &[&i]);
    i.script("redis", "metadata", "echo '---\nrestore_name: foo'");
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("discontinued metadata keys backup_name/restore_name found on instance redis-dedicated-node. bbr cannot restore this backup artifact."),
        "{}",
        out.stderr
    );
    assert!(!i.exists("/tmp/restore-script-was-run"));
}

#[test]
fn restore_when_deployment_has_named_artifacts_and_the_job_is_called_mysql_restore_ignores_the_mysql_restore_job_scripts() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "mysql/0");
    default_backup(&i);
    restore_script(&i);
    let dir = taken(tmp.path(), &[&i]);
    i.script("mysql-restore", "metadata", "echo '---\nrestore_name: mysql-artifact'");
    i.script("mysql-restore", "restore", &format!("touch '{}'", i.at("/tmp/mysql-restore-ran")));
    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains("discontinued"), "{}", out.all());
    assert!(i.exists("/tmp/restore-script-was-run") && !i.exists("/tmp/mysql-restore-ran"));
    assert!(!i.exists("/var/vcap/store/bbr-backup"));
}

// --- the error log (bbr: cli/command/utils.go) -----------------------------------------

/// The `lockstep-<time>.err.log` files in `dir`, with their text.
fn error_logs(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("lockstep-") && n.ends_with(".err.log")
        })
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_run_writes_the_error_log_into_the_working_directory_and_a_good_one_does_not() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    restore_script(&i);
    let ok = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(error_logs(tmp.path()).is_empty(), "a good run writes no error log");

    let out = lockstep(tmp.path(), &[&i], &["restore", "--artifact-path", "i-am-not-here"]);
    assert_eq!(out.code, 1);
    let logs = error_logs(tmp.path());
    assert_eq!(logs.len(), 1, "{logs:?}");
    let (name, text) = &logs[0];
    // lockstep-2026-12-01T12:34:56Z.err.log, RFC 3339 in UTC, as bbr's.
    let stamp = name.strip_prefix("lockstep-").unwrap().strip_suffix(".err.log").unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.ends_with('Z'), "{name}");
    assert!(text.contains("i-am-not-here") && out.stderr.contains(text.trim()), "the log holds what was printed: {text}");
}

#[test]
fn the_error_log_never_holds_a_secret() {
    let tmp = TempDir::new().unwrap();
    let secret = "s3cr3t-Qw8Zx1-client-secret";
    let out = Command::cargo_bin("lockstep")
        .unwrap()
        .current_dir(tmp.path())
        .env_remove("BOSH_CLIENT_SECRET")
        .args(["deployment", "-t", "https://127.0.0.1:1", "-u", "bbr_client", "-p", secret, "-d", "cf", "backup"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let logs = error_logs(tmp.path());
    assert_eq!(logs.len(), 1, "{stderr}");
    assert!(!logs[0].1.is_empty() && !logs[0].1.contains(secret) && !stderr.contains(secret), "{logs:?}");
}

// --- bbr's cli: version and usage errors (urfave/cli) ----------------------------------

#[test]
fn version_and_v_print_the_version_as_bbr_does() {
    for args in [&["version"][..], &["v"][..], &["-v"][..], &["--version"][..]] {
        let out = Command::cargo_bin("lockstep").unwrap().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("lockstep version {}", env!("CARGO_PKG_VERSION")), "{args:?}");
    }
}

#[test]
fn a_usage_error_exits_1_with_the_usage_printed() {
    let tmp = TempDir::new().unwrap();
    for args in [&["hosts", "backup", "--no-such-flag"][..], &["no-such-command"][..], &["local", "backup", "--compression", "lz4"][..]] {
        let out = Command::cargo_bin("lockstep").unwrap().current_dir(tmp.path()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && (stderr.contains("Usage:") || stderr.contains("--help")), "{args:?}: {stderr}");
    }
    assert!(error_logs(tmp.path()).is_empty(), "a usage error writes no error log, as bbr");
    let help = Command::cargo_bin("lockstep").unwrap().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
}

/// bbr's `factory/logger.go`: every log line and the result lines go to stdout, the final
/// error to stderr. A script that `tee`s or greps bbr's stdout sees the same with lockstep.
#[test]
fn output_streams_the_log_and_results_on_stdout_and_errors_on_stderr() {
    let tmp = TempDir::new().unwrap();
    let i = Instance::new(tmp.path(), "redis-dedicated-node/0");
    default_backup(&i);
    i.script("redis", "pre-backup-lock", "true");

    let out = lockstep(tmp.path(), &[&i], &["pre-backup-check"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains(&format!("Deployment '{DEPLOYMENT}' can be backed up.")), "{}", out.stdout);
    assert!(out.stdout.contains("Running metadata") || out.stdout.contains("DEBUG"), "the log is on stdout: {}", out.stdout);
    assert_eq!(out.stderr, "", "nothing but errors on stderr");

    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("Running pre-backup-lock for job redis") && out.stdout.contains("Backup created of"), "{}", out.stdout);
    assert_eq!(out.stderr, "", "a good backup prints nothing on stderr");

    // A failing run: the log still on stdout, the error (and only the error) on stderr.
    i.script("redis", "backup", "echo disk-on-fire >&2\nexit 1");
    let out = lockstep(tmp.path(), &[&i], &["backup"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stdout.contains("Running backup for job redis"), "{}", out.stdout);
    assert!(!out.stdout.contains("Error attempting to run backup"), "the error is not in the log stream: {}", out.stdout);
    assert!(out.stderr.contains("Error attempting to run backup for job redis") && out.stderr.contains("disk-on-fire"), "{}", out.stderr);
    assert!(!out.stderr.contains("Running "), "no log line on stderr: {}", out.stderr);

    // lockstep's own commands keep stdout for what they were asked for.
    let listed = Command::cargo_bin("lockstep").unwrap().args(["list", "-a"]).arg(tmp.path()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&listed.stdout), String::from_utf8_lossy(&listed.stderr));
    assert!(listed.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{DEPLOYMENT}_")), "{stdout}{stderr}");
}
