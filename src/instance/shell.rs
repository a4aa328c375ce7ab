//! [`ShellInstance`]: the BBR operations as shell commands over a transport. Every path and
//! value that reaches the shell is quoted ([`crate::transport::quote`]).

use super::remote_sums::{checksum_command, parse_checksum_output};
use super::{FoundScript, Instance, StagingHolder, Unanswered, parse_script_path, ARTIFACT_ROOT, JOBS_DIR, OWED_ROOT, RUN_RECORD_FILE};
use crate::artifact::tar_hash::Checksums;
use crate::model::{InstanceId, ScriptKind};
use crate::transport::quote::{is_env_name, quote};
use crate::transport::{exec_capture, ExecStatus, Reader, TimedOut, Transport, Writer};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use std::time::Duration;

/// How long one BBR script (metadata, lock, backup, unlock, restore) may run when no
/// `script_timeout` is set. bbr waits forever, so a hung restore script holds the run (and
/// the platform it is restoring) until someone notices. A day is longer than any restore we
/// know of needs; lock and backup scripts are bounded sooner by `max_lock_window` (4h), and
/// an owed unlock's wait by an hour. Transfers are not scripts: they have no default limit.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// [`Instance`] as shell commands over a transport.
pub struct ShellInstance {
    id: InstanceId,
    transport: Box<dyn Transport>,
    script_timeout: Duration,
}

impl ShellInstance {
    pub fn new(id: InstanceId, transport: Box<dyn Transport>) -> Self {
        ShellInstance { id, transport, script_timeout: DEFAULT_SCRIPT_TIMEOUT }
    }

    /// The limit of each BBR script: `script_timeout` when set, else
    /// [`DEFAULT_SCRIPT_TIMEOUT`].
    pub fn with_script_timeout(mut self, limit: Option<Duration>) -> Self {
        self.script_timeout = limit.unwrap_or(DEFAULT_SCRIPT_TIMEOUT);
        self
    }

    fn path(&self, p: &str) -> String {
        format!("{}{}", self.transport.root(), p)
    }

    fn artifact_path(&self, artifact: &str) -> anyhow::Result<String> {
        // An artifact name becomes a path component: refuse anything that could escape.
        if artifact.is_empty() || artifact.contains('/') || artifact == "." || artifact == ".." {
            bail!("invalid artifact name {artifact:?}");
        }
        Ok(self.path(&format!("{ARTIFACT_ROOT}/{artifact}")))
    }

    /// The answer of [`Instance::staging_holder`] or [`Instance::claim_staging`]: `free`
    /// (`Nobody`), or `held` followed by the record, if any.
    fn parse_holder(&self, out: &[u8], nobody: &str) -> anyhow::Result<StagingHolder> {
        let text = String::from_utf8_lossy(out);
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        match first.trim() {
            w if w == nobody => Ok(StagingHolder::Nobody),
            "held" if rest.trim().is_empty() => Ok(StagingHolder::Unknown),
            "held" => Ok(StagingHolder::Run(rest.trim().to_string())),
            other => bail!("unexpected answer {other:?} checking {ARTIFACT_ROOT} on {}", self.id),
        }
    }

    /// `env 'K=V' ... '/var/vcap/jobs/<job>/bin/bbr/<kind>'`, every word quoted.
    fn script_command(&self, job: &str, kind: ScriptKind, env: &[(String, String)]) -> anyhow::Result<String> {
        let mut cmd = String::from("env");
        for (k, v) in env {
            if !is_env_name(k) {
                bail!("invalid environment variable name {k:?}");
            }
            cmd.push(' ');
            cmd.push_str(&quote(&format!("{k}={v}")));
        }
        cmd.push(' ');
        cmd.push_str(&quote(&self.path(&format!("{JOBS_DIR}/{job}/bin/bbr/{kind}"))));
        Ok(cmd)
    }

