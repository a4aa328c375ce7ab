//! The jobs of the abort tests (tests/abort_unlocks.rs, tests/image.rs): two lock levels
//! whose scripts log to a calls log on their instance, unlocks that take seconds, a backup
//! that hangs, so a signal finds the platform locked.

use super::fleet::Vm;
use std::fs;
use std::time::{Duration, Instant};

pub const CALLS: &str = "/var/vcap/data/calls.log";

/// A job whose scripts log `<job> <script> start|end` to the calls log. The lock of `api`
/// must come before `db`'s (two levels); unlocks take `unlock_secs`; the backup hangs for a
/// minute.
/// With `fail_once`, the unlock fails (exit 3) the first time it runs.
pub fn install(vm: &Vm, job: &str, fail_once: bool, unlock_secs: u32) {
    let log = |what: &str| format!("echo \"{job} $(basename \"$0\") {what}\" >> {CALLS}\n");
    let head = format!("#!/bin/sh\nmkdir -p /var/vcap/data\n{}", log("start"));
    let meta = if job == "api" { "backup_should_be_locked_before:\n- job_name: db\n  release: pg\n" } else { "" };
    vm.install_script(job, "metadata", &format!("#!/bin/sh\ncat <<'YAML'\n---\n{meta}YAML\n"));
    vm.install_script(job, "pre-backup-lock", &format!("{head}{}", log("end")));
    vm.install_script(job, "backup", &format!("{head}sleep 60\n{}", log("end")));
    let fail_once = if fail_once {
        "if [ ! -e /var/vcap/data/failed-once ]; then touch /var/vcap/data/failed-once; echo 'db unlock failed' >&2; exit 3; fi\n"
    } else {
        ""
    };
    vm.install_script(job, "post-backup-unlock", &format!("{head}sleep {unlock_secs}\n{}{fail_once}", log("end")));
}

pub fn calls(vm: &Vm) -> Vec<String> {
    fs::read_to_string(vm.host_path(CALLS)).unwrap_or_default().lines().map(str::to_string).collect()
}

pub fn count(vm: &Vm, line: &str) -> usize {
    calls(vm).iter().filter(|l| *l == line).count()
}

pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

