//! The SSH transport and the `hosts` and `director` targets against a fleet of real sshd
//! "VMs" (`tests/support/fleet.rs`): backup and restore through the real orchestration,
//! host key checks, key types, failures (unreachable, hung, killed mid-drain), timeouts,
//! jump hosts and connection reuse.

mod support;

use lockstep::artifact::stored;
use lockstep::frontend::demo::snapshot;
use lockstep::events::{Event, EventSink, Recorder};
use lockstep::target::{resolve_gateway, DirectorTarget, GatewayFlags, HostsTarget, SshOptions};
use lockstep::orchestrate::backup::{backup, BackupOptions, BackupOutcome};
use lockstep::orchestrate::restore::restore;
use lockstep::orchestrate::{Ctx, FailureKind};
use lockstep::store::local::LocalStore;
use lockstep::target::Target;
use lockstep::transport::ssh::{
    parse_bosh_all_proxy, ClientKey, GatewayConfig, HostKeyPolicy, KeySource, Proxy, Secret, SshConfig, SshTransport,
    PASSPHRASE_ENV,
};
use lockstep::transport::{exec_capture, Transport};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fleet::{Fleet, KeyKind, Vm, PASSPHRASE};
use tempfile::TempDir;

fn ctx() -> Ctx {
    Ctx::new(Arc::new(Recorder::default()))
}

async fn sh(t: &dyn Transport, cmd: &str) -> anyhow::Result<String> {
    let (st, out) = exec_capture(t, cmd).await?;
    anyhow::ensure!(st.success(), "{cmd}: {}", st.describe_failure());
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes one job's BBR scripts. Every script appends `<ns> <uid> <job> <script>` to
/// `/var/vcap/data/bbr-events.log` on its instance; backup and restore copy
/// `/var/vcap/store/<job>`.
fn install_job(vm: &Vm, job: &str, locked_before: &[(&str, &str)]) {
    let log = format!(
        "mkdir -p /var/vcap/data\necho \"$(date +%s%N) $(id -u) {job} $(basename \"$0\")\" >> /var/vcap/data/bbr-events.log\n"
    );
    let head = format!("#!/bin/sh\nset -eu\n{log}");
    let mut meta = String::new();
    if !locked_before.is_empty() {
        for key in ["backup_should_be_locked_before", "restore_should_be_locked_before"] {
            meta.push_str(&format!("{key}:\n"));
            for (j, r) in locked_before {
                meta.push_str(&format!("- job_name: {j}\n  release: {r}\n"));
            }
        }
    }
    // metadata prints YAML on stdout: it must not log to stdout, and it runs at every discovery.
    vm.install_script(job, "metadata", &format!("#!/bin/sh\ncat <<'YAML'\n---\n{meta}YAML\n"));
    let data = format!("/var/vcap/store/{job}");
    for s in ["pre-backup-lock", "post-backup-unlock", "pre-restore-lock", "post-restore-unlock"] {
        vm.install_script(job, s, &head);
    }
    vm.install_script(job, "backup", &format!("{head}cp -a '{data}/.' \"$BBR_ARTIFACT_DIRECTORY\"\n"));
    vm.install_script(
        job,
        "restore",
        &format!("{head}rm -rf '{data}'\nmkdir -p '{data}'\ncp -a \"$BBR_ARTIFACT_DIRECTORY/.\" '{data}/'\n"),
    );
    std::fs::create_dir_all(vm.host_path(&data)).unwrap();
}

#[derive(Debug, Clone)]
struct Ev {
    at: u128,
    uid: String,
    job: String,
    script: String,
}

fn events(vms: &[&Vm]) -> Vec<Ev> {
    let mut all = Vec::new();
    for vm in vms {
        let p = vm.host_path("/var/vcap/data/bbr-events.log");
        for line in std::fs::read_to_string(p).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            all.push(Ev { at: f[0].parse().unwrap(), uid: f[1].into(), job: f[2].into(), script: f[3].into() });
        }
    }
    all.sort_by_key(|e| e.at);
    all
}

