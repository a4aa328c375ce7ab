//! `lockstep deployment` end to end: the director protocol double (real TLS, UAA, tasks
//! that must be polled, a strict request log) in front of the sshd fleet, whose VMs get a
//! real temporary `bosh_...` user from `ssh setup` and lose it at `ssh cleanup`.

mod support;

use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};
use support::director::{user_exists, AuthMode, DeploymentSpec, Director, VmSpec};
use support::fleet::{Fleet, KeyKind, FLEET_ONLY_HOST};
use tempfile::TempDir;

const CLIENT: &str = "bbr_client";
const SECRET: &str = "s3cr3t-client-secret-value";

const MANIFEST: &str = "name: cf\ninstance_groups:\n\
- name: api\n  instances: 1\n  jobs:\n  - name: locker\n    release: locker-release\n    properties: {}\n\
- name: db\n  instances: 1\n  jobs:\n  - name: store\n    release: good-release\n\
- name: cache\n  instances: 1\n  jobs:\n  - name: store\n    release: other-release\n";

fn lockstep() -> Command {
    Command::cargo_bin("lockstep").unwrap()
}

/// api/0 (job `locker`, which must be locked before `store` of `good-release`), db/0
/// (`store` of good-release) and cache/0 (`store` of other-release), on three VMs.
fn setup(test: &str) -> Option<(Fleet, Director, TempDir)> {
    let (fleet, vms) = prepare(test)?;
    let dep = DeploymentSpec { name: "cf".into(), manifest: MANIFEST.into(), vms };
    let director = Director::start(
        AuthMode::Uaa { client: CLIENT.into(), secret: SECRET.into() },
        vec![dep],
        fleet.dir().join("authorized_keys"),
    );
    let tmp = TempDir::new().unwrap();
    Some((fleet, director, tmp))
}

/// The fleet of [`setup`] and its three VMs, for the test to put in deployments.
fn prepare(test: &str) -> Option<(Fleet, Vec<VmSpec>)> {
    let fleet = Fleet::start(test, 3)?;
    let groups = [("api", "locker", "a1b2-api"), ("db", "store", "c3d4-db"), ("cache", "store", "e5f6-cache")];
    for ((group, job, _), vm) in groups.iter().zip(&fleet.vms) {
        let data = format!("/var/vcap/store/{job}");
        fs::create_dir_all(vm.host_path(&data)).unwrap();
        fs::write(vm.host_path(&format!("{data}/data")), format!("{group} data\n")).unwrap();
        let sleep = if *job == "locker" { "sleep 2\n" } else { "" };
        vm.install_script(
            job,
            "pre-backup-lock",
            &format!("#!/bin/sh\ndate +%s%N > /var/vcap/store/lock-start\n{sleep}date +%s%N > /var/vcap/store/lock-end\n"),
        );
        vm.install_script(job, "post-backup-unlock", "#!/bin/sh\ntrue\n");
        vm.install_script(job, "backup", &format!("#!/bin/sh\ncp -a {data}/data \"$BBR_ARTIFACT_DIRECTORY\"\n"));
        vm.install_script(job, "restore", &format!("#!/bin/sh\ncp -a \"$BBR_ARTIFACT_DIRECTORY/data\" {data}/data\n"));
        if *job == "locker" {
            vm.install_script(
                job,
                "metadata",
                "#!/bin/sh\necho '---\nbackup_should_be_locked_before:\n- job_name: store\n  release: good-release\n'\n",
            );
        }
    }
    let vms = groups
        .iter()
        .zip(&fleet.vms)
        .map(|((group, _, id), vm)| VmSpec {
            group: group.to_string(),
            index: 0,
            id: id.to_string(),
            address: vm.address(),
            host_key_line: vm.host_key_line.clone(),
            bootstrap: true,
        })
        .collect();
    Some((fleet, vms))
}

fn deployment(d: &Director, name: &str) -> Command {
    let mut c = without_ca(d, name);
    c.arg("--ca-cert").arg(&d.ca_path);
    c
}

fn without_ca(d: &Director, name: &str) -> Command {
    let mut c = lockstep();
    c.env_remove("BOSH_CA_CERT").env_remove("CA_CERT").env_remove("BOSH_ALL_PROXY");
    c.args(["deployment", "-t", &d.url, "-u", CLIENT, "-p", SECRET, "-d", name]);
    c
}

fn run(c: &mut Command) -> (i32, String) {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!stderr.contains(SECRET), "the client secret was printed:\n{stderr}");
    assert!(!stderr.contains("PRIVATE KEY") && !stderr.contains("token-"), "a secret was printed:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn only_artifact(store: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(store).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn nanos(fleet: &Fleet, vm: usize, f: &str) -> u128 {
    String::from_utf8(fleet.vms[vm].read(&format!("/var/vcap/store/{f}"))).unwrap().trim().parse().unwrap()
}

