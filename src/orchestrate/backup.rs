//! `backup`: bbr's workflow, with the data path streamed into a store.
//!
//! ```text
//! discover -> checks -> lock (levels) -> backup scripts -> unlock (levels reversed, always)
//!          -> drain (tar stream -> checksums on the fly -> store) -> cleanup -> commit
//! ```

use super::discover::{discover, BackupSlot, Deployment, JobAt};
use super::levels::{lock_in_order, record, unlock_in_reverse, Within};
use super::lock_window::{LockWindow, DEFAULT_MAX_LOCK_WINDOW};
use super::run_lock::{self, held_error, RunRecord};
use super::{artifact_env, bounded, cancellable, remove_staging, run_env, timed_script, Cancelled, Ctx, FailureKind, Failures, Timings};
use crate::artifact::lease::{self, Lease};
use crate::artifact::marker::{CommitMarker, StoredObject};
use crate::artifact::stored::{compare_checksums, ArtifactWriter};
use crate::artifact::tar_hash::HashingWriter;
use crate::artifact::{artifact_name, bbr_time, BackupMetadata};
use crate::store::codec::{Codec, Counting, Encoder};
use crate::events::{Event, Phase};
use crate::instance::ARTIFACT_ROOT;
use crate::store::metered::{percent_steps, MeteredWriter};
use crate::model::{Direction, ScriptKind};
use crate::store::Store;
use crate::target::Target;
use anyhow::{anyhow, Context};
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;
use crate::instance::InstanceRef;
use crate::store::relay::Relay;
use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub unsafe_lock_free: bool,
    /// Recorded in `lockstep.json` (Concourse build variables and the like).
    pub origin: BTreeMap<String, String>,
    /// `manifest.yml` to store beside the artifacts (`--with-manifest`).
    pub manifest: Option<Vec<u8>>,
    /// Compression and encryption of the stored tars (default: plain, bbr's layout).
    pub codec: Codec,
    /// The lock-window ceiling; `None`: [`DEFAULT_MAX_LOCK_WINDOW`].
    pub max_lock_window: Option<std::time::Duration>,
}

#[derive(Debug, Default)]
pub struct BackupOutcome {
    /// The committed artifact, if the backup succeeded far enough to commit one.
    pub artifact: Option<String>,
    pub failures: Failures,
    pub timings: Timings,
    pub marker: Option<CommitMarker>,
}

/// Checks that must pass before anything is locked or written (bbr's "Backupable").
pub async fn backupable_checks(ctx: &Ctx, dep: &Deployment) -> Failures {
    let mut failures = Failures::default();
    if dep.jobs_where(|j| j.backupable()).is_empty() {
        failures.push(FailureKind::General, anyhow!("Deployment '{}' has no backup scripts", dep.name));
    }
    failures.extend(one_restore_all_checks(ctx, dep));
    failures.extend(artifact_dir_checks(ctx, dep, Direction::Backup).await);
    if let Err(e) = dep.lock_levels(Direction::Backup) {
        failures.push(FailureKind::General, e.into());
    }
    failures
}

/// `backup_one_restore_all`: each custom artifact must have exactly one writer (one
/// bootstrap instance). Without one, the backup could not be restored as bbr would, so
/// it is refused before anything is locked; two writers would overwrite each other.
fn one_restore_all_checks(ctx: &Ctx, dep: &Deployment) -> Failures {
    let mut failures = Failures::default();
    let mut writers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for at in dep.jobs_where(|j| j.backupable() && j.backup_one_restore_all) {
        let name = dep.job(at).1.one_restore_all_name().expect("flagged job");
        let entry = writers.entry(name).or_default();
        if let BackupSlot::Custom(_) = dep.backup_slot(at) {
            entry.push(dep.job(at).0.id().to_string());
        }
    }
    for (name, ids) in writers {
        match ids.len() {
            1 => ctx.debug(format!("{} writes the backup_one_restore_all artifact {name}", ids[0])),
            0 => failures.push(
                FailureKind::General,
                anyhow!("no bootstrap instance runs the job of the backup_one_restore_all artifact {name}: the director marked none as bootstrap"),
            ),
            _ => failures.push(
                FailureKind::General,
                anyhow!("the backup_one_restore_all artifact {name} would be written by {} bootstrap instances ({})", ids.len(), ids.join(", ")),
            ),
        }
    }
    failures
}

