//! Restore as bbr restores, over real sshd "VMs" (tests/support/fleet.rs): each job's
//! scripts append to a calls log on their own instance, and the assertions read those logs,
//! not only lockstep's outcome. The same cases run over local directories in
//! tests/failure_matrix.rs.

mod support;

use lockstep::events::{Event, Recorder};
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::restore::restore;
use lockstep::orchestrate::Ctx;
use lockstep::store::local::LocalStore;
use lockstep::target::{HostsTarget, SshOptions};
use std::sync::Arc;
use support::fleet::{Fleet, Vm};
use tempfile::TempDir;

const LOG: &str = "/var/vcap/data/calls.log";

/// A job whose every script appends `<job> <script>` to the instance's calls log; backup
/// and restore copy `/var/vcap/store/<job>`.
fn install_job(vm: &Vm, job: &str, with_restore: bool) {
    let head = format!("#!/bin/sh\nset -eu\nmkdir -p /var/vcap/data\necho \"{job} $(basename \"$0\")\" >> {LOG}\n");
    vm.install_script(job, "metadata", "#!/bin/sh\necho '---'\n");
    for s in ["pre-backup-lock", "post-backup-unlock", "pre-restore-lock", "post-restore-unlock"] {
        vm.install_script(job, s, &head);
    }
    let data = format!("/var/vcap/store/{job}");
    vm.install_script(job, "backup", &format!("{head}cp -a '{data}/.' \"$BBR_ARTIFACT_DIRECTORY\"\n"));
    if with_restore {
        vm.install_script(job, "restore", &format!("{head}rm -rf '{data}'\nmkdir -p '{data}'\ncp -a \"$BBR_ARTIFACT_DIRECTORY/.\" '{data}/'\n"));
    }
    std::fs::create_dir_all(vm.host_path(&data)).unwrap();
    std::fs::write(vm.host_path(&format!("{data}/state")), format!("{job} data")).unwrap();
}

fn calls(vm: &Vm) -> Vec<String> {
    std::fs::read_to_string(vm.host_path(LOG)).unwrap_or_default().lines().map(str::to_string).collect()
}

fn clear(fleet: &Fleet) {
    for vm in &fleet.vms {
        let _ = std::fs::remove_file(vm.host_path(LOG));
    }
}

fn options(fleet: &Fleet) -> SshOptions {
    SshOptions { known_hosts_path: Some(fleet.known_hosts()), ..SshOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_parity_with_bbr_over_ssh() {
    let Some(fleet) = Fleet::start("restore_parity_with_bbr", 3) else { return };
    let [api, blob, extra] = [&fleet.vms[0], &fleet.vms[1], &fleet.vms[2]];
    install_job(api, "cloud_controller", true);
    install_job(blob, "blobstore", true);
    // A script that is a symlink is not a BBR script (bbr: `find -type f`).
    std::fs::create_dir_all(api.host_path("/var/vcap/data")).unwrap();
    std::fs::write(api.host_path("/var/vcap/data/real-backup.sh"), format!("#!/bin/sh\necho 'linked backup' >> {LOG}\n")).unwrap();
    std::fs::set_permissions(api.host_path("/var/vcap/data/real-backup.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(api.host_path("/var/vcap/jobs/linked/bin/bbr")).unwrap();
    std::os::unix::fs::symlink("/var/vcap/data/real-backup.sh", api.host_path("/var/vcap/jobs/linked/bin/bbr/backup")).unwrap();

    let two = fleet.inventory("cf", &[("api", 0, 0), ("blobstore", 0, 1)], "vcap");
    let target = HostsTarget::from_yaml(&two, &options(&fleet)).unwrap();
    let store_dir = TempDir::new().unwrap();
    let store = LocalStore::new(store_dir.path());
    let ctx = || Ctx::new(Arc::new(Recorder::default()));
    let out = backup(&ctx(), &target, &store, &BackupOptions::default()).await;
    assert!(out.failures.is_empty(), "{}", out.failures.render());
    let name = out.artifact.unwrap();
    assert!(!calls(api).iter().any(|c| c == "linked backup"), "the symlinked script ran: {:?}", calls(api));
    assert!(!store_dir.path().join(&name).join("api-0-linked.tar").exists());

    // A scaled-out deployment: api/1 has a restore script and nothing in the backup.
    // Refused before any lock; no restore script runs anywhere.
    install_job(extra, "cloud_controller", true);
    clear(&fleet);
    let three = fleet.inventory("cf", &[("api", 0, 0), ("blobstore", 0, 1), ("api", 1, 2)], "vcap");
    let scaled = HostsTarget::from_yaml(&three, &options(&fleet)).unwrap();
    let r = restore(&ctx(), &scaled, &store, &name, false).await;
    let text = r.failures.render();
    assert_eq!(r.failures.exit_code(), 1, "{text}");
    assert!(text.contains("job cloud_controller on api/1"), "{text}");
    for vm in &fleet.vms {
        assert!(calls(vm).is_empty(), "no script may run: {:?}", calls(vm));
        assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists(), "nothing staged");
    }
    assert_eq!(std::fs::read_to_string(extra.host_path("/var/vcap/store/cloud_controller/state")).unwrap(), "cloud_controller data");

    // A job that lost its restore script: its artifact is left (a warning names it), the
    // rest is restored, every job is locked and unlocked as bbr does.
    std::fs::remove_file(blob.host_path("/var/vcap/jobs/blobstore/bin/bbr/restore")).unwrap();
    std::fs::write(api.host_path("/var/vcap/store/cloud_controller/state"), "lost").unwrap();
    std::fs::write(blob.host_path("/var/vcap/store/blobstore/state"), "kept as is").unwrap();
    clear(&fleet);
    let rec = Arc::new(Recorder::default());
    let r = restore(&Ctx::new(rec.clone()), &target, &store, &name, false).await;
    assert!(r.failures.is_empty(), "{}", r.failures.render());
    assert_eq!(calls(api), ["cloud_controller pre-restore-lock", "cloud_controller restore", "cloud_controller post-restore-unlock"]);
    assert_eq!(calls(blob), ["blobstore pre-restore-lock", "blobstore post-restore-unlock"]);
    assert_eq!(std::fs::read_to_string(api.host_path("/var/vcap/store/cloud_controller/state")).unwrap(), "cloud_controller data");
    assert_eq!(std::fs::read_to_string(blob.host_path("/var/vcap/store/blobstore/state")).unwrap(), "kept as is");
    let warned: Vec<String> = rec.events().into_iter().filter_map(|e| if let Event::Warning(w) = e { Some(w) } else { None }).collect();
    assert!(warned.iter().any(|w| w.contains("blobstore-0-blobstore.tar will not be restored")), "{warned:?}");
    for vm in &fleet.vms {
        assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists(), "staging left behind");
    }

    // restore_name on any job of a restoring instance (here one without a restore script)
    // refuses before anything runs, as bbr's HasMetadataRestoreNames.
    api.install_script("helper", "backup", "#!/bin/sh\n");
    api.install_script("helper", "metadata", "#!/bin/sh\necho '---\nrestore_name: old'\n");
    clear(&fleet);
    let r = restore(&ctx(), &target, &store, &name, false).await;
    let text = r.failures.render();
    assert_eq!(r.failures.exit_code(), 1, "{text}");
    assert!(text.contains("discontinued metadata keys backup_name/restore_name found on instance api"), "{text}");
    for vm in &fleet.vms {
        assert!(calls(vm).is_empty(), "no script may run: {:?}", calls(vm));
    }
}