    /// Runs a script's command line. An error that leaves the script's outcome unknown (no
    /// connection, or no exit status) is marked [`Unanswered`]; a time limit is not.
    async fn run_script_command(&self, job: &str, kind: ScriptKind, cmd: &str) -> anyhow::Result<Vec<u8>> {
        let what = || format!("running {kind} for job {job} on {}", self.id);
        // Dropping the command on time-out stops it: the transports kill its process group.
        let limit = self.script_timeout;
        let run = tokio::time::timeout(limit, exec_capture(self.transport.as_ref(), cmd)).await.unwrap_or_else(|_| {
            Err(TimedOut(format!(
                "the script ran longer than {} (script_timeout) and was stopped; if it needs longer, raise script_timeout",
                humantime::format_duration(limit)
            ))
            .into())
        });
        let (status, out) = match run {
            Ok(done) => done,
            Err(e) if e.is::<TimedOut>() => return Err(e.context(what())),
            Err(e) => return Err(e.context(Unanswered(what()))),
        };
        if status.lost {
            return Err(Unanswered(status.describe_failure()).into());
        }
        check(&status)?;
        Ok(out)
    }

    /// Runs a command that prints little, failing with its stderr on a non-zero exit.
    async fn run(&self, what: &str, command: &str) -> anyhow::Result<Vec<u8>> {
        let (status, out) = exec_capture(self.transport.as_ref(), command)
            .await
            .with_context(|| format!("{what} on {} ({})", self.id, self.transport.describe()))?;
        check(&status).with_context(|| format!("{what} on {}", self.id))?;
        Ok(out)
    }
}

/// A run id becomes a path component on the instance.
fn check_run_id(run: &str) -> anyhow::Result<()> {
    if run.is_empty() || !run.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("invalid run id {run:?}");
    }
    Ok(())
}

/// The exit code of an owed script whose process vanished without writing its status
/// (killed with SIGKILL, or the instance rebooted).
const OWED_VANISHED: i32 = 125;

/// The shell for [`Instance::run_owed`]. `mkdir` (atomic) decides who starts the script:
/// the winner starts it under `setsid` (its own session and process group, so neither the
/// end of this SSH session nor the kill of this command's group reaches it) with its
/// output in `dir` and its exit status written last (`status`, renamed into place). With
/// `wait`, polls for `status` (and for the process and the directory, so neither a script
/// that died without a status nor a waiter orphaned by a killed lockstep, whose directory a
/// cleanup removed, waits forever), then replays the output and exits with the script's code. It
/// removes nothing: a waiter whose reader is gone (lockstep killed) still gets this far,
/// and the result must stay for the cleanup ([`Instance::forget_owed`] removes it).
fn owed_command(dir: &str, script: &str, wait: bool) -> String {
    let parent = dir.rsplit_once('/').map(|(p, _)| p).unwrap_or(dir);
    let inner = format!("{script} > \"$1/stdout\" 2> \"$1/stderr\"; echo $? > \"$1/status.tmp\" && mv \"$1/status.tmp\" \"$1/status\"");
    // The starter waits for its own child with `wait` (no polling delay added to the lock
    // window); only a later attempt, finding the script started, polls.
    let mut cmd = format!(
        "d={d}; mkdir -p {p} || exit 1; \
         if mkdir \"$d\" 2>/dev/null; then setsid sh -c {inner} lockstep-owed \"$d\" < /dev/null > /dev/null 2>&1 & \
         c=$!; echo \"$c\" > \"$d/pid\";{then_wait} fi",
        d = quote(dir),
        p = quote(parent),
        inner = quote(&inner),
        then_wait = if wait { " wait \"$c\";" } else { "" },
    );
    if wait {
        cmd.push_str(&format!(
            "; while [ ! -e \"$d/status\" ]; do \
               if [ ! -d \"$d\" ]; then echo 'lockstep: what this script kept is gone (removed by a cleanup)' >&2; exit {OWED_VANISHED}; fi; \
               if [ -s \"$d/pid\" ] && ! kill -0 \"$(cat \"$d/pid\")\" 2>/dev/null && [ ! -e \"$d/status\" ]; then \
                 cat \"$d/stderr\" >&2 2>/dev/null; echo 'lockstep: the script stopped without an exit status (its process is gone)' >&2; exit {OWED_VANISHED}; fi; \
               sleep 0.2 2>/dev/null || sleep 1; done; \
             cat \"$d/stdout\"; cat \"$d/stderr\" >&2; exit \"$(cat \"$d/status\")\"",
        ));
    }
    cmd
}

