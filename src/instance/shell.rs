//! [`ShellInstance`]: the BBR operations as shell commands over a transport. Every path and
//! value that reaches the shell is quoted ([`crate::transport::quote`]).

use super::remote_sums::{checksum_command, parse_checksum_output};
use super::{FoundScript, Instance, StagingHolder, Unanswered, parse_script_path, ARTIFACT_ROOT, JOBS_DIR, RUN_RECORD_FILE};
use crate::artifact::tar_hash::Checksums;
use crate::model::{InstanceId, ScriptKind};
use crate::transport::quote::{is_env_name, quote};
use crate::transport::{exec_capture, ExecStatus, Reader, TimedOut, Transport, Writer};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;

/// [`Instance`] as shell commands over a transport.
pub struct ShellInstance {
    id: InstanceId,
    transport: Box<dyn Transport>,
}

impl ShellInstance {
    pub fn new(id: InstanceId, transport: Box<dyn Transport>) -> Self {
        ShellInstance { id, transport }
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

    /// Runs a command that prints little, failing with its stderr on a non-zero exit.
    async fn run(&self, what: &str, command: &str) -> anyhow::Result<Vec<u8>> {
        let (status, out) = exec_capture(self.transport.as_ref(), command)
            .await
            .with_context(|| format!("{what} on {} ({})", self.id, self.transport.describe()))?;
        check(&status).with_context(|| format!("{what} on {}", self.id))?;
        Ok(out)
    }
}

fn check(status: &ExecStatus) -> anyhow::Result<()> {
    if status.success() { Ok(()) } else { Err(anyhow!(status.describe_failure())) }
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
        let what = || format!("running {kind} for job {job} on {}", self.id);
        let (status, out) = match exec_capture(self.transport.as_ref(), &cmd).await {
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
        let cmd = format!("mkdir -p {dir} && tar -C {dir} -x");
        let mut sink = tokio::io::sink();
        let status = self
            .transport
            .exec(&cmd, Some(input), &mut sink)
            .await
            .with_context(|| format!("sending artifact {artifact} to {}", self.id))?;
        check(&status).with_context(|| format!("extracting artifact {artifact} on {}", self.id))
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