/// The users of this run are gone: from the double's books, from /etc/passwd and from
/// the fleet's authorized_keys.
fn assert_cleaned_up(fleet: &Fleet, d: &Director) {
    let created = d.created_users();
    assert!(!created.is_empty(), "no user was created");
    assert!(d.live_users().is_empty(), "users left: {:?}", d.live_users());
    let keys = fs::read_to_string(fleet.dir().join("authorized_keys")).unwrap();
    for u in &created {
        assert!(!user_exists(u), "{u} still exists");
        assert!(!keys.contains(u.as_str()), "{u}'s key is still authorized");
        assert!(!Path::new(&format!("/etc/sudoers.d/lockstep-{u}")).exists());
    }
}

#[test]
fn backup_and_restore_through_the_director() {
    let Some((fleet, d, tmp)) = setup("backup_and_restore_through_the_director") else { return };
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();

    let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(&store));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Backup created of cf"), "{err}");
    let artifact = only_artifact(&store);
    assert!(artifact.file_name().unwrap().to_string_lossy().starts_with("cf_"));
    for t in ["api-0-locker.tar", "db-0-store.tar", "cache-0-store.tar"] {
        assert!(artifact.join(t).is_file(), "{t} missing in {}", artifact.display());
    }

    // bbr's sequence, strictly.
    let user = d.created_users()[0].clone();
    assert_eq!(
        d.calls(),
        [
            "GET /info",
            "POST /uaa/oauth/token",
            "GET /deployments/cf/vms?format=full",
            "GET /deployments/cf",
            "POST /deployments/cf/ssh setup api",
            "POST /deployments/cf/ssh setup db",
            "POST /deployments/cf/ssh setup cache",
            "POST /deployments/cf/ssh cleanup api",
            "POST /deployments/cf/ssh cleanup db",
            "POST /deployments/cf/ssh cleanup cache",
        ]
    );
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
    assert!(d.every_task_polled());
    assert!(d.all_calls().iter().filter(|c| c.ends_with("/output?type=result")).count() == 7);
    assert!(user.starts_with("bosh_") && user.len() == 20, "{user}");
    // The instances were reached as the temporary user.
    for vm in &fleet.vms {
        assert!(vm.log().contains(&format!("Accepted publickey for {user}")), "{}", vm.log());
    }
    assert_cleaned_up(&fleet, &d);

    // Release-qualified lock ordering: db's `store` (good-release) waited for `locker`;
    // cache's `store` (other-release) did not.
    let locker_end = nanos(&fleet, 0, "lock-end");
    assert!(nanos(&fleet, 1, "lock-start") >= locker_end, "db/store was locked before locker finished");
    assert!(nanos(&fleet, 2, "lock-start") < locker_end, "cache/store (another release) waited for locker");

    // Restore, configured through bbr's environment variables: CA_CERT (PEM content)
    // wins over a BOSH_CA_CERT that points nowhere.
    for vm in &fleet.vms {
        let _ = fs::remove_dir_all(vm.host_path("/var/vcap/store/store"));
        let _ = fs::remove_dir_all(vm.host_path("/var/vcap/store/locker"));
        fs::create_dir_all(vm.host_path("/var/vcap/store/store")).unwrap();
        fs::create_dir_all(vm.host_path("/var/vcap/store/locker")).unwrap();
    }
    let (code, err) = run(lockstep()
        .env("BOSH_ENVIRONMENT", &d.url)
        .env("BOSH_CLIENT", CLIENT)
        .env("BOSH_CLIENT_SECRET", SECRET)
        .env("BOSH_DEPLOYMENT", "cf")
        .env("CA_CERT", &d.ca_pem)
        .env("BOSH_CA_CERT", "/nonexistent/ca.pem")
        .args(["deployment", "restore", "-a"])
        .arg(&artifact));
    assert_eq!(code, 0, "{err}");
    for (i, (job, group)) in [("locker", "api"), ("store", "db"), ("store", "cache")].iter().enumerate() {
        assert_eq!(fleet.vms[i].read(&format!("/var/vcap/store/{job}/data")), format!("{group} data\n").into_bytes());
    }
    assert_eq!(d.created_users().len(), 2, "one SSH user per run");
    assert_cleaned_up(&fleet, &d);
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
}

#[test]
fn ssh_users_are_cleaned_up_after_a_failing_script() {
    let Some((fleet, d, tmp)) = setup("ssh_users_are_cleaned_up_after_a_failing_script") else { return };
    fleet.vms[1].install_script("store", "backup", "#!/bin/sh\necho 'disk on fire' >&2\nexit 1\n");
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(&store));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("disk on fire"), "{err}");
    let calls = d.calls();
    assert_eq!(calls[calls.len() - 3..], ["POST /deployments/cf/ssh cleanup api", "POST /deployments/cf/ssh cleanup db", "POST /deployments/cf/ssh cleanup cache"]);
    assert_cleaned_up(&fleet, &d);
}

