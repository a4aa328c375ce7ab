//! Ops Manager's installation export backed up into S3 (s3s-fs) from the API double, as a
//! committed artifact of its own: streamed through zstd and age, listed and verified by
//! lockstep, and restored by hand with the AWS CLI, `age`, `zstd` and `tar` into the very
//! bytes Ops Manager sent. A download cut mid-stream leaves nothing in the bucket, which
//! the AWS CLI lists. A 320 MiB export streams through the CLI in bounded memory.

mod s3_support;
mod support;

use lockstep::artifact::stored;
use lockstep::events::NoEvents;
use lockstep::orchestrate::backup::BackupOptions;
use lockstep::orchestrate::export::backup_export;
use lockstep::orchestrate::restore::open_and_verify_with;
use lockstep::orchestrate::Ctx;
use lockstep::store::codec::{Codec, Compression, Identities};
use lockstep::store::s3::S3Store;
use lockstep::target::opsman::export::InstallationExport;
use lockstep::target::opsman::{OpsManAuth, OpsManClient, OpsManConfig};
use lockstep::transport::ssh::Secret;
use s3_support::{find_bin, missing, S3sFs};
use std::sync::Arc;
use std::time::Duration;
use support::opsman::{zip_bytes, OpsMan, Spec};

const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nbbr\n-----END RSA PRIVATE KEY-----\n";

async fn exporter(om: &OpsMan, spec: &Spec) -> InstallationExport {
    let cfg = OpsManConfig {
        target: om.url.clone(),
        auth: OpsManAuth::User { username: spec.user.0.clone(), password: Secret::new(spec.user.1.clone()) },
        ca_pem: Some(om.ca_pem.clone().into_bytes()),
        skip_ssl_validation: false,
        proxy: None,
        request_timeout: Duration::from_secs(600),
    };
    InstallationExport { client: OpsManClient::connect(&cfg).await.unwrap() }
}

fn age_keys(dir: &std::path::Path) -> Option<(std::path::PathBuf, String)> {
    let Some(keygen) = find_bin("age-keygen") else {
        missing("age-keygen");
        return None;
    };
    let path = dir.join("age.key");
    assert!(std::process::Command::new(keygen).arg("-o").arg(&path).output().unwrap().status.success());
    let text = std::fs::read_to_string(&path).unwrap();
    Some((path, text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string()))
}

