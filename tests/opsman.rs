//! The Ops Manager client against a protocol double of its API over real TLS
//! (`tests/support/opsman.rs`): `om`'s two logins, discovery of the director and the
//! products as `bbr-pcf-pipeline-tasks` does it with `om curl`, the fallback for an Ops
//! Manager without a BBR client, the apply-changes guard, token renewal, and the errors an
//! operator sees for wrong credentials or an untrusted certificate.

mod support;

use lockstep::target::opsman::discover::{applying_changes, choose_products, deployed_products, director_access, guard, Product};
use lockstep::target::export::ExportStream;
use lockstep::target::opsman::export::start_export;
use lockstep::target::opsman::{OpsManAuth, OpsManClient, OpsManConfig};
use lockstep::transport::ssh::Secret;
use std::time::Duration;
use support::opsman::{zip_bytes, zip_len, OpsMan, Spec};

const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEbbr\nkey\n-----END RSA PRIVATE KEY-----\n";

fn config(om: &OpsMan, auth: OpsManAuth) -> OpsManConfig {
    OpsManConfig {
        target: om.url.clone(),
        auth,
        ca_pem: Some(om.ca_pem.clone().into_bytes()),
        skip_ssl_validation: false,
        proxy: None,
        request_timeout: Duration::from_secs(600),
    }
}

fn user(spec: &Spec) -> OpsManAuth {
    OpsManAuth::User { username: spec.user.0.clone(), password: Secret::new(spec.user.1.clone()) }
}

fn client(spec: &Spec) -> OpsManAuth {
    OpsManAuth::Client { id: spec.client.0.clone(), secret: Secret::new(spec.client.1.clone()) }
}

#[tokio::test]
async fn both_logins_discover_the_director_and_the_products() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    for auth in [user(&spec), client(&spec)] {
        let c = OpsManClient::connect(&config(&om, auth)).await.unwrap();
        let d = director_access(&c).await.unwrap();
        assert_eq!(d.address, "10.0.0.6");
        assert_eq!((d.client.as_str(), d.client_secret.expose()), ("bbr_client", "bbr-client-secret"));
        assert_eq!(d.ca_pem, "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n", "only the active CA");
        assert_eq!((d.ssh_user.as_str(), d.ssh_key.expose()), ("bbr", KEY));
        let products = deployed_products(&c).await.unwrap();
        let chosen = choose_products(&products, &[]).unwrap();
        assert_eq!(
            chosen,
            vec![
                Product { kind: "cf".into(), deployment: "cf-9f8e7d6c5b4a".into() },
                Product { kind: "p-isolation-segment".into(), deployment: "p-isolation-segment-0a1b2c3d".into() }
            ]
        );
        guard(&c).await.unwrap();
    }
    assert!(om.unexpected().is_empty(), "{:?}", om.unexpected());
    assert_eq!(om.tokens_issued(), 2, "one token per login: {:?}", om.calls());
}

#[tokio::test]
async fn an_ops_manager_without_a_bbr_client_gives_the_director_manifests_client() {
    let mut spec = Spec::platform(KEY);
    spec.bbr_client = None;
    let om = OpsMan::start(spec.clone());
    let c = OpsManClient::connect(&config(&om, user(&spec))).await.unwrap();
    let d = director_access(&c).await.unwrap();
    assert_eq!((d.client.as_str(), d.client_secret.expose()), ("ops_manager", "ops-manager-secret"));
    assert!(d.ca_pem.contains("NEW"));
    assert!(om.calls().contains(&"GET /api/v0/deployed/director/manifest".to_string()), "{:?}", om.calls());
}

