//! `restore`: check the artifact, check the topology, stream each tar into its instance's
//! staging directory while verifying it, then lock, restore and unlock in bbr's order.
//!
//! ```text
//! open + listing -> discover -> checks -> upload (each byte read once, verified as it
//!        passes) -> pre-restore-lock (levels, serial)
//!        -> restore (serial, stops at the first failing instance)
//!        -> post-restore-unlock (levels reversed, always after a lock was attempted) -> cleanup
//! ```
//!
//! Each stored byte is read once. bbr (and lockstep before) read the whole artifact to
//! verify it, then again to send it: for a large blobstore that doubles the restore's
//! time. Here what needs no reading (the metadata, every object present with its recorded
//! size) is checked before any instance is touched; the sha256 of every stored object is
//! checked as its bytes stream into the staging directories (with the tar's structure),
//! every file's is checked on the instance once extracted (bbr's check; a bbr-made
//! artifact, which records no object hash, is also hashed file by file as it streams),
//! and no lock or restore script runs until every artifact has arrived intact. On a
//! mismatch the staged copies are removed and nothing is locked.

use super::levels::{lock_in_order, record, unlock_in_reverse, Within};
use super::discover::{discover, Deployment};
use super::{artifact_env, bounded, cancellable, remove_staging, run_env, script, Cancelled, Ctx, FailureKind, Failures, Timings};
use crate::artifact::stored::{self, compare_checksums, ArtifactEntry, StoredArtifact};
use crate::artifact::tar_hash::HashingReader;
use crate::store::codec::Identities;
use crate::events::{Event, Phase};
use crate::instance::InstanceRef;
use crate::model::{Direction, Job, ScriptKind};
use crate::store::Store;
use crate::target::Target;
use anyhow::anyhow;
use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct RestoreOutcome {
    pub failures: Failures,
    pub timings: Timings,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Accept an artifact without lockstep's commit marker (one made by `bbr`), named
    /// explicitly by the operator.
    pub accept_bbr: bool,
    /// age identities for an encrypted artifact.
    pub identities: Identities,
    /// A restore drill: the target is a scratch deployment, and restoring onto the
    /// deployment the backup was taken from is refused before anything is touched.
    pub drill: bool,
}

/// Restores artifact `name` from `store` onto `target`. `accept_bbr` accepts an artifact
/// without lockstep's commit marker (one made by `bbr`), named explicitly by the operator.
pub async fn restore(ctx: &Ctx, target: &dyn Target, store: &dyn Store, name: &str, accept_bbr: bool) -> RestoreOutcome {
    restore_with(ctx, target, store, name, &RestoreOptions { accept_bbr, ..Default::default() }).await
}

