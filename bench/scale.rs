//! Benchmark: does a backup's cost per instance stay flat as a deployment grows? The same
//! backup of a deployment of `SMALL` instances (default 30) and of `LARGE` (default 300),
//! interleaved (small, large, small, large, ...; at least 5 pairs), each into a fresh
//! local-directory store, with the library's defaults (`max_in_flight` 10, zstd).
//!
//! ```text
//! cargo bench --bench scale                       30 against 300 instances, 5 pairs
//! LOCKSTEP_BENCH_SCALE=50,500 LOCKSTEP_BENCH_PAIRS=7 cargo bench --bench scale
//! ```
//!
//! The instances are local directories (`lockstep local`), each with one job whose lock,
//! backup and unlock scripts are real shell scripts and whose data is 64 KiB: what is
//! measured is the orchestration's own cost per instance (discovery, the run lock, levels,
//! owed unlocks, drains, commit), which is where anything worse than linear would show.
//! The SSH transport's per-connection cost is the drain benchmark's (`bench/drain.rs`).
//!
//! Printed: per side min/median/max of the wall time and of the time per instance, the
//! pairwise ratio of time per instance (large / small: 1.0 is flat, above is worse than
//! linear), and peak RSS (`VmHWM`, reset before each run) per side. Printed, never asserted.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it): 3 against 6 instances, 1 pair.

use lockstep::events::NoEvents;
use lockstep::model::InstanceId;
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::Ctx;
use lockstep::store::local::LocalStore;
use lockstep::target::LocalTarget;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn script(root: &Path, name: &str, body: &str) {
    let dir = root.join("var/vcap/jobs/app/bin/bbr");
    std::fs::create_dir_all(&dir).unwrap();
    // ROOT: the instance's `/`, six levels above the script (as the demo's scripts find it).
    let prelude = "ROOT=$(cd \"$(dirname \"$0\")/../../../../../..\" && pwd)";
    std::fs::write(dir.join(name), format!("#!/bin/sh\nset -e\n{prelude}\n{body}\n")).unwrap();
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `n` instances `app/0` .. `app/<n-1>`, each with the job `app` and 64 KiB of data.
fn deployment(base: &Path, n: usize) -> Vec<(InstanceId, String)> {
    (0..n)
        .map(|i| {
            let root = base.join(format!("app-{i}"));
            let data = root.join("var/vcap/store/app");
            std::fs::create_dir_all(&data).unwrap();
            let bytes: Vec<u8> = (0..64 * 1024u32).map(|b| (b.wrapping_mul(2654435761) >> 13) as u8 ^ i as u8).collect();
            std::fs::write(data.join("data.bin"), bytes).unwrap();
            script(&root, "pre-backup-lock", "mkdir -p \"$ROOT/var/vcap/data/app\"; touch \"$ROOT/var/vcap/data/app/locked\"");
            script(&root, "backup", "cp -a \"$ROOT/var/vcap/store/app/.\" \"$BBR_ARTIFACT_DIRECTORY\"");
            script(&root, "post-backup-unlock", "rm -f \"$ROOT/var/vcap/data/app/locked\"");
            (InstanceId::new("app", i.to_string()), root.to_string_lossy().into_owned())
        })
        .collect()
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// One backup; returns (seconds, peak RSS in MiB).
fn run(rt: &tokio::runtime::Runtime, instances: &[(InstanceId, String)], store_dir: &Path) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(store_dir);
    std::fs::create_dir_all(store_dir).unwrap();
    let target = LocalTarget::new("scale", instances.to_vec());
    let store = LocalStore::new(store_dir);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let start = Instant::now();
    let out = rt.block_on(async {
        let ctx = Ctx::new(Arc::new(NoEvents));
        backup(&ctx, &target, &store, &BackupOptions::default()).await
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(out.failures.is_empty(), "{}", out.failures.render());
    (secs, vm_hwm_kib() as f64 / 1024.0)
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (small, large) = match std::env::var("LOCKSTEP_BENCH_SCALE").ok().and_then(|v| {
        let (a, b) = v.split_once(',')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    }) {
        Some(pair) => pair,
        None if bench => (30usize, 300usize),
        None => (3, 6),
    };
    let pairs: usize = if bench { std::env::var("LOCKSTEP_BENCH_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1) } else { 1 };
    let tmp = tempfile::TempDir::new().unwrap();
    let a = deployment(&tmp.path().join("small"), small);
    let b = deployment(&tmp.path().join("large"), large);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("scale: {small} against {large} local instances, {pairs} interleaved pair(s), load {}", load());
    let (mut ta, mut tb, mut ra, mut rb, mut ratios) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..pairs {
        let (sa, ma) = run(&rt, &a, &tmp.path().join("store-small"));
        let (sb, mb) = run(&rt, &b, &tmp.path().join("store-large"));
        let ratio = (sb / large as f64) / (sa / small as f64);
        println!(
            "  pair {}: {small}: {sa:.2}s ({:.1} ms/instance, {ma:.0} MiB)   {large}: {sb:.2}s ({:.1} ms/instance, {mb:.0} MiB)   per-instance ratio {ratio:.2}",
            i + 1,
            sa * 1000.0 / small as f64,
            sb * 1000.0 / large as f64
        );
        ta.push(sa * 1000.0 / small as f64);
        tb.push(sb * 1000.0 / large as f64);
        ra.push(ma);
        rb.push(mb);
        ratios.push(ratio);
    }
    for (label, t, r) in [(small, &ta, &ra), (large, &tb, &rb)] {
        let (tmin, tmed, tmax) = stats(t);
        let (rmin, rmed, rmax) = stats(r);
        println!("  {label:>4} instances: ms/instance min {tmin:.1} median {tmed:.1} max {tmax:.1}; peak RSS MiB min {rmin:.0} median {rmed:.0} max {rmax:.0}");
    }
    let (lo, med, hi) = stats(&ratios);
    println!("  time per instance, {large} / {small}: min {lo:.2} median {med:.2} max {hi:.2} (1.00 = flat); load after {}", load());
}