#[tokio::test]
async fn wrong_credentials_say_what_to_check_and_never_the_secret() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    let wrong = OpsManAuth::User { username: "admin".into(), password: Secret::new("not-the-password") };
    let err = format!("{:#}", OpsManClient::connect(&config(&om, wrong)).await.err().unwrap());
    assert!(err.contains("rejected the credentials of user 'admin'") && err.contains("OM_USERNAME/OM_PASSWORD"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    let wrong = OpsManAuth::Client { id: "lockstep-backups".into(), secret: Secret::new("nope-secret") };
    let err = format!("{:#}", OpsManClient::connect(&config(&om, wrong)).await.err().unwrap());
    assert!(err.contains("client 'lockstep-backups'") && err.contains("OM_CLIENT_ID/OM_CLIENT_SECRET") && !err.contains("nope-secret"), "{err}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_unless_told_to_skip() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    let mut cfg = config(&om, user(&spec));
    cfg.ca_pem = None;
    let err = format!("{:#}", OpsManClient::connect(&cfg).await.err().unwrap());
    assert!(err.contains("logging in to Ops Manager") && err.to_lowercase().contains("certificate"), "{err}");
    cfg.skip_ssl_validation = true;
    OpsManClient::connect(&cfg).await.unwrap();
}

#[tokio::test]
async fn a_token_refused_mid_run_is_renewed_once() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    // Accepted for 300 ms but announced for an hour: only a renewal on the 401 gets through.
    om.set_token_life(Duration::from_millis(300), 3600);
    let c = OpsManClient::connect(&config(&om, client(&spec))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(deployed_products(&c).await.unwrap().len(), 3);
    assert_eq!(om.tokens_issued(), 2, "{:?}", om.calls());
}

#[tokio::test]
async fn the_guard_refuses_while_changes_are_applied() {
    let mut spec = Spec::platform(KEY);
    spec.installations.insert(0, (8, "running".into(), "alice".into()));
    let om = OpsMan::start(spec.clone());
    let c = OpsManClient::connect(&config(&om, user(&spec))).await.unwrap();
    let running = applying_changes(&c).await.unwrap().expect("installation 8 is running");
    assert_eq!((running.id, running.user.as_str()), (8, "alice"));
    let err = guard(&c).await.unwrap_err().to_string();
    assert!(err.contains("is applying changes (installation 8, started by alice") && err.contains("run the backup again"), "{err}");
    // Once it has finished, the guard lets a backup start.
    om.edit(|s| s.installations[0].1 = "succeeded".into());
    guard(&c).await.unwrap();
}

#[test]
fn om_environment_variables_choose_the_login() {
    let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let c = OpsManConfig::from_env(env(&[("OM_TARGET", "opsman.example.com"), ("OM_CLIENT_ID", "c"), ("OM_CLIENT_SECRET", "s"), ("OM_USERNAME", "u")])).unwrap();
    assert!(matches!(c.auth, OpsManAuth::Client { ref id, .. } if id == "c"), "a client wins over a user, as in om");
    let c = OpsManConfig::from_env(env(&[("OM_TARGET", "x"), ("OM_USERNAME", "u"), ("OM_PASSWORD", "p"), ("OM_SKIP_SSL_VALIDATION", "true")])).unwrap();
    assert!(matches!(c.auth, OpsManAuth::User { ref username, .. } if username == "u") && c.skip_ssl_validation);
    let err = OpsManConfig::from_env(env(&[("OM_TARGET", "x"), ("OM_USERNAME", "u")])).err().unwrap().to_string();
    assert!(err.contains("OM_PASSWORD is not"), "{err}");
    let err = OpsManConfig::from_env(env(&[("OM_USERNAME", "u")])).err().unwrap().to_string();
    assert!(err.contains("set OM_TARGET"), "{err}");
}

/// A sink that counts what the store's writer would see (and keeps it when asked).
#[derive(Default)]
struct Sink {
    bytes: Vec<u8>,
    keep: bool,
    writes: usize,
    total: u64,
}

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        self.writes += 1;
        self.total += buf.len() as u64;
        if self.keep {
            self.bytes.extend_from_slice(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

async fn export(c: &OpsManClient, sink: &mut Sink, reports: &mut usize) -> anyhow::Result<u64> {
    let download: Box<dyn ExportStream> = Box::new(start_export(c).await?);
    download.copy_to(sink, &mut |_| *reports += 1).await
}

#[tokio::test]
async fn the_installation_export_streams_whole_and_is_a_real_zip() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    let c = OpsManClient::connect(&config(&om, user(&spec))).await.unwrap();
    let mut sink = Sink { keep: true, ..Sink::default() };
    let n = export(&c, &mut sink, &mut 0).await.unwrap();
    assert_eq!(n, sink.total);
    assert_eq!(sink.bytes, zip_bytes(spec.export_size));
    // The double's zip is a zip to an independent reader (Python's zipfile, CRC checked).
    let dir = tempfile::TempDir::new().unwrap();
    let zip = dir.path().join("installation.zip");
    std::fs::write(&zip, &sink.bytes).unwrap();
    let out = std::process::Command::new("python3").args(["-m", "zipfile", "-t"]).arg(&zip).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_large_export_streams_in_chunks_with_a_renewed_token() {
    let mut spec = Spec::platform(KEY);
    spec.export_size = 300 << 20;
    let om = OpsMan::start(spec.clone());
    om.set_token_life(Duration::from_millis(300), 3600);
    let c = OpsManClient::connect(&config(&om, client(&spec))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut sink = Sink::default();
    let mut reports = 0;
    let n = export(&c, &mut sink, &mut reports).await.unwrap();
    assert_eq!(n as usize, zip_len(300 << 20));
    assert!(sink.writes > 100 && reports == sink.writes, "streamed as it arrived: {} writes", sink.writes);
    assert_eq!(om.tokens_issued(), 2, "the refused token was renewed: {:?}", om.calls());
}

#[tokio::test]
async fn an_export_dropped_mid_stream_is_an_error_not_a_short_file() {
    let mut spec = Spec::platform(KEY);
    spec.export_size = 8 << 20;
    spec.export_cut_after = Some(3 << 20);
    let om = OpsMan::start(spec.clone());
    let c = OpsManClient::connect(&config(&om, user(&spec))).await.unwrap();
    let mut sink = Sink::default();
    let err = format!("{:#}", export(&c, &mut sink, &mut 0).await.unwrap_err());
    assert!(err.contains("installation export") && err.contains(&format!("of {} bytes", zip_len(8 << 20))), "{err}");
    assert!(sink.total <= 3 << 20, "{}", sink.total);
}

#[tokio::test]
async fn an_export_without_its_size_is_refused_before_a_byte_is_stored() {
    let mut spec = Spec::platform(KEY);
    spec.export_length = false;
    let om = OpsMan::start(spec.clone());
    let c = OpsManClient::connect(&config(&om, user(&spec))).await.unwrap();
    let err = format!("{:#}", start_export(&c).await.err().unwrap());
    assert!(err.contains("without its size (no Content-Length)"), "{err}");
}

/// `lockstep opsman` reaches Ops Manager through an SSH jump host (`--gateway`), as the
/// other targets reach their instances: the jump host (a real sshd) counts the login, and
/// a jump host whose host key is not the pinned one is refused before Ops Manager hears
/// anything.
#[test]
fn the_cli_reaches_ops_manager_through_an_ssh_gateway() {
    use support::fleet::{Fleet, KeyKind};
    let Some(fleet) = Fleet::start("om-gateway", 2) else { return };
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    let known = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    let host_key = |i: usize| {
        let name = format!("{} ", fleet.vms[i].known_hosts_name());
        known.lines().find_map(|l| l.strip_prefix(&name)).expect("the VM's host key").to_string()
    };
    let key = fleet.key(KeyKind::Ed25519);
    let jump = &fleet.vms[0];
    let discover = |pinned: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(["opsman", "discover", "--ca-cert", &om.ca_pem, "--gateway", &format!("vcap@{}", jump.address())])
            .arg("--gateway-private-key-path")
            .arg(&key.private)
            .args(["--gateway-host-public-key", pinned])
            .env("OM_TARGET", &om.url)
            .env("OM_USERNAME", &spec.user.0)
            .env("OM_PASSWORD", &spec.user.1)
            .env_remove("BOSH_ALL_PROXY")
            .output()
            .unwrap()
    };

    let out = discover(&host_key(0));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("director: 10.0.0.6"), "{stdout}");
    assert_eq!(jump.accepted_logins(), 1, "Ops Manager was reached through the jump host");

    let heard = om.calls().len();
    let out = discover(&host_key(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a jump host with another host key was used");
    assert!(stderr.contains("host key"), "{stderr}");
    assert_eq!(om.calls().len(), heard, "Ops Manager was called past an unverified jump host: {:?}", om.calls());
    assert_eq!(jump.accepted_logins(), 1);
}