/// [`restore`], with identities for an encrypted artifact.
pub async fn restore_with(ctx: &Ctx, target: &dyn Target, store: &dyn Store, name: &str, opts: &RestoreOptions) -> RestoreOutcome {
    let mut out = RestoreOutcome::default();
    let ids = &opts.identities;
    // 1. What can be checked without reading the tars, before any instance is touched.
    let art = match out.timings.phase(ctx, Phase::Verify, open_and_check(ctx, store, name, opts.accept_bbr, ids)).await {
        Ok(a) => a,
        Err(e) => {
            out.failures.push(FailureKind::General, e);
            return out;
        }
    };
    if opts.drill
        && let Err(e) = drill_target_check(ctx, target, &art)
    {
        out.failures.push(FailureKind::General, e);
        return out;
    }
    let dep = match out.timings.phase(ctx, Phase::Discover, discover(ctx, target)).await {
        Ok(d) => d,
        Err(e) => {
            out.failures.push(FailureKind::General, e);
            return out;
        }
    };
    let checks = out.timings.phase(ctx, Phase::Check, restorable_checks(ctx, &dep, &art)).await;
    if !checks.is_empty() {
        out.failures.extend(checks);
        return out;
    }
    let dep = &dep;
    let levels = dep.lock_levels(Direction::Restore).expect("checked above");
    // One run at a time: claim every instance before anything is sent or locked.
    let run = super::run_lock::RunRecord::new(Direction::Restore);
    let claimed = match super::run_lock::claim(ctx, dep, &run, Direction::Restore).await {
        Ok(c) => c,
        Err(refused) => {
            out.failures.extend(refused);
            return out;
        }
    };

    // 2. Stream every artifact into its instance(s)' staging directory, verifying it.
    let uploads = upload_plan(&dep, &art);
    let errors = out
        .timings
        .phase(ctx, Phase::Upload, bounded(ctx.max_in_flight, uploads, |(i, entry)| {
            let inst = &dep.instances[i].instance;
            let art = &art;
            async move { cancellable(ctx, upload_one(ctx, store, art, inst, entry, ids)).await }
        }))
        .await;
    let mut upload_ok = true;
    for e in errors.into_iter().filter_map(Result::err) {
        upload_ok = false;
        let kind = if e.is::<Cancelled>() { FailureKind::Cancelled } else { FailureKind::General };
        out.failures.push(kind, e);
    }

    // 3. Lock, restore, unlock. bbr runs these one at a time; so do we.
    if upload_ok && !ctx.cancelled() {
        let (locked_levels, errors) =
            out.timings.phase(ctx, Phase::Lock, lock_in_order(ctx, &run.run, dep, &levels, ScriptKind::PreRestoreLock, Within::Serial)).await;
        // bbr wraps a pre-restore-lock failure as a plain error (bit 1), not a lock error.
        let errors = errors.into_iter().map(|e| if e.is::<Cancelled>() { e } else { anyhow!("pre-restore-lock failed: {e:#}") }).collect();
        record(&mut out.failures, FailureKind::General, errors);
        if out.failures.is_empty() && !ctx.cancelled() {
            let errors = out.timings.phase(ctx, Phase::Restore, restore_scripts(ctx, &run.run, dep, &art)).await;
            record(&mut out.failures, FailureKind::General, errors);
        }
        let errors = out
            .timings
            .phase(ctx, Phase::Unlock, unlock_in_reverse(ctx, &run.run, dep, &levels[..locked_levels], ScriptKind::PostRestoreUnlock, &[], Within::Serial))
            .await;
        record(&mut out.failures, FailureKind::Unlock, errors);
    }

    // 4. Cleanup: remove (and so release) every staging directory this run claimed.
    remove_staging(ctx, &mut out.timings, claimed, FailureKind::Cleanup, &mut out.failures).await;
    if ctx.cancelled() && !out.failures.has(FailureKind::Cancelled) {
        out.failures.push(FailureKind::Cancelled, Cancelled.into());
    }
    out
}

/// A drill restores into a scratch deployment. Pointing it at the deployment the backup
/// came from (a copy-pasted configuration) would overwrite production with yesterday's
/// state, so the two locations are compared first.
fn drill_target_check(ctx: &Ctx, target: &dyn Target, art: &StoredArtifact) -> anyhow::Result<()> {
    let from = art.marker.as_ref().and_then(|m| m.taken_from.as_deref());
    match (from, target.location()) {
        (Some(from), Some(here)) if from == here => anyhow::bail!(
            "refusing the restore drill: its target is where {} was taken from ({here}). A drill restores into a \
             scratch deployment: point DRILL_CONFIG's target at one",
            art.name
        ),
        (Some(from), Some(here)) => {
            ctx.info(format!("Drill: restoring into {here} (the backup was taken from {from})"));
            Ok(())
        }
        _ => {
            ctx.warn(format!(
                "Drill: cannot tell whether the drill's target is the deployment {} was taken from (no taken_from recorded): \
                 make sure DRILL_CONFIG names a scratch deployment",
                art.name
            ));
            Ok(())
        }
    }
}

/// Opens the artifact and re-hashes every file against its metadata.
pub async fn open_and_verify(ctx: &Ctx, store: &dyn Store, name: &str, accept_bbr: bool) -> anyhow::Result<StoredArtifact> {
    open_and_verify_with(ctx, store, name, accept_bbr, &Identities::none()).await
}

/// [`open_and_verify`], decrypting with `ids` when the artifact is encrypted.
pub async fn open_and_verify_with(
    ctx: &Ctx,
    store: &dyn Store,
    name: &str,
    accept_bbr: bool,
    ids: &Identities,
) -> anyhow::Result<StoredArtifact> {
    let art = open_readable(ctx, store, name, accept_bbr, ids).await?;
    let problems = stored::verify_with(store, &art, ids).await;
    if !problems.is_empty() {
        anyhow::bail!("Backup is corrupted: {} problem(s) in {name}:\n  {}", problems.len(), problems.join("\n  "));
    }
    ctx.info(format!("Verified every file of {name} against its metadata"));
    Ok(art)
}

