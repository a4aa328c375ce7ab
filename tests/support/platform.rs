//! A whole Tanzu platform for the tests of platform backups: the sshd fleet (vm0 the
//! director VM, reached as `bbr`; vm1 cf's API, vm2 the isolation segment's router), the
//! director double (its BBR client through UAA, the products' deployments) and the Ops
//! Manager double that describes them.

use super::director::{user_exists, AuthMode, DeploymentSpec, Director, VmSpec};
use super::fleet::{Fleet, KeyKind};
use super::opsman::{OpsMan, Spec};
use std::fs;
use std::process::Command;
use std::sync::Mutex;
use tempfile::TempDir;

pub const CF: &str = "cf-9f8e7d6c5b4a";
pub const ISO: &str = "p-isolation-segment-0a1b2c3d";
/// The director's address as Ops Manager gives it: the director artifact's name.
pub const DIRECTOR_IP: &str = "10.0.0.6";

/// The user `bbr` (Ops Manager's BBR SSH user on the director VM), with passwordless sudo,
/// for as long as any test of this binary needs it; removed after the last one when the
/// tests created it.
pub struct BbrUser;

static BBR: Mutex<(usize, bool)> = Mutex::new((0, false));

impl BbrUser {
    pub fn create() -> BbrUser {
        let mut b = BBR.lock().unwrap();
        if b.0 == 0 && !user_exists("bbr") {
            let ok = Command::new("useradd").args(["-M", "-s", "/bin/sh", "-p", "*", "bbr"]).status().unwrap().success();
            assert!(ok, "useradd bbr failed");
            fs::write("/etc/sudoers.d/lockstep-bbr", "bbr ALL=(ALL) NOPASSWD: ALL\n").unwrap();
            fs::set_permissions("/etc/sudoers.d/lockstep-bbr", std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
            b.1 = true;
        }
        b.0 += 1;
        BbrUser
    }
}

impl Drop for BbrUser {
    fn drop(&mut self) {
        let mut b = BBR.lock().unwrap();
        b.0 -= 1;
        if b.0 == 0 && b.1 {
            let _ = fs::remove_file("/etc/sudoers.d/lockstep-bbr");
            let _ = Command::new("userdel").args(["-f", "bbr"]).status();
            b.1 = false;
        }
    }
}

pub struct Platform {
    pub fleet: Fleet,
    pub director: Director,
    pub om: OpsMan,
    pub spec: Spec,
    pub tmp: TempDir,
    pub _bbr: BbrUser,
}

/// Installs a job with lock, backup, unlock and restore scripts and some data on a VM.
pub fn job(vm: &super::fleet::Vm, job: &str, data: &str) {
    let dir = format!("/var/vcap/store/{job}");
    fs::create_dir_all(vm.host_path(&dir)).unwrap();
    fs::write(vm.host_path(&format!("{dir}/data")), data).unwrap();
    vm.install_script(job, "pre-backup-lock", "#!/bin/sh\ntrue\n");
    vm.install_script(job, "post-backup-unlock", "#!/bin/sh\ntrue\n");
    vm.install_script(job, "backup", &format!("#!/bin/sh\ncp -a {dir}/data \"$BBR_ARTIFACT_DIRECTORY\"\n"));
    vm.install_script(job, "restore", &format!("#!/bin/sh\ncp -a \"$BBR_ARTIFACT_DIRECTORY/data\" {dir}/data\n"));
}

/// vm0 is the director VM (jobs `director` and `credhub`), vm1 runs cf's `cloud_controller`,
/// vm2 the isolation segment's `router`. Ops Manager knows the director as 10.0.0.6 and
/// signs it with the director double's CA; its `bbr` key is authorized on the fleet.
pub fn platform(test: &str) -> Option<Platform> {
    let fleet = Fleet::start(test, 3)?;
    let bbr = BbrUser::create();
    job(&fleet.vms[0], "director", "director database\n");
    job(&fleet.vms[0], "credhub", "credhub database\n");
    job(&fleet.vms[1], "cloud_controller", "ccdb\n");
    job(&fleet.vms[2], "router", "routes\n");
    let vm = |i: usize, group: &str, id: &str| VmSpec {
        group: group.into(),
        index: 0,
        id: id.into(),
        address: fleet.vms[i].address(),
        host_key_line: fleet.vms[i].host_key_line.clone(),
        bootstrap: true,
    };
    let manifest = |name: &str, group: &str, job: &str| {
        format!("name: {name}\ninstance_groups:\n- name: {group}\n  instances: 1\n  jobs:\n  - name: {job}\n    release: {job}-release\n")
    };
    let deployments = vec![
        DeploymentSpec { name: CF.into(), manifest: manifest(CF, "api", "cloud_controller"), vms: vec![vm(1, "api", "a1-api")] },
        DeploymentSpec { name: ISO.into(), manifest: manifest(ISO, "router", "router"), vms: vec![vm(2, "router", "b2-router")] },
    ];
    let key = fleet.key(KeyKind::RsaPem);
    let mut spec = Spec::platform(&fs::read_to_string(&key.private).unwrap());
    let (client, secret) = spec.bbr_client.clone().unwrap();
    let director = Director::start(AuthMode::Uaa { client, secret }, deployments, fleet.dir().join("authorized_keys"));
    spec.director_ip = DIRECTOR_IP.into();
    spec.cas = vec![(director.ca_pem.clone(), true)];
    spec.export_size = 3 << 20;
    let om = OpsMan::start(spec.clone());
    Some(Platform { fleet, director, om, spec, tmp: TempDir::new().unwrap(), _bbr: bbr })
}

