//! A deployment too big for the open-file limit is refused before anything runs on it, and
//! lockstep first raises its soft limit to the hard one, as a run over ~1,000 instances
//! needs (one connection each). Through the binary, with the limits set by the shell as a
//! container's `nofile` would set them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// `n` local instances; the first has a job whose metadata script logs that it ran.
fn instances(root: &Path, n: usize) -> Vec<String> {
    let mut args = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("vm-{i}"));
        fs::create_dir_all(dir.join("var/vcap/store")).unwrap();
        if i == 0 {
            let bbr = dir.join("var/vcap/jobs/db/bin/bbr");
            fs::create_dir_all(&bbr).unwrap();
            for s in ["metadata", "backup"] {
                let p = bbr.join(s);
                fs::write(&p, format!("#!/bin/sh\necho {s} >> '{}/calls.log'\n", root.display())).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        args.push("--instance".to_string());
        args.push(format!("node/{i}={}", dir.display()));
    }
    args
}

/// Runs `lockstep local ... pre-backup-check` under `ulimit` settings given to sh.
fn run(limits: &str, args: &[String]) -> (i32, String) {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("{limits} && exec \"$0\" \"$@\"")).arg(assert_cmd::cargo::cargo_bin("lockstep"));
    c.args(["local", "--name", "big"]).args(args).arg("pre-backup-check");
    let o = c.output().unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn a_deployment_beyond_the_hard_limit_is_refused_before_any_script_runs() {
    let tmp = TempDir::new().unwrap();
    let args = instances(tmp.path(), 120);
    let (code, log) = run("ulimit -n 100", &args);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("the deployment has 120 instances") && log.contains("ulimit -n"), "{log}");
    assert!(!tmp.path().join("calls.log").exists(), "a script ran: {log}");
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_limit_so_the_same_deployment_fits() {
    let tmp = TempDir::new().unwrap();
    let args = instances(tmp.path(), 120);
    let (code, log) = run("ulimit -S -n 100 && ulimit -H -n 4096", &args);
    assert_eq!(code, 0, "{log}");
    assert_eq!(fs::read_to_string(tmp.path().join("calls.log")).unwrap(), "metadata\n");
}