/// What a restore checks before touching an instance, without reading the tars: the
/// artifact opens (metadata, commit marker), can be decrypted, and every object is in the
/// store with the size `lockstep.json` recorded. The bytes are verified as they stream.
pub async fn open_and_check(ctx: &Ctx, store: &dyn Store, name: &str, accept_bbr: bool, ids: &Identities) -> anyhow::Result<StoredArtifact> {
    let art = open_readable(ctx, store, name, accept_bbr, ids).await?;
    let problems = stored::check_listing(store, &art).await?;
    if !problems.is_empty() {
        anyhow::bail!("Backup is corrupted: {} problem(s) in {name}:\n  {}", problems.len(), problems.join("\n  "));
    }
    ctx.info(format!(
        "Every object of {name} is in the store; each file is verified against the metadata as it streams, before any restore script runs"
    ));
    Ok(art)
}

/// Opens an artifact that these identities can read, warning of what the operator should
/// know (made by bbr, taken lock-free).
async fn open_readable(ctx: &Ctx, store: &dyn Store, name: &str, accept_bbr: bool, ids: &Identities) -> anyhow::Result<StoredArtifact> {
    let art = stored::open(store, name, accept_bbr).await?;
    if art.codec.encrypted() && ids.is_empty() {
        anyhow::bail!(
            "artifact {name} is encrypted (age, to {}): give --identity FILE with the matching age identity",
            art.codec.recipients.join(", ")
        );
    }
    if art.marker.is_none() {
        ctx.warn(format!("{name} has no lockstep.json: treating it as an artifact made by bbr"));
    } else if art.marker.as_ref().is_some_and(|m| m.lock_free) {
        ctx.warn(format!("{name} was taken with --unsafe-lock-free: it may be inconsistent"));
    }
    if art.entries().is_empty() {
        anyhow::bail!("Backup is corrupted: artifact {name} lists no backed-up jobs in its metadata");
    }
    Ok(art)
}

