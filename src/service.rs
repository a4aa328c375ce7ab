//! Operations driven by a [`Config`]: what `lockstep run ACTION` (the tasks) and the
//! Concourse resource (`check`, `in`, `out`) both do. Each is a thin composition of the
//! orchestration, the store and the retention module; none prints to stdout.

use crate::artifact::stored::{self, StoredArtifact};
use crate::artifact::{parse_artifact_name, CommitMarker};
use crate::store::codec::Codec;
use crate::config::Config;
use crate::model::Direction;
use crate::orchestrate::backup::{backup, BackupOptions, BackupOutcome};
use crate::orchestrate::cleanup::cleanup;
use crate::orchestrate::precheck::pre_backup_check;
use crate::orchestrate::restore::{open_and_verify_with, restore_with, RestoreOptions, RestoreOutcome};
use crate::orchestrate::{Ctx, Failures, Timings};
use crate::retention::{self, Plan, Pruned};
use crate::store::local::LocalStore;
use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;
use std::path::Path;

pub mod platform;

/// Applies the configuration's tuning to a context.
pub fn tune(ctx: &mut Ctx, cfg: &Config) {
    if let Some(n) = cfg.max_in_flight {
        ctx.max_in_flight = n;
    }
}

pub async fn run_backup(ctx: &Ctx, cfg: &Config, unsafe_lock_free: bool, origin: BTreeMap<String, String>) -> anyhow::Result<BackupOutcome> {
    let target = cfg.open_target().await?;
    let store = cfg.open_store()?;
    let opts = BackupOptions { unsafe_lock_free, origin, manifest: None, codec: cfg.codec(), max_lock_window: cfg.max_lock_window };
    let mut out = backup(ctx, target.as_ref(), store.as_ref(), &opts).await;
    release(target.as_ref(), &mut out.failures).await;
    Ok(out)
}

/// Restores artifact `name` from the configured store.
/// `drill`: see [`RestoreOptions::drill`].
pub async fn restore_from_store(ctx: &Ctx, cfg: &Config, name: &str, drill: bool) -> anyhow::Result<RestoreOutcome> {
    let target = cfg.open_target().await?;
    let store = cfg.open_store()?;
    let opts = RestoreOptions { accept_bbr: false, identities: cfg.identities()?, drill };
    let mut out = restore_with(ctx, target.as_ref(), store.as_ref(), name, &opts).await;
    release(target.as_ref(), &mut out.failures).await;
    Ok(out)
}

/// Restores a local artifact directory (fetched by `get`, or made by bbr).
pub async fn restore_from_dir(ctx: &Ctx, cfg: &Config, dir: &Path, drill: bool) -> anyhow::Result<RestoreOutcome> {
    let target = cfg.open_target().await?;
    let (store, name) = split_artifact_path(dir)?;
    let opts = RestoreOptions { accept_bbr: true, identities: cfg.identities()?, drill };
    let mut out = restore_with(ctx, target.as_ref(), &store, &name, &opts).await;
    release(target.as_ref(), &mut out.failures).await;
    Ok(out)
}

pub async fn run_cleanup(ctx: &Ctx, cfg: &Config, dir: Direction) -> anyhow::Result<(Failures, Timings)> {
    let target = cfg.open_target().await?;
    let (mut failures, timings) = cleanup(ctx, target.as_ref(), dir).await;
    release(target.as_ref(), &mut failures).await;
    if dir == Direction::Backup {
        abort_left_uploads(ctx, cfg).await;
    }
    Ok((failures, timings))
}

/// After a backup was stopped: the multipart uploads its run could not abort (killed) are
/// aborted now, and counted. A store that cannot be reached is a warning: the instances'
/// cleanup, which matters more, is done.
async fn abort_left_uploads(ctx: &Ctx, cfg: &Config) {
    let aborted = async { retention::abort_open_uploads(cfg.open_store()?.as_ref(), cfg.deployment_name(), chrono::Utc::now()).await };
    match aborted.await {
        Ok(0) => {}
        Ok(n) => ctx.info(format!("Aborted {n} multipart upload(s) a stopped backup left open in {}", cfg.store.describe())),
        Err(e) => ctx.warn(format!("could not look for multipart uploads a stopped backup left open in {}: {e:#}", cfg.store.describe())),
    }
}

/// The target's deployment name and instances (`{"deployment": .., "instances": [{"id",
/// "address"}]}`): what a drill's smoke check is given, never a secret.
pub async fn describe_target(cfg: &Config) -> anyhow::Result<serde_json::Value> {
    let target = cfg.open_target().await?;
    let instances = target.instances().await;
    let mut failures = Failures::default();
    release(target.as_ref(), &mut failures).await;
    let instances: Vec<serde_json::Value> =
        instances?.iter().map(|i| serde_json::json!({"id": i.id().to_string(), "address": i.address()})).collect();
    Ok(serde_json::json!({"deployment": target.deployment_name(), "instances": instances}))
}

pub async fn run_pre_backup_check(ctx: &Ctx, cfg: &Config) -> anyhow::Result<(Failures, Timings)> {
    let target = cfg.open_target().await?;
    let (mut failures, timings) = pre_backup_check(ctx, target.as_ref()).await;
    release(target.as_ref(), &mut failures).await;
    Ok((failures, timings))
}

/// Gives back what the target acquired (BOSH's temporary SSH users); a failure is a cleanup
/// failure (bit 16), as bbr counts a failed SSH-user cleanup.
async fn release(target: &dyn crate::target::Target, failures: &mut Failures) {
    if let Err(e) = target.release().await {
        failures.push(crate::orchestrate::FailureKind::Cleanup, e.context("cleaning up the temporary SSH users"));
    }
}

