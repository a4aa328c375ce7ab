//! The sample pipelines set the two ways operators set them, and run against the sshd fleet
//! and an S3-compatible server (s3s-fs), through both of Concourse's interpolation paths as
//! its source does them (`pipeline_support::concourse`):
//!
//! - **`fly set-pipeline -l vars.yml`**: every var filled in when the pipeline is set.
//! - **A credential manager** (CredHub, Vault): only the non-secret vars given with `-l`; the
//!   secrets (a multi-line OpenSSH key, a multi-line age identity with its comment lines, an
//!   S3 secret holding quotes, a backslash and a `$`, the instance lists, the retention map)
//!   fetched when each build runs and pasted into the stored, already JSON-encoded task
//!   params as Concourse does.
//!
//! Each mode runs every job of every sample pipeline, and every task step in them (the
//! cleanups through a failing lock or restore script), and checks what is left with an
//! independent client: the AWS CLI for both buckets, the instances' own files for data and
//! locks. A control shows the simulation can fail: a secret written inside the map param
//! (the shape the samples had before) breaks under the credential manager, with Concourse's
//! own message, while it passes with `-l`.

mod pipeline_support;
mod s3_support;
mod support;

use lockstep::frontend::demo::{create_deployment, snapshot};
use pipeline_support::concourse::{set_pipeline, var_names};
use pipeline_support::runner::Runner;
use pipeline_support::{pipeline_path, read, yaml};
use s3_support::{S3sFs, ACCESS_KEY, REGION};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::fleet::{Fleet, KeyKind, Vm};
use tempfile::TempDir;

/// What breaks JSON text and careless shells.
const S3_SECRET: &str = "s3\"cr\\et 'q$HOME";

/// The vars a credential manager holds in these tests; the rest are given with `-l`.
const CREDENTIAL_VARS: &[&str] = &[
    "ssh_private_key",
    "drill_ssh_private_key",
    "jumpbox_ssh",
    "instances",
    "drill_instances",
    "backup_s3_access_key_id",
    "backup_s3_secret_access_key",
    "dr_s3_access_key_id",
    "dr_s3_secret_access_key",
    "age_identity",
    "retention",
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    FlyVars,
    CredentialManager,
}

/// VMs 0-2: the deployment `cf` (api, blobstore, db); 3-5: the drill's scratch deployment;
/// 6: a BOSH director (its database job).
struct Platform {
    fleet: Fleet,
    s3: S3sFs,
    vars: Map<String, Value>,
    work: PathBuf,
    _tmp: TempDir,
}

fn age_key_pair() -> (String, String) {
    let out = Command::new("age-keygen").output().expect("age-keygen (ci/setup installs age)");
    assert!(out.status.success());
    let identity = String::from_utf8(out.stdout).unwrap();
    let recipient = identity.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    assert!(identity.lines().count() >= 3, "an age key file has comment lines: {identity}");
    (identity, recipient)
}

fn instances(fleet: &Fleet, vms: &[(&str, usize)]) -> Value {
    Value::Array(
        vms.iter()
            .map(|(group, i)| {
                let vm = &fleet.vms[*i];
                json!({"group": group, "index": 0, "address": vm.address(), "username": "vcap", "host_public_key": vm.host_key_line})
            })
            .collect(),
    )
}

