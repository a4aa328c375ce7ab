//! Discovery: which jobs on which instances ship BBR scripts, and what their `metadata`
//! scripts declare.

use super::{bounded, script, Ctx};
use crate::instance::InstanceRef;
use crate::lock_order::{self, CycleError};
use crate::model::{artifact_file_name, Direction, InstanceId, Job, JobMetadata, LockBefore, ScriptKind};
use crate::target::Target;
use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Job directories bbr has always skipped (legacy MySQL tooling).
const IGNORED_JOBS: [&str; 2] = ["mysql-backup", "mysql-restore"];

pub struct DeployedInstance {
    pub instance: InstanceRef,
    pub jobs: Vec<Job>,
    /// The group's bootstrap instance, as the director says (always false without one).
    pub bootstrap: bool,
}

impl DeployedInstance {
    pub fn id(&self) -> &InstanceId {
        self.instance.id()
    }
}

pub struct Deployment {
    pub name: String,
    pub instances: Vec<DeployedInstance>,
}

/// Where a job's backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupSlot {
    /// The job's own artifact, `<group>-<index>-<job>.tar`.
    Own(String),
    /// bbr's custom artifact `<job>-<release>-backup-one-restore-all.tar`, written by the
    /// bootstrap instance of a `backup_one_restore_all` job.
    Custom(String),
}

impl BackupSlot {
    /// The artifact's name: its directory under `/var/vcap/store/bbr-backup/`.
    pub fn name(&self) -> &str {
        match self {
            BackupSlot::Own(n) | BackupSlot::Custom(n) => n,
        }
    }
    /// The tar's file name in the artifact.
    pub fn file_name(&self, id: &InstanceId) -> String {
        match self {
            BackupSlot::Own(n) => artifact_file_name(id, n),
            BackupSlot::Custom(n) => format!("{n}.tar"),
        }
    }
}

/// A job on an instance, by position in [`Deployment::instances`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobAt {
    pub instance: usize,
    pub job: usize,
}

impl Deployment {
    pub fn all_jobs(&self) -> Vec<JobAt> {
        let mut v = Vec::new();
        for (i, inst) in self.instances.iter().enumerate() {
            for j in 0..inst.jobs.len() {
                v.push(JobAt { instance: i, job: j });
            }
        }
        v
    }

    pub fn job(&self, at: JobAt) -> (&InstanceRef, &Job) {
        let inst = &self.instances[at.instance];
        (&inst.instance, &inst.jobs[at.job])
    }

    /// Kahn levels over every job of the deployment.
    pub fn lock_levels(&self, dir: Direction) -> Result<Vec<Vec<JobAt>>, CycleError> {
        let all = self.all_jobs();
        let refs: Vec<_> = all
            .iter()
            .map(|&at| {
                let inst = &self.instances[at.instance];
                (inst.id(), &inst.jobs[at.job])
            })
            .collect();
        let levels = lock_order::levels(&refs, dir)?;
        Ok(levels.into_iter().map(|l| l.into_iter().map(|i| all[i]).collect()).collect())
    }

    /// Where the backup of the job at `at` goes: on the bootstrap instance, a
    /// `backup_one_restore_all` job writes the custom artifact; everywhere else (and on
    /// the other instances of such a job, whose backup script still runs) its own.
    pub fn backup_slot(&self, at: JobAt) -> BackupSlot {
        let d = &self.instances[at.instance];
        let job = &d.jobs[at.job];
        match job.one_restore_all_name() {
            Some(custom) if d.bootstrap => BackupSlot::Custom(custom),
            _ => BackupSlot::Own(job.artifact_name().to_string()),
        }
    }

    pub fn jobs_where(&self, pred: impl Fn(&Job) -> bool) -> Vec<JobAt> {
        self.all_jobs().into_iter().filter(|&at| pred(self.job(at).1)).collect()
    }
}

#[derive(Deserialize)]
struct RawLock {
    job_name: Option<String>,
    release: Option<String>,
}

#[derive(Deserialize)]
struct RawMetadata {
    backup_name: Option<String>,
    restore_name: Option<String>,
    backup_should_be_locked_before: Option<Vec<RawLock>>,
    restore_should_be_locked_before: Option<Vec<RawLock>>,
    skip_bbr_scripts: Option<bool>,
}

fn locks(raw: Option<Vec<RawLock>>) -> anyhow::Result<Vec<LockBefore>> {
    raw.unwrap_or_default()
        .into_iter()
        .map(|l| match (l.job_name, l.release) {
            (Some(job_name), Some(release)) if !job_name.is_empty() && !release.is_empty() => {
                Ok(LockBefore { job_name, release })
            }
            _ => bail!("both job name and release should be specified for should be locked before"),
        })
        .collect()
}

/// Parses what a `metadata` script printed. Empty output means "no metadata". Unknown
/// keys are ignored, as bbr's YAML parser ignores them.
pub fn parse_job_metadata(stdout: &str) -> anyhow::Result<JobMetadata> {
    if stdout.trim().is_empty() || stdout.trim() == "---" {
        return Ok(JobMetadata::default());
    }
    let raw: RawMetadata = serde_saphyr::from_str(stdout).context("failed to unmarshal job metadata")?;
    Ok(JobMetadata {
        backup_should_be_locked_before: locks(raw.backup_should_be_locked_before)?,
        restore_should_be_locked_before: locks(raw.restore_should_be_locked_before)?,
        skip_bbr_scripts: raw.skip_bbr_scripts.unwrap_or(false),
        discontinued_backup_name: raw.backup_name.is_some_and(|s| !s.is_empty()),
        discontinued_restore_name: raw.restore_name.is_some_and(|s| !s.is_empty()),
    })
}