fn at(evs: &[Ev], job: &str, script: &str) -> u128 {
    evs.iter().find(|e| e.job == job && e.script == script).unwrap_or_else(|| panic!("{job} {script} did not run: {evs:#?}")).at
}

fn clear_events(vms: &[&Vm]) {
    for vm in vms {
        let _ = std::fs::remove_file(vm.host_path("/var/vcap/data/bbr-events.log"));
    }
}

fn assert_ok(out: &BackupOutcome) -> String {
    assert!(out.failures.is_empty(), "backup failed:\n{}", out.failures.render());
    out.artifact.clone().expect("an artifact was committed")
}

fn options(fleet: &Fleet) -> SshOptions {
    SshOptions { known_hosts_path: Some(fleet.known_hosts()), ..SshOptions::default() }
}

/// Data with awkward names, a symlink, an empty directory and a 0700 root-owned file.
fn fill_data(vm: &Vm, job: &str) {
    let d = vm.host_path(&format!("/var/vcap/store/{job}"));
    std::fs::create_dir_all(d.join("droplets/ab")).unwrap();
    std::fs::create_dir_all(d.join("empty dir")).unwrap();
    std::fs::write(d.join("droplets/ab/droplet one.tgz"), vec![7u8; 300_000]).unwrap();
    std::fs::write(d.join("droplets/ab/new\nline"), b"odd name").unwrap();
    std::fs::write(d.join("private.key"), format!("{job} secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("private.key"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("droplets/ab/droplet one.tgz", d.join("latest")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip_across_three_instances_with_lock_order() {
    let Some(fleet) = Fleet::start("backup_and_restore_round_trip", 3) else { return };
    let [api, blob, db] = [&fleet.vms[0], &fleet.vms[1], &fleet.vms[2]];
    install_job(api, "cloud_controller", &[("blobstore", "capi"), ("postgres", "pg")]);
    install_job(api, "nginx", &[]);
    install_job(blob, "blobstore", &[]);
    install_job(db, "postgres", &[]);
    for (vm, job) in [(api, "cloud_controller"), (api, "nginx"), (blob, "blobstore"), (db, "postgres")] {
        fill_data(vm, job);
    }
    // Non-root user: every script and file operation goes through `sudo -n`.
    let inventory = fleet.inventory("mini-cf", &[("api", 0, 0), ("blobstore", 0, 1), ("db", 0, 2)], "vcap");
    let target = HostsTarget::from_yaml(&inventory, &options(&fleet)).unwrap();
    assert!(target.warnings().is_empty());
    let store_dir = TempDir::new().unwrap();
    let store = LocalStore::new(store_dir.path());

    let before: Vec<_> = fleet.vms.iter().map(|vm| snapshot(&vm.host_path("/var/vcap/store")).unwrap()).collect();
    let out = backup(&ctx(), &target, &store, &BackupOptions::default()).await;
    let name = assert_ok(&out);
    assert!(name.starts_with("mini-cf_"), "{name}");
    for f in ["api-0-cloud_controller.tar", "api-0-nginx.tar", "blobstore-0-blobstore.tar", "db-0-postgres.tar", "metadata"] {
        assert!(store_dir.path().join(&name).join(f).is_file(), "{f} missing from the artifact");
    }
    // Lock order, observed on the instances: cc locks before the stores, unlocks after them;
    // every lock precedes every backup, which precedes every unlock. All ran as root.
    let evs = events(&[api, blob, db]);
    assert!(evs.iter().all(|e| e.uid == "0"), "scripts must run as root through sudo: {evs:#?}");
    let cc_lock = at(&evs, "cloud_controller", "pre-backup-lock");
    for store_job in ["blobstore", "postgres"] {
        assert!(cc_lock < at(&evs, store_job, "pre-backup-lock"), "cc must lock before {store_job}");
        assert!(at(&evs, store_job, "post-backup-unlock") < at(&evs, "cloud_controller", "post-backup-unlock"));
    }
    let last = |s: &str| evs.iter().filter(|e| e.script == s).map(|e| e.at).max().unwrap();
    let first = |s: &str| evs.iter().filter(|e| e.script == s).map(|e| e.at).min().unwrap();
    assert!(last("pre-backup-lock") < first("backup") && last("backup") < first("post-backup-unlock"));
    // One SSH connection per instance for the whole backup (bbr opened one per command).
    for vm in &fleet.vms {
        assert_eq!(vm.accepted_logins(), 1, "one connection per instance:\n{}", vm.log());
        assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists(), "staging left behind");
    }

    // Lose the data, restore it, compare every path, mode, link and byte.
    for vm in &fleet.vms {
        for e in std::fs::read_dir(vm.host_path("/var/vcap/store")).unwrap() {
            std::fs::remove_dir_all(e.unwrap().path()).unwrap();
        }
    }
    clear_events(&[api, blob, db]);
    let r = restore(&ctx(), &target, &store, &name, false).await;
    assert!(r.failures.is_empty(), "restore failed:\n{}", r.failures.render());
    let after: Vec<_> = fleet.vms.iter().map(|vm| snapshot(&vm.host_path("/var/vcap/store")).unwrap()).collect();
    assert_eq!(before, after, "restored data differs");
    let evs = events(&[api, blob, db]);
    for store_job in ["blobstore", "postgres"] {
        assert!(at(&evs, "cloud_controller", "pre-restore-lock") < at(&evs, store_job, "pre-restore-lock"));
        assert!(at(&evs, store_job, "post-restore-unlock") < at(&evs, "cloud_controller", "post-restore-unlock"));
    }
    for vm in &fleet.vms {
        assert_eq!(vm.accepted_logins(), 2, "one more connection per instance for the restore");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_target_backs_up_bosh_0_named_after_the_host() {
    let Some(fleet) = Fleet::start("director_target", 1) else { return };
    let vm = &fleet.vms[0];
    install_job(vm, "director", &[]);
    std::fs::write(vm.host_path("/var/vcap/store/director/director.sql"), "SELECT 1;\n").unwrap();
    let key = fleet.key(KeyKind::Ed25519).private;
    let target = DirectorTarget::new(&vm.address(), "vcap", &key, None, &options(&fleet)).unwrap();
    assert_eq!(target.deployment_name(), vm.ip);
    let store_dir = TempDir::new().unwrap();
    let store = LocalStore::new(store_dir.path());
    let name = assert_ok(&backup(&ctx(), &target, &store, &BackupOptions::default()).await);
    assert!(name.starts_with(&format!("{}_", vm.ip)), "artifact named after the host: {name}");
    assert!(store_dir.path().join(&name).join("bosh-0-director.tar").is_file());
    let metadata = std::fs::read_to_string(store_dir.path().join(&name).join("metadata")).unwrap();
    assert!(metadata.contains("name: bosh") && metadata.contains("index: \"0\""), "{metadata}");

    std::fs::remove_file(vm.host_path("/var/vcap/store/director/director.sql")).unwrap();
    let r = restore(&ctx(), &target, &store, &name, false).await;
    assert!(r.failures.is_empty(), "{}", r.failures.render());
    assert_eq!(vm.read("/var/vcap/store/director/director.sql"), b"SELECT 1;\n");

    // A pinned key works too, and a wrong one is refused.
    let pinned = DirectorTarget::new(&vm.address(), "vcap", &key, Some(&vm.host_key_line), &SshOptions::default()).unwrap();
    assert!(pinned.instances().await.unwrap()[0].find_scripts().await.is_ok());
}

#[tokio::test]
async fn unknown_host_key_is_refused_with_how_to_trust_it() {
    let Some(fleet) = Fleet::start("unknown_host_key", 1) else { return };
    let vm = &fleet.vms[0];
    let dir = TempDir::new().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let mut cfg = fleet.ssh_config(0, "root");
    cfg.host_key = HostKeyPolicy::KnownHosts(known_hosts.clone());
    let t = SshTransport::new(cfg.clone());
    let e = format!("{:#}", sh(&t, "touch /var/vcap/data/ran").await.unwrap_err());
    assert!(e.contains("host key verification failed"), "{e}");
    assert!(e.contains(&vm.host_key_fingerprint), "shows the offered key's fingerprint: {e}");
    let keyscan = format!("ssh-keyscan -p {} {} >> {}", vm.port, vm.ip, known_hosts.display());
    assert!(e.contains(&keyscan), "says how to trust it: {e}");
    assert!(e.contains("does not exist"), "{e}");
    assert!(!vm.host_path("/var/vcap/data/ran").exists(), "nothing may run on an unverified host");
    assert_eq!(vm.accepted_logins(), 0, "refused before authenticating");

    // Following the advice works.
    let st = Command::new("sh").arg("-c").arg(format!("{keyscan} 2>/dev/null")).status().unwrap();
    assert!(st.success());
    let t = SshTransport::new(cfg);
    assert_eq!(sh(&t, "echo trusted").await.unwrap(), "trusted\n");
}

#[tokio::test]
async fn changed_host_key_is_refused() {
    let Some(fleet) = Fleet::start("changed_host_key", 2) else { return };
    let (vm0, vm1) = (&fleet.vms[0], &fleet.vms[1]);
    let dir = TempDir::new().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    // vm0's address with vm1's key: as if vm0 had been replaced by an impostor.
    std::fs::write(&known_hosts, format!("# comment\n{} {}\n", vm0.known_hosts_name(), vm1.host_key_line)).unwrap();
    let mut cfg = fleet.ssh_config(0, "root");
    cfg.host_key = HostKeyPolicy::KnownHosts(known_hosts.clone());
    let e = format!("{:#}", sh(&SshTransport::new(cfg), "true").await.unwrap_err());
    assert!(e.contains("HOST KEY HAS CHANGED"), "{e}");
    assert!(e.contains(&vm0.host_key_fingerprint), "{e}");
    assert!(e.contains(&format!("ssh-keygen -R '{}' -f {}", vm0.known_hosts_name(), known_hosts.display())), "{e}");
    assert_eq!(vm0.accepted_logins(), 0);

    // A pinned key: the wrong one is refused, the right one accepted.
    let mut cfg = fleet.ssh_config(0, "root");
    cfg.host_key = HostKeyPolicy::pinned(&vm1.host_key_line).unwrap();
    let e = format!("{:#}", sh(&SshTransport::new(cfg), "true").await.unwrap_err());
    assert!(e.contains("not the pinned host public key") && e.contains(&vm0.host_key_fingerprint), "{e}");
    let mut cfg = fleet.ssh_config(0, "root");
    cfg.host_key = HostKeyPolicy::pinned(&vm0.host_key_line).unwrap();
    assert_eq!(sh(&SshTransport::new(cfg), "echo pinned").await.unwrap(), "pinned\n");
}

#[tokio::test]
async fn insecure_skip_host_key_check_connects_and_warns() {
    let Some(fleet) = Fleet::start("insecure_skip", 1) else { return };
    let mut cfg = fleet.ssh_config(0, "vcap");
    cfg.host_key = HostKeyPolicy::Insecure;
    let t = SshTransport::new(cfg);
    assert!(t.warning().is_some_and(|w| w.contains("host key verification is disabled")));
    assert_eq!(sh(&t, "id -u").await.unwrap(), "0\n");
    // The option wins over a known_hosts file that would refuse the host.
    let opts = SshOptions {
        known_hosts_path: Some("/nonexistent/known_hosts".into()),
        insecure_skip_host_key_check: true,
        ..SshOptions::default()
    };
    let target = HostsTarget::from_yaml(&fleet.inventory("d", &[("a", 0, 0)], "vcap").replace("host_public_key", "#"), &opts)
        .unwrap();
    assert!(target.warnings().iter().any(|w| w.contains("--insecure-skip-host-key-check")));
    assert!(target.instances().await.unwrap()[0].find_scripts().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ecdsa_and_passphrase_keys_authenticate() {
    let Some(fleet) = Fleet::start("key_types", 1) else { return };
    for kind in [KeyKind::Rsa, KeyKind::RsaPem, KeyKind::Ecdsa, KeyKind::Ed25519Passphrase] {
        let mut cfg = fleet.ssh_config(0, "vcap");
        cfg.key = fleet.key(kind).load();
        let t = SshTransport::new(cfg);
        assert_eq!(sh(&t, "echo hi").await.unwrap_or_else(|e| panic!("{kind:?}: {e:#}")), "hi\n", "{kind:?}");
    }
    assert_eq!(fleet.vms[0].accepted_logins(), 4);

    // A protected key needs the passphrase, says where to put it, and never shows it.
    let files = fleet.key(KeyKind::Ed25519Passphrase);
    let source = KeySource::Path(files.private.clone());
    let e = format!("{:#}", ClientKey::load(&source, None).unwrap_err());
    assert!(e.contains("passphrase") && e.contains(PASSPHRASE_ENV), "{e}");
    let e = format!("{:#}", ClientKey::load(&source, Some(&Secret::new("not-the-passphrase"))).unwrap_err());
    assert!(e.contains("could not decrypt") && !e.contains("not-the-passphrase"), "{e}");
    // Through an inventory, with the passphrase in the options (as from the environment).
    let inv = fleet.inventory("d", &[("a", 0, 0)], "vcap").replace(
        &fleet.key(KeyKind::Ed25519).private.display().to_string(),
        &files.private.display().to_string(),
    );
    let opts = SshOptions { key_passphrase: Some(Secret::new(PASSPHRASE)), ..SshOptions::default() };
    let target = HostsTarget::from_yaml(&inv, &opts).unwrap();
    assert!(target.instances().await.unwrap()[0].find_scripts().await.is_ok());
    let no_pass = HostsTarget::from_yaml(&inv, &SshOptions::default()).unwrap();
    let e = format!("{:#}", no_pass.instances().await.err().unwrap());
    assert!(e.contains("a/0") && e.contains(PASSPHRASE_ENV), "{e}");
}

#[tokio::test]
async fn a_key_the_instance_does_not_know_is_refused() {
    let Some(fleet) = Fleet::start("wrong_client_key", 1) else { return };
    let mut cfg = fleet.ssh_config(0, "vcap");
    let key = fleet.key(KeyKind::Unauthorized).load();
    let fp = key.fingerprint();
    cfg.key = key;
    let e = format!("{:#}", sh(&SshTransport::new(cfg), "true").await.unwrap_err());
    assert!(e.contains("authentication failed") && e.contains("authorized_keys") && e.contains(&fp), "{e}");
    assert!(e.contains(&format!("vcap@{}", fleet.vms[0].address())), "{e}");
    assert!(!e.contains("PRIVATE KEY"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_instance_fails_the_backup_clearly_before_any_lock() {
    let Some(fleet) = Fleet::start("unreachable_instance", 2) else { return };
    install_job(&fleet.vms[0], "redis", &[]);
    install_job(&fleet.vms[1], "redis", &[]);
    let dead = fleet.vms[1].address();
    fleet.vms[1].kill();
    let target = HostsTarget::from_yaml(&fleet.inventory("d", &[("redis", 0, 0), ("redis", 1, 1)], "vcap"), &options(&fleet))
        .unwrap();
    let store_dir = TempDir::new().unwrap();
    let out = backup(&ctx(), &target, &LocalStore::new(store_dir.path()), &BackupOptions::default()).await;
    assert!(out.artifact.is_none());
    assert_eq!(out.failures.exit_code(), 1, "bbr's exit code for an unreachable instance");
    let e = out.failures.render();
    assert!(e.contains("redis/1") && e.contains(&dead), "names the instance and its address: {e}");
    assert!(e.contains("Connection refused") || e.contains("nothing listens"), "{e}");
    assert!(events(&[&fleet.vms[0]]).iter().all(|e| e.script != "pre-backup-lock"), "nothing may be locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_is_cut_off_by_the_timeouts() {
    let Some(fleet) = Fleet::start("hung_instance", 2) else { return };
    let vm = &fleet.vms[0];
    // New connections: the TCP handshake succeeds (the kernel accepts), sshd never answers.
    vm.freeze();
    let mut cfg = fleet.ssh_config(0, "vcap");
    cfg.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let e = format!("{:#}", sh(&SshTransport::new(cfg.clone()), "true").await.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(e.contains("connect timeout") && e.contains(&vm.address()), "{e}");
    vm.thaw();

    // An established connection whose instance then hangs mid-command.
    cfg.script_timeout = Some(Duration::from_secs(2));
    let t = SshTransport::new(cfg);
    assert_eq!(sh(&t, "echo up").await.unwrap(), "up\n");
    let run = sh(&t, "echo started; sleep 1; echo finished");
    vm.freeze();
    let started = Instant::now();
    let e = format!("{:#}", run.await.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(e.contains("timed out after"), "{e}");
    vm.thaw();

    // Through the orchestration: the backup fails with the instance named, no hang.
    install_job(&fleet.vms[1], "redis", &[]);
    fleet.vms[1].freeze();
    let opts = SshOptions { connect_timeout: Duration::from_secs(1), ..options(&fleet) };
    let target = HostsTarget::from_yaml(&fleet.inventory("d", &[("redis", 0, 1)], "vcap"), &opts).unwrap();
    let started = Instant::now();
    let out = backup(&ctx(), &target, &LocalStore::new(TempDir::new().unwrap().path()), &BackupOptions::default()).await;
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_eq!(out.failures.exit_code(), 1);
    assert!(out.failures.render().contains("redis/0"), "{}", out.failures.render());
}

async fn wait_gone(t: &SshTransport, pattern: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sh(t, &format!("pgrep -f '{pattern}' || true")).await.unwrap().trim().is_empty() {
        assert!(Instant::now() < deadline, "{what}: the command still runs on the instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_timeout_stops_the_command_and_the_connection_stays_usable() {
    let Some(fleet) = Fleet::start("script_timeout", 1) else { return };
    // As root, and as vcap through sudo (sshd cannot signal either: the process group is
    // killed over a second channel).
    for (user, secs) in [("root", "31.4159"), ("vcap", "32.7182")] {
        let mut cfg = fleet.ssh_config(0, user);
        cfg.script_timeout = Some(Duration::from_secs(1));
        let t = SshTransport::new(cfg);
        let started = Instant::now();
        let e = format!("{:#}", sh(&t, &format!("sleep {secs}; echo not-reached")).await.unwrap_err());
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(e.contains("timed out after 1s") && e.contains(&fleet.vms[0].address()), "{e}");
        assert_eq!(sh(&t, "echo still-here").await.unwrap(), "still-here\n");
        let pattern = format!("sleep {}[{}]", &secs[..secs.len() - 1], &secs[secs.len() - 1..]);
        wait_gone(&t, &pattern, user).await;
    }
    assert_eq!(fleet.vms[0].accepted_logins(), 2, "one connection per transport");

    // A command whose caller gives up (the future is dropped, as on SIGTERM) is stopped too.
    let t = fleet.transport(0, "vcap");
    let give_up = tokio::time::timeout(Duration::from_millis(500), sh(&t, "sleep 33.1234")).await;
    assert!(give_up.is_err(), "the command should still have been running");
    wait_gone(&t, "sleep 33.123[4]", "cancelled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_many_commands_and_reconnects_once_after_a_drop() {
    let Some(fleet) = Fleet::start("connection_reuse", 1) else { return };
    let t = fleet.transport(0, "vcap");
    for i in 0..20 {
        assert_eq!(sh(&t, &format!("echo {i}")).await.unwrap(), format!("{i}\n"));
    }
    let parallel = (0..20).map(|i| {
        let t = &t;
        async move { sh(t, &format!("sleep 0.05; echo {i}")).await.unwrap() }
    });
    let outs = futures::future::join_all(parallel).await;
    assert_eq!(outs, (0..20).map(|i| format!("{i}\n")).collect::<Vec<_>>());
    assert_eq!(fleet.vms[0].accepted_logins(), 1, "{}", fleet.vms[0].log());

    // The connection drops while idle (the sshd serving it dies; the VM lives on):
    // the next command reconnects once, transparently.
    fleet.vms[0].drop_connections();
    assert_eq!(sh(&t, "echo again").await.unwrap(), "again\n");
    assert_eq!(fleet.vms[0].accepted_logins(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_gateway_jump_host() {
    let Some(fleet) = Fleet::start("gateway", 3) else { return };
    let kh = HostKeyPolicy::KnownHosts(fleet.known_hosts());
    let gw = GatewayConfig::new("vcap", fleet.vms[0].ip.clone(), fleet.vms[0].port, fleet.key(KeyKind::Ed25519).load(), kh.clone());
    for i in [1, 2] {
        let mut cfg = fleet.ssh_config(i, "vcap");
        cfg.proxy = Some(Proxy::from(gw.clone()));
        let t = SshTransport::new(cfg);
        assert_eq!(sh(&t, "hostname >/dev/null; echo through").await.unwrap(), "through\n");
        assert_eq!(fleet.vms[i].accepted_logins(), 1);
    }
    assert_eq!(fleet.vms[0].accepted_logins(), 1, "one gateway connection shared by both instances");

    // bbr's BOSH_ALL_PROXY form, through the orchestration.
    install_job(&fleet.vms[2], "redis", &[]);
    std::fs::write(fleet.vms[2].host_path("/var/vcap/store/redis/dump.rdb"), "REDIS").unwrap();
    let url = format!("ssh+socks5://vcap@{}?private-key={}", fleet.vms[0].address(), fleet.key(KeyKind::Ed25519).private.display());
    let mut opts = options(&fleet);
    opts.gateway = resolve_gateway(&GatewayFlags { bosh_all_proxy: Some(url.clone()), ..Default::default() }, &opts).unwrap();
    assert!(matches!(opts.gateway, Some(Proxy::Ssh(_))));
    let target = HostsTarget::from_yaml(&fleet.inventory("via-jb", &[("redis", 0, 2)], "vcap"), &opts).unwrap();
    let store_dir = TempDir::new().unwrap();
    let name = assert_ok(&backup(&ctx(), &target, &LocalStore::new(store_dir.path()), &BackupOptions::default()).await);
    assert!(store_dir.path().join(&name).join("redis-0-redis.tar").is_file());
    assert_eq!(fleet.vms[0].accepted_logins(), 2);

    // A gateway whose host key is unknown is refused like an instance.
    let bad = parse_bosh_all_proxy(&url, None, HostKeyPolicy::KnownHosts("/nonexistent".into())).unwrap();
    let mut cfg = fleet.ssh_config(1, "vcap");
    cfg.proxy = Some(bad);
    let e = format!("{:#}", sh(&SshTransport::new(cfg), "true").await.unwrap_err());
    assert!(e.contains("gateway") && e.contains("host key verification failed"), "{e}");
}

#[tokio::test]
async fn through_an_existing_socks5_tunnel() {
    let Some(fleet) = Fleet::start("socks5", 2) else { return };
    let tunnel = fleet.socks_tunnel(0);
    let url = format!("socks5://{}:{}", tunnel.ip, tunnel.port);
    let proxy = parse_bosh_all_proxy(&url, None, HostKeyPolicy::Insecure).unwrap();
    let mut cfg = fleet.ssh_config(1, "vcap");
    cfg.proxy = Some(proxy.clone());
    let t = SshTransport::new(cfg);
    assert_eq!(sh(&t, "echo socks").await.unwrap(), "socks\n");
    assert_eq!(fleet.vms[0].accepted_logins(), 1, "the tunnel's own login");
    assert_eq!(fleet.vms[1].accepted_logins(), 1);
    // Host keys are still checked through the tunnel.
    let mut cfg: SshConfig = fleet.ssh_config(1, "vcap");
    cfg.proxy = Some(proxy);
    cfg.host_key = HostKeyPolicy::pinned(&fleet.vms[0].host_key_line).unwrap();
    assert!(sh(&SshTransport::new(cfg), "true").await.is_err());
}

/// Kills a VM the first time a transfer starts from it.
struct KillOnTransfer {
    pid: u32,
    inner: Recorder,
    done: std::sync::atomic::AtomicBool,
}

impl EventSink for KillOnTransfer {
    fn emit(&self, event: Event) {
        if matches!(event, Event::TransferProgress { .. } | Event::TransferStarted { .. })
            && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            support::fleet::kill_tree(self.pid);
        }
        self.inner.emit(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_killed_mid_drain_fails_cleanly_after_unlocking_and_commits_nothing() {
    let Some(fleet) = Fleet::start("killed_mid_drain", 1) else { return };
    let vm = &fleet.vms[0];
    install_job(vm, "blobstore", &[]);
    // 48 MiB that does not compress: long enough to be cut mid-stream.
    let mut f = std::fs::File::create(vm.host_path("/var/vcap/store/blobstore/blobs.bin")).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..48 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    drop(f);
    let target = HostsTarget::from_yaml(&fleet.inventory("d", &[("blobstore", 0, 0)], "vcap"), &options(&fleet)).unwrap();
    let store_dir = TempDir::new().unwrap();
    let store = LocalStore::new(store_dir.path());
    let sink = Arc::new(KillOnTransfer { pid: vm.pid(), inner: Recorder::default(), done: Default::default() });
    let ctx = Ctx::new(sink.clone());
    let started = Instant::now();
    let out = backup(&ctx, &target, &store, &BackupOptions::default()).await;
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert!(out.artifact.is_none(), "nothing may be committed");
    assert!(out.failures.has(FailureKind::Drain), "{}", out.failures.render());
    assert_eq!(out.failures.exit_code() & 1, 1);
    let e = out.failures.render();
    assert!(e.contains("blobstore/0"), "{e}");
    assert!(stored::list(&store).await.unwrap().is_empty(), "no committed artifact");
    // The unlock ran before the drain (bbr's order): read from the VM's disk.
    let evs = events(&[vm]);
    assert!(evs.iter().any(|e| e.script == "post-backup-unlock"), "unlock must have run: {evs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_instances_in_one_deployment() {
    let Some(fleet) = Fleet::start("thirty_two_instances", 32) else { return };
    let mut list = Vec::new();
    for (i, vm) in fleet.vms.iter().enumerate() {
        install_job(vm, "svc", &[]);
        std::fs::write(vm.host_path("/var/vcap/store/svc/data"), format!("instance {i}\n")).unwrap();
        list.push(("svc", i as u32, i));
    }
    let target = HostsTarget::from_yaml(&fleet.inventory("big", &list, "vcap"), &options(&fleet)).unwrap();
    let store_dir = TempDir::new().unwrap();
    let mut ctx = ctx();
    ctx.max_in_flight = 32;
    let name = assert_ok(&backup(&ctx, &target, &LocalStore::new(store_dir.path()), &BackupOptions::default()).await);
    for i in 0..32 {
        assert!(store_dir.path().join(&name).join(format!("svc-{i}-svc.tar")).is_file());
    }
    assert!(fleet.vms.iter().all(|vm| vm.accepted_logins() == 1));
    assert!(Path::new(store_dir.path()).join(&name).join("lockstep.json").is_file());
}