/// bbr's "Restorable" checks (`restorable_step.go`), in its order, plus one bbr lacks:
///
/// - a `restore_name`/`backup_name` on any job of an instance that restores refuses;
/// - a deployment with no restore script refuses;
/// - every instance the backup's metadata lists must exist in the deployment (group and
///   index, as bbr's `DeploymentMatches`);
/// - [lockstep] every restorable job must have an artifact in the backup. bbr found a
///   missing one only when its upload failed; a restore script that empties its data before
///   loading the artifact must never run against nothing, so this refuses before any lock.
///
/// An artifact no job takes (no restore script, job gone or disabled, a custom artifact
/// nobody restores) is not an error, as in bbr: it is left unrestored with a warning.
async fn restorable_checks(ctx: &Ctx, dep: &Deployment, art: &StoredArtifact) -> Failures {
    let mut failures = Failures::default();
    let restoring = |d: &&super::discover::DeployedInstance| d.jobs.iter().any(|j| j.restorable());
    let groups: BTreeSet<&str> = dep
        .instances
        .iter()
        .filter(restoring)
        .filter(|d| d.jobs.iter().any(|j| j.metadata.discontinued_restore_name))
        .map(|d| d.id().group.as_str())
        .collect();
    for g in groups {
        failures.push(
            FailureKind::General,
            anyhow!("discontinued metadata keys backup_name/restore_name found on instance {g}. bbr cannot restore this backup artifact."),
        );
    }
    if dep.jobs_where(|j| j.restorable()).is_empty() {
        failures.push(FailureKind::General, anyhow!("Deployment '{}' has no restore scripts", dep.name));
    }
    let absent: Vec<String> = art
        .metadata
        .instances
        .iter()
        .filter(|m| !dep.instances.iter().any(|d| d.id().group == m.name && d.id().index == m.index))
        .map(|m| format!("instance {}/{} is in the backup but not in the deployment", m.name, m.index))
        .collect();
    if !absent.is_empty() {
        failures.push(
            FailureKind::General,
            anyhow!("Deployment '{}' does not match the structure of the provided backup:\n  {}", dep.name, absent.join("\n  ")),
        );
    }
    let mut missing = Vec::new();
    for d in &dep.instances {
        for j in d.jobs.iter().filter(|j| j.restorable()) {
            let source = restore_source(j, art);
            let present = if source == j.artifact_name() {
                art.entries().iter().any(|e| e.name == source && e.instance.as_ref().is_some_and(|(g, i)| g == &d.id().group && i == &d.id().index))
            } else {
                art.metadata.custom_artifacts.iter().any(|c| c.name == source)
            };
            if !present {
                missing.push(format!("job {} on {} (no artifact {source})", j.name, d.id()));
            }
        }
    }
    if !missing.is_empty() {
        failures.push(
            FailureKind::General,
            anyhow!(
                "Deployment '{}' cannot be restored from this backup: these jobs have a restore script but no artifact in \
                 it (added or scaled out since the backup?), and their restore scripts would run with nothing to restore:\n  {}",
                dep.name,
                missing.join("\n  ")
            ),
        );
    }
    if failures.is_empty() {
        let plan = upload_plan(dep, art);
        for entry in art.entries() {
            if !plan.iter().any(|(_, e)| e.name == entry.name && e.instance == entry.instance) {
                let why = match &entry.instance {
                    None => "no job in the deployment restores this custom artifact".to_string(),
                    Some((g, i)) => {
                        let on = dep.instances.iter().find(|d| &d.id().group == g && &d.id().index == i);
                        match on.and_then(|d| d.jobs.iter().find(|j| j.name == entry.name)) {
                            Some(_) => format!("job {} on {g}/{i} has no restore script", entry.name),
                            None => format!("job {} is not on {g}/{i} (removed, or disabled with skip_bbr_scripts)", entry.name),
                        }
                    }
                };
                ctx.warn(format!("{} will not be restored: {why}", entry.file));
            }
        }
    }
    failures.extend(super::backup::artifact_dir_checks(ctx, dep, Direction::Restore).await);
    if let Err(c) = dep.lock_levels(Direction::Restore) {
        failures.push(FailureKind::General, c.into());
    }
    failures
}

/// The artifact a restorable job restores from, which is also its directory under
/// `/var/vcap/store/bbr-backup/`: bbr's custom artifact when the manifest makes the job
/// `backup_one_restore_all` or the backup holds one for it (a bbr artifact restored
/// without a manifest); its own otherwise.
fn restore_source(job: &Job, art: &StoredArtifact) -> String {
    if let Some(custom) = job.one_restore_all_name() {
        return custom;
    }
    match art.metadata.custom_artifacts.iter().find(|c| job.takes_custom_artifact(&c.name)) {
        Some(c) => c.name.clone(),
        None => job.artifact_name().to_string(),
    }
}

/// Which artifact goes to which instance: a job's own artifact to its instance; a custom
/// (`backup_one_restore_all`) artifact to every instance whose restorable job takes it,
/// and then not that job's own artifact (bbr sends only the custom one).
fn upload_plan(dep: &Deployment, art: &StoredArtifact) -> Vec<(usize, ArtifactEntry)> {
    let mut plan = Vec::new();
    for entry in art.entries() {
        match &entry.instance {
            Some((g, i)) => {
                let Some(pos) = dep.instances.iter().position(|d| &d.id().group == g && &d.id().index == i) else { continue };
                let takes_own = dep.instances[pos]
                    .jobs
                    .iter()
                    .any(|j| j.restorable() && j.name == entry.name && restore_source(j, art) == entry.name);
                if takes_own {
                    plan.push((pos, entry));
                }
            }
            None => {
                for (pos, d) in dep.instances.iter().enumerate() {
                    if d.jobs.iter().any(|j| j.restorable() && restore_source(j, art) == entry.name) {
                        plan.push((pos, entry.clone()));
                    }
                }
            }
        }
    }
    plan
}