impl Platform {
    fn start(test: &str) -> Option<Platform> {
        let fleet = Fleet::start(test, 7)?;
        let s3 = S3sFs::start_with_secret(S3_SECRET)?;
        s3.bucket("backups").bucket("backups-dr");
        let tmp = TempDir::new().unwrap();
        let cf = create_deployment(&tmp.path().join("cf"), true).unwrap();
        let drill = create_deployment(&tmp.path().join("drill"), false).unwrap();
        let director = create_deployment(&tmp.path().join("director"), true).unwrap();
        for (i, (_, root)) in cf.iter().chain(&drill).enumerate() {
            fleet.vms[i].install_tree(Path::new(root));
        }
        fleet.vms[6].install_tree(Path::new(&director[2].1));
        let key = fs::read_to_string(fleet.key(KeyKind::Ed25519).private).unwrap();
        assert!(key.lines().count() > 3, "a multi-line PEM");
        let (age_identity, age_recipient) = age_key_pair();
        let work = tmp.path().join("builds");
        fs::create_dir_all(&work).unwrap();
        let dump = |vm: &Vm| vm.host_path("/var/vcap/store/postgres/dump.sql").display().to_string();
        let vars = json!({
            "lockstep_image_repository": "registry.example.com/platform/lockstep",
            "lockstep_image_tag": "test",
            "backup_interval": "24h",
            "worker_tags": [],
            "deployment_name": "cf",
            "instances": instances(&fleet, &[("api", 0), ("blobstore", 1), ("db", 2)]),
            "ssh_private_key": key,
            "backup_bucket": "backups",
            "backup_endpoint": s3.endpoint(),
            "backup_region": REGION,
            "backup_s3_access_key_id": ACCESS_KEY,
            "backup_s3_secret_access_key": S3_SECRET,
            "dr_bucket": "backups-dr",
            "dr_endpoint": s3.endpoint(),
            "dr_region": REGION,
            "dr_s3_access_key_id": ACCESS_KEY,
            "dr_s3_secret_access_key": S3_SECRET,
            "age_recipient": age_recipient,
            "age_identity": age_identity,
            "retention": {"keep_last": 1, "min_age": "0s", "grace": "0s"},
            "drill_deployment_name": "cf-drill",
            "drill_instances": instances(&fleet, &[("api", 3), ("blobstore", 4), ("db", 5)]),
            "drill_ssh_private_key": key,
            "drill_smoke_check": format!("cmp '{}' '{}'", dump(&fleet.vms[2]), dump(&fleet.vms[5])),
            "director_address": fleet.vms[6].address(),
            "director_ssh_username": "vcap",
            "jumpbox_ssh": {"private_key": key},
            "director_host_public_key": fleet.vms[6].host_key_line,
        });
        let Value::Object(vars) = vars else { unreachable!() };
        Some(Platform { fleet, s3, vars, work, _tmp: tmp })
    }

    /// `fly set-pipeline` of the raw sample: the pipeline as ATC stores it, and a runner that
    /// fills what is left from the credential manager when each build runs.
    fn set(&self, raw: &Value, mode: Mode, extra: &[(&str, Value)]) -> Runner {
        let mut vars = self.vars.clone();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.clone());
        }
        let (mut at_set, mut creds) = (Map::new(), Map::new());
        for (k, v) in vars {
            if mode == Mode::CredentialManager && CREDENTIAL_VARS.contains(&k.as_str()) {
                creds.insert(k, v);
            } else {
                at_set.insert(k, v);
            }
        }
        let stored = set_pipeline(raw, &Value::Object(at_set)).unwrap_or_else(|e| panic!("set-pipeline: {e}"));
        // What set-pipeline left for build time is exactly the credential manager's vars: the
        // one left in `-l` mode would be an undefined var.
        let left: BTreeSet<String> = strings(&stored).iter().flat_map(|s| var_names(s)).map(|n| n.split('.').next().unwrap().to_string()).collect();
        let expected: BTreeSet<String> = creds.keys().filter(|k| left.contains(*k)).cloned().collect();
        assert_eq!(left, expected, "vars left after set-pipeline ({mode:?})");
        assert_eq!(mode == Mode::CredentialManager, !left.is_empty(), "{left:?}");
        Runner::from_pipeline(stored, &self.work, Value::Object(creds))
    }

    fn pipeline(&self, name: &str, mode: Mode, extra: &[(&str, Value)]) -> Runner {
        self.set(&yaml(&read(&pipeline_path(name))), mode, extra)
    }

    /// The committed artifacts under `bucket/prefix`, as the AWS CLI lists them.
    fn committed(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.s3.aws().unwrap().args(["s3", "ls", "--recursive", &format!("s3://{bucket}/{prefix}/")]).output().unwrap();
        assert!(out.status.success(), "aws s3 ls: {}", String::from_utf8_lossy(&out.stderr));
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|key| key.strip_suffix("/lockstep.json"))
            .map(|a| a.rsplit('/').next().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// Both copies hold the same committed artifacts.
    fn committed_everywhere(&self, prefix: &str) -> Vec<String> {
        let primary = self.committed("backups", prefix);
        assert_eq!(primary, self.committed("backups-dr", prefix), "the replica differs from the primary");
        primary
    }

    fn data(&self, vms: std::ops::Range<usize>) -> Vec<Vec<(String, String)>> {
        vms.map(|i| snapshot(&self.fleet.vms[i].root.join("var/vcap/store")).unwrap()).collect()
    }

    /// Nothing is locked and no staging directory is left on any VM.
    fn assert_unlocked(&self) {
        for vm in &self.fleet.vms {
            let locked = find(&vm.root.join("var/vcap/data"), "locked");
            assert!(locked.is_empty(), "still locked: {locked:?}");
            assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists(), "staging left on {}", vm.address());
        }
    }

    /// No secret reached a build's log.
    fn assert_no_secret_in(&self, log: &str) {
        let key = self.vars["ssh_private_key"].as_str().unwrap();
        let age = self.vars["age_identity"].as_str().unwrap();
        let age_secret = age.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap();
        for (what, secret) in [("the S3 secret", S3_SECRET), ("the SSH key", key.lines().nth(1).unwrap()), ("the age identity", age_secret)] {
            assert!(!log.contains(secret), "{what} reached the build log:\n{log}");
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(m) => m.values().flat_map(strings).collect(),
        _ => vec![],
    }
}

fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find(&p, name));
        } else if e.file_name() == name {
            out.push(p);
        }
    }
    out
}

/// Every task step in a pipeline, hooks included: `task` names.
fn task_steps(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(t)) = m.get("task") {
                out.insert(t.clone());
            }
            m.values().for_each(|x| task_steps(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| task_steps(x, out)),
        _ => {}
    }
}

/// Every task step of the pipeline ran and succeeded in these runners.
fn assert_every_task_ran(name: &str, runners: &[&Runner]) {
    let mut tasks = BTreeSet::new();
    task_steps(&yaml(&read(&pipeline_path(name))), &mut tasks);
    assert!(!tasks.is_empty(), "{name} has no task step");
    for t in tasks {
        let ran = runners.iter().any(|r| r.journal.iter().any(|l| l.ends_with(&format!("/task {t} ok"))));
        assert!(ran, "pipelines/{name}.yml: task {t} never ran:\n{:#?}", runners.iter().map(|r| &r.journal).collect::<Vec<_>>());
    }
}

/// Replaces a BBR script on a VM; returns the original, to put back.
fn replace_script(vm: &Vm, job: &str, script: &str, body: &str) -> Vec<u8> {
    let old = vm.read(&format!("/var/vcap/jobs/{job}/bin/bbr/{script}"));
    vm.install_script(job, script, body);
    old
}

fn later() {
    // Artifact names have a one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
}

fn the_samples_run_end_to_end(mode: Mode, test: &str) {
    let Some(p) = Platform::start(test) else { return };

    // The daily backup: back up, drill, prune; twice, so the prune removes one.
    let mut backup = p.pipeline("backup", mode, &[]);
    let before = p.data(0..3);
    for job in ["backup", "restore-drill", "prune"] {
        assert_eq!(backup.run_job(job), Some(true), "{job} ({mode:?}):\n{}", backup.log);
    }
    let first = p.committed_everywhere("cf");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(p.data(3..6), before, "the drill restored the backup into the scratch deployment");
    assert!(backup.log.contains("Drill: the smoke check passed."), "{}", backup.log);
    later();
    fs::write(p.fleet.vms[2].host_path("/var/vcap/store/postgres/dump.sql"), "INSERT INTO apps VALUES ('new', 'cd');\n").unwrap();
    for job in ["backup", "restore-drill", "prune"] {
        assert_eq!(backup.run_job(job), Some(true), "{job} ({mode:?}):\n{}", backup.log);
    }
    let second = p.committed_everywhere("cf");
    assert_eq!(second.len(), 1, "retention keeps the newest: {second:?}");
    assert_ne!(second, first);
    p.assert_unlocked();

    // A lock that fails: the backup fails, backup-cleanup runs with the same secrets.
    let api = &p.fleet.vms[0];
    let old = replace_script(api, "cloud_controller", "pre-backup-lock", "#!/bin/sh\necho 'cannot lock the API' >&2\nexit 1\n");
    let mut failing = p.pipeline("backup", mode, &[]);
    assert_eq!(failing.run_job("backup"), Some(false));
    assert_eq!(failing.journal, ["backup/task pre-backup-check ok", "backup/put backup FAILED", "backup/task backup-cleanup ok"], "{}", failing.log);
    assert!(failing.log.contains("cannot lock the API"), "{}", failing.log);
    fs::write(api.host_path("/var/vcap/jobs/cloud_controller/bin/bbr/pre-backup-lock"), old).unwrap();
    assert_eq!(p.committed_everywhere("cf"), second, "a failed backup commits nothing");
    p.assert_unlocked();
    assert_every_task_ran("backup", &[&backup, &failing]);

    // The restore pipeline: the pinned version back onto the deployment.
    let backed_up = p.data(0..3);
    fs::write(p.fleet.vms[2].host_path("/var/vcap/store/postgres/dump.sql"), "lost\n").unwrap();
    let pinned = [("artifact", Value::String(second[0].clone()))];
    let mut restore = p.pipeline("restore", mode, &pinned);
    assert_eq!(restore.run_job("restore"), Some(true), "{mode:?}:\n{}", restore.log);
    assert_eq!(restore.journal, ["restore/get backup ok", "restore/put restore ok"]);
    assert_eq!(p.data(0..3), backed_up);
    let db = &p.fleet.vms[2];
    let old = replace_script(db, "postgres", "restore", "#!/bin/sh\necho 'psql: connection refused' >&2\nexit 1\n");
    let mut failing_restore = p.pipeline("restore", mode, &pinned);
    assert_eq!(failing_restore.run_job("restore"), Some(false));
    assert_eq!(failing_restore.journal, ["restore/get backup ok", "restore/put restore FAILED", "restore/task restore-cleanup ok"], "{}", failing_restore.log);
    assert!(failing_restore.log.contains("psql: connection refused"), "{}", failing_restore.log);
    fs::write(db.host_path("/var/vcap/jobs/postgres/bin/bbr/restore"), old).unwrap();
    p.assert_unlocked();
    assert_every_task_ran("restore", &[&restore, &failing_restore]);

    // The director's pipeline: back up, verify every stored byte, prune; then a failing lock.
    let mut director = p.pipeline("director-backup", mode, &[]);
    for job in ["backup", "verify", "prune"] {
        assert_eq!(director.run_job(job), Some(true), "{job} ({mode:?}):\n{}", director.log);
    }
    assert_eq!(p.committed_everywhere("bosh-director").len(), 1);
    let bosh = &p.fleet.vms[6];
    let old = replace_script(bosh, "postgres", "pre-backup-lock", "#!/bin/sh\necho 'cannot lock the director' >&2\nexit 1\n");
    let mut failing_director = p.pipeline("director-backup", mode, &[]);
    assert_eq!(failing_director.run_job("backup"), Some(false));
    assert!(failing_director.journal.contains(&"backup/task backup-cleanup ok".to_string()), "{}", failing_director.log);
    fs::write(bosh.host_path("/var/vcap/jobs/postgres/bin/bbr/pre-backup-lock"), old).unwrap();
    p.assert_unlocked();
    assert_every_task_ran("director-backup", &[&director, &failing_director]);

    for r in [&backup, &failing, &restore, &failing_restore, &director, &failing_director] {
        p.assert_no_secret_in(&r.log);
    }
}

