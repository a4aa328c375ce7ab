//! Inside the lock window every round trip to an instance is API downtime: the backup step
//! of a job is one command (its artifact directory made in the same command as its backup
//! script). Counted on a transport that records every command it runs.

use async_trait::async_trait;
use lockstep::instance::{Instance, ShellInstance};
use lockstep::model::{InstanceId, ScriptKind};
use lockstep::transport::local::LocalTransport;
use lockstep::transport::{ExecStatus, Reader, Transport, Writer};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// A local transport that records each command line.
struct Counting {
    inner: LocalTransport,
    commands: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Transport for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn root(&self) -> &str {
        self.inner.root()
    }
    async fn exec(&self, command: &str, stdin: Option<Reader<'_>>, stdout: Writer<'_>) -> anyhow::Result<ExecStatus> {
        self.commands.lock().unwrap().push(command.to_string());
        self.inner.exec(command, stdin, stdout).await
    }
}

#[tokio::test]
async fn a_backup_script_and_its_artifact_directory_are_one_command() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    let bbr = root.join("var/vcap/jobs/postgres/bin/bbr");
    std::fs::create_dir_all(&bbr).unwrap();
    // The script writes into the directory it is given, which must already exist.
    let script = bbr.join(ScriptKind::Backup.file_name());
    std::fs::write(&script, "#!/bin/sh\nset -e\necho dump > \"$BBR_ARTIFACT_DIRECTORY/dump.sql\"\necho backed up\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let transport = Counting { inner: LocalTransport::new(root.to_string_lossy().into_owned()), commands: commands.clone() };
    let inst = ShellInstance::new(InstanceId::new("db", "0"), Box::new(transport));
    let env = vec![("BBR_ARTIFACT_DIRECTORY".to_string(), inst.artifact_dir("postgres"))];

    let out = inst.run_backup_script("postgres", "postgres", &env).await.unwrap();
    assert_eq!(out, b"backed up\n");
    assert_eq!(commands.lock().unwrap().len(), 1, "{:?}", commands.lock().unwrap());
    assert_eq!(std::fs::read(root.join("var/vcap/store/bbr-backup/postgres/dump.sql")).unwrap(), b"dump\n");

    // A failing script still reads as the backup script's failure.
    std::fs::write(&script, "#!/bin/sh\necho 'pg_dump: no connection' >&2\nexit 3\n").unwrap();
    let err = format!("{:#}", inst.run_backup_script("postgres", "postgres", &env).await.unwrap_err());
    assert!(err.contains("pg_dump: no connection") && err.contains("exit code 3"), "{err}");
}
