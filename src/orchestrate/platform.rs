//! `backup_platform`: one backup of a whole platform, in the order the platform's
//! disaster-recovery guide gives, each member an ordinary committed artifact, tied by one
//! platform record committed last:
//!
//! ```text
//! guard (refuse while the platform is changing), and a pre-backup-check of the director
//!   -> the API's export (Ops Manager's installation)      opsman_<time>
//!   -> the director, over SSH                             <director>_<time>
//!   -> each chosen product's deployment                   <deployment>_<time>
//!   -> the platform record                                platform_<time>/platform.json
//!   -> guard again (a warning if changes started meanwhile)
//! ```
//!
//! The first member that fails stops the run: no record is written, the error names the
//! member, and the members already committed stay as ordinary artifacts (listed, verified
//! and pruned as any other). Nothing here knows Ops Manager, HTTP or SSH: the parts come as
//! [`Platform`], [`Exporter`](crate::target::export::Exporter) and
//! [`Target`](crate::target::Target).
//!
//! [`verify_platform`] verifies every member of a record, and says which are missing.

use super::backup::{backup, BackupOptions};
use super::export::backup_export;
use super::precheck::pre_backup_check;
use super::restore::open_and_verify_with;
use super::{Ctx, FailureKind, Failures};
use crate::artifact::platform::{self, Member, MemberState, PlatformRecord};
use crate::store::codec::Identities;
use crate::store::Store;
use crate::target::platform::{Platform, PlatformParts};
use crate::target::Target;
use anyhow::anyhow;
use chrono::Utc;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct PlatformOutcome {
    /// The committed platform record (`platform_<time>`), when every member succeeded.
    pub record: Option<String>,
    /// The members committed, in order (they stay when the record is not written).
    pub members: Vec<Member>,
    pub failures: Failures,
}

impl PlatformOutcome {
    /// After a failed platform backup: the line naming the members it committed, which
    /// stay as ordinary artifacts; `None` when it committed none.
    pub fn ordinary_members(&self) -> Option<String> {
        (!self.members.is_empty()).then(|| {
            let names: Vec<&str> = self.members.iter().map(|m| m.artifact.as_str()).collect();
            format!("Committed as ordinary artifacts, in no platform record: {}", names.join(", "))
        })
    }
}

/// Backs the platform up into `store`, member by member, then commits its record.
pub async fn backup_platform(ctx: &Ctx, parts: &PlatformParts<'_>, store: &dyn Store, opts: &BackupOptions) -> PlatformOutcome {
    let mut out = PlatformOutcome::default();
    let started = Utc::now();
    let mut record = PlatformRecord::new(&parts.source.location(), started);
    record.origin = opts.origin.clone();
    if let Err(e) = refuse_while_changing(parts.source).await {
        out.failures.push(FailureKind::General, e);
        return out;
    }
    if let Err(e) = store.preflight().await {
        out.failures.push(FailureKind::General, e.context(format!("the store {} cannot take the platform backup", store.describe())));
        return out;
    }
    let total = 2 + parts.products.len();
    ctx.info(format!("Platform backup {} of {}: {total} members into {}", record.platform, record.source, store.describe()));
    // The director is checked before the export, which may take an hour: an unknown host
    // key, a refused key or a leftover artifact directory fail the run before anything
    // is taken. (The products' deployments are not: checking one sets up SSH users.)
    ctx.info(format!("Checking that the director {} can be backed up, before the export", parts.director.deployment_name()));
    let (failures, _) = pre_backup_check(ctx, parts.director).await;
    if !failures.is_empty() {
        for f in failures.0 {
            out.failures.push(f.kind, f.error.context(format!("platform member 2/{total} the director {} cannot be backed up", parts.director.deployment_name())));
        }
        return out;
    }

    // 1. The export.
    let what = format!("1/{total} the installation export ({})", parts.export.location());
    ctx.info(format!("Platform member {what}"));
    let t = Instant::now();
    let done = backup_export(ctx, parts.export, store, opts).await;
    let name = parts.export.deployment_name().to_string();
    if !took(ctx, store, &mut out, &what, t, done.artifact, done.failures, ("opsman-export", None, &name)).await {
        return out;
    }
    // 2. The director.
    let what = format!("2/{total} the director {}", parts.director.deployment_name());
    if !member(ctx, store, opts, &mut out, &what, parts.director, ("director", None)).await {
        return out;
    }
    // 3. The products.
    for (i, p) in parts.products.iter().enumerate() {
        let what = format!("{}/{total} product {} (deployment {})", i + 3, p.kind, p.target.deployment_name());
        if !member(ctx, store, opts, &mut out, &what, p.target, ("product", Some(p.kind.clone()))).await {
            return out;
        }
    }
    // 4. The record, last, once every member is seen committed as it was taken (a prune or
    // an operator could have removed one meanwhile).
    record.members = out.members.clone();
    match platform::member_states(store, &record).await {
        Ok(states) => {
            let gone: Vec<String> = states.iter().filter(|(_, s)| !s.is_committed()).map(|(m, s)| format!("{} {s}", m.artifact)).collect();
            if !gone.is_empty() {
                let e = anyhow!("refusing to commit the platform record {}: {} (removed or changed while the backup ran)", record.platform, gone.join(", "));
                out.failures.push(FailureKind::General, e);
                return out;
            }
        }
        Err(e) => {
            out.failures.push(FailureKind::General, e.context(format!("checking the members of {} before committing it", record.platform)));
            return out;
        }
    }
    record.finished_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match platform::commit(store, &record).await {
        Ok(()) => {
            ctx.info(format!("Platform record {} committed: {} members", record.platform, record.members.len()));
            out.record = Some(record.platform.clone());
        }
        Err(e) => out.failures.push(FailureKind::General, e.context(format!("committing the platform record {}", record.platform))),
    }
    // 5. The guard again: changes applied while the backup ran make it suspect.
    match parts.source.changing().await {
        Ok(None) => {}
        Ok(Some(why)) => ctx.warn(format!("{why}: this began while the platform backup ran, which may hold a platform half-way through them; take it again once they finish")),
        Err(e) => ctx.warn(format!("could not ask whether the platform changed during the backup: {e:#}")),
    }
    out
}

