//! Platform backups driven by a [`Config`] with `opsman:`: what the Concourse resource does
//! with a whole platform (a put takes one, check lists the complete ones, get verifies one),
//! over `orchestrate::platform` and the platform records (`artifact::platform`).

use crate::artifact::platform::{self, PlatformRecord};
use crate::config::Config;
use crate::orchestrate::backup::BackupOptions;
use crate::orchestrate::platform::{backup_platform, verify_platform, PlatformOutcome};
use crate::orchestrate::Ctx;
use crate::target::opsman::discover::guard;
use crate::target::opsman::platform::OpsmanPlatform;
use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;

/// Takes a platform backup of the configuration's Ops Manager into its store, as `lockstep
/// opsman backup` does: refused while Ops Manager applies changes (before discovery, when
/// the director may be half-deployed, and again by `backup_platform`), with a warning if
/// changes began while it ran. An error before any member is taken; then the outcome.
pub async fn run_platform_backup(ctx: &Ctx, cfg: &Config, origin: BTreeMap<String, String>) -> anyhow::Result<PlatformOutcome> {
    let om = cfg.opsman.as_ref().ok_or_else(|| anyhow!("source: a platform backup needs `opsman` (Ops Manager's URL and login)"))?;
    if om.skip_ssl_validation {
        ctx.warn("opsman.skip_ssl_validation: Ops Manager's certificate is not checked; a machine in the middle could take the credentials");
    }
    if cfg.recipients.is_empty() {
        ctx.warn("the installation export and the director's backup hold every credential of the platform: store them encrypted (encryption.recipients)");
    }
    let store = cfg.open_store()?;
    let client = om.connect(&cfg.ssh).await.context("opsman: check `target`, `ca_cert` and the login (`username`/`password` or `client_id`/`client_secret`)")?;
    guard(&client).await?;
    let platform = OpsmanPlatform::discover(client, &om.products, &cfg.ssh, &om.reach).await?;
    for w in platform.director.warnings() {
        ctx.warn(w);
    }
    let opts = BackupOptions { origin, codec: cfg.codec(), max_lock_window: cfg.max_lock_window, ..Default::default() };
    Ok(backup_platform(ctx, &platform.parts(), store.as_ref(), &opts).await)
}

/// The platform records whose members are all committed and unchanged, oldest first, and a
/// warning for each that is not (or cannot be read), naming what became of its members.
pub async fn complete_records(cfg: &Config) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let store = cfg.open_store()?;
    let mut complete = Vec::new();
    let mut warnings = store.warnings();
    for name in platform::list(store.as_ref()).await? {
        let record = match platform::read(store.as_ref(), &name).await {
            Ok(r) => r,
            Err(e) => {
                warnings.push(format!("platform record {name} cannot be read, so it is no version: {e:#}"));
                continue;
            }
        };
        let bad: Vec<String> = not_committed(store.as_ref(), &record).await?.into_iter().map(|(m, s)| format!("{} {s}", m.artifact)).collect();
        if bad.is_empty() {
            complete.push(name);
        } else {
            warnings.push(format!("platform backup {name} is incomplete, so it is no version: {}", bad.join(", ")));
        }
    }
    Ok((complete, warnings))
}

/// Record `name`, every member of it verified (each file re-hashed against its metadata)
/// or, with `verify` false, only seen committed and unchanged.
pub async fn check_record(ctx: &Ctx, cfg: &Config, name: &str, verify: bool) -> anyhow::Result<PlatformRecord> {
    if !platform::is_platform_name(name) {
        bail!("{name} is not a platform backup (platform_<time>): this source has `opsman`, whose versions are platform records");
    }
    let store = cfg.open_store()?;
    if verify {
        return verify_platform(ctx, store.as_ref(), name, &cfg.identities()?).await;
    }
    let record = platform::read(store.as_ref(), name).await?;
    let bad: Vec<String> =
        not_committed(store.as_ref(), &record).await?.into_iter().map(|(m, s)| format!("{} ({} {}): {s}", m.artifact, m.role, m.deployment)).collect();
    if !bad.is_empty() {
        bail!("platform backup {name} is incomplete: {}", bad.join("; "));
    }
    Ok(record)
}

/// The members of `record` that are not committed as the record names them.
async fn not_committed(store: &dyn crate::store::Store, record: &PlatformRecord) -> anyhow::Result<Vec<(platform::Member, platform::MemberState)>> {
    Ok(platform::member_states(store, record).await?.into_iter().filter(|(_, s)| !s.is_committed()).collect())
}