#[test]
fn the_samples_run_with_every_var_from_fly_set_pipeline() {
    the_samples_run_end_to_end(Mode::FlyVars, "pipeline_credentials fly -l");
}

#[test]
fn the_samples_run_with_every_secret_from_a_credential_manager() {
    the_samples_run_end_to_end(Mode::CredentialManager, "pipeline_credentials credential manager");
}

/// The control: a secret inside the map param (the samples' shape before they gave each
/// secret a param of its own) passes with `-l` and breaks with a credential manager, a list
/// with Concourse's own error, a PEM by losing its line breaks.
#[test]
fn a_secret_inside_a_map_param_breaks_only_with_a_credential_manager() {
    let Some(p) = Platform::start("pipeline_credentials control") else { return };
    let raw = yaml(&read(&pipeline_path("backup")));
    let with = |field: &str, var: &str| {
        let mut r = raw.clone();
        let check = r["jobs"][0]["plan"][1].as_object_mut().unwrap();
        assert_eq!(check["task"], "pre-backup-check");
        check["params"]["LOCKSTEP_CONFIG"]["target"]["hosts"][field] = Value::String(format!("(({var}))"));
        r
    };
    for (field, var) in [("instances", "instances"), ("private_key", "ssh_private_key")] {
        let mut ok = p.set(&with(field, var), Mode::FlyVars, &[]);
        assert_eq!(ok.run_job("backup"), Some(true), "{field} with -l:\n{}", ok.log);
    }

    let mut list = p.set(&with("instances", "instances"), Mode::CredentialManager, &[]);
    assert_eq!(list.run_job("backup"), Some(false));
    assert_eq!(list.journal, ["backup/task pre-backup-check FAILED"]);
    assert!(list.log.contains("cannot interpolate non-primitive value ([]interface {}) from var: instances"), "{}", list.log);

    let mut pem = p.set(&with("private_key", "ssh_private_key"), Mode::CredentialManager, &[]);
    assert_eq!(pem.run_job("backup"), Some(false));
    assert_eq!(pem.journal, ["backup/task pre-backup-check FAILED"], "{}", pem.log);
    // A JSON string broken over lines reads as YAML, which folds its line breaks into spaces.
    assert!(pem.log.contains("could not read the inline private key"), "{}", pem.log);
    p.assert_no_secret_in(&pem.log);
    p.assert_unlocked();
}