/// `/var/vcap/store/bbr-backup` must not exist on any instance; it is left untouched.
/// When a lockstep run holds it, the refusal says whose.
pub(crate) async fn artifact_dir_checks(ctx: &Ctx, dep: &Deployment, dir: Direction) -> Failures {
    let mut failures = Failures::default();
    for (id, r) in run_lock::holders(ctx, dep).await {
        match r {
            Ok(holder) => {
                if let Some(e) = held_error(&id, &holder, dir) {
                    failures.push(FailureKind::ArtifactDirExists, e);
                }
            }
            Err(e) => failures.push(FailureKind::General, e),
        }
    }
    failures
}



/// Takes a backup of `target` into `store`.
pub async fn backup(ctx: &Ctx, target: &dyn Target, store: &dyn Store, opts: &BackupOptions) -> BackupOutcome {
    let mut out = BackupOutcome::default();
    let started = Utc::now();

    let dep = match out.timings.phase(ctx, Phase::Discover, discover(ctx, target)).await {
        Ok(d) => d,
        Err(e) => {
            out.failures.push(FailureKind::General, e);
            return out;
        }
    };
    let checks = out
        .timings
        .phase(ctx, Phase::Check, async {
            let mut checks = backupable_checks(ctx, &dep).await;
            // The store must be reachable before anything is locked.
            if let Err(e) = store.preflight().await {
                checks.push(FailureKind::General, e.context(format!("the store {} cannot take the backup", store.describe())));
            }
            checks
        })
        .await;
    if !checks.is_empty() {
        out.failures.extend(checks);
        return out;
    }
    let dep = &dep;
    let levels = dep.lock_levels(Direction::Backup).expect("checked above");
    for (n, level) in levels.iter().enumerate() {
        let names: Vec<String> = level.iter().map(|&at| format!("{} on {}", dep.job(at).1.name, dep.job(at).0.id())).collect();
        ctx.debug(format!("lock level {}: {}", n + 1, names.join(", ")));
    }

    let writer = match new_artifact(ctx, store, &dep.name, started).await {
        Ok(w) => w,
        Err(why) => {
            out.failures.push(FailureKind::General, why);
            return out;
        }
    };
    let name = writer.name().to_string();

    // Claim every instance for this run before any lock script: a second run finds the
    // staging directories held and is refused here, having touched nothing.
    let run = RunRecord::new(Direction::Backup);
    let claimed = match run_lock::claim(ctx, dep, &run, Direction::Backup).await {
        Ok(c) => c,
        Err(refused) => {
            out.failures.extend(refused);
            return out;
        }
    };
    // Then the store's lease: while it is live, prune leaves this backup's objects alone
    // and a second backup of the deployment into the store is refused.
    let now = lease::stamp(Utc::now());
    let held = Lease {
        deployment: dep.name.clone(),
        artifact: name.clone(),
        run: run.run.clone(),
        host: run.host.clone(),
        pid: run.pid,
        started: now.clone(),
        heartbeat: now,
        location: target.location(),
    };
    if let Err(e) = lease::acquire(store, &held, |m| ctx.warn(m)).await {
        out.failures.push(FailureKind::General, e);
        remove_staging(ctx, &mut out.timings, claimed, FailureKind::Cleanup, &mut out.failures).await;
        return out;
    }
    let run_id = run.run.as_str();
    let rest = async move {
        ctx.info(format!("Starting backup of {} into {}/{name}", dep.name, store.describe()));
        let mut metadata = BackupMetadata::default();
        metadata.backup_activity.start_time = bbr_time(started);

        let backup_ok = lock_back_up_unlock(ctx, run_id, dep, &levels, opts, &mut out).await;

        // Drain, only after a successful backup (even if unlock failed, as bbr).
        let mut drain_ok = false;
        if backup_ok && !ctx.cancelled() {
            let meta = Mutex::new(&mut metadata);
            let (errors, leftovers) = out.timings.phase(ctx, Phase::Drain, drain_all(ctx, dep, &writer, &meta, &opts.codec)).await;
            drain_ok = errors.is_empty();
            record(&mut out.failures, FailureKind::Drain, errors);
            // A job's staging directory that could not be removed after its drain: bbr's drain
            // error (bit 1). The data is complete in the store, so it does not stop the commit.
            record(&mut out.failures, FailureKind::Drain, leftovers);
        }

        // Cleanup: remove the staging directories this run claimed (which releases them). After
        // a failed drain the data on the instances may be the only copy: keep it until the
        // cause is known.
        let drain_failed = backup_ok && !drain_ok && !ctx.cancelled();
        if drain_failed {
            ctx.warn(format!(
                "The drain failed: the backup data is kept on the instances in {ARTIFACT_ROOT}. Find the cause, then run backup-cleanup."
            ));
        } else {
            remove_staging(ctx, &mut out.timings, claimed, FailureKind::Cleanup, &mut out.failures).await;
        }

        if ctx.cancelled() && !out.failures.has(FailureKind::Cancelled) {
            out.failures.push(FailureKind::Cancelled, Cancelled.into());
        }

        // Commit, when the data is complete: unlock and cleanup failures are recorded in the
        // marker but do not make the artifact less complete.
        let complete = backup_ok && drain_ok && !ctx.cancelled();
        if complete {
            let finished = Utc::now();
            metadata.backup_activity.finish_time = bbr_time(finished);
            commit(ctx, target, store, opts, dep, &writer, (started, finished), &metadata, &mut out).await;
        }
        if out.artifact.is_none() {
            if let Err(e) = writer.discard().await {
                ctx.warn(format!("could not remove the incomplete artifact {name}: {e:#}"));
            }
        }
        out
    };
    // The lease is renewed for as long as the backup runs, and given up when it ends.
    let out = tokio::select! {
        out = rest => out,
        () = lease::keep_alive(store, held.clone()) => unreachable!("keep_alive never returns"),
    };
    release_lease(ctx, store, &held).await;
    out
}

