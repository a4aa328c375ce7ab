//! `lockstep opsman backup`: a whole platform, as Ops Manager describes it, against the
//! Ops Manager double (its director's address, BBR client, CA and `bbr` SSH key; its
//! products), the director double (its BBR client through UAA, the products'
//! deployments, temporary SSH users) and the sshd fleet (the director VM, reached as
//! `bbr` with the key Ops Manager holds, and the products' VMs).
//!
//! A platform backup is the installation export, the director and each product, each an
//! ordinary committed artifact, and a platform record committed last. The tests read the
//! store back with the filesystem and `sha256sum` (not lockstep), verify, prune, and break
//! it: a product whose deployment the director lacks, an export cut mid-stream, a product
//! whose backup fails half-way, Ops Manager applying changes.

mod s3_support;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::opsman::{OpsMan, Spec};
use support::platform::{platform, Platform, CF, DIRECTOR_IP, ISO};
use tempfile::TempDir;

impl Platform {
    fn store(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// `lockstep opsman backup` into `store`, the director reached at the fleet's vm0 and
    /// the director double, its host key in the fleet's known_hosts.
    fn backup(&self, store: &Path, products: &str) -> (i32, String) {
        self.backup_into(&["-a", store.to_str().unwrap()], &[], products)
    }

    fn backup_into(&self, store: &[&str], env: &[(&'static str, String)], products: &str) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(["opsman", "--ca-cert", &self.om.ca_pem, "backup", "--products", products])
            .args(store)
            .envs(env.iter().cloned())
            .args(if store.contains(&"--known-hosts") { vec![] } else { vec!["--known-hosts".to_string(), self.fleet.known_hosts().display().to_string()] })
            .args(["--director-ssh", &self.fleet.vms[0].address(), "--director-url", &self.director.url])
            .env("OM_TARGET", &self.om.url)
            .env("OM_USERNAME", &self.spec.user.0)
            .env("OM_PASSWORD", &self.spec.user.1)
            .env_remove("BOSH_ALL_PROXY")
            .output()
            .unwrap();
        self.text(out)
    }

    /// Exit code and both streams; no secret may be in them.
    fn text(&self, out: Output) -> (i32, String) {
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        for secret in ["bbr-client-secret", "PRIVATE KEY", &self.spec.user.1, "om-token-", "token-"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        (out.status.code().unwrap_or(-1), text)
    }

    fn lockstep(&self, args: &[&str]) -> (i32, String) {
        self.text(Command::new(env!("CARGO_BIN_EXE_lockstep")).args(args).output().unwrap())
    }
}

/// The artifact directories in a local store (committed or not), sorted.
fn dirs(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn record_of(store: &Path) -> (String, serde_json::Value) {
    let names: Vec<String> = dirs(store).into_iter().filter(|d| d.starts_with("platform_")).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let r = serde_json::from_slice(&fs::read(store.join(&names[0]).join("platform.json")).unwrap()).unwrap();
    (names[0].clone(), r)
}

#[test]
fn a_whole_platform_is_backed_up_listed_verified_and_pruned_together() {
    let Some(p) = platform("a_whole_platform_is_backed_up_listed_verified_and_pruned_together") else { return };
    let store = p.store("store");
    let (code, text) = p.backup(&store, "cf,p-isolation-segment");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("store them encrypted (--encrypt-to)"), "{text}");

    // Read back with the filesystem: the record names four committed members, in order,
    // each with the sha256 of the lockstep.json that is there.
    let (name, record) = record_of(&store);
    assert_eq!(record["platform"], name.as_str());
    assert_eq!(record["source"].as_str().unwrap().trim_end_matches('/'), p.om.url.trim_end_matches('/'));
    let members = record["members"].as_array().unwrap();
    let got: Vec<(&str, &str)> = members.iter().map(|m| (m["role"].as_str().unwrap(), m["deployment"].as_str().unwrap())).collect();
    assert_eq!(got, [("opsman-export", "opsman"), ("director", DIRECTOR_IP), ("product", CF), ("product", ISO)]);
    assert_eq!(members[2]["product"], "cf");
    for m in members {
        let artifact = m["artifact"].as_str().unwrap();
        assert!(artifact.starts_with(&format!("{}_", m["deployment"].as_str().unwrap())), "{artifact}");
        let marker = store.join(artifact).join("lockstep.json");
        assert_eq!(sha256sum(&marker), m["marker_sha256"].as_str().unwrap(), "{artifact}");
        assert!(store.join(artifact).join("metadata").is_file(), "{artifact}");
    }
    let director_artifact = members[1]["artifact"].as_str().unwrap();
    for f in ["bosh-0-director.tar.zst", "bosh-0-credhub.tar.zst"] {
        assert!(store.join(director_artifact).join(f).is_file(), "{f} missing: {:?}", dirs(&store.join(director_artifact)));
    }
    assert!(store.join(members[0]["artifact"].as_str().unwrap()).join("opsman-export.tar.zst").is_file());
    // The guard ran before and after; the products' temporary users are gone; the
    // director VM was reached as bbr.
    let installations = p.om.calls().iter().filter(|c| *c == "GET /api/v0/installations").count();
    assert!(installations >= 3, "{:?}", p.om.calls());
    assert!(p.om.unexpected().is_empty() && p.director.unexpected().is_empty(), "{:?} {:?}", p.om.unexpected(), p.director.unexpected());
    assert!(p.director.live_users().is_empty() && p.director.created_users().len() == 2, "{:?}", p.director.created_users());
    assert!(p.fleet.vms[0].log().contains("Accepted publickey for bbr"), "{}", p.fleet.vms[0].log());

    // list shows the record and each member, committed; verify passes.
    let url = format!("file://{}", store.display());
    let (code, list) = p.lockstep(&["list", "--store", &url]);
    assert_eq!(code, 0, "{list}");
    assert!(list.contains("PLATFORM BACKUPS") && list.contains(&format!("{name}  ")) && list.contains("complete"), "{list}");
    for m in members {
        let line = list.lines().find(|l| l.contains(m["artifact"].as_str().unwrap()) && l.starts_with("  ")).unwrap_or_else(|| panic!("{list}"));
        assert!(line.trim_end().ends_with("committed"), "{line}");
    }
    let (code, out) = p.lockstep(&["verify", &name, "--store", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("Verified platform backup {name}: every file of its 4 members")), "{out}");

    // Newer copies of every member make the rules alone (keep-last 1) delete the members;
    // the record is kept (the newest platform backup), so its members are too. An older
    // record, which no rule keeps, is pruned.
    let newer = |artifact: &str| {
        let (dep, _) = artifact.rsplit_once('_').unwrap();
        format!("{dep}_29990101T000000Z")
    };
    for m in members {
        let a = m["artifact"].as_str().unwrap();
        assert!(Command::new("cp").arg("-a").arg(store.join(a)).arg(store.join(newer(a))).status().unwrap().success());
    }
    let old = store.join("platform_20200101T000000Z");
    fs::create_dir(&old).unwrap();
    let mut old_record = record.clone();
    old_record["platform"] = "platform_20200101T000000Z".into();
    fs::write(old.join("platform.json"), serde_json::to_vec(&old_record).unwrap()).unwrap();
    let (code, plan) = p.lockstep(&["prune", "--store", &url, "--keep-last", "1", "--min-age", "0s", "--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    for m in members {
        let a = m["artifact"].as_str().unwrap();
        let line = plan.lines().find(|l| l.contains(a)).unwrap_or_else(|| panic!("{a} not in\n{plan}"));
        assert!(line.contains("keep") && line.contains(&format!("member of {name}")), "{line}");
    }
    assert!(plan.lines().any(|l| l.contains("delete") && l.contains("platform_20200101T000000Z")), "{plan}");
    let (code, done) = p.lockstep(&["prune", "--store", &url, "--keep-last", "1", "--min-age", "0s"]);
    assert_eq!(code, 0, "{done}");
    assert!(!old.exists(), "the old record was not pruned");
    for m in members {
        let a = m["artifact"].as_str().unwrap();
        assert!(store.join(a).join("lockstep.json").is_file() && store.join(newer(a)).is_dir(), "{a} was pruned:\n{done}");
    }
    let (code, out) = p.lockstep(&["verify", &name, "--store", &url]);
    assert_eq!(code, 0, "after the prune: {out}");

    // A member removed by hand: list and verify call the record incomplete, naming it.
    let cf = members[2]["artifact"].as_str().unwrap();
    fs::remove_dir_all(store.join(cf)).unwrap();
    let (code, list) = p.lockstep(&["list", "--store", &url]);
    assert_eq!(code, 1, "{list}");
    assert!(list.contains("INCOMPLETE (1 of 4 members)") && list.contains(&format!("platform backup {name} is incomplete: {cf} MISSING")), "{list}");
    let (code, out) = p.lockstep(&["verify", &name, "--store", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{cf} (product {CF}): MISSING")), "{out}");

    // A record that cannot be read is left alone and named, even in another deployment's plan.
    let damaged = store.join("platform_20210101T000000Z");
    fs::create_dir(&damaged).unwrap();
    fs::write(damaged.join("platform.json"), "{\"members\": [").unwrap();
    let (code, plan) = p.lockstep(&["prune", "--store", &url, "-d", CF, "--keep-last", "1", "--min-age", "0s", "--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    let line = plan.lines().find(|l| l.contains("platform_20210101T000000Z")).unwrap_or_else(|| panic!("{plan}"));
    assert!(line.contains("ignore") && line.contains("cannot be read") && line.contains("not protected"), "{line}");
}

#[test]
fn a_platform_backup_that_cannot_finish_leaves_no_record() {
    let Some(p) = platform("a_platform_backup_that_cannot_finish_leaves_no_record") else { return };

    // A product Ops Manager deployed that the director does not have: refused before
    // anything is taken.
    p.om.edit(|s| s.products.push(("p-redis".into(), "p-redis-77aa".into())));
    let store = p.store("missing");
    let (code, text) = p.backup(&store, "cf,p-redis");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("product p-redis (deployment p-redis-77aa) is deployed according to Ops Manager, but the director"), "{text}");
    assert!(dirs(&store).is_empty(), "{:?}", dirs(&store));
    assert!(!p.om.calls().iter().any(|c| c.contains("installation_asset_collection")), "{:?}", p.om.calls());

    // The export cut mid-stream: nothing committed, nothing left, the director untouched.
    p.om.edit(|s| {
        s.products.retain(|(t, _)| t != "p-redis");
        s.export_cut_after = Some(1 << 20);
    });
    let store = p.store("cut");
    let (code, text) = p.backup(&store, "all");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("platform member 1/4 the installation export") && text.contains("installation.zip was not stored"), "{text}");
    assert!(text.contains("No platform record was written"), "{text}");
    assert!(dirs(&store).iter().all(|d| d.starts_with('.')), "{:?}", dirs(&store));
    assert!(!text.contains("Platform member 2/4"), "the director was backed up after a failed export:\n{text}");

    // The director's host key is not known: refused before the export, saying how to
    // trust it.
    let empty = p.tmp.path().join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let store = p.store("unknown-host");
    let (code, text) = p.backup_into(&["-a", store.to_str().unwrap(), "--known-hosts", empty.to_str().unwrap()], &[], "all");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("platform member 2/4 the director 10.0.0.6 cannot be backed up") && text.contains("host key verification failed"), "{text}");
    assert!(text.contains(">> ") && text.contains("--host-public-key"), "{text}");
    assert!(dirs(&store).iter().all(|d| d.starts_with('.')), "{:?}", dirs(&store));

    // The isolation segment's VMs cannot be listed: the export, the director and cf stay
    // as ordinary committed artifacts; no record; the error names the member.
    p.om.edit(|s| s.export_cut_after = None);
    p.director.fail_vms_task_of(ISO);
    let store = p.store("half");
    let (code, text) = p.backup(&store, "all");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("platform member 4/4 product p-isolation-segment (deployment {ISO}) failed")), "{text}");
    assert!(text.contains("Committed as ordinary artifacts, in no platform record: opsman_"), "{text}");
    let d = dirs(&store);
    assert!(!d.iter().any(|n| n.starts_with("platform_")), "{d:?}");
    for dep in ["opsman_", &format!("{DIRECTOR_IP}_"), &format!("{CF}_")] {
        let a = d.iter().find(|n| n.starts_with(dep)).unwrap_or_else(|| panic!("{dep} missing: {d:?}"));
        assert!(store.join(a).join("lockstep.json").is_file(), "{a}");
    }
    assert!(!d.iter().any(|n| n.starts_with(ISO)), "{d:?}");
    assert!(p.director.live_users().is_empty(), "{:?}", p.director.live_users());
    let (code, list) = p.lockstep(&["list", "-a", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{list}");
    assert!(!list.contains("PLATFORM BACKUPS"), "{list}");
}

#[test]
fn a_platform_backup_is_refused_while_changes_are_applied() {
    let mut spec = Spec::platform("-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----\n");
    spec.installations.insert(0, (9, "running".into(), "bob".into()));
    let om = OpsMan::start(spec.clone());
    let dir = TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["opsman", "--ca-cert", &om.ca_pem, "backup", "-a"])
        .arg(dir.path())
        .env("OM_TARGET", &om.url)
        .env("OM_USERNAME", &spec.user.0)
        .env("OM_PASSWORD", &spec.user.1)
        .env_remove("BOSH_ALL_PROXY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is applying changes (installation 9, started by bob"), "{stderr}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was written");
    let calls = om.calls();
    assert!(!calls.iter().any(|c| c.contains("installation_asset_collection") || c.contains("credentials")), "{calls:?}");
}

#[test]
fn a_platform_backup_into_s3_is_read_back_with_the_aws_cli() {
    let Some(server) = s3_support::S3sFs::start() else { return };
    server.bucket("backups");
    let Some(p) = platform("a_platform_backup_into_s3_is_read_back_with_the_aws_cli") else { return };
    let Some(keygen) = s3_support::find_bin("age-keygen") else { return s3_support::missing("age-keygen") };
    let key = p.tmp.path().join("age.key");
    assert!(Command::new(keygen).arg("-o").arg(&key).output().unwrap().status.success());
    let recipient = fs::read_to_string(&key).unwrap().lines().find_map(|l| l.strip_prefix("# public key: ").map(str::to_string)).unwrap();
    let url = server.url("backups", "platform");
    let (code, text) = p.backup_into(&["--store", &url, "--encrypt-to", &recipient], &server.env(), "cf");
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("store them encrypted"), "{text}");
    let aws = |args: &[&str]| {
        let out = server.aws().unwrap().args(args).output().unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let listing = String::from_utf8(aws(&["s3", "ls", "--recursive", "s3://backups/platform/"])).unwrap();
    assert!(listing.contains("/opsman-export.tar.zst.age") && listing.contains("/bosh-0-director.tar.zst.age"), "{listing}");
    let record_key = listing.split_whitespace().find(|w| w.ends_with("/platform.json")).unwrap_or_else(|| panic!("{listing}")).to_string();
    let record: serde_json::Value = serde_json::from_slice(&aws(&["s3", "cp", &format!("s3://backups/{record_key}"), "-"])).unwrap();
    let members = record["members"].as_array().unwrap();
    assert_eq!(members.iter().map(|m| m["role"].as_str().unwrap()).collect::<Vec<_>>(), ["opsman-export", "director", "product"]);
    for m in members {
        let marker = aws(&["s3", "cp", &format!("s3://backups/platform/{}/lockstep.json", m["artifact"].as_str().unwrap()), "-"]);
        let tmp = p.tmp.path().join("marker");
        fs::write(&tmp, &marker).unwrap();
        assert_eq!(sha256sum(&tmp), m["marker_sha256"].as_str().unwrap(), "{m}");
    }
    let verify = |extra: &[&str]| {
        p.text(
            Command::new(env!("CARGO_BIN_EXE_lockstep"))
                .args(["verify", record["platform"].as_str().unwrap(), "--store", &url])
                .args(extra)
                .envs(server.env())
                .output()
                .unwrap(),
        )
    };
    let (code, out) = verify(&["-i", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Without the identity every member fails, each named.
    let (code, out) = verify(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("incomplete or damaged: 3 of its 3 members"), "{out}");
}

/// The library alone, with parts of its own (no Ops Manager): a fake export, two local
/// deployments (the demo's) as the director and a product, a platform that starts changing
/// after the first question, and a director whose release removes the export's artifact.
mod library {
    use async_trait::async_trait;
    use lockstep::events::{Event, Recorder};
    use lockstep::frontend::demo::create_deployment;
    use lockstep::instance::InstanceRef;
    use lockstep::orchestrate::backup::BackupOptions;
    use lockstep::orchestrate::platform::backup_platform;
    use lockstep::orchestrate::Ctx;
    use lockstep::store::local::LocalStore;
    use lockstep::target::export::{ExportStream, Exporter};
    use lockstep::target::platform::{Platform, PlatformParts, ProductPart};
    use lockstep::target::{LocalTarget, Target};
    use lockstep::transport::Writer;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    struct Export;
    struct Stream;

    #[async_trait]
    impl ExportStream for Stream {
        fn size(&self) -> u64 {
            4096
        }
        async fn copy_to(self: Box<Self>, out: Writer<'_>, _progress: &mut (dyn FnMut(u64) + Send)) -> anyhow::Result<u64> {
            out.write_all(&[7u8; 4096]).await?;
            Ok(4096)
        }
    }

    #[async_trait]
    impl Exporter for Export {
        fn deployment_name(&self) -> &str {
            "opsman"
        }
        fn file_name(&self) -> &str {
            "installation.zip"
        }
        fn location(&self) -> String {
            "a fake Ops Manager".into()
        }
        async fn start(&self) -> anyhow::Result<Box<dyn ExportStream + '_>> {
            Ok(Box::new(Stream))
        }
    }

    /// Answers `changing` from a list, then "no".
    struct Source(Mutex<Vec<Option<String>>>);

    #[async_trait]
    impl Platform for Source {
        fn location(&self) -> String {
            "https://opsman.test/".into()
        }
        async fn changing(&self) -> anyhow::Result<Option<String>> {
            let mut a = self.0.lock().unwrap();
            Ok(if a.is_empty() { None } else { a.remove(0) })
        }
    }

    /// A target whose release removes every `opsman_*` directory of the store (a prune or
    /// an operator, while the platform backup runs).
    struct Vandal {
        inner: LocalTarget,
        store: PathBuf,
    }

    #[async_trait]
    impl Target for Vandal {
        fn deployment_name(&self) -> &str {
            self.inner.deployment_name()
        }
        async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>> {
            self.inner.instances().await
        }
        async fn release(&self) -> anyhow::Result<()> {
            for e in std::fs::read_dir(&self.store)? {
                let e = e?;
                if e.file_name().to_string_lossy().starts_with("opsman_") {
                    std::fs::remove_dir_all(e.path())?;
                }
            }
            Ok(())
        }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        super::dirs(dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_started_during_the_run_are_warned_of_and_a_vanished_member_refuses_the_record() {
        let tmp = tempfile::TempDir::new().unwrap();
        let director = LocalTarget::new("director", create_deployment(&tmp.path().join("d"), true).unwrap());
        let cf = LocalTarget::new("cf", create_deployment(&tmp.path().join("cf"), true).unwrap());
        let store_dir = tmp.path().join("store");
        std::fs::create_dir(&store_dir).unwrap();
        let store = LocalStore::new(&store_dir);
        let events = Arc::new(Recorder::default());
        let ctx = Ctx::new(events.clone());

        // Changing from the start: refused, nothing written.
        let source = Source(Mutex::new(vec![Some("Ops Manager is applying changes (installation 9)".into())]));
        let parts = PlatformParts { source: &source, export: &Export, director: &director, products: vec![] };
        let out = backup_platform(&ctx, &parts, &store, &BackupOptions::default()).await;
        let text = out.failures.render();
        assert!(out.record.is_none() && text.contains("(installation 9): a backup now would capture a platform half-way"), "{text}");
        assert!(names(&store_dir).is_empty(), "{:?}", names(&store_dir));

        let source = Source(Mutex::new(vec![None, Some("Ops Manager is applying changes (installation 10)".into())]));
        let parts = PlatformParts { source: &source, export: &Export, director: &director, products: vec![ProductPart { kind: "cf".into(), target: &cf }] };
        let out = backup_platform(&ctx, &parts, &store, &BackupOptions::default()).await;
        assert!(out.failures.is_empty(), "{}", out.failures.render());
        let record = out.record.unwrap();
        assert!(names(&store_dir).contains(&record), "{:?}", names(&store_dir));
        let warned = events.events().iter().any(|e| matches!(e, Event::Warning(w) if w.contains("installation 10") && w.contains("this began while the platform backup ran")));
        assert!(warned, "no warning of the changes");

        // The export's artifact vanishes before the record is written: no record.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let vandal = Vandal { inner: LocalTarget::new("director", create_deployment(&tmp.path().join("d2"), true).unwrap()), store: store_dir.clone() };
        let source = Source(Mutex::new(vec![]));
        let parts = PlatformParts { source: &source, export: &Export, director: &vandal, products: vec![] };
        let out = backup_platform(&ctx, &parts, &store, &BackupOptions::default()).await;
        let text = out.failures.render();
        assert!(out.record.is_none() && text.contains("refusing to commit the platform record") && text.contains("MISSING"), "{text}");
        assert_eq!(names(&store_dir).iter().filter(|n| n.starts_with("platform_")).count(), 1, "{:?}", names(&store_dir));
    }
}