/// Refuses while the platform is changing, saying why.
async fn refuse_while_changing(source: &dyn Platform) -> anyhow::Result<()> {
    match source.changing().await {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(anyhow!(
            "{why}: a backup now would capture a platform half-way through them. Wait until they finish, then run the backup again"
        )),
        Err(e) => Err(e.context(format!("asking {} whether changes are being applied", source.location()))),
    }
}

/// Backs one deployment up as a member, then releases its target.
async fn member(
    ctx: &Ctx,
    store: &dyn Store,
    opts: &BackupOptions,
    out: &mut PlatformOutcome,
    what: &str,
    target: &dyn Target,
    (role, product): (&str, Option<String>),
) -> bool {
    if ctx.cancelled() {
        out.failures.push(FailureKind::Cancelled, anyhow!("platform member {what} not started: {}", super::Cancelled));
        return false;
    }
    ctx.info(format!("Platform member {what}"));
    let t = Instant::now();
    let mut done = backup(ctx, target, store, opts).await;
    if let Err(e) = target.release().await {
        done.failures.push(FailureKind::Cleanup, e);
    }
    let name = target.deployment_name().to_string();
    took(ctx, store, out, what, t, done.artifact, done.failures, (role, product, &name)).await
}

/// Records a member's outcome: a committed artifact without failures becomes a member
/// (with its marker's digest); anything else fails the platform backup, naming the member.
#[allow(clippy::too_many_arguments)]
async fn took(
    ctx: &Ctx,
    store: &dyn Store,
    out: &mut PlatformOutcome,
    what: &str,
    started: Instant,
    artifact: Option<String>,
    failures: Failures,
    (role, product, deployment): (&str, Option<String>, &str),
) -> bool {
    if !failures.is_empty() {
        for f in failures.0 {
            out.failures.push(f.kind, f.error.context(format!("platform member {what} failed")));
        }
        if let Some(a) = &artifact {
            ctx.warn(format!("{a} was committed, but as the platform member {what} failed it is an ordinary artifact, in no platform record"));
        }
        return false;
    }
    let Some(artifact) = artifact else {
        out.failures.push(FailureKind::General, anyhow!("platform member {what} failed: no artifact was committed"));
        return false;
    };
    match platform::marker_digest(store, &artifact).await {
        Ok(marker_sha256) => {
            ctx.info(format!("Platform member {what}: {artifact} committed in {:.1?}", started.elapsed()));
            out.members.push(Member { role: role.into(), product, deployment: deployment.into(), artifact, marker_sha256 });
            true
        }
        Err(e) => {
            out.failures.push(FailureKind::General, e.context(format!("platform member {what}: reading back its commit marker")));
            false
        }
    }
}

/// Verifies every member of platform record `name` (each file re-hashed against its
/// metadata, as `verify` does one artifact). An error lists every member that is missing,
/// uncommitted, changed since the record was written, or damaged.
pub async fn verify_platform(ctx: &Ctx, store: &dyn Store, name: &str, ids: &Identities) -> anyhow::Result<PlatformRecord> {
    let record = platform::read(store, name).await?;
    let mut problems = Vec::new();
    for (m, state) in platform::member_states(store, &record).await? {
        if state != MemberState::Committed {
            problems.push(format!("{} ({} {}): {state}", m.artifact, m.role, m.deployment));
            continue;
        }
        if let Err(e) = open_and_verify_with(ctx, store, &m.artifact, false, ids).await {
            problems.push(format!("{} ({} {}): {e:#}", m.artifact, m.role, m.deployment));
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "platform backup {name} is incomplete or damaged: {} of its {} members:\n  {}",
            problems.len(),
            record.members.len(),
            problems.join("\n  ")
        );
    }
    ctx.info(format!("Verified platform backup {name}: every file of its {} members", record.members.len()));
    Ok(record)
}