/// Committed artifacts of the configured deployment (all deployments without a target),
/// oldest first.
/// The deployment's committed artifacts, oldest first, and the store's warnings (a primary
/// store that could not be listed, so a replica answered), for the caller to show.
pub async fn committed(cfg: &Config) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let store = cfg.open_store()?;
    let names = stored::list(store.as_ref()).await?;
    let names = match cfg.deployment_name() {
        Some(d) => names.into_iter().filter(|n| parse_artifact_name(n).is_some_and(|(dep, _)| dep == d)).collect(),
        None => names,
    };
    Ok((names, store.warnings()))
}

/// Opens a committed artifact's marker and metadata.
pub async fn describe(cfg: &Config, name: &str) -> anyhow::Result<StoredArtifact> {
    let store = cfg.open_store()?;
    stored::open(store.as_ref(), name, false).await.map_err(|e| {
        if format!("{e:#}").contains("does not exist") {
            anyhow!("artifact {name} no longer exists in {} (pruned or deleted?)", cfg.store.describe())
        } else {
            e
        }
    })
}

/// Re-hashes every file of an artifact against its metadata.
pub async fn verify(ctx: &Ctx, cfg: &Config, name: &str) -> anyhow::Result<StoredArtifact> {
    let store = cfg.open_store()?;
    open_and_verify_with(ctx, store.as_ref(), name, false, &cfg.identities()?).await
}

/// Brings artifact `name` into `dir` itself (not a subdirectory) as a plain bbr artifact
/// directory: decrypted, decompressed, every file re-hashed against `metadata`.
pub async fn fetch_into(cfg: &Config, name: &str, dir: &Path) -> anyhow::Result<CommitMarker> {
    let store = cfg.open_store()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Fetch into a private staging root beside the final files, then move them up: a
    // failed fetch leaves nothing that looks like an artifact.
    let staging = dir.join(".lockstep-fetch");
    let _ = std::fs::remove_dir_all(&staging);
    let dest = LocalStore::new(&staging);
    let result = stored::fetch(store.as_ref(), name, &dest, &cfg.identities()?).await;
    let marker = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let fetched = staging.join(name);
    for entry in std::fs::read_dir(&fetched).with_context(|| format!("reading {}", fetched.display()))? {
        let entry = entry?;
        std::fs::rename(entry.path(), dir.join(entry.file_name()))?;
    }
    std::fs::remove_dir_all(&staging)?;
    Ok(marker)
}

/// Plans retention with the configured policy; deletes unless `dry_run`.
pub async fn prune(cfg: &Config, dry_run: bool) -> anyhow::Result<(Plan, Option<Pruned>)> {
    let policy = cfg
        .retention
        .clone()
        .ok_or_else(|| anyhow!("no retention policy: add `retention:` (keep_last, keep_daily, ...) to the configuration"))?;
    let store = cfg.open_store()?;
    let plan = retention::plan(store.as_ref(), &policy, cfg.deployment_name(), chrono::Utc::now()).await?;
    if dry_run {
        return Ok((plan, None));
    }
    let done = retention::execute(store.as_ref(), &plan).await;
    Ok((plan, Some(done)))
}

/// The codec an artifact was written with, for metadata.
pub fn codec_of(marker: &CommitMarker) -> String {
    let codec = Codec::from_recorded(&marker.compression, marker.encryption.as_ref()).unwrap_or_default();
    format!("{}{}", codec.compression.name(), if codec.encrypted() { " + age" } else { "" })
}

/// What the configuration's versions are, oldest first, with the store's warnings: with
/// `opsman:` the complete platform records, else the committed artifacts.
pub async fn versions(cfg: &Config) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    match cfg.opsman {
        Some(_) => platform::complete_records(cfg).await,
        None => committed(cfg).await,
    }
}

/// The newest version (see [`versions`]), for actions that default to it.
pub async fn newest(cfg: &Config) -> anyhow::Result<String> {
    versions(cfg).await?.0.pop().ok_or_else(|| {
        anyhow!("no committed artifact in {}{}", cfg.store.describe(), cfg.deployment_name().map(|d| format!(" for {d}")).unwrap_or_default())
    })
}

/// Fails with the rendered failures when there are any.
pub fn ensure_ok(failures: &Failures, what: &str) -> anyhow::Result<()> {
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{what} failed (exit bits {}):\n{}", failures.exit_code(), failures.render())
    }
}

/// `--artifact-path DIR/NAME` for restore and verify: the store is DIR, the artifact NAME.
pub fn split_artifact_path(path: &Path) -> anyhow::Result<(LocalStore, String)> {
    let mut abs = std::path::absolute(path).with_context(|| format!("artifact path {}", path.display()))?;
    // The path the operator gives (or Concourse's input, a link to a get's output) is theirs
    // to choose: resolved once here. Symlinks inside the artifact are never followed.
    if std::fs::symlink_metadata(&abs).is_ok_and(|m| m.file_type().is_symlink()) {
        abs = std::fs::canonicalize(&abs).with_context(|| format!("resolving the artifact path {}", path.display()))?;
    }
    if !abs.is_dir() {
        bail!("Could not open backup: {} is not a directory", path.display());
    }
    let name = abs.file_name().context("artifact path has no final component")?.to_string_lossy().into_owned();
    let parent = abs.parent().context("artifact path has no parent")?;
    Ok((LocalStore::new(parent), name))
}

/// Concourse build variables, when running in a build, so an artifact can be traced.
pub fn build_origin() -> std::collections::BTreeMap<String, String> {
    ["BUILD_PIPELINE_NAME", "BUILD_JOB_NAME", "BUILD_NAME", "BUILD_TEAM_NAME", "ATC_EXTERNAL_URL"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}
