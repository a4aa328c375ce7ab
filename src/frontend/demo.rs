//! `lockstep demo`: a small deployment on this machine, backed up, listed, verified and
//! restored into a fresh copy, with the data compared at the end. Three instances stand
//! in for VMs; their BBR scripts hold real data and lock files:
//!
//! - `api/0`, job `cloud_controller`: an "API" that refuses writes while a lock file
//!   exists; locked first (`backup_should_be_locked_before` the stores).
//! - `blobstore/0`, job `blobstore`: blobs, including awkward names and a symlink.
//! - `db/0`, job `postgres`: a database dump.

use crate::artifact::stored;
use crate::orchestrate::backup::{backup, BackupOptions};
use crate::orchestrate::restore::{open_and_verify, restore};
use crate::orchestrate::Ctx;
use crate::frontend::report::{human_bytes, timings_table};
use crate::store::local::LocalStore;
use crate::target::LocalTarget;
use crate::model::InstanceId;
use anyhow::{bail, Context};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Finds the instance root from a script's own path: scripts live at
/// `ROOT/var/vcap/jobs/<job>/bin/bbr/<name>`, so ROOT is six levels up (`/` on a VM).
const PRELUDE: &str = "#!/bin/sh\nset -eu\nROOT=$(cd \"$(dirname \"$0\")/../../../../../..\" && pwd)\n[ \"$ROOT\" = / ] && ROOT=\n";

fn write_script(root: &Path, job: &str, name: &str, body: &str) -> anyhow::Result<()> {
    let dir = root.join("var/vcap/jobs").join(job).join("bin/bbr");
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    fs::write(&path, format!("{PRELUDE}{body}"))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The BBR scripts of one demo job: the lock file is `ROOT/var/vcap/data/<job>/locked`, the
/// data `ROOT/var/vcap/store/<job>/`, and backup/restore copy it with `cp -a`.
fn install_job(root: &Path, job: &str, locked_before: &[&str]) -> anyhow::Result<()> {
    let mut meta = String::new();
    if !locked_before.is_empty() {
        meta.push_str("backup_should_be_locked_before:\n");
        for j in locked_before {
            meta.push_str(&format!("- job_name: {j}\n  release: demo\n"));
        }
    }
    write_script(root, job, "metadata", &format!("cat <<'YAML'\n{meta}YAML\n"))?;
    let lock = format!("$ROOT/var/vcap/data/{job}/locked");
    let data = format!("$ROOT/var/vcap/store/{job}");
    write_script(root, job, "pre-backup-lock", &format!("mkdir -p \"$(dirname \"{lock}\")\"\ndate +%s.%N > \"{lock}\"\n"))?;
    write_script(root, job, "backup", &format!("cp -a \"{data}/.\" \"$BBR_ARTIFACT_DIRECTORY\"\n"))?;
    write_script(root, job, "post-backup-unlock", &format!("rm -f \"{lock}\"\n"))?;
    write_script(root, job, "pre-restore-lock", &format!("mkdir -p \"$(dirname \"{lock}\")\"\ntouch \"{lock}\"\n"))?;
    write_script(
        root,
        job,
        "restore",
        &format!("rm -rf \"{data}\"\nmkdir -p \"{data}\"\ncp -a \"$BBR_ARTIFACT_DIRECTORY/.\" \"{data}/\"\n"),
    )?;
    write_script(root, job, "post-restore-unlock", &format!("rm -f \"{lock}\"\n"))?;
    Ok(())
}

/// Creates the demo's three instances under `base/<name>/`; with `data`, fills them.
pub fn create_deployment(base: &Path, data: bool) -> anyhow::Result<Vec<(InstanceId, String)>> {
    let specs = [("api", "cloud_controller", vec!["blobstore", "postgres"]), ("blobstore", "blobstore", vec![]), ("db", "postgres", vec![])];
    let mut out = Vec::new();
    for (group, job, before) in specs {
        let root = base.join(format!("{group}-0"));
        install_job(&root, job, &before)?;
        let store = root.join("var/vcap/store").join(job);
        fs::create_dir_all(&store)?;
        if data {
            match job {
                "cloud_controller" => fs::write(store.join("config.yml"), "apps: [dora, spring-music]\n")?,
                "blobstore" => {
                    fs::create_dir_all(store.join("droplets/ab"))?;
                    fs::create_dir_all(store.join("empty-dir"))?;
                    fs::write(store.join("droplets/ab/droplet one.tgz"), vec![7u8; 300_000])?;
                    fs::write(store.join("droplets/ab/new\nline"), b"odd name")?;
                    fs::write(store.join("private.key"), b"secret")?;
                    fs::set_permissions(store.join("private.key"), fs::Permissions::from_mode(0o700))?;
                    std::os::unix::fs::symlink("droplets/ab/droplet one.tgz", store.join("latest"))?;
                }
                _ => fs::write(store.join("dump.sql"), "INSERT INTO apps VALUES ('dora', 'ab');\n".repeat(2000))?,
            }
        }
        out.push((InstanceId::new(group, "0"), root.to_string_lossy().into_owned()));
    }
    Ok(out)
}

/// Lists every path under `dir` with its type, mode and content, for comparison.
pub fn snapshot(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p)?;
            let desc = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p)?.display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.permissions().mode() & 0o777)
            } else {
                use sha2::Digest;
                format!("file {:o} {}", m.permissions().mode() & 0o777, hex::encode(sha2::Sha256::digest(fs::read(&p)?)))
            };
            out.push((rel, desc));
        }
    }
    out.sort();
    Ok(out)
}