async fn upload_one(
    ctx: &Ctx,
    store: &dyn Store,
    art: &StoredArtifact,
    inst: &InstanceRef,
    entry: ArtifactEntry,
    ids: &Identities,
) -> anyhow::Result<()> {
    let id = inst.id().clone();
    let key = format!("{}/{}", art.name, entry.stored);
    let size = art.marker.as_ref().and_then(|m| m.objects.get(&entry.stored)).map(|o| o.size).unwrap_or(0);
    ctx.events.emit(Event::TransferStarted { instance: id.clone(), job: entry.name.clone(), size });
    let start = Instant::now();
    let (reader, meter) = stored::open_decoded(store, &key, &art.codec, ids).await?;
    // When lockstep.json records the stored object, its sha256 (checked here) and the
    // instance's re-hash of every file it extracted (checked against the metadata, before
    // any lock) cover every byte: hashing each file here too would be a third SHA-256 pass
    // on the restore's two busiest cores for nothing. The tar's structure is still checked
    // as it passes, so bytes that are no valid tar are still a corrupt backup. A bbr-made
    // artifact records no object hash: its files are hashed here as well.
    let object_hashed = art.marker.as_ref().is_some_and(|m| m.objects.contains_key(&entry.stored));
    let mut hashing = if object_hashed { HashingReader::structure_only(reader) } else { HashingReader::new(reader) };
    // The instance extracts, then checksums what it extracted, in one command.
    let received = inst.receive_and_checksum(&entry.name, &mut hashing).await;
    let (reader, hasher) = hashing.into_parts();
    // The decoder's end leaves the stored object's size and sha256 in the meter.
    drop(reader);
    let bytes = hasher.bytes_seen();
    let corrupt = |e: &dyn std::fmt::Display| anyhow!("Backup is corrupted: {} ({}): {e}", entry.stored, entry.name);
    // Bytes that are no valid tar are a corrupt backup, whatever the instance made of them;
    // any other failure (the store, the decoder, the instance) is reported as it is.
    if let Some(e) = hasher.failure() {
        return Err(corrupt(&e));
    }
    let remote = received?;
    let sent = hasher.finish().map_err(|e| corrupt(&e))?;
    // What was read must be what the backup recorded, object by object and file by file;
    // where the files were not hashed here, a changed object is detailed with the files
    // the instance found changed.
    let (size, sha) = meter.totals();
    let mut problems: Vec<String> = stored::object_problem(art, &entry.stored, size, &sha).into_iter().collect();
    let files = if !object_hashed { Some(&sent) } else { (!problems.is_empty()).then_some(&remote) };
    if let Some(files) = files {
        problems.extend(compare_checksums(&entry.checksums, files).into_iter().map(|p| format!("{} ({}): {p}", entry.stored, entry.name)));
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "Backup is corrupted: {} problem(s) in {} sent to {id}; nothing was locked and the staged copies are removed:\n  {}",
            problems.len(),
            art.name,
            problems.join("\n  ")
        );
    }
    // What the instance now holds must be what the backup recorded.
    let problems = compare_checksums(&entry.checksums, &remote);
    if !problems.is_empty() {
        anyhow::bail!(
            "Backup couldn't be transferred, checksum failed for {id} {} (on the instance) - checksums don't match for [{}]. Checksum failed for {} files in total",
            entry.name,
            problems.iter().take(10).cloned().collect::<Vec<_>>().join("; "),
            problems.len()
        );
    }
    ctx.events.emit(Event::TransferFinished { instance: id, job: entry.name.clone(), bytes, elapsed: start.elapsed() });
    Ok(())
}

/// Restore scripts: instances one by one, each instance's jobs one by one; stop at the
/// first instance that fails (bbr's behaviour), or when a stop is requested.
async fn restore_scripts(ctx: &Ctx, run: &str, dep: &Deployment, art: &StoredArtifact) -> Vec<anyhow::Error> {
    for d in &dep.instances {
        let mut errors = Vec::new();
        for job in d.jobs.iter().filter(|j| j.restorable()) {
            let mut env = artifact_env(&d.instance.artifact_dir(&restore_source(job, art)));
            env.push(run_env(run));
            if let Err(e) = cancellable(ctx, script(ctx, &d.instance, &job.name, ScriptKind::Restore, &env)).await {
                if e.is::<Cancelled>() {
                    errors.push(e);
                    return errors;
                }
                errors.push(anyhow!("Failed to restore: Error attempting to run restore for job {} on {}: {e:#}", job.name, d.id()));
            }
        }
        if !errors.is_empty() {
            return errors;
        }
    }
    Vec::new()
}