/// Lock (levels in order), run every job's backup script, then unlock (levels reversed)
/// every level whose lock was attempted. Failures go into `out`; true when every backup
/// script succeeded after a successful lock.
async fn lock_back_up_unlock(
    ctx: &Ctx,
    run_id: &str,
    dep: &Deployment,
    levels: &[Vec<JobAt>],
    opts: &BackupOptions,
    out: &mut BackupOutcome,
) -> bool {
    // Lock. Levels run in order; a failed level does not stop the next (bbr), but a stop
    // request does. Every level whose lock was attempted is owed its unlock.
    // Until the unlock, the scripts run under the lock-window ceiling (`locked`).
    let window = LockWindow::open(ctx, opts.max_lock_window.unwrap_or(DEFAULT_MAX_LOCK_WINDOW));
    let locked = &window.ctx;
    let mut locked_levels = 0;
    let mut lock_window_start = None;
    if opts.unsafe_lock_free {
        ctx.warn("--unsafe-lock-free: skipping lock; this backup may be inconsistent");
    } else {
        let start = Instant::now();
        let (attempted, errors) =
            out.timings.phase(ctx, Phase::Lock, lock_in_order(locked, run_id, dep, levels, ScriptKind::PreBackupLock, Within::Parallel)).await;
        record(&mut out.failures, FailureKind::Lock, errors);
        locked_levels = attempted;
        lock_window_start = (attempted > 0).then_some(start);
    }

    // Backup: every job's script as one parallel batch, unless locking failed.
    let lock_ok = out.failures.is_empty();
    let mut backup_ok = false;
    if lock_ok && !locked.cancelled() {
        let backupable = dep.jobs_where(|j| j.backupable());
        let errors = out
            .timings
            .phase(ctx, Phase::Backup, bounded(ctx.max_in_flight, backupable, |at| async move {
                let (inst, job) = dep.job(at);
                let slot = dep.backup_slot(at);
                let mut env = artifact_env(&inst.artifact_dir(slot.name()));
                env.push(run_env(run_id));
                let run = inst.run_backup_script(&job.name, slot.name(), &env);
                cancellable(locked, timed_script(locked, inst, &job.name, ScriptKind::Backup, run))
                .await
                .map_err(|e| {
                    if e.is::<Cancelled>() { e } else { anyhow!("Error attempting to run backup for job {} on {}: {e:#}", job.name, inst.id()) }
                })
            }))
            .await;
        let errors: Vec<_> = errors.into_iter().filter_map(Result::err).collect();
        backup_ok = errors.is_empty();
        record(&mut out.failures, FailureKind::General, errors);
    }
    window.close(ctx, &mut out.failures);

    // Unlock, always, for every level that was (or may have been) locked; a stop request
    // does not skip it.
    if !opts.unsafe_lock_free && locked_levels > 0 {
        let succeeded = (lock_ok && backup_ok).to_string();
        let env = vec![("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL".to_string(), succeeded)];
        let errors = out
            .timings
            .phase(ctx, Phase::Unlock, unlock_in_reverse(ctx, run_id, dep, &levels[..locked_levels], ScriptKind::PostBackupUnlock, &env, Within::Parallel))
            .await;
        record(&mut out.failures, FailureKind::Unlock, errors);
        out.timings.lock_window = lock_window_start.map(|s| s.elapsed());
        if let Some(w) = out.timings.lock_window {
            ctx.info(format!("Lock window (API downtime): {:.3}s", w.as_secs_f64()));
        }
    }
    backup_ok
}