#[test]
fn a_vm_whose_ssh_setup_failed_is_named_and_the_others_are_cleaned_up() {
    let Some((fleet, d, tmp)) = setup("a_vm_whose_ssh_setup_failed_is_named") else { return };
    d.fail_setup_of("c3d4-db");
    let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(tmp.path()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("could not set up SSH on db/c3d4-db"), "{err}");
    let calls = d.calls();
    assert_eq!(
        calls[4..],
        ["POST /deployments/cf/ssh setup api", "POST /deployments/cf/ssh setup db", "POST /deployments/cf/ssh cleanup api", "POST /deployments/cf/ssh cleanup db"]
    );
    assert_cleaned_up(&fleet, &d);
}

/// Errors that stop before any SSH: no fleet needed, but the real TLS double.
#[test]
fn director_errors_a_person_can_act_on() {
    let tmp = TempDir::new().unwrap();
    let keys = tmp.path().join("authorized_keys");
    fs::write(&keys, "").unwrap();
    let dep = DeploymentSpec { name: "cf".into(), manifest: MANIFEST.into(), vms: vec![] };
    let d = Director::start(AuthMode::Uaa { client: CLIENT.into(), secret: SECRET.into() }, vec![dep.clone()], keys.clone());

    // 401 from UAA.
    let (code, err) = run(lockstep()
        .args(["deployment", "-t", &d.url, "-u", CLIENT, "-p", "wrong", "-d", "cf", "--ca-cert"])
        .arg(&d.ca_path)
        .arg("pre-backup-check"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rejected the credentials of client 'bbr_client' (401 Unauthorized)"), "{err}");
    assert!(!err.contains("wrong"), "{err}");
    assert_eq!(d.calls(), ["GET /info", "POST /uaa/oauth/token"]);

    // Unknown deployment.
    let (code, err) = run(deployment(&d, "nope").arg("pre-backup-check"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("deployment 'nope' not found on the director"), "{err}");
    assert!(!d.calls().iter().any(|c| c.contains("/ssh")), "{:?}", d.calls());

    // A task that errored.
    d.fail_vms_task_of("cf");
    let (code, err) = run(deployment(&d, "cf").arg("pre-backup-check"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error: Timed out sending 'get_state'"), "{err}");

    // CA: unreadable, invalid, and one that did not sign the director's certificate.
    let (code, err) = run(without_ca(&d, "cf").args(["--ca-cert", "/nonexistent/ca.pem", "pre-backup-check"]));
    assert_eq!(code, 1);
    assert!(err.contains("could not read the CA certificate"), "{err}");
    let (code, err) = run(without_ca(&d, "cf").args(["--ca-cert", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "pre-backup-check"]));
    assert_eq!(code, 1);
    assert!(err.contains("CA certificate"), "{err}");
    let other = Director::start(AuthMode::Basic { user: "admin".into(), password: SECRET.into() }, vec![dep], keys);
    let (code, err) = run(lockstep().env_remove("CA_CERT").env_remove("BOSH_CA_CERT").args([
        "deployment", "-t", &d.url, "-u", CLIENT, "-p", SECRET, "-d", "cf", "--ca-cert", &other.ca_pem, "pre-backup-check",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("bosh director unreachable or unhealthy"), "{err}");

    // Bad URL.
    let (code, err) = run(lockstep().args(["deployment", "-t", "ftp://x", "-u", CLIENT, "-p", SECRET, "-d", "cf", "pre-backup-check"]));
    assert_eq!(code, 1);
    assert!(err.contains("invalid bosh URL"), "{err}");

    // Basic auth: the wrong password is a 401 from the director itself.
    let (code, err) = run(lockstep().env_remove("CA_CERT").env_remove("BOSH_CA_CERT").args([
        "deployment", "-t", &other.url, "-u", "admin", "-p", "bad", "-d", "cf", "--ca-cert", &other.ca_pem, "pre-backup-check",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401 Unauthorized"), "{err}");
    assert_eq!(other.calls(), ["GET /info", "GET /deployments/cf/vms?format=full"]);
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
}

/// The resource's `out` with `source`, as Concourse runs it: it must take a backup of
/// `cf` and print no secret.
fn put_backup(source: &serde_json::Value, dir: &Path) {
    let mut out = std::process::Command::new(env!("CARGO_BIN_EXE_out"))
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    out.stdin.take().unwrap().write_all(serde_json::json!({"source": source}).to_string().as_bytes()).unwrap();
    let out = out.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["version"]["artifact"].as_str().unwrap().starts_with("cf_"), "{v}");
    assert!(!stderr.contains(SECRET), "the client secret was printed");
    assert!(!stderr.contains("PRIVATE KEY"), "a private key was printed");
}

/// The Concourse resource with `source.target.deployment`: a `put` backs up through the
/// director and its temporary SSH users are gone afterwards.
#[test]
fn the_resource_backs_up_a_bosh_deployment() {
    let Some((_fleet, director, tmp)) = setup("the_resource_backs_up_a_bosh_deployment") else { return };
    let store = tmp.path().join("store");
    let source = serde_json::json!({
        "target": {"deployment": {"environment": director.url, "client": CLIENT, "client_secret": SECRET,
                                  "ca_cert": director.ca_pem, "deployment": "cf"}},
        "store": {"path": store},
    });
    put_backup(&source, tmp.path());
    assert!(!director.created_users().is_empty());
    assert!(director.live_users().is_empty(), "SSH users left behind: {:?}", director.live_users());
    for u in director.created_users() {
        assert!(!user_exists(&u), "{u} still exists");
    }
}

#[test]
fn with_manifest_stores_the_manifest_and_warns() {
    let Some((fleet, d, tmp)) = setup("with_manifest_stores_the_manifest_and_warns") else { return };
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let (code, err) = run(deployment(&d, "cf").args(["backup", "--with-manifest", "-a"]).arg(&store));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("manifest.yml) contains secrets"), "{err}");
    let artifact = only_artifact(&store);
    assert_eq!(fs::read_to_string(artifact.join("manifest.yml")).unwrap(), MANIFEST);
    assert!(artifact.join("db-0-store.tar").is_file());
    // The manifest is downloaded once, before anything is set up.
    let calls = d.calls();
    assert_eq!(calls[2..4], ["GET /deployments/cf", "GET /deployments/cf/vms?format=full"]);
    assert_eq!(calls.iter().filter(|c| *c == "GET /deployments/cf").count(), 1, "{calls:?}");
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
    assert_cleaned_up(&fleet, &d);

    // Without the flag there is no manifest in the artifact.
    fs::remove_dir_all(&artifact).unwrap();
    let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(&store));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("contains secrets"), "{err}");
    assert!(!only_artifact(&store).join("manifest.yml").exists());
}

fn all_deployments(d: &Director) -> Command {
    let mut c = lockstep();
    c.env_remove("BOSH_CA_CERT").env_remove("CA_CERT").env_remove("BOSH_ALL_PROXY").env_remove("BOSH_DEPLOYMENT");
    c.args(["deployment", "-t", &d.url, "-u", CLIENT, "-p", SECRET, "--all-deployments", "--ca-cert"]).arg(&d.ca_path);
    c
}

/// `--all-deployments`: `cf` (api, db) backs up; `zeta` (cache) fails; exit 1, cf's
/// artifact is there, and both deployments' SSH users are gone. The two run at once (as
/// bbr, up to 10), and every line of zeta's failure says it is zeta's.
#[test]
fn all_deployments_with_one_failing() {
    let Some((fleet, mut vms)) = prepare("all_deployments_with_one_failing") else { return };
    let cache = vms.pop().unwrap();
    let zeta_manifest = "name: zeta\ninstance_groups:\n- name: cache\n  instances: 1\n  jobs:\n  - name: store\n    release: other-release\n";
    let deps = vec![
        DeploymentSpec { name: "zeta".into(), manifest: zeta_manifest.into(), vms: vec![cache] },
        DeploymentSpec { name: "cf".into(), manifest: MANIFEST.into(), vms },
    ];
    let d = Director::start(AuthMode::Uaa { client: CLIENT.into(), secret: SECRET.into() }, deps, fleet.dir().join("authorized_keys"));
    fleet.vms[2].install_script("store", "backup", "#!/bin/sh\necho 'zeta disk on fire' >&2\nexit 1\n");
    let tmp = TempDir::new().unwrap();
    // Without --artifact-path, the per-deployment log files go to the working directory.
    let cwd_dir = TempDir::new().unwrap();
    let cwd = cwd_dir.path();

    // pre-backup-check: both can be backed up.
    let (code, out) = run(all_deployments(&d).current_dir(cwd).arg("pre-backup-check"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Pending: cf, zeta"), "{out}");
    assert!(out.contains("Can be backed up: cf, zeta"), "{out}");
    assert_eq!(d.created_users().len(), 2, "one SSH identity per deployment");
    assert_cleaned_up(&fleet, &d);

    let (code, out) = run(all_deployments(&d).args(["backup", "-a"]).arg(tmp.path()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Pending: cf, zeta"), "{out}");
    assert!(out.contains("Successfully backed up: cf\n"), "{out}");
    assert!(out.contains("FAILED: zeta"), "{out}");
    assert!(out.contains("zeta disk on fire"), "{out}");
    let zeta_lines: Vec<&str> = out.lines().filter(|l| l.contains("zeta disk on fire")).collect();
    assert!(zeta_lines.iter().all(|l| l.contains("[zeta] ")), "{zeta_lines:?}");
    assert!(out.lines().any(|l| l.contains("[cf] ") && l.contains("Backup created of cf")), "{out}");
    // zeta was locked while cf's locker (2 s) still held its lock: they ran at once.
    assert!(nanos(&fleet, 2, "lock-start") < nanos(&fleet, 0, "lock-end"), "the deployments ran one after the other");
    // As bbr, one log file per deployment beside the artifacts, named on stdout; each
    // holds that deployment's lines only, its failure included.
    let logs = |dir: &Path, prefix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix) && p.extension().is_some_and(|e| e == "log"))
            .collect();
        v.sort();
        v
    };
    let (cf_log, zeta_log) = (logs(tmp.path(), "cf_"), logs(tmp.path(), "zeta_"));
    assert_eq!((cf_log.len(), zeta_log.len()), (1, 1), "{out}");
    assert!(out.contains(&format!("Starting backup of zeta, log file: {}", zeta_log[0].display())), "{out}");
    let zeta_text = fs::read_to_string(&zeta_log[0]).unwrap();
    assert!(zeta_text.contains("zeta disk on fire") && zeta_text.contains("1 error occurred"), "{zeta_text}");
    assert!(!zeta_text.contains("api/0") && !zeta_text.contains("db/0"), "cf's lines in zeta's log:\n{zeta_text}");
    assert!(!zeta_text.contains("[zeta]"), "the file needs no label:\n{zeta_text}");
    assert!(fs::read_to_string(&cf_log[0]).unwrap().contains("Backup created of cf"));
    let artifact = only_artifact(tmp.path());
    assert!(artifact.file_name().unwrap().to_string_lossy().starts_with("cf_"), "{}", artifact.display());
    for t in ["api-0-locker.tar", "db-0-store.tar"] {
        assert!(artifact.join(t).is_file(), "{t} missing in {}", artifact.display());
    }
    assert_eq!(d.created_users().len(), 4);
    assert_cleaned_up(&fleet, &d);
    let calls = d.calls();
    let backup_calls = &calls[calls.iter().rposition(|c| c == "GET /deployments").unwrap() + 1..];
    // Interleaved between deployments, in bbr's order within each.
    let of = |d: &str| backup_calls.iter().filter(|c| c.starts_with(&format!("GET /deployments/{d}")) || c.starts_with(&format!("POST /deployments/{d}/"))).cloned().collect::<Vec<_>>();
    assert_eq!(
        of("cf"),
        [
            "GET /deployments/cf/vms?format=full",
            "GET /deployments/cf",
            "POST /deployments/cf/ssh setup api",
            "POST /deployments/cf/ssh setup db",
            "POST /deployments/cf/ssh cleanup api",
            "POST /deployments/cf/ssh cleanup db",
        ]
    );
    assert_eq!(
        of("zeta"),
        [
            "GET /deployments/zeta/vms?format=full",
            "GET /deployments/zeta",
            "POST /deployments/zeta/ssh setup cache",
            "POST /deployments/zeta/ssh cleanup cache",
        ]
    );
    assert_eq!(of("cf").len() + of("zeta").len(), backup_calls.len(), "{backup_calls:?}");
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());

    // backup-cleanup over every deployment.
    let (code, out) = run(all_deployments(&d).current_dir(cwd).arg("backup-cleanup"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(logs(cwd, "cf_").len() + logs(cwd, "zeta_").len(), 4, "pre-backup-check and backup-cleanup logs in the working directory");
    assert!(out.contains("Successfully cleaned up: cf, zeta"), "{out}");
    assert_cleaned_up(&fleet, &d);

    // The rejected combinations, before any director call.
    let before = d.all_calls().len();
    let (code, out) = run(all_deployments(&d).args(["backup", "--unsafe-lock-free", "-a"]).arg(tmp.path()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Cannot use the --unsafe-lock-free flag in conjunction with the --all-deployments flag"), "{out}");
    for action in ["restore-cleanup", "restore"] {
        let mut c = all_deployments(&d);
        c.arg(action);
        if action == "restore" {
            c.arg("-a").arg(&artifact);
        }
        let (code, out) = run(&mut c);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("--all-deployments is only supported for pre-backup-check, backup and backup-cleanup"), "{out}");
    }
    let (code, out) = run(lockstep().env_remove("BOSH_DEPLOYMENT").args(["deployment", "-t", &d.url, "-u", CLIENT, "-p", SECRET, "pre-backup-check"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("provide one of '--deployment' or '--all-deployments' flags."), "{out}");
    assert_eq!(d.all_calls().len(), before);
}

/// SIGTERM while a backup script sleeps: the run stops with a non-zero exit, the unlock
/// runs, and the temporary SSH users are removed.
#[test]
fn a_signal_mid_backup_unlocks_and_cleans_up_ssh_users() {
    let Some((fleet, d, tmp)) = setup("a_signal_mid_backup_unlocks_and_cleans_up_ssh_users") else { return };
    fleet.vms[1].install_script("store", "backup", "#!/bin/sh\ntouch /var/vcap/store/backup-started\nsleep 30\n");
    fleet.vms[1].install_script("store", "post-backup-unlock", "#!/bin/sh\ntouch /var/vcap/store/unlocked\n");
    let started = fleet.vms[1].host_path("/var/vcap/store/backup-started");
    let unlocked = fleet.vms[1].host_path("/var/vcap/store/unlocked");
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .env_remove("BOSH_CA_CERT")
        .env_remove("CA_CERT")
        .env_remove("BOSH_ALL_PROXY")
        .args(["deployment", "-t", &d.url, "-u", CLIENT, "-p", SECRET, "-d", "cf", "--ca-cert"])
        .arg(&d.ca_path)
        .args(["backup", "-a"])
        .arg(&store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !started.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the backup script never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(d.live_users().len() == 1, "{:?}", d.live_users());
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let t = std::time::Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(25), "lockstep did not stop after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let err = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains(SECRET), "{err}");
    assert!(unlocked.exists(), "post-backup-unlock did not run:\n{err}");
    let calls = d.calls();
    assert_eq!(calls[calls.len() - 3..], ["POST /deployments/cf/ssh cleanup api", "POST /deployments/cf/ssh cleanup db", "POST /deployments/cf/ssh cleanup cache"]);
    assert_cleaned_up(&fleet, &d);
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
}

/// bbr's `bbr.backup_one_restore_all`: db/1, the bootstrap instance, writes the custom
/// artifact `pg-postgres-backup-one-restore-all`; db/0's backup script still runs and
/// writes its own; at restore both db instances receive the custom artifact, in its own
/// directory, and nothing else.
#[test]
fn backup_one_restore_all_goes_from_the_bootstrap_to_every_instance() {
    let Some(fleet) = Fleet::start("backup_one_restore_all", 3) else { return };
    let manifest = "name: pgd\ninstance_groups:\n\
- name: api\n  instances: 1\n  jobs:\n  - name: web\n    release: web-release\n\
- name: db\n  instances: 2\n  jobs:\n  - name: pg\n    release: postgres\n    properties:\n      bbr:\n        backup_one_restore_all: true\n";
    let layout = [("api", 0, "web", "id-api-0", false), ("db", 0, "pg", "id-db-0", false), ("db", 1, "pg", "id-db-1", true)];
    let mut vms = Vec::new();
    for ((group, index, job, id, bootstrap), vm) in layout.iter().zip(&fleet.vms) {
        fs::create_dir_all(vm.host_path(&format!("/var/vcap/store/{job}"))).unwrap();
        fs::write(vm.host_path(&format!("/var/vcap/store/{job}/data")), format!("{group}/{index} data\n")).unwrap();
        vm.install_script(
            job,
            "backup",
            &format!("#!/bin/sh\necho \"$BBR_ARTIFACT_DIRECTORY\" > /var/vcap/store/backup-dir\ncp /var/vcap/store/{job}/data \"$BBR_ARTIFACT_DIRECTORY\"\n"),
        );
        vm.install_script(
            job,
            "restore",
            &format!("#!/bin/sh\necho \"$BBR_ARTIFACT_DIRECTORY\" > /var/vcap/store/restore-dir\nls \"$BBR_ARTIFACT_DIRECTORY\" > /var/vcap/store/restore-ls\ncp \"$BBR_ARTIFACT_DIRECTORY/data\" /var/vcap/store/{job}/data\n"),
        );
        vms.push(VmSpec {
            group: group.to_string(),
            index: *index,
            id: id.to_string(),
            address: vm.address(),
            host_key_line: vm.host_key_line.clone(),
            bootstrap: *bootstrap,
        });
    }
    let d = Director::start(
        AuthMode::Uaa { client: CLIENT.into(), secret: SECRET.into() },
        vec![DeploymentSpec { name: "pgd".into(), manifest: manifest.into(), vms }],
        fleet.dir().join("authorized_keys"),
    );
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();

    let (code, err) = run(deployment(&d, "pgd").args(["backup", "-a"]).arg(&store));
    assert_eq!(code, 0, "{err}");
    let artifact = only_artifact(&store);
    let custom = "pg-postgres-backup-one-restore-all";
    let mut files: Vec<String> = fs::read_dir(&artifact).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["api-0-web.tar", "db-0-pg.tar", "lockstep.json", "metadata", &format!("{custom}.tar")], "{err}");
    let metadata = fs::read_to_string(artifact.join("metadata")).unwrap();
    assert!(metadata.contains(&format!("custom_artifacts:\n- name: {custom}")), "{metadata}");
    let listing = std::process::Command::new("tar").arg("-xOf").arg(artifact.join(format!("{custom}.tar"))).arg("./data").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "db/1 data\n", "the bootstrap instance's data");
    assert_eq!(fleet.vms[2].read("/var/vcap/store/backup-dir"), format!("/var/vcap/store/bbr-backup/{custom}/\n").into_bytes());
    assert_eq!(fleet.vms[1].read("/var/vcap/store/backup-dir"), b"/var/vcap/store/bbr-backup/pg/\n".to_vec());

    // Restore onto emptied instances: both db instances get the bootstrap's data.
    for (vm, (_, _, job, _, _)) in fleet.vms.iter().zip(&layout) {
        fs::remove_file(vm.host_path(&format!("/var/vcap/store/{job}/data"))).unwrap();
    }
    let (code, err) = run(deployment(&d, "pgd").args(["restore", "-a"]).arg(&artifact));
    assert_eq!(code, 0, "{err}");
    assert_eq!(fleet.vms[0].read("/var/vcap/store/web/data"), b"api/0 data\n".to_vec());
    for vm in &fleet.vms[1..] {
        assert_eq!(vm.read("/var/vcap/store/pg/data"), b"db/1 data\n".to_vec());
        assert_eq!(vm.read("/var/vcap/store/restore-dir"), format!("/var/vcap/store/bbr-backup/{custom}/\n").into_bytes());
        assert_eq!(vm.read("/var/vcap/store/restore-ls"), b"data\n".to_vec());
    }
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
    assert_cleaned_up(&fleet, &d);
}

/// `BOSH_ALL_PROXY` carries the director's API calls (UAA included), not only SSH: the
/// director is addressed by a name only the fleet's VMs resolve, so it is reachable only
/// through the jumpbox, in both of bbr's forms.
#[test]
fn bosh_all_proxy_reaches_a_director_behind_a_jumpbox() {
    let Some((fleet, d, tmp)) = setup("bosh_all_proxy_reaches_a_director") else { return };
    let port = d.url.rsplit(':').next().unwrap();
    let hidden = format!("https://{FLEET_ONLY_HOST}:{port}");
    let home = tmp.path().join("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::copy(fleet.known_hosts(), home.join(".ssh/known_hosts")).unwrap();
    let via = |proxy: Option<&str>| {
        let mut c = lockstep();
        c.env_remove("BOSH_CA_CERT").env_remove("CA_CERT").env_remove("BOSH_ALL_PROXY").env("HOME", &home);
        if let Some(p) = proxy {
            c.env("BOSH_ALL_PROXY", p);
        }
        c.args(["deployment", "-t", &hidden, "-u", CLIENT, "-p", SECRET, "-d", "cf", "--ca-cert"]).arg(&d.ca_path);
        c
    };

    // Directly, the name does not resolve here.
    let (code, err) = run(via(None).arg("pre-backup-check"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bosh director unreachable") && err.contains(FLEET_ONLY_HOST), "{err}");
    assert!(d.calls().is_empty(), "{:?}", d.calls());
    // Through a proxy that is down, the error says which proxy and why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("socks5://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let (code, err) = run(via(Some(&down)).arg("pre-backup-check"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bosh director unreachable") && err.contains("through the SOCKS5 proxy 127.0.0.1"), "{err}");
    assert!(err.contains("Connection refused") || err.contains("connection refused"), "{err}");

    // ssh+socks5://: lockstep opens the tunnel through vm0 itself.
    let key = fleet.key(KeyKind::Ed25519).private;
    let ssh_socks = format!("ssh+socks5://vcap@{}?private-key={}", fleet.vms[0].address(), key.display());
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let (code, err) = run(via(Some(&ssh_socks)).args(["backup", "-a"]).arg(&store));
    assert_eq!(code, 0, "{err}");
    assert!(only_artifact(&store).join("db-0-store.tar").is_file());
    assert_eq!(d.calls()[..2], ["GET /info", "POST /uaa/oauth/token"]);
    assert_cleaned_up(&fleet, &d);

    // The resource, whose environment a pipeline cannot set: `ssh.all_proxy` with the
    // jump host's key and host key in the source itself.
    let source = serde_json::json!({
        "target": {"deployment": {"environment": hidden, "client": CLIENT, "client_secret": SECRET,
                                  "ca_cert": d.ca_pem, "deployment": "cf"}},
        "store": {"path": tmp.path().join("resource-store")},
        "ssh": {"all_proxy": format!("ssh+socks5://vcap@{}", fleet.vms[0].address()),
                "all_proxy_private_key": fs::read_to_string(&key).unwrap(),
                "all_proxy_host_public_key": fleet.vms[0].host_key_line},
    });
    put_backup(&source, tmp.path());
    assert_cleaned_up(&fleet, &d);

    // socks5://: an existing tunnel (OpenSSH `ssh -D` through vm1).
    let tunnel = fleet.socks_tunnel(1);
    let (code, err) = run(via(Some(&format!("socks5://{}:{}", tunnel.ip, tunnel.port))).arg("pre-backup-check"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("can be backed up"), "{err}");
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
    assert_cleaned_up(&fleet, &d);
}

/// A backup that outlives its UAA token: renewed before it expires when UAA says when,
/// and after a refusal when it does not keep its word (a revoked or shortened token).
#[test]
fn uaa_tokens_are_renewed_during_a_long_backup() {
    let Some((fleet, d, tmp)) = setup("uaa_tokens_are_renewed") else { return };
    let tokens = |d: &Director| d.calls().iter().filter(|c| *c == "POST /uaa/oauth/token").count();
    // The locker's lock takes 2 s: cleanup comes well after a 1.5 s token expired.
    for (case, announced) in [("announced", 1u64), ("unannounced", 3600)] {
        let before = (tokens(&d), d.expired_refusals());
        d.set_token_life(std::time::Duration::from_millis(1500), announced);
        let store = tmp.path().join(case);
        fs::create_dir(&store).unwrap();
        let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(&store));
        assert_eq!(code, 0, "{case}: {err}");
        assert!(tokens(&d) > before.0 + 1, "{case}: the token was never renewed: {:?}", d.calls());
        let refusals = d.expired_refusals() - before.1;
        match case {
            // Renewed ahead of time: the director never saw an expired token.
            "announced" => assert_eq!(refusals, 0, "{case}"),
            // Only a refusal could tell: one per renewal, each retried once.
            _ => assert!(refusals >= 1, "{case}"),
        }
        assert_cleaned_up(&fleet, &d);
        assert!(d.unexpected().is_empty(), "{case}: {:?}", d.unexpected());
    }
}

/// What a run killed on the jumpbox leaves behind: `/var/vcap/store/bbr-backup` on a VM.
/// backup refuses it (exit 1, as bbr) and names the cleanup; backup-cleanup and
/// restore-cleanup through the director run the owed unlocks, remove it, and clean up their
/// own SSH users; then backup works again.
#[test]
fn cleanup_commands_after_an_interrupted_run() {
    let Some((fleet, d, tmp)) = setup("cleanup_commands_after_an_interrupted_run") else { return };
    for vm in &fleet.vms {
        vm.install_script("store", "post-restore-unlock", "#!/bin/sh\ntouch /var/vcap/store/restore-unlocked\n");
        vm.install_script("store", "post-backup-unlock", "#!/bin/sh\ntouch /var/vcap/store/backup-unlocked\n");
    }
    let leftover = |vm: usize| fleet.vms[vm].host_path("/var/vcap/store/bbr-backup");
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();

    for (cleanup, marker) in [("backup-cleanup", "backup-unlocked"), ("restore-cleanup", "restore-unlocked")] {
        fs::create_dir_all(leftover(1).join("store")).unwrap();
        let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(&store));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("already exists on instance db/0"), "{err}");
        // The whole command, flags included, the secret named by its variable only.
        let whole = format!(
            "lockstep deployment --target {} --username {CLIENT} --password \"$BOSH_CLIENT_SECRET\" --deployment cf --ca-cert {} backup-cleanup",
            d.url,
            d.ca_path.display()
        );
        assert!(err.contains(&whole), "{err}");
        assert!(!err.contains(SECRET), "{err}");
        assert!(leftover(1).exists(), "backup must leave a directory it did not create alone");

        let (code, err) = run(deployment(&d, "cf").arg(cleanup));
        assert_eq!(code, 0, "{cleanup}: {err}");
        assert!(!leftover(1).exists(), "{cleanup} left {}", leftover(1).display());
        for vm in [1, 2] {
            assert!(fleet.vms[vm].host_path(&format!("/var/vcap/store/{marker}")).exists(), "{cleanup} did not unlock vm{vm}");
        }
        assert_cleaned_up(&fleet, &d);
    }
    let (code, err) = run(deployment(&d, "cf").args(["backup", "-a"]).arg(&store));
    assert_eq!(code, 0, "{err}");
    assert!(d.unexpected().is_empty(), "{:?}", d.unexpected());
}
