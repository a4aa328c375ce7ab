//! `lockstep opsman import`: an installation exported by `lockstep opsman export` from the
//! Ops Manager double, then imported from the store into a fresh (unconfigured) double, as
//! `om import-installation` does it. The fresh double hashes the file part as it arrives;
//! the check that the import is the export is independent of lockstep: the sha256 of what
//! the first double served against the sha256 of what the second received. And the refusals:
//! a wrong passphrase, an Ops Manager configured already (nothing sent), a damaged artifact
//! (refused before sending when its size is wrong; cut off before its end, and never taken,
//! when a byte changed).

mod support;

use age::secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::opsman::{zip_len, OpsMan, Spec};

const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nbbr\n-----END RSA PRIVATE KEY-----\n";
const IMPORT: &str = "POST /api/v0/installation_asset_collection";

fn lockstep(om: &OpsMan, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("opsman")
        .args(args)
        .args(["--ca-cert", &om.ca_pem])
        .env("OM_TARGET", &om.url)
        .env_remove("OM_DECRYPTION_PASSPHRASE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Exports `om`'s installation into the directory store `dir` with `extra` flags; returns
/// the artifact's name.
fn export(om: &OpsMan, spec: &Spec, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["export", "-a", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = lockstep(om, &args, &[("OM_USERNAME", &spec.user.0), ("OM_PASSWORD", &spec.user.1)]);
    assert!(out.status.success(), "{}", text(&out));
    let names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with("opsman_")).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

fn import(om: &OpsMan, dir: &Path, name: &str, passphrase: &str, extra: &[&str]) -> Output {
    let mut args = vec!["import", "--artifact", name, "-a", dir.to_str().unwrap(), "--polling-interval", "50ms"];
    args.extend_from_slice(extra);
    lockstep(om, &args, &[("OM_DECRYPTION_PASSPHRASE", passphrase)])
}

/// An age identity file and its recipient.
fn age_key(dir: &Path) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join("age.key");
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (path, id.to_public().to_string())
}

/// The stored tar of an artifact exported with `--compression none` and no encryption.
fn stored_tar(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("opsman-export.tar")
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_encrypted_export_imports_into_a_fresh_ops_manager_byte_for_byte() {
    let mut spec = Spec::platform(KEY);
    spec.export_size = 48 << 20;
    let old = OpsMan::start(spec.clone());
    let dir = tempfile::TempDir::new().unwrap();
    let (key, recipient) = age_key(dir.path());
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let name = export(&old, &spec, &store, &["--encrypt-to", &recipient]);
    assert!(stored_tar(&store, &name).with_extension("tar.zst.age").exists(), "stored compressed and encrypted");

    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let out = import(&fresh, &store, &name, &spec.passphrase, &["-i", key.to_str().unwrap()]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("Imported {name} into opsman {}", fresh.url)), "{log}");
    assert!(!log.contains(&spec.passphrase), "the passphrase was printed:\n{log}");

    // Independent of lockstep: what the first double served is what the second received.
    let served = old.served();
    assert_eq!(served.len(), 1, "one export served whole");
    let imports = fresh.imports();
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert_eq!(imports[0].sha256, served[0], "the imported installation differs from the exported one");
    assert_eq!((imports[0].size, imports[0].filename.as_str()), (zip_len(spec.export_size) as u64, "installation.zip"));
    assert_eq!(fresh.cut_uploads(), 0);
    assert!(fresh.configured() && fresh.unexpected().is_empty(), "{:?}", fresh.unexpected());
    let calls = fresh.calls();
    assert_eq!(calls[..2], ["GET /login/ensure_availability".to_string(), IMPORT.to_string()], "{calls:?}");
    assert!(calls[2..].iter().all(|c| c == "GET /login/ensure_availability") && calls.len() >= 2 + 1 + spec.import_polls, "{calls:?}");

    // The imported Ops Manager is the old one: its users log in and it knows the platform.
    let out = lockstep(&fresh, &["discover"], &[("OM_USERNAME", &spec.user.0), ("OM_PASSWORD", &spec.user.1)]);
    assert!(out.status.success() && text(&out).contains("director: 10.0.0.6"), "{}", text(&out));
}

#[test]
fn a_wrong_passphrase_is_refused_by_ops_manager_and_said_so() {
    let spec = Spec::platform(KEY);
    let dir = tempfile::TempDir::new().unwrap();
    let name = export(&OpsMan::start(spec.clone()), &spec, dir.path(), &["--compression", "none"]);
    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let out = import(&fresh, dir.path(), &name, "not the passphrase", &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("Ops Manager refused the installation") && log.contains("check the decryption passphrase"), "{log}");
    assert!(log.contains("422") && !log.contains("not the passphrase"), "{log}");
    assert!(fresh.imports().is_empty() && !fresh.configured());

    let out = import(&fresh, dir.path(), &name, "", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--decryption-passphrase (OM_DECRYPTION_PASSPHRASE) is required"), "{}", text(&out));
}

#[test]
fn a_configured_ops_manager_is_refused_and_nothing_is_sent() {
    let spec = Spec::platform(KEY);
    let om = OpsMan::start(spec.clone());
    let dir = tempfile::TempDir::new().unwrap();
    let name = export(&om, &spec, dir.path(), &["--compression", "none"]);
    let out = import(&om, dir.path(), &name, &spec.passphrase, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("is already configured") && log.contains("nothing was sent"), "{log}");
    assert!(!om.calls().iter().any(|c| c == IMPORT), "{:?}", om.calls());
    assert!(om.unexpected().is_empty(), "{:?}", om.unexpected());
}

#[test]
fn a_changed_byte_is_found_while_sending_and_the_import_cut_off_before_its_end() {
    let mut spec = Spec::platform(KEY);
    spec.export_size = 8 << 20;
    let dir = tempfile::TempDir::new().unwrap();
    let name = export(&OpsMan::start(spec.clone()), &spec, dir.path(), &["--compression", "none"]);
    let tar = stored_tar(dir.path(), &name);
    let mut bytes = std::fs::read(&tar).unwrap();
    let at = 512 + (5 << 20);
    bytes[at] ^= 0x40;
    std::fs::write(&tar, &bytes).unwrap();

    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let out = import(&fresh, dir.path(), &name, &spec.passphrase, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("Backup is corrupted") && log.contains("./installation.zip has sha256"), "{log}");
    assert!(log.contains("stored object changed since it was written"), "{log}");
    // It was sending (the double saw the upload start) and stopped short: nothing taken.
    wait_for("the double to see the cut upload", || fresh.cut_uploads() == 1);
    assert!(fresh.imports().is_empty() && !fresh.configured(), "{:?}", fresh.imports());
    assert!(fresh.calls().iter().any(|c| c == IMPORT), "{:?}", fresh.calls());
}

#[test]
fn a_truncated_export_is_refused_before_anything_is_sent() {
    let spec = Spec::platform(KEY);
    let dir = tempfile::TempDir::new().unwrap();
    let name = export(&OpsMan::start(spec.clone()), &spec, dir.path(), &["--compression", "none"]);
    let tar = stored_tar(dir.path(), &name);
    let len = std::fs::metadata(&tar).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&tar).unwrap().set_len(len - 4096).unwrap();

    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let out = import(&fresh, dir.path(), &name, &spec.passphrase, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("Backup is corrupted") && log.contains("nothing was sent") && log.contains("lockstep.json says"), "{log}");
    assert!(!fresh.calls().iter().any(|c| c == IMPORT), "{:?}", fresh.calls());
    assert!(fresh.imports().is_empty() && !fresh.configured());
}

#[test]
fn an_encrypted_export_without_its_identity_is_refused_before_sending() {
    let spec = Spec::platform(KEY);
    let dir = tempfile::TempDir::new().unwrap();
    let (_, recipient) = age_key(dir.path());
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let name = export(&OpsMan::start(spec.clone()), &spec, &store, &["--encrypt-to", &recipient]);
    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let out = import(&fresh, &store, &name, &spec.passphrase, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is encrypted (age, to age1") && text(&out).contains("--identity"), "{}", text(&out));
    assert!(!fresh.calls().iter().any(|c| c == IMPORT), "{:?}", fresh.calls());
}

#[test]
fn a_changed_byte_in_an_encrypted_export_is_found_as_it_is_decrypted() {
    let mut spec = Spec::platform(KEY);
    spec.export_size = 8 << 20;
    let dir = tempfile::TempDir::new().unwrap();
    let (key, recipient) = age_key(dir.path());
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let name = export(&OpsMan::start(spec.clone()), &spec, &store, &["--compression", "none", "--encrypt-to", &recipient]);
    let object = stored_tar(&store, &name).with_extension("tar.age");
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();

    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let out = import(&fresh, &store, &name, &spec.passphrase, &["-i", key.to_str().unwrap()]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("Backup is corrupted") && log.contains("did not take it"), "{log}");
    wait_for("the double to see the cut upload", || fresh.cut_uploads() == 1);
    assert!(fresh.imports().is_empty() && !fresh.configured());
}

#[test]
fn an_upload_refused_from_its_head_is_ops_managers_refusal_not_a_damaged_backup() {
    let mut spec = Spec::platform(KEY);
    spec.export_size = 8 << 20;
    let dir = tempfile::TempDir::new().unwrap();
    let name = export(&OpsMan::start(spec.clone()), &spec, dir.path(), &["--compression", "none"]);
    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    fresh.set_upload_limit(1 << 20);
    let out = import(&fresh, dir.path(), &name, &spec.passphrase, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(!log.contains("corrupted"), "an intact backup called corrupted:\n{log}");
    assert!(log.contains("Ops Manager refused the installation: POST /api/v0/installation_asset_collection: 413"), "{log}");
    assert!(log.contains("refuses uploads this large"), "{log}");
    assert!(fresh.imports().is_empty() && !fresh.configured());
}