/// Stores the manifest (if asked) and commits the artifact: its metadata, then the marker
/// that makes it visible. Sets `out.artifact` and `out.marker` when it is complete.
#[allow(clippy::too_many_arguments)]
async fn commit(
    ctx: &Ctx,
    target: &dyn Target,
    store: &dyn Store,
    opts: &BackupOptions,
    dep: &Deployment,
    writer: &ArtifactWriter<'_>,
    (started, finished): (chrono::DateTime<Utc>, chrono::DateTime<Utc>),
    metadata: &BackupMetadata,
    out: &mut BackupOutcome,
) {
    let name = writer.name().to_string();
    if let Some(manifest) = &opts.manifest {
        // The manifest holds the deployment's secrets: encrypted whenever the tars are.
        let stored = if opts.codec.encrypted() {
            crate::store::codec::encrypt_bytes(manifest, &opts.codec.recipients).map(|b| ("manifest.yml.age", b))
        } else {
            Ok(("manifest.yml", manifest.clone()))
        };
        let r = match stored {
            Ok((file, bytes)) => writer.put(file, &bytes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            out.failures.push(FailureKind::General, e.context("storing manifest.yml"));
        }
    }
    // A replica that failed is not an error while enough copies remain: say which.
    for w in store.warnings() {
        ctx.warn(w);
    }
    let mut marker = CommitMarker {
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        lock_free: opts.unsafe_lock_free,
        phases: out.timings.phases.iter().map(|(k, v)| (k.to_string(), v.as_secs_f64())).collect(),
        lock_window_seconds: out.timings.lock_window.map(|d| d.as_secs_f64()),
        warnings: out.failures.0.iter().map(|f| f.to_string()).chain(store.warnings()).collect(),
        origin: opts.origin.clone(),
        taken_from: target.location(),
        ..CommitMarker::new(&dep.name, &name)
    };
    marker.set_codec(&opts.codec);
    let commit = out.timings.phase(ctx, Phase::Commit, super::caught(writer.commit(&metadata, marker.clone()))).await;
    match commit {
        Ok(()) if out.failures.has(FailureKind::General) => {}
        Ok(()) => {
            out.marker = Some(CommitMarker { objects: writer.objects(), ..marker });
            out.artifact = Some(name.clone());
        }
        Err(e) => out.failures.push(FailureKind::General, e.context(format!("committing artifact {name}"))),
    }
}

/// The writer of a new artifact of `deployment`, named after `started`. Artifacts are named
/// to the second, as bbr's: one that starts in the same second as an earlier one of the
/// deployment takes the next free second instead of writing into (and, on failure,
/// deleting) the other's objects.
pub(crate) async fn new_artifact<'s>(ctx: &Ctx, store: &'s dyn Store, deployment: &str, started: chrono::DateTime<Utc>) -> anyhow::Result<ArtifactWriter<'s>> {
    let mut started = started;
    let mut tries = 0;
    loop {
        let writer = ArtifactWriter::new(store, artifact_name(deployment, started));
        match writer.name_taken().await {
            Ok(false) => {
                return match writer.check_writable().await {
                    Ok(()) => Ok(writer),
                    Err(e) => Err(e.context(format!("{} cannot take the backup {}: nothing was locked", store.describe(), writer.name()))),
                };
            }
            Ok(true) if tries < 5 => {
                tries += 1;
                ctx.debug(format!("{} already exists in the store: naming this backup a second later", writer.name()));
                let to_next_second = 1000 - u64::from(Utc::now().timestamp_subsec_millis() % 1000);
                tokio::time::sleep(std::time::Duration::from_millis(to_next_second)).await;
                started = Utc::now();
            }
            Ok(true) => return Err(anyhow!("{} already exists in {}: nothing was written", writer.name(), store.describe())),
            Err(e) => return Err(e.context(format!("listing {} in {}", writer.name(), store.describe()))),
        }
    }
}

