//! `backup_export`: an API's export (Ops Manager's `installation.zip`) stored as an artifact
//! of its own, `<name>_<time>/`, in the same format as every other:
//!
//! ```text
//! <name>_<time>/
//!     <name>-export.tar[.zst][.age]   one tar entry, ./<file>, streamed as it arrives
//!     metadata                        bbr's YAML: the entry's sha256, as a custom artifact
//!     lockstep.json                   written last: the commit marker
//! ```
//!
//! So `list`, `verify`, `fetch`, retention, the resource's versions and a hand restore
//! (`age -d | zstd -d | tar -x`) work on it unchanged. The export streams through the
//! hashing writer, the compressor and the encryptor into the store: nothing is staged, and
//! an export that fails or is cut leaves nothing (the object is aborted, the artifact never
//! committed). The store's lease is held while it runs, so a prune leaves it alone.

use super::backup::{new_artifact, release_lease, BackupOutcome, BackupOptions};
use super::{FailureKind, Ctx};
use crate::artifact::lease::{self, Lease};
use crate::artifact::marker::{CommitMarker, StoredObject};
use crate::artifact::metadata::ArtifactChecksums;
use crate::artifact::stored::ArtifactWriter;
use crate::artifact::tar_hash::HashingWriter;
use crate::artifact::tar_write::{file_header, trailer};
use crate::artifact::{bbr_time, BackupMetadata};
use crate::events::Phase;
use crate::model::Direction;
use crate::store::codec::Encoder;
use crate::store::metered::MeteredWriter;
use crate::store::Store;
use crate::target::export::Exporter;
use anyhow::Context;
use chrono::Utc;
use tokio::io::AsyncWriteExt;

/// The custom artifact's name: `<name>-export` (`opsman-export`).
pub fn export_artifact_name(source: &dyn Exporter) -> String {
    format!("{}-export", source.deployment_name())
}

/// Backs `source`'s export up into `store` (codec and origin from `opts`; the lock options
/// do not apply: nothing is locked).
pub async fn backup_export(ctx: &Ctx, source: &dyn Exporter, store: &dyn Store, opts: &BackupOptions) -> BackupOutcome {
    let mut out = BackupOutcome::default();
    let started = Utc::now();
    let deployment = source.deployment_name().to_string();
    if let Err(e) = store.preflight().await {
        out.failures.push(FailureKind::General, e.context(format!("the store {} cannot take the backup", store.describe())));
        return out;
    }
    let writer = match new_artifact(ctx, store, &deployment, started).await {
        Ok(w) => w,
        Err(e) => {
            out.failures.push(FailureKind::General, e);
            return out;
        }
    };
    let name = writer.name().to_string();
    let run = super::run_lock::RunRecord::new(Direction::Backup);
    let now = lease::stamp(Utc::now());
    let held = Lease {
        deployment: deployment.clone(),
        artifact: name.clone(),
        run: run.run.clone(),
        host: run.host.clone(),
        pid: run.pid,
        started: now.clone(),
        heartbeat: now,
        location: Some(source.location()),
    };
    if let Err(e) = lease::acquire(store, &held, |m| ctx.warn(m)).await {
        out.failures.push(FailureKind::General, e);
        return out;
    }
    let work = async {
        ctx.info(format!("Exporting {} from {} into {}/{name}", source.file_name(), source.location(), store.describe()));
        let drained = out.timings.phase(ctx, Phase::Drain, stream_export(ctx, source, &writer, opts)).await;
        let checksums = match drained {
            Ok(c) => c,
            Err(e) => {
                out.failures.push(FailureKind::General, e);
                return;
            }
        };
        let finished = Utc::now();
        let mut metadata = BackupMetadata::default();
        metadata.backup_activity.start_time = bbr_time(started);
        metadata.backup_activity.finish_time = bbr_time(finished);
        metadata.custom_artifacts.push(ArtifactChecksums { name: export_artifact_name(source), checksums });
        let mut marker = CommitMarker {
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            phases: out.timings.phases.iter().map(|(k, v)| (k.to_string(), v.as_secs_f64())).collect(),
            warnings: store.warnings(),
            origin: opts.origin.clone(),
            taken_from: Some(source.location()),
            ..CommitMarker::new(&deployment, &name)
        };
        marker.set_codec(&opts.codec);
        match out.timings.phase(ctx, Phase::Commit, writer.commit(&metadata, marker.clone())).await {
            Ok(()) => {
                out.marker = Some(CommitMarker { objects: writer.objects(), ..marker });
                out.artifact = Some(name.clone());
            }
            Err(e) => out.failures.push(FailureKind::General, e.context(format!("committing artifact {name}"))),
        }
    };
    // The lease is renewed for as long as the export runs, and given up when it ends.
    tokio::select! {
        () = work => {}
        () = lease::keep_alive(store, held.clone()) => unreachable!("keep_alive never returns"),
    }
    if out.artifact.is_none()
        && let Err(e) = writer.discard().await
    {
        ctx.warn(format!("could not remove the incomplete artifact {name}: {e:#}"));
    }
    release_lease(ctx, store, &held).await;
    out
}

/// Streams the export as a one-entry tar into its object; returns the entry's checksums.
async fn stream_export(
    ctx: &Ctx,
    source: &dyn Exporter,
    writer: &ArtifactWriter<'_>,
    opts: &BackupOptions,
) -> anyhow::Result<crate::artifact::tar_hash::Checksums> {
    let export = source.start().await?;
    let size = export.size();
    let file = opts.codec.stored_name(&format!("{}.tar", export_artifact_name(source)));
    let object = writer.create_sized(&file, Some(size + size / 100 + 1024 * 1024)).await?;
    let encoder = match Encoder::new(MeteredWriter::new(object), &opts.codec) {
        Ok(e) => e,
        Err(e) => return Err(e.context("starting the compressor/encryptor")),
    };
    let mut sink = HashingWriter::new(encoder);
    let entry = format!("./{}", source.file_name());
    let what = source.file_name().to_string();
    // A line every 10%, for a log someone follows in Concourse.
    let mut next = 10;
    let mut progress = |bytes: u64| {
        let pct = bytes.saturating_mul(100).checked_div(size).unwrap_or(100);
        if pct >= next && pct < 100 {
            ctx.info(format!("{what}: {pct}% ({bytes} of {size} bytes)"));
            next = (pct / 10 + 1) * 10;
        }
    };
    let streamed = async {
        sink.write_all(&file_header(&entry, size, Utc::now().timestamp().max(0) as u64)?).await?;
        export.copy_to(&mut sink, &mut progress).await?;
        sink.write_all(&trailer(size)).await?;
        sink.shutdown().await.context("finishing the stored object")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let (encoder, hasher) = sink.into_parts();
    let (object, _, sha256) = encoder.into_inner().into_parts();
    let checksums = match streamed.and_then(|()| hasher.finish().map_err(|e| anyhow::Error::from(e).context("the export's tar"))) {
        Ok(c) => c,
        Err(e) => {
            object.abort().await;
            return Err(e.context(format!("{} was not stored", source.file_name())));
        }
    };
    let stored = object.commit().await.context("storing the export")?;
    writer.record(&file, StoredObject { size: stored, sha256 });
    Ok(checksums)
}