pub async fn run(ctx: &Ctx, dir: Option<PathBuf>) -> anyhow::Result<i32> {
    match dir {
        Some(d) => {
            if d.exists() && fs::read_dir(&d)?.next().is_some() {
                bail!("{} is not empty: give an empty or new directory", d.display());
            }
            fs::create_dir_all(&d)?;
            let base = std::path::absolute(d)?;
            ctx.info(format!("Demo directory: {} (kept)", base.display()));
            run_in(ctx, &base).await
        }
        None => {
            // A new directory of our own: create_dir fails on anything already there,
            // a planted symlink included, and the name is not guessable in advance.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let base = std::env::temp_dir().join(format!("lockstep-demo-{}-{nanos:09}", std::process::id()));
            fs::create_dir(&base).with_context(|| format!("creating the demo directory {}", base.display()))?;
            ctx.info(format!("Demo directory: {} (removed at the end; give --dir DIR to keep one)", base.display()));
            let out = run_in(ctx, &base).await;
            match &out {
                Ok(0) => match fs::remove_dir_all(&base) {
                    Ok(()) => ctx.info(format!("Removed the demo directory {}", base.display())),
                    Err(e) => ctx.warn(format!("could not remove the demo directory {}: {e}", base.display())),
                },
                _ => ctx.info(format!(
                    "Kept the demo directory {} to look into what failed; remove it with: rm -rf {}",
                    base.display(),
                    crate::transport::quote::quote(&base.display().to_string())
                )),
            }
            out
        }
    }
}

/// The demo in `base`, an empty directory.
async fn run_in(ctx: &Ctx, base: &Path) -> anyhow::Result<i32> {
    let source = create_deployment(&base.join("deployment"), true)?;
    let fresh = create_deployment(&base.join("fresh"), false)?;
    let store_dir = base.join("backups");
    fs::create_dir_all(&store_dir)?;
    let store = LocalStore::new(&store_dir);

    ctx.info("1/4 Backing up the demo deployment (api locks before the stores)");
    let out = backup(ctx, &LocalTarget::new("demo", source.clone()), &store, &BackupOptions::default()).await;
    eprint!("{}", timings_table(&out.timings));
    let Some(name) = out.artifact else {
        eprint!("{}", out.failures.render());
        return Ok(out.failures.exit_code().max(1));
    };

    ctx.info("2/4 Listing committed artifacts");
    for n in stored::list(&store).await? {
        let art = stored::open(&store, &n, false).await?;
        let size = art.marker.as_ref().map(|m| m.total_size()).unwrap_or(0);
        ctx.info(format!("  {n}  {}", human_bytes(size)));
    }

    ctx.info("3/4 Verifying every file against the metadata");
    open_and_verify(ctx, &store, &name, false).await?;

    ctx.info("4/4 Restoring into a fresh copy of the deployment");
    let r = restore(ctx, &LocalTarget::new("demo", fresh.clone()), &store, &name, false).await;
    if !r.failures.is_empty() {
        eprint!("{}", r.failures.render());
        return Ok(r.failures.exit_code());
    }
    let mut all_match = true;
    for ((id, src), (_, dst)) in source.iter().zip(&fresh) {
        let a = snapshot(&Path::new(src).join("var/vcap/store")).context("reading the original data")?;
        let b = snapshot(&Path::new(dst).join("var/vcap/store")).context("reading the restored data")?;
        let same = a == b;
        all_match &= same;
        ctx.info(format!("  {id}: {} paths, {}", a.len(), if same { "restored data matches" } else { "MISMATCH" }));
    }
    if !all_match {
        bail!("the restored data differs from the original");
    }
    ctx.info(format!("Demo complete. Artifact: {}", store_dir.join(&name).display()));
    Ok(0)
}
