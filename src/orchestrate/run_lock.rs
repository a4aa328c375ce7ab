//! One run at a time on a deployment's instances.
//!
//! Two runs at once destroy each other: both lock (every lock script runs twice), both
//! write into the same `/var/vcap/store/bbr-backup/<job>`, one's cleanup deletes the other's
//! data, and one's unlock releases the platform while the other still backs up. So before
//! any lock script a backup or restore claims every instance: it creates the staging
//! directory with a plain `mkdir` (atomic: exactly one creator wins, unlike `mkdir -p`) and
//! writes its [`RunRecord`] into it. A second run finds the directory held and is refused
//! before it locks anything, told whose run holds it. The cleanup that removes the
//! directory releases the claim; `backup-cleanup` and `restore-cleanup` release a claim
//! whose run is gone.

use super::discover::Deployment;
use super::{bounded, Ctx, FailureKind, Failures};
use crate::instance::{InstanceRef, StagingHolder, ARTIFACT_ROOT};
use crate::model::Direction;
use anyhow::anyhow;
use serde::{Deserialize, Serialize};

/// Who holds an instance's staging directory, as written into it (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// A random id, so two runs from one host and pid (a container restarted) differ.
    pub run: String,
    /// `backup` or `restore`.
    pub action: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
}

impl RunRecord {
    pub fn new(dir: Direction) -> Self {
        RunRecord {
            run: random_id(),
            action: match dir {
                Direction::Backup => "backup",
                Direction::Restore => "restore",
            }
            .to_string(),
            host: hostname(),
            pid: std::process::id(),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("plain strings serialize")
    }

    /// `RUN from HOST, pid PID, started T` for messages.
    pub fn describe(&self) -> String {
        format!("{} {} from {}, pid {}, started {}", self.action, self.run, self.host, self.pid, self.started)
    }
}

/// How a holder reads in a message: its record, or what a record that does not parse says.
pub fn describe_holder(text: &str) -> String {
    match serde_json::from_str::<RunRecord>(text.trim()) {
        Ok(r) => r.describe(),
        Err(_) => format!("an unreadable run record {:?}", text.trim().chars().take(200).collect::<String>()),
    }
}

fn cleanup_command(dir: Direction) -> &'static str {
    match dir {
        Direction::Backup => "backup-cleanup",
        Direction::Restore => "restore-cleanup",
    }
}

/// The refusal for an instance someone else holds: bbr's message for a directory of
/// unknown origin, the holder's run for one of lockstep's.
pub fn held_error(instance: &str, holder: &StagingHolder, dir: Direction) -> Option<anyhow::Error> {
    match holder {
        StagingHolder::Nobody => None,
        StagingHolder::Unknown => Some(anyhow!("Directory {ARTIFACT_ROOT} already exists on instance {instance}")),
        StagingHolder::Run(text) => Some(anyhow!(
            "another lockstep run ({}) holds {instance} (its {ARTIFACT_ROOT}); if it is gone, run {}",
            describe_holder(text),
            cleanup_command(dir)
        )),
    }
}

/// Claims every instance of `dep` for the run `record`. On any refusal the instances this
/// call claimed are released again (their directories, which it created, removed) and the
/// refusals returned; nothing else is touched.
///
/// The first instance (by id) is claimed alone, then the rest in parallel: two runs
/// started together both try that one first and exactly one gets it, so one proceeds and
/// the other is refused, instead of each taking half the instances and both giving up.
pub async fn claim(ctx: &Ctx, dep: &Deployment, record: &RunRecord, dir: Direction) -> Result<Vec<InstanceRef>, Failures> {
    let line = record.to_line();
    let line = &line;
    let mut order: Vec<&InstanceRef> = dep.instances.iter().map(|d| &d.instance).collect();
    order.sort_by(|a, b| a.id().to_string().cmp(&b.id().to_string()));
    let try_claim = |inst: &InstanceRef| {
        let inst = inst.clone();
        async move {
            let r = inst.claim_staging(line).await;
            (inst, r)
        }
    };
    let mut results = Vec::new();
    if let Some((first, rest)) = order.split_first() {
        let leader = try_claim(first).await;
        let won = matches!(leader.1, Ok(StagingHolder::Nobody));
        results.push(leader);
        if won {
            results.extend(bounded(ctx.max_in_flight, rest.iter().copied(), try_claim).await);
        }
    }
    let mut claimed = Vec::new();
    let mut failures = Failures::default();
    for (inst, r) in results {
        match r {
            Ok(StagingHolder::Nobody) => claimed.push(inst),
            Ok(holder) => failures.push(FailureKind::ArtifactDirExists, held_error(&inst.id().to_string(), &holder, dir).expect("held")),
            Err(e) => failures.push(FailureKind::General, e.context(format!("claiming {ARTIFACT_ROOT} on {}", inst.id()))),
        }
    }
    if failures.is_empty() {
        ctx.debug(format!("run {} holds {ARTIFACT_ROOT} on every instance", record.run));
        return Ok(claimed);
    }
    let released = bounded(ctx.max_in_flight, claimed, |inst| async move {
        inst.remove_artifact_root().await.map_err(|e| e.context(format!("releasing {ARTIFACT_ROOT} on {}", inst.id())))
    })
    .await;
    for e in released.into_iter().filter_map(Result::err) {
        failures.push(FailureKind::Cleanup, e);
    }
    Err(failures)
}

/// Who holds each instance's staging directory, in the deployment's order.
pub async fn holders(ctx: &Ctx, dep: &Deployment) -> Vec<(String, anyhow::Result<StagingHolder>)> {
    bounded(ctx.max_in_flight, &dep.instances, |d| async move { (d.id().to_string(), d.instance.staging_holder().await) }).await
}

pub(crate) fn random_id() -> String {
    crate::unique::random_hex(8)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc == 0 && len > 0 { String::from_utf8_lossy(&buf[..len]).into_owned() } else { "unknown-host".to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_describe_their_run() {
        let r = RunRecord::new(Direction::Backup);
        assert_eq!(r.run.len(), 16);
        assert_ne!(r.run, RunRecord::new(Direction::Backup).run);
        let back: RunRecord = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
        let d = describe_holder(&r.to_line());
        assert!(d.starts_with(&format!("backup {} from {}, pid {}", r.run, r.host, r.pid)), "{d}");
        assert!(describe_holder("garbage").contains("unreadable"));
    }

    #[test]
    fn refusals_name_the_holder_and_the_cleanup() {
        let r = RunRecord::new(Direction::Restore);
        let e = held_error("db/0", &StagingHolder::Run(r.to_line()), Direction::Restore).unwrap().to_string();
        assert!(e.contains("another lockstep run (restore") && e.contains(&r.run) && e.contains("run restore-cleanup"), "{e}");
        let e = held_error("db/0", &StagingHolder::Unknown, Direction::Backup).unwrap().to_string();
        assert_eq!(e, format!("Directory {ARTIFACT_ROOT} already exists on instance db/0"));
        assert!(held_error("db/0", &StagingHolder::Nobody, Direction::Backup).is_none());
    }
}
