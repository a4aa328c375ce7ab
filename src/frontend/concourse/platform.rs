//! The resource with `opsman:` in its source: its versions are platform records
//! (`{"artifact": "platform_<time>"}`), each naming the members of one whole-platform
//! backup. `put` takes one (`lockstep opsman backup`'s run), `get` verifies every member and
//! writes the record and each member's records; `check` and `prune` are the ordinary ones
//! (`service::versions` lists the complete records; retention keeps a kept record's members).

use super::{meta, param_bool, readable_by_tasks, version, Request};
use crate::artifact::platform::{Member, PlatformRecord, PLATFORM_FILE};
use crate::artifact::{MARKER_FILE, METADATA_FILE};
use crate::orchestrate::Ctx;
use crate::service;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::path::Path;

/// What the build page shows of a platform backup: the record, then each member.
fn record_metadata(record: &PlatformRecord) -> Vec<Value> {
    let mut md = vec![
        meta("platform", record.platform.clone()),
        meta("source", record.source.clone()),
        meta("finished", record.finished_at.clone()),
        meta("members", record.members.len().to_string()),
    ];
    md.extend(record.members.iter().map(|m| meta(&member_label(m), m.artifact.clone())));
    md
}

/// `Ops Manager export`, `director`, `product cf`.
fn member_label(m: &Member) -> String {
    match (m.role.as_str(), &m.product) {
        ("opsman-export", _) => "Ops Manager export".to_string(),
        (_, Some(p)) => format!("{} {p}", m.role),
        (role, None) => role.to_string(),
    }
}

/// `in` of a platform version.
pub(super) async fn get(ctx: &Ctx, req: &Request, dest: &Path) -> anyhow::Result<Value> {
    let name = req.version.clone().ok_or_else(|| anyhow!("in needs a version ({{\"artifact\": \"platform_<time>\"}})"))?;
    let skip = param_bool(&req.params, "skip_download", false)?;
    if skip && param_bool(&req.params, "verify_only", false)? {
        bail!("params: give skip_download or verify_only, not both");
    }
    if !param_bool(&req.params, "verify", true)? && !skip {
        ctx.warn("params.verify: false has no effect: a platform version is verified member by member (skip_download: true only checks that each is committed)");
    }
    if skip {
        ctx.info(format!("skip_download: checking that every member of {name} is committed, writing only the records"));
    } else {
        ctx.info(format!("Verifying every member of the platform backup {name}: each stored byte re-hashed against its metadata"));
    }
    let record = service::platform::check_record(ctx, &req.config, &name, !skip).await?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    // Each member's records in a directory of its own, as a `get` with skip_download
    // writes them: a put of a resource whose target is that member restores from it.
    for m in &record.members {
        let art = service::describe(&req.config, &m.artifact).await?;
        let marker = art.marker.as_ref().ok_or_else(|| anyhow!("{} is not committed", m.artifact))?;
        let dir = dest.join(&m.artifact);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(METADATA_FILE), art.metadata.to_yaml()?)?;
        std::fs::write(dir.join(MARKER_FILE), marker.to_json()?)?;
        std::fs::write(dir.join("version"), format!("{}\n", m.artifact))?;
    }
    std::fs::write(dest.join(PLATFORM_FILE), record.to_json()?)?;
    std::fs::write(dest.join("version"), format!("{name}\n"))?;
    readable_by_tasks(dest)?;
    Ok(json!({ "version": version(&name), "metadata": record_metadata(&record) }))
}

/// `out` with `opsman:`: `action: backup` (the default) takes a platform backup. `prune`
/// is the ordinary one; a platform is restored member by member (docs/platform-restore.md).
pub(super) async fn put(ctx: &Ctx, req: &Request, action: &str) -> anyhow::Result<Value> {
    match action {
        "backup" => {}
        "restore" => bail!(
            "params.action restore: a source with `opsman` backs up a whole platform, which is restored member by member \
             (docs/platform-restore.md): put to a resource whose `target` is the member, from this get's <artifact> directory"
        ),
        other => bail!("params.action {other:?} is not one of backup, prune (a source with `opsman`)"),
    }
    if param_bool(&req.params, "unsafe_lock_free", false)? {
        bail!("params.unsafe_lock_free: a platform backup is never taken lock-free");
    }
    let out = service::platform::run_platform_backup(ctx, &req.config, service::build_origin()).await?;
    let Some(name) = out.record.clone().filter(|_| out.failures.is_empty()) else {
        let mut text = format!("the platform backup failed (exit bits {}):\n{}", out.failures.exit_code().max(1), out.failures.render());
        text.push_str("No platform record was written: this platform backup is incomplete, and no version is emitted.");
        if let Some(line) = out.ordinary_members() {
            text.push_str(&format!("\n{line}"));
        }
        if out.failures.needs_cleanup() {
            text.push_str("\nA lock, unlock or cleanup failed: run backup-cleanup for the member named above (the backup-cleanup task).");
        }
        bail!(text);
    };
    let store = req.config.open_store()?;
    let record = crate::artifact::platform::read(store.as_ref(), &name).await?;
    let mut md = record_metadata(&record);
    let codec = req.config.codec();
    md.push(meta("codec", format!("{}{}", codec.compression.name(), if codec.encrypted() { " + age" } else { "" })));
    Ok(json!({ "version": version(&name), "metadata": md }))
}