async fn discover_instance(ctx: &Ctx, target: &dyn Target, instance: InstanceRef) -> anyhow::Result<DeployedInstance> {
    let id = instance.id().clone();
    let found = instance.find_scripts().await?;
    // Group by job; the first script of each kind wins, as in bbr.
    let mut by_job: BTreeMap<String, Job> = BTreeMap::new();
    for s in found {
        if IGNORED_JOBS.contains(&s.job.as_str()) {
            continue;
        }
        by_job
            .entry(s.job.clone())
            .or_insert_with(|| Job {
                name: s.job.clone(),
                release: target.release_of(&id.group, &s.job),
                backup_one_restore_all: target.backup_one_restore_all(&id.group, &s.job),
                ..Default::default()
            })
            .scripts
            .insert(s.kind);
    }
    let mut jobs = Vec::new();
    for (name, mut job) in by_job {
        if job.has(ScriptKind::Metadata) {
            let env = vec![("BBR_VERSION".to_string(), ctx.bbr_version.clone())];
            let out = script(ctx, &instance, &name, ScriptKind::Metadata, &env)
                .await
                .map_err(|e| anyhow!("An error occurred while running metadata script for job {name} on {id}: {e:#}"))?;
            let text = String::from_utf8_lossy(&out);
            job.metadata = parse_job_metadata(&text)
                .map_err(|e| anyhow!("Parsing metadata from job {name} on {id} failed: {e:#}"))?;
        }
        if job.metadata.skip_bbr_scripts {
            ctx.debug(format!("Found disabled job {name} on instance {id} (skip_bbr_scripts)"));
            continue;
        }
        if job.metadata.discontinued_backup_name {
            ctx.warn(format!(
                "discontinued metadata keys backup_name/restore_name found in job {name}. bbr will not be able to restore this backup artifact."
            ));
        }
        jobs.push(job);
    }
    let bootstrap = target.is_bootstrap(&id);
    Ok(DeployedInstance { instance, jobs, bootstrap })
}

/// Finds every instance and its jobs. Instances are discovered in parallel (bbr does it
/// one by one); the result keeps the target's instance order.
pub async fn discover(ctx: &Ctx, target: &dyn Target) -> anyhow::Result<Deployment> {
    let instances = target.instances().await.context("finding the deployment's instances")?;
    // Before the first connection: a deployment too big for the open-file limit would
    // otherwise fail midway through the run.
    crate::open_files::check(instances.len(), ctx.max_in_flight)?;
    let results = bounded(ctx.max_in_flight, instances, |inst| discover_instance(ctx, target, inst)).await;
    let mut deployed = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(d) => deployed.push(d),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    for d in &deployed {
        let names: Vec<&str> = d.jobs.iter().map(|j| j.name.as_str()).collect();
        ctx.debug(format!("{}: jobs with BBR scripts: {}", d.id(), if names.is_empty() { "none".into() } else { names.join(", ") }));
    }
    Ok(Deployment { name: target.deployment_name().to_string(), instances: deployed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metadata_is_default() {
        assert_eq!(parse_job_metadata("").unwrap(), JobMetadata::default());
        assert_eq!(parse_job_metadata("---\n").unwrap(), JobMetadata::default());
    }

    #[test]
    fn full_metadata() {
        let m = parse_job_metadata(
            "backup_should_be_locked_before:\n- job_name: db\n  release: pg\nrestore_should_be_locked_before:\n- job_name: uaa\n  release: uaa-release\nskip_bbr_scripts: false\nunknown_key: 1\n",
        )
        .unwrap();
        assert_eq!(m.backup_should_be_locked_before, vec![LockBefore { job_name: "db".into(), release: "pg".into() }]);
        assert_eq!(m.restore_should_be_locked_before[0].job_name, "uaa");
        assert!(!m.skip_bbr_scripts);
    }

    #[test]
    fn lock_entries_need_job_and_release() {
        for bad in [
            "backup_should_be_locked_before:\n- job_name: db\n",
            "backup_should_be_locked_before:\n- release: pg\n",
            "restore_should_be_locked_before:\n- job_name: ''\n  release: pg\n",
        ] {
            let err = parse_job_metadata(bad).unwrap_err();
            assert_eq!(err.to_string(), "both job name and release should be specified for should be locked before");
        }
    }

    #[test]
    fn invalid_yaml_and_wrong_types_are_errors() {
        assert!(parse_job_metadata("backup_should_be_locked_before: [").is_err());
        assert!(parse_job_metadata("skip_bbr_scripts: maybe-later").is_err());
        assert!(parse_job_metadata("- a list\n").is_err());
    }

    #[test]
    fn skip_and_discontinued_names() {
        let m = parse_job_metadata("skip_bbr_scripts: true\nbackup_name: foo\nrestore_name: bar\n").unwrap();
        assert!(m.skip_bbr_scripts && m.discontinued_backup_name && m.discontinued_restore_name);
    }
}