pub(crate) async fn release_lease(ctx: &Ctx, store: &dyn Store, held: &Lease) {
    if let Err(e) = lease::release(store, held).await {
        ctx.warn(format!("could not give up the lease {}: {e:#} (it goes stale by itself)", lease::key(&held.deployment)));
    }
}

/// Drains every backupable job's artifact, in parallel. Returns the drains that failed,
/// and the staging directories that could not be removed after a drain that succeeded.
async fn drain_all(
    ctx: &Ctx,
    dep: &Deployment,
    writer: &ArtifactWriter<'_>,
    meta: &Mutex<&mut BackupMetadata>,
    codec: &Codec,
) -> (Vec<anyhow::Error>, Vec<anyhow::Error>) {
    let jobs = dep.jobs_where(|j| j.backupable());
    let at_once = jobs.len().min(ctx.max_in_flight.max(1));
    let results = bounded(ctx.max_in_flight, jobs, |at| async move {
        let (inst, job) = dep.job(at);
        let sums = cancellable(ctx, drain_one(ctx, dep, at, writer, codec, at_once)).await.map_err(|e| {
            if e.is::<Cancelled>() { e } else { anyhow!("Failed to drain the artifact of job {} on {}: {e:#}", job.name, inst.id()) }
        })?;
        let id = inst.id();
        let slot = dep.backup_slot(at);
        match &slot {
            BackupSlot::Own(name) => meta.lock().unwrap().add(&id.group, &id.index, name, sums),
            BackupSlot::Custom(name) => meta.lock().unwrap().add_custom(name, sums),
        }
        // The data is safe in the store: remove this job's staging directory now, as bbr.
        let dir = slot.name();
        Ok(inst.remove_artifact_dir(dir).await.map_err(|e| {
            anyhow!("could not remove {ARTIFACT_ROOT}/{dir} on {id} after draining it (the artifact is complete in the store): {e:#}")
        }))
    })
    .await;
    let (mut failed, mut leftovers) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Err(e) => failed.push(e),
            Ok(Err(e)) => leftovers.push(e),
            Ok(Ok(())) => {}
        }
    }
    (failed, leftovers)
}

/// Streams `artifact` off `inst` into `sink` and shuts `sink` down, on a task of its own:
/// the drain's whole data path (channel -> checksums -> encoder -> store object) runs on a
/// runtime worker, one task per stream. SSH data arrives from the connection's task one
/// packet (32 KiB) at a time. A consumer task is woken on the worker that received the
/// packet, mostly without a thread switch; a consumer in the caller's task (the binary's
/// main thread, under `block_on`) was woken across threads for nearly every packet, and
/// all streams' checksums ran on that one thread (`cargo bench --bench drain`: a quarter
/// of the context switches, and less CPU; docs/performance.md).
/// Returns the sink with the stream's outcome; if this future is dropped, the task is
/// aborted (and with it the command: see the transports).
pub async fn drain_stream<W>(inst: &InstanceRef, artifact: &str, sink: W) -> anyhow::Result<(W, anyhow::Result<()>)>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (inst, artifact) = (inst.clone(), artifact.to_string());
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut sink = sink;
        let streamed = async {
            inst.stream_artifact(&artifact, &mut sink).await?;
            sink.shutdown().await.context("finishing the stored object")
        }
        .await;
        (sink, streamed)
    }));
    match task.await {
        Ok(done) => Ok(done),
        Err(e) if e.is_panic() => {
            Err(anyhow!("internal error: {} (a bug in lockstep: please report it)", crate::panic_message(e.into_panic().as_ref())))
        }
        Err(e) => Err(anyhow!("the drain's task ended early: {e}")),
    }
}

