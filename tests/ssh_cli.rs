//! The `lockstep hosts` and `lockstep director` commands end to end, as an operator runs
//! them, against the sshd test fleet carrying the demo deployment's BBR scripts.

mod support;

use assert_cmd::Command;
use lockstep::frontend::demo::{create_deployment, snapshot};
use predicates::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use support::fleet::{Fleet, KeyKind};
use tempfile::TempDir;

fn lockstep() -> Command {
    Command::cargo_bin("lockstep").unwrap()
}

/// A fleet of three VMs with the demo's api/blobstore/db jobs and data.
fn demo_fleet(test: &str) -> Option<(Fleet, TempDir)> {
    let fleet = Fleet::start(test, 3)?;
    let tmp = TempDir::new().unwrap();
    let roots = create_deployment(&tmp.path().join("src"), true).unwrap();
    for (vm, (_, root)) in fleet.vms.iter().zip(&roots) {
        vm.install_tree(Path::new(root));
    }
    Some((fleet, tmp))
}

fn only_artifact(store: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(store).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

#[test]
fn hosts_backup_and_restore_through_the_cli() {
    let Some((fleet, tmp)) = demo_fleet("hosts_backup_and_restore_through_the_cli") else { return };
    let inventory = tmp.path().join("inventory.yml");
    fs::write(&inventory, fleet.inventory("mini-cf", &[("api", 0, 0), ("blobstore", 0, 1), ("db", 0, 2)], "vcap")).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();

    lockstep().args(["hosts", "--inventory"]).arg(&inventory).arg("pre-backup-check").assert().success().stdout(
        predicate::str::contains("Deployment 'mini-cf' can be backed up."),
    );
    lockstep()
        .args(["hosts", "--inventory"])
        .arg(&inventory)
        .args(["backup", "-a"])
        .arg(&store)
        .assert()
        .success()
        .stdout(predicate::str::contains("Backup created of mini-cf").and(predicate::str::contains("lock window")));
    let artifact = only_artifact(&store);
    assert!(artifact.file_name().unwrap().to_string_lossy().starts_with("mini-cf_"));
    assert!(artifact.join("blobstore-0-blobstore.tar").is_file());

    // Lose the data, then restore it.
    let before: Vec<_> = fleet.vms.iter().map(|vm| snapshot(&vm.root.join("var/vcap/store")).unwrap()).collect();
    for vm in &fleet.vms {
        for job in ["cloud_controller", "blobstore", "postgres"] {
            let _ = fs::remove_dir_all(vm.root.join("var/vcap/store").join(job));
        }
    }
    lockstep().args(["hosts", "--inventory"]).arg(&inventory).args(["restore", "-a"]).arg(&artifact).assert().success();
    let after: Vec<_> = fleet.vms.iter().map(|vm| snapshot(&vm.root.join("var/vcap/store")).unwrap()).collect();
    assert_eq!(before, after);

    lockstep().args(["hosts", "--inventory"]).arg(&inventory).arg("backup-cleanup").assert().success();
}

#[test]
fn director_mode_verifies_the_host_key() {
    let Some((fleet, tmp)) = demo_fleet("director_mode_verifies_the_host_key") else { return };
    let vm = &fleet.vms[2];
    let key = fleet.key(KeyKind::Ed25519).private;
    let host = vm.address();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let empty_known_hosts = tmp.path().join("known_hosts");
    fs::write(&empty_known_hosts, "").unwrap();

    // An unknown host key is refused, with the way to trust it.
    lockstep()
        .args(["director", "--host", &host, "-u", "vcap", "--private-key-path"])
        .arg(&key)
        .arg("--known-hosts")
        .arg(&empty_known_hosts)
        .args(["backup", "-a"])
        .arg(&store)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("ssh-keyscan").and(predicate::str::contains(&vm.host_key_fingerprint)));
    assert!(fs::read_dir(&store).unwrap().next().is_none());

    // With the fleet's known_hosts it backs up bbr's director layout.
    lockstep()
        .args(["director", "--host", &host, "-u", "vcap", "--key"])
        .arg(&key)
        .arg("--known-hosts")
        .arg(fleet.known_hosts())
        .args(["backup", "-a"])
        .arg(&store)
        .assert()
        .success();
    let artifact = only_artifact(&store);
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("{}_", vm.ip)), "{name}: named after the host without the port");
    assert!(artifact.join("bosh-0-postgres.tar").is_file());

    // Pinned host key and insecure mode also work; insecure says so.
    lockstep()
        .args(["director", "--host", &host, "-u", "vcap", "--private-key-path"])
        .arg(&key)
        .args(["--host-public-key", &vm.host_key_line, "pre-backup-check"])
        .assert()
        .success()
        // bbr's director wording, not "Deployment '10.0.0.6' ...".
        .stdout(predicate::str::contains("Director can be backed up.").and(predicate::str::contains("Deployment '").not()));
    lockstep()
        .args(["director", "--host", &host, "-u", "vcap", "--private-key-path"])
        .arg(&key)
        .args(["--insecure-skip-host-key-check", "pre-backup-check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("WARNING: --insecure-skip-host-key-check"));
}