fn listing(server: &S3sFs) -> String {
    let out = server.aws().unwrap().args(["s3", "ls", "--recursive", "s3://backups/"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_is_a_committed_artifact_restorable_by_hand() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let dir = tempfile::TempDir::new().unwrap();
    let Some((key, recipient)) = age_keys(dir.path()) else { return };
    let (Some(age), Some(zstd)) = (find_bin("age"), find_bin("zstd")) else { return missing("age and zstd") };
    let mut spec = Spec::platform(KEY);
    spec.export_size = 24 << 20;
    let om = OpsMan::start(spec.clone());
    let store = S3Store::new(&server.config("backups", "platform")).unwrap();
    let opts = BackupOptions { codec: Codec { compression: Compression::from_name("zstd").unwrap(), recipients: vec![recipient] }, ..Default::default() };
    let ctx = Ctx::new(Arc::new(NoEvents));
    let out = backup_export(&ctx, &exporter(&om, &spec).await, &store, &opts).await;
    assert!(out.failures.is_empty(), "{}", out.failures.render());
    let name = out.artifact.unwrap();
    assert!(name.starts_with("opsman_"), "{name}");
    assert_eq!(stored::list(&store).await.unwrap(), vec![name.clone()]);
    let ids = Identities::from_files(&[key.clone()]).unwrap();
    open_and_verify_with(&ctx, &store, &name, false, &ids).await.unwrap();
    let l = listing(&server);
    assert!(l.contains(&format!("platform/{name}/opsman-export.tar.zst.age")) && l.contains(&format!("platform/{name}/lockstep.json")), "{l}");

    // By hand, as docs/stores.md says: aws s3 cp, age -d, zstd -d, tar -x.
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    let aws = find_bin("aws").unwrap();
    let script = format!(
        "set -eo pipefail; {aws} --endpoint-url {ep} s3 cp s3://backups/platform/{name}/opsman-export.tar.zst.age - | {age} -d -i {key} | {zstd} -d -q | tar -x -C {out}",
        aws = aws.display(),
        ep = server.endpoint(),
        age = age.display(),
        key = key.display(),
        zstd = zstd.display(),
        out = restored.display()
    );
    let o = std::process::Command::new("bash").args(["-c", &script]).envs(server.env()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(restored.join("installation.zip")).unwrap() == zip_bytes(spec.export_size), "the restored export differs from what Ops Manager sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cut_mid_stream_leaves_nothing_in_the_bucket() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("backups");
    let mut spec = Spec::platform(KEY);
    spec.export_size = 32 << 20;
    spec.export_cut_after = Some(20 << 20);
    let om = OpsMan::start(spec.clone());
    let store = S3Store::new(&server.config("backups", "platform")).unwrap();
    let ctx = Ctx::new(Arc::new(NoEvents));
    let out = backup_export(&ctx, &exporter(&om, &spec).await, &store, &BackupOptions::default()).await;
    let text = out.failures.render();
    assert!(out.artifact.is_none() && text.contains("installation.zip was not stored") && text.contains("stopped after"), "{text}");
    assert!(stored::list(&store).await.unwrap().is_empty());
    let l = listing(&server);
    assert!(!l.contains("opsman_"), "the cut export left objects:\n{l}");
}

fn lockstep_opsman(om: &OpsMan, spec: &Spec, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("opsman")
        .args(args)
        .args(["--ca-cert", &om.ca_pem])
        .env("OM_TARGET", &om.url)
        .env("OM_USERNAME", &spec.user.0)
        .env("OM_PASSWORD", &spec.user.1)
        .output()
        .unwrap()
}

#[test]
fn the_cli_discovers_without_printing_a_secret_and_exports_into_a_store() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    let out = lockstep_opsman(&om, &spec, &["discover"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("director: 10.0.0.6 (BBR client bbr_client, SSH user bbr)"), "{stdout}");
    assert!(stdout.contains("product: cf deployment cf-9f8e7d6c5b4a") && stdout.contains("applying changes: no"), "{stdout}");
    for secret in ["bbr-client-secret", "RSA PRIVATE KEY", &spec.user.1] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} printed:\n{stdout}{stderr}");
    }

    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("file://{}", dir.path().display());
    let out = lockstep_opsman(&om, &spec, &["export", "--store", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("store it encrypted (--encrypt-to)") && stderr.contains("Ops Manager installation exported: opsman_"), "{stderr}");
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep")).args(["list", "--store", &url]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("opsman_"), "{}", String::from_utf8_lossy(&list.stdout));
}

#[test]
fn the_cli_refuses_to_export_while_changes_are_applied() {
    let mut spec = Spec::platform(KEY);
    spec.installations.insert(0, (9, "running".into(), "bob".into()));
    let om = OpsMan::start(spec.clone());
    let dir = tempfile::TempDir::new().unwrap();
    let out = lockstep_opsman(&om, &spec, &["export", "-a", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is applying changes (installation 9, started by bob"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was written");
    assert!(!om.calls().iter().any(|c| c.contains("installation_asset_collection")), "{:?}", om.calls());
}

/// The largest the process's resident memory has been (`VmHWM`), in MiB, while it runs.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map(|kb| kb / 1024)
}

/// A real installation export is gigabytes: a 320 MiB one, served in 64 KiB writes with
/// its length announced, streams through the CLI into S3 (8 MiB parts) without the CLI
/// ever holding it: its peak RSS stays far below the export's size. The AWS CLI then
/// reads the stored `metadata`, whose checksum must be that of the bytes Ops Manager sent.
#[test]
fn a_several_hundred_mib_export_streams_into_s3_in_bounded_memory() {
    use sha2::Digest;
    let Some(server) = S3sFs::start() else { return };
    server.bucket("big");
    let mut spec = Spec::platform(KEY);
    spec.export_size = 320 << 20;
    let om = OpsMan::start(spec.clone());
    let url = server.url("big", "platform");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["opsman", "export", "--store", &url, "--ca-cert", &om.ca_pem])
        .env("OM_TARGET", &om.url)
        .env("OM_USERNAME", &spec.user.0)
        .env("OM_PASSWORD", &spec.user.1)
        .envs(server.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // VmHWM only grows: the last reading before the exit is (about) the peak.
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_mib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("peak RSS of `lockstep opsman export` for a 320 MiB export: {peak} MiB");
    assert!(peak > 0, "the process's memory was never read");
    assert!(peak < 160, "peak RSS {peak} MiB for a 320 MiB export: the export is being held in memory");

    let name = stderr.split("exported: ").nth(1).and_then(|r| r.split_whitespace().next()).expect("the artifact's name").to_string();
    let aws = |args: &[&str]| {
        let o = server.aws().unwrap().args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let metadata = aws(&["s3", "cp", &format!("s3://big/platform/{name}/metadata"), "-"]);
    let sent = hex::encode(sha2::Sha256::digest(zip_bytes(spec.export_size)));
    assert!(metadata.contains(&sent), "metadata does not record the sha256 of what Ops Manager sent ({sent}):\n{metadata}");
    let listed = aws(&["s3", "ls", "--recursive", "s3://big/platform/"]);
    assert!(listed.contains(&format!("{name}/opsman-export.tar.zst")) && listed.contains(&format!("{name}/lockstep.json")), "{listed}");
}