/// Streams one job's artifact into the store, checksumming each file on the way, and
/// compares with the checksums computed on the instance.
///
/// ```text
/// tar stream -> HashingWriter (sha256 per file) -> Relay (to a task of its own)
///            -> Counting (progress) -> Encoder (compress, encrypt)
///            -> MeteredWriter (stored sha256, size) -> object
/// ```
async fn drain_one(
    ctx: &Ctx,
    dep: &Deployment,
    at: JobAt,
    writer: &ArtifactWriter<'_>,
    codec: &Codec,
    at_once: usize,
) -> anyhow::Result<crate::artifact::tar_hash::Checksums> {
    let (inst, job) = dep.job(at);
    let id = inst.id().clone();
    let slot = dep.backup_slot(at);
    let artifact = slot.name();
    let file = codec.stored_name(&slot.file_name(&id));
    let size = inst.artifact_size(artifact).await.unwrap_or(0);
    ctx.events.emit(Event::TransferStarted { instance: id.clone(), job: job.name.clone(), size });
    let start = Instant::now();

    // The directory's size bounds the stored object's (compression only shrinks it, but
    // for a few bytes of framing): the store sizes its parts from it.
    let hint = (size > 0).then(|| size + size / 100 + 1024 * 1024);
    let object = writer.create_sized(&file, hint).await?;
    let events = ctx.events.clone();
    let (pid, pjob) = (id.clone(), job.name.clone());
    let progress = percent_steps(size, 10, move |bytes, _| {
        events.emit(Event::TransferProgress { instance: pid.clone(), job: pjob.clone(), bytes, size });
    });
    let encoder = match Encoder::sharing(MeteredWriter::new(object), codec, at_once) {
        Ok(e) => e,
        Err(e) => return Err(e.context("starting the compressor/encryptor")),
    };
    // The per-file hashes run on the drain's task; compression, encryption and the stored
    // object's hash on the relay's, beside them (store/relay.rs).
    let sink = HashingWriter::new(Relay::spawn(Counting::new(encoder, Some(progress))));
    // The instance computes its own checksums while the stream runs.
    let (streamed, remote) = tokio::join!(drain_stream(inst, artifact, sink), inst.checksum_artifact(artifact));
    // Only a task that never ended (its runtime shutting down) loses the sink, and with it
    // the unfinished object, which removes itself when dropped.
    let (sink, streamed) = streamed?;
    let (relay, hasher) = sink.into_parts();
    // After a complete stream the relay was shut down, so its outcome is the stream's.
    let (counting, _) = relay.finish().await;
    let bytes = counting.bytes();
    let (object, _stored_bytes, sha256) = counting.into_inner().into_inner().into_parts();
    if let Err(e) = streamed {
        object.abort().await;
        return Err(e);
    }
    let local = match hasher.finish() {
        Ok(s) => s,
        Err(e) => {
            object.abort().await;
            return Err(anyhow::Error::from(e).context("the artifact stream is not a complete tar"));
        }
    };
    let remote = match remote {
        Ok(r) => r,
        Err(e) => {
            object.abort().await;
            return Err(e);
        }
    };
    let problems = compare_checksums(&remote, &local);
    if !problems.is_empty() {
        object.abort().await;
        let shown: Vec<_> = problems.iter().take(10).cloned().collect();
        return Err(anyhow!(
            "Backup is corrupted, checksum failed for {id} {} - checksums don't match for [{}]. Checksum failed for {} files in total",
            job.name,
            shown.join("; "),
            problems.len()
        ));
    }
    let stored = object.commit().await.context("storing the artifact")?;
    writer.record(&file, StoredObject { size: stored, sha256 });
    ctx.events.emit(Event::TransferFinished { instance: id, job: job.name.clone(), bytes, elapsed: start.elapsed() });
    Ok(local)
}