fn check(status: &ExecStatus) -> anyhow::Result<()> {
    if status.success() { Ok(()) } else { Err(anyhow!(status.describe_failure())) }
}

/// Creates the artifact directory (`quoted_dir`, already quoted) and extracts stdin's tar into it.
fn extract_command(quoted_dir: &str) -> String {
    format!("mkdir -p {quoted_dir} && tar -C {quoted_dir} -x")
}

/// GNU tar exits 1 with "file changed as we read it" when a file's ctime moved while it
/// was read. A blobstore backup that hard-links its blobs (as bbr's does) sees exactly that
/// when the platform deletes a blob after unlock: the link count, hence the ctime, changes
/// while the data does not. That is not a failed copy; whether the content is intact is
/// decided by comparing the stream's checksums with the instance's own.
fn tar_only_saw_metadata_changes(status: &ExecStatus) -> bool {
    let stderr = String::from_utf8_lossy(&status.stderr);
    status.code == Some(1)
        && stderr.lines().any(|l| !l.trim().is_empty())
        && stderr.lines().filter(|l| !l.trim().is_empty()).all(|l| l.ends_with("file changed as we read it"))
}

#[async_trait]
impl Instance for ShellInstance {
    fn id(&self) -> &InstanceId {
        &self.id
    }

    fn address(&self) -> String {
        self.transport.describe()
    }

