//! An abort mid-drain, as Concourse sends it: SIGTERM, then SIGKILL 10 s later
//! (concourse/concourse `worker/runtime/killer.go`). Over a real sshd, with an artifact
//! large enough that the drain is still streaming when the signal comes. Before the fix, the
//! cut-off channel's unread data stalled the SSH connection, so the cleanup's commands
//! (kill the remote tar, remove the staging directory) timed out after 30 s: SIGKILL came
//! first and the staging directory stayed, refusing the next backup.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::fleet::Fleet;
use tempfile::TempDir;

/// Concourse's grace period between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// The biggest file under `dir` (the drain's partial output), in bytes.
fn biggest_file(dir: &Path) -> u64 {
    let mut best = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                best = best.max(m.len());
            }
        }
    }
    best
}

/// `tar` processes this VM's sshd started, still running.
fn remote_tars(sshd: u32) -> Vec<String> {
    let out = Command::new("ps").args(["-eo", "pid=,ppid=,args="]).output().unwrap();
    let rows: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.collect::<Vec<_>>().join(" ")))
        })
        .collect();
    let mut tree = vec![sshd];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(rows.iter().filter(|r| r.1 == cur).map(|r| r.0));
        i += 1;
    }
    rows.into_iter().filter(|r| tree.contains(&r.0) && r.2.split_whitespace().next().is_some_and(|c| c.ends_with("tar"))).map(|r| r.2).collect()
}

#[test]
fn sigterm_mid_drain_cleans_up_within_concourses_grace_period() {
    let test = "sigterm_mid_drain_cleans_up_within_concourses_grace_period";
    let Some(fleet) = Fleet::start(test, 1) else { return };
    let vm = &fleet.vms[0];
    // 1500 MiB of incompressible-enough data: the drain takes seconds, not milliseconds.
    vm.install_script("blobs", "backup", "#!/bin/sh\nset -e\nhead -c 1500M /dev/urandom > \"$BBR_ARTIFACT_DIRECTORY/blob\"\n");
    vm.install_script("blobs", "post-backup-unlock", "#!/bin/sh\necho unlocked >> /var/vcap/calls.log\n");
    let tmp = TempDir::new().unwrap();
    let inventory = tmp.path().join("inventory.yml");
    fs::write(&inventory, fleet.inventory("shop", &[("blobstore", 0, 0)], "vcap")).unwrap();
    let store: PathBuf = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let backup = || {
        Command::new(assert_cmd::cargo::cargo_bin("lockstep"))
            .current_dir(tmp.path())
            .arg("hosts")
            .arg("--inventory")
            .arg(&inventory)
            .args(["backup", "-a"])
            .arg(&store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let mut child = backup();
    let t = Instant::now();
    while biggest_file(&store) < 64 << 20 {
        if let Some(st) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!("the backup ended before its drain was under way ({st}): {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the drain never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(biggest_file(&store) < 1400 << 20, "the drain finished before the signal: make the artifact bigger");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let killed = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if signalled.elapsed() >= GRACE {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!killed, "still running {GRACE:?} after SIGTERM: Concourse would have killed it\n{log}");
    assert_eq!(o.status.code(), Some(1), "a stopped backup fails, and its cleanup succeeded: {log}");
    assert!(!log.contains("timed out"), "{log}");

    let staging = vm.host_path("/var/vcap/store/bbr-backup");
    assert!(!staging.exists(), "the staging directory was left behind\n{log}");
    assert_eq!(fs::read_to_string(vm.host_path("/var/vcap/calls.log")).unwrap_or_default(), "unlocked\n", "unlocked exactly once");
    // The remote tar was stopped, not left reading a directory that is gone.
    let t = Instant::now();
    while !remote_tars(vm.pid()).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "the remote tar still runs: {:?}", remote_tars(vm.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fs::read_dir(&store).unwrap().next().is_none(), "the stopped backup left something in the store");

    // The next backup is not refused.
    vm.install_script("blobs", "backup", "#!/bin/sh\necho small > \"$BBR_ARTIFACT_DIRECTORY/blob\"\n");
    let o = backup().wait_with_output().unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}