    async fn find_scripts(&self) -> anyhow::Result<Vec<FoundScript>> {
        // The glob must stay unquoted; the root before it is quoted. NUL-separated so any
        // file name survives. Regular files only, as bbr's `find ... -type f`: a script that
        // is itself a symlink is not a BBR script (a symlinked job directory still is).
        let root = quote(&self.path(JOBS_DIR));
        let cmd = format!(
            "for f in {root}/*/bin/bbr/*; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then printf '%s\\0' \"$f\"; fi; done"
        );
        let out = self.run("finding BBR scripts", &cmd).await?;
        let prefix = self.transport.root();
        let mut found = Vec::new();
        for raw in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let path = String::from_utf8_lossy(raw);
            if let Some(s) = path.strip_prefix(prefix).and_then(parse_script_path) {
                found.push(s);
            }
        }
        Ok(found)
    }

    async fn run_script(&self, job: &str, kind: ScriptKind, env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
        let cmd = self.script_command(job, kind, env)?;
        self.run_script_command(job, kind, &cmd).await
    }

    async fn run_backup_script(&self, job: &str, artifact: &str, env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
        let cmd = format!("mkdir -p {} && {}", quote(&self.artifact_path(artifact)?), self.script_command(job, ScriptKind::Backup, env)?);
        self.run_script_command(job, ScriptKind::Backup, &cmd).await
    }

    async fn run_owed(&self, run: &str, job: &str, kind: ScriptKind, env: &[(String, String)], wait: bool) -> anyhow::Result<Vec<u8>> {
        check_run_id(run)?;
        let dir = self.path(&format!("{OWED_ROOT}/{run}/{job}.{kind}"));
        let cmd = owed_command(&dir, &self.script_command(job, kind, env)?, wait);
        self.run_script_command(job, kind, &cmd).await
    }

    async fn stop_run(&self, env: &str, run: &str) -> anyhow::Result<usize> {
        check_run_id(run)?;
        if !is_env_name(env) {
            bail!("invalid environment variable name {env:?}");
        }
        // /proc/<pid>/environ is NUL-separated; `grep -z` matches one entry whole. The shell
        // running this loop is not among them: the variable is only ever given to scripts.
        // Only processes of this machine's mount namespace count: a container's (or, in the
        // tests, another VM's sharing the kernel) is not this instance's to stop.
        let cmd = format!(
            "want={want}; me=$(readlink /proc/self/ns/mnt); found=''; for e in /proc/[0-9]*/environ; do \
               if grep -qzx -e \"$want\" \"$e\" 2>/dev/null; then p=${{e#/proc/}}; p=${{p%/environ}}; \
                 if [ \"$(readlink /proc/$p/ns/mnt 2>/dev/null)\" = \"$me\" ]; then found=\"$found $p\"; fi; fi; done; \
             n=0; for p in $found; do kill -TERM \"$p\" 2>/dev/null && n=$((n+1)); done; \
             if [ \"$n\" -gt 0 ]; then sleep 2; for p in $found; do kill -KILL \"$p\" 2>/dev/null; done; fi; echo \"$n\"",
            want = quote(&format!("{env}={run}")),
        );
        let out = self.run("stopping what a stopped run left running", &cmd).await?;
        let text = String::from_utf8_lossy(&out);
        text.trim().parse().map_err(|_| anyhow!("unexpected answer {text:?} stopping run {run}'s scripts on {}", self.id))
    }

    async fn forget_owed(&self, run: &str) -> anyhow::Result<()> {
        check_run_id(run)?;
        let cmd = format!("rm -rf {}", quote(&self.path(&format!("{OWED_ROOT}/{run}"))));
        self.run("removing kept unlock results", &cmd).await.map(drop)
    }

    async fn owed_left(&self) -> anyhow::Result<Vec<(String, String, ScriptKind)>> {
        let root = quote(&self.path(OWED_ROOT));
        let cmd = format!("for d in {root}/*/*; do if [ -d \"$d\" ]; then printf '%s\\0' \"$d\"; fi; done");
        let out = self.run("listing unlocks left by stopped runs", &cmd).await?;
        let prefix = format!("{}/", self.path(OWED_ROOT));
        let mut left = Vec::new();
        for raw in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let path = String::from_utf8_lossy(raw);
            let Some((run, script)) = path.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else { continue };
            let Some((job, kind)) = script.rsplit_once('.') else { continue };
            if let Some(kind) = ScriptKind::from_file_name(kind) {
                left.push((run.to_string(), job.to_string(), kind));
            }
        }
        Ok(left)
    }

    fn artifact_dir(&self, artifact: &str) -> String {
        format!("{}/", self.path(&format!("{ARTIFACT_ROOT}/{artifact}")))
    }

    async fn staging_holder(&self) -> anyhow::Result<StagingHolder> {
        let p = quote(&self.path(ARTIFACT_ROOT));
        let record = quote(&self.path(&format!("{ARTIFACT_ROOT}/{RUN_RECORD_FILE}")));
        let cmd = format!("if [ -e {p} ] || [ -L {p} ]; then echo held; cat {record} 2>/dev/null || :; else echo free; fi");
        let out = self.run("checking the artifact directory", &cmd).await?;
        self.parse_holder(&out, "free")
    }

    async fn claim_staging(&self, record: &str) -> anyhow::Result<StagingHolder> {
        let root = self.path(ARTIFACT_ROOT);
        let parent = root.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
        let (p, file) = (quote(&root), quote(&format!("{root}/{RUN_RECORD_FILE}")));
        // `mkdir` without -p fails when the directory exists: of two runs exactly one
        // creates it. A failure for another reason (permissions, a full disk) is retried
        // below so that its own message is what the run reports.
        let cmd = format!(
            "mkdir -p {parent} && if mkdir {p} 2>/dev/null; then printf '%s\\n' {rec} > {file} && echo claimed; \
             elif [ -e {p} ] || [ -L {p} ]; then echo held; cat {file} 2>/dev/null || :; else mkdir {p}; fi",
            parent = quote(&parent),
            rec = quote(record),
        );
        let out = self.run("claiming the artifact directory", &cmd).await?;
        self.parse_holder(&out, "claimed")
    }

    async fn create_artifact_dir(&self, artifact: &str) -> anyhow::Result<()> {
        let cmd = format!("mkdir -p {}", quote(&self.artifact_path(artifact)?));
        self.run("creating the artifact directory", &cmd).await.map(drop)
    }

    async fn artifact_size(&self, artifact: &str) -> anyhow::Result<u64> {
        let cmd = format!("du -sk {}", quote(&self.artifact_path(artifact)?));
        let out = self.run("sizing the artifact", &cmd).await?;
        let text = String::from_utf8_lossy(&out);
        let kib: u64 = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("unexpected du output {text:?}"))?;
        Ok(kib * 1024)
    }

    async fn stream_artifact(&self, artifact: &str, out: Writer<'_>) -> anyhow::Result<()> {
        let cmd = format!("tar -C {} -c .", quote(&self.artifact_path(artifact)?));
        let status = self
            .transport
            .exec(&cmd, None, out)
            .await
            .with_context(|| format!("streaming artifact {artifact} from {}", self.id))?;
        if tar_only_saw_metadata_changes(&status) {
            return Ok(());
        }
        check(&status).with_context(|| format!("tar of artifact {artifact} on {}", self.id))
    }

    async fn checksum_artifact(&self, artifact: &str) -> anyhow::Result<Checksums> {
        let cmd = checksum_command(&quote(&self.artifact_path(artifact)?));
        let out = self.run("checksumming the artifact", &cmd).await?;
        parse_checksum_output(&out).with_context(|| format!("checksums of {artifact} on {}", self.id))
    }

    async fn receive_artifact(&self, artifact: &str, input: Reader<'_>) -> anyhow::Result<()> {
        let dir = quote(&self.artifact_path(artifact)?);
        let cmd = extract_command(&dir);
        let mut sink = tokio::io::sink();
        let status = self
            .transport
            .exec(&cmd, Some(input), &mut sink)
            .await
            .with_context(|| format!("sending artifact {artifact} to {}", self.id))?;
        check(&status).with_context(|| format!("extracting artifact {artifact} on {}", self.id))
    }

    /// One command: extract, then checksum what was extracted. The checksum script prints
    /// its header first, so an empty output says the extraction is what failed.
    async fn receive_and_checksum(&self, artifact: &str, input: Reader<'_>) -> anyhow::Result<Checksums> {
        let dir = quote(&self.artifact_path(artifact)?);
        let cmd = format!("{} || exit\n{}", extract_command(&dir), checksum_command(&dir));
        let mut out = Vec::new();
        let status = self
            .transport
            .exec(&cmd, Some(input), &mut out)
            .await
            .with_context(|| format!("sending artifact {artifact} to {}", self.id))?;
        if out.is_empty() {
            check(&status).with_context(|| format!("extracting artifact {artifact} on {}", self.id))?;
        }
        check(&status).with_context(|| format!("checksumming the artifact on {}", self.id))?;
        parse_checksum_output(&out).with_context(|| format!("checksums of {artifact} on {}", self.id))
    }

    async fn remove_artifact_dir(&self, artifact: &str) -> anyhow::Result<()> {
        let cmd = format!("rm -rf {}", quote(&self.artifact_path(artifact)?));
        self.run("removing the artifact directory", &cmd).await.map(drop)
    }

    async fn remove_artifact_root(&self) -> anyhow::Result<()> {
        let cmd = format!("rm -rf {}", quote(&self.path(ARTIFACT_ROOT)));
        self.run("removing the artifact directory", &cmd).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ExecStatus;

    #[test]
    fn tar_file_changed_warnings_are_not_failures() {
        let st = |code, err: &str| ExecStatus { code: Some(code), stderr: err.as_bytes().to_vec(), lost: false };
        assert!(tar_only_saw_metadata_changes(&st(1, "tar: ./a/b: file changed as we read it\n")));
        assert!(!tar_only_saw_metadata_changes(&st(1, "tar: ./a: file changed as we read it\ntar: ./c: Cannot open: Permission denied\n")));
        assert!(!tar_only_saw_metadata_changes(&st(2, "tar: ./a/b: file changed as we read it\n")));
        assert!(!tar_only_saw_metadata_changes(&st(1, "")));
    }
}
